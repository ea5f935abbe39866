"""Sphinx configuration of the devito_uq documentation (``make docs``).

Offline by design: no intersphinx (it would fetch other projects' inventories), so
references to torch, numpy and the standard library are plain text.

Warnings: ``make docs`` runs ``sphinx-build -W --keep-going`` with ``nitpicky`` on, so
every warning — of a hand-written page or of a docstring: a missing cross-reference
(``{class}``, ``{func}``, ``{doc}``, an unresolved relative ``:mod:`operators```), a
missing document, bad markup — fails the build.
``nitpick_ignore_regex`` exempts only the free-form type descriptions of numpy-style
parameter sections (``tensor [batch, nx, nz]``, ``float, optional``, ``torch.Tensor``),
which napoleon turns into ``py:class`` references but which name no documented object.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_ext"))
sys.path.insert(0, os.path.dirname(HERE))

project = "devito_uq"
author = "devito_uq contributors"
copyright = "2026, devito_uq contributors"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "cli_reference",
    "reexports",
    "shadowed_modules",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "README.md"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# API reference: one page per public module, members as listed in ``__all__``.
autosummary_generate = True
# Each object on the page of the module that defines it (no duplicates for re-exports).
autosummary_ignore_module_all = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autoclass_content = "both"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

html_theme = "furo"
html_title = "devito_uq"

nitpicky = True
nitpick_ignore_regex = [
    # numpy-style type descriptions (free text, not references)
    ("py:class", r"(?!devito_uq\.).*"),
    # dataclass fields and Enum members documented as attributes of their class only
    ("py:class", r"devito_uq\..*\._[A-Za-z].*"),
]
suppress_warnings = ["myst.header"]
