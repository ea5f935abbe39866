"""Sphinx extension: the ``cli-reference`` directive (the page ``docs/cli.md`` uses it).

It inserts :func:`cli_markdown.reference_markdown` — every ``devito-uq`` command and
config key, generated from the config dataclasses — parsed as MyST Markdown.
"""

from __future__ import annotations

from cli_markdown import reference_markdown
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


class CliReference(SphinxDirective):
    """The ``cli-reference`` directive: :func:`reference_markdown` parsed as MyST."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        container = nodes.container()
        text = "\n".join(reference_markdown())
        self.state.nested_parse(StringList(text.splitlines(), "cli-reference"), 0, container)
        return container.children


def setup(app):  # noqa: D103
    app.add_directive("cli-reference", CliReference)
    return {"version": "1", "parallel_read_safe": True}
