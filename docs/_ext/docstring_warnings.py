"""Sphinx extension: warnings raised inside docstrings go to a report, not to ``-W``.

The package's docstrings are code (owned and fixed with it); the pages are the
documentation. Every warning whose location is a docstring (``…/module.py:docstring of
name``) is dropped from the warning stream, which ``-W`` makes fatal, and written to
``<outdir>/../docstring_warnings.txt``; the build ends by printing how many there were.
Every other warning still fails the build.
"""

from __future__ import annotations

import logging
import os

from sphinx.util import logging as sphinx_logging

_COLLECTED: list[str] = []


def _where(record: logging.LogRecord) -> str:
    location = getattr(record, "location", None)
    if location is None:
        return ""
    if isinstance(location, tuple):
        return ":".join(str(part) for part in location if part is not None)
    if isinstance(location, str):
        return location
    return sphinx_logging.get_node_location(location) or ""


class _DocstringFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        where = _where(record)
        if "docstring of" not in where:
            return True
        _COLLECTED.append(f"{where}: {record.getMessage()}")
        return False


def _report(app, exception) -> None:
    path = os.path.join(os.path.dirname(app.outdir), "docstring_warnings.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(sorted(set(_COLLECTED))) + "\n")
    count = len(set(_COLLECTED))
    print(f"docstring warnings (not fatal, see {path}): {count}")


def setup(app):  # noqa: D103
    for handler in logging.getLogger(sphinx_logging.NAMESPACE).handlers:
        handler.filters.insert(0, _DocstringFilter())
    app.connect("build-finished", _report)
    return {"version": "1", "parallel_read_safe": True}
