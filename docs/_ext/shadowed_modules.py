"""Sphinx extension: a submodule shadowed by a same-named package attribute is documented.

``devito_uq.inference.diagnostics`` re-exports the function ``images.coverage``, so the
attribute ``diagnostics.coverage`` is that function, not the submodule
``diagnostics/coverage.py``. Autosummary imports ``package.name`` as an attribute first,
so its recursive API pages would describe the function twice and the module never
(every reference into it unresolved). Here a name that is an importable submodule of its
parent package resolves to the module.
"""

from __future__ import annotations

import importlib
import types

from sphinx.ext import autosummary

_original = autosummary._import_by_name


def _import_by_name(name: str, grouped_exception: bool = True):
    obj, parent, modname = _original(name, grouped_exception)
    if isinstance(obj, types.ModuleType) or not isinstance(parent, types.ModuleType):
        return obj, parent, modname
    if f"{parent.__name__}.{name.rsplit('.', 1)[-1]}" != name:
        return obj, parent, modname
    try:
        module = importlib.import_module(name)
    except ImportError:  # a plain attribute, no submodule of that name
        return obj, parent, modname
    return module, None, name


def setup(app):  # noqa: D103
    autosummary._import_by_name = _import_by_name
    return {"version": "1", "parallel_read_safe": True}
