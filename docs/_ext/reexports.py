"""Sphinx extension: references to re-exported names resolve to where the object lives.

The API pages describe each object once, on the page of the module that defines it
(``devito_uq.inference.variational.VariationalPosterior``), while docstrings and users
name it as the package exports it (``devito_uq.inference.VariationalPosterior``) or
relative to the current module (``read_shots`` inside ``devito_uq.io.segy_inspect``).
On a ``missing-reference``, the target is imported, and the reference is resolved
again under the object's defining module and qualified name.
"""

from __future__ import annotations

import importlib
import types
from typing import Any


def canonical_name(target: str, module: str | None, cls: str | None = None) -> str | None:
    """``module.qualname`` of the object that ``target`` names (``None``: not found).

    ``target`` is tried as written, then inside the class ``cls`` of ``module``, then
    inside ``module`` (the contexts a docstring's relative reference is written in).
    """
    target = target.lstrip(".~")
    candidates = [target]
    if module and cls:
        candidates.append(f"{module}.{cls}.{target}")
    if module:
        candidates.append(f"{module}.{target}")
    for name in candidates:
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            try:
                obj: Any = importlib.import_module(".".join(parts[:cut]))
            except (ImportError, ValueError):  # not a module (ValueError: an empty name)
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            if isinstance(obj, types.ModuleType):
                return obj.__name__
            owner = getattr(obj, "__module__", None)
            qualname = getattr(obj, "__qualname__", None)
            if owner and qualname and owner.startswith("devito_uq"):
                return f"{owner}.{qualname}"
            break
    return None


def _resolve(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    name = canonical_name(target, node.get("py:module"), node.get("py:class"))
    if name is None or name == target:
        return None
    retry = node.deepcopy()
    retry["reftarget"] = name
    retry["refspecific"] = False
    domain = env.get_domain("py")
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], name, retry, contnode
    )


def setup(app):  # noqa: D103
    app.connect("missing-reference", _resolve)
    return {"version": "1", "parallel_read_safe": True}
