"""Lazy re-exports (PEP 562) shared by the package ``__init__`` modules.

``import devito_uq`` (or ``devito_uq.physics``, ``devito_uq.io``) must not import
Devito, segyio or matplotlib: a name is imported from its module on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, where: Mapping[str, str], extra: Iterable[str] = ()
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` exporting ``name -> module``.

    ``extra`` names are defined in the package itself (listed in ``__all__`` only).
    """
    names = [*extra, *where]

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(names)

    return names, __getattr__, __dir__
