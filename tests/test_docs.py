"""The documentation's code runs: README.md in ``make test``, every page in ``make docs-check``.

Code blocks of a Markdown page (README.md, docs/**/*.md) follow four rules:

* a ``python`` block runs, in page order, in one namespace per page, in a fresh folder;
* a ``bash`` block runs line by line under ``bash -e`` in the same folder, with the
  environment's ``devito-uq`` and ``mpiexec`` on the PATH;
* a block right after ``<!-- file: NAME -->`` is written to ``NAME`` in that folder (a
  config file the commands below it read);
* a block right after ``<!-- skip: REASON -->`` does not run; the reason is mandatory;
* a MyST directive fence (```` ```{toctree} ````) is not code.

Any other block (another language, no marker) is an error of the page, so nothing shown
as code escapes the check. The pages' blocks compile Devito operators and train flows at
reduced sizes (minutes in all): they run only with ``DEVITO_UQ_DOCS_CHECK=1``, which
``make docs-check`` sets; README.md's blocks (seconds) run in every ``make test``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)
RUNNABLE = ("python", "bash")
_FENCE = re.compile(r"^(`{3,})\s*(\{[\w-]+\}|[\w+-]*)\s*$")
_MARK = re.compile(r"^<!--\s*(skip|file):\s*(.*?)\s*-->$")


@dataclass
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    language: str
    code: str
    mark: str | None = None  # "skip" or "file"
    value: str = ""  # the skip reason or the file name


def code_blocks(page: Path) -> list[Block]:
    """Every fenced code block of ``page`` with the marker on the line before it."""
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    previous = ""
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        ticks, language = fence.groups()
        end = i + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        mark = _MARK.match(previous)
        if language.startswith("{"):  # a MyST directive (toctree, cli-reference): no code
            previous, i = "", end + 1
            continue
        blocks.append(
            Block(
                page,
                i + 1,
                language,
                "\n".join(lines[i + 1 : end]) + "\n",
                mark.group(1) if mark else None,
                mark.group(2) if mark else "",
            )
        )
        previous = ""
        i = end + 1
    return blocks


def _where(page: Path, line: int) -> str:
    name = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page.name
    return f"{name}:{line}"


def problems(page: Path) -> list[str]:
    """Blocks of ``page`` that would escape the check (unmarked, unknown language)."""
    found = []
    for b in code_blocks(page):
        where = _where(page, b.line)
        if b.mark == "skip" and not b.value:
            found.append(f"{where}: skip without a reason")
        elif b.mark == "file" and not b.value:
            found.append(f"{where}: file without a name")
        elif b.mark is None and b.language not in RUNNABLE:
            found.append(f"{where}: a {b.language or 'plain'!r} block with no marker")
    return found


def run_page(page: Path, folder: Path) -> None:
    """Run the blocks of ``page`` in ``folder`` (python in-process, bash in a shell)."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for b in code_blocks(page):
            where = _where(page, b.line)
            if b.mark == "skip":
                continue
            if b.mark == "file":
                (folder / b.value).write_text(b.code, encoding="utf-8")
            elif b.language == "python":
                exec(compile(b.code, where, "exec"), namespace)  # noqa: S102 — the docs' own code
            elif b.language == "bash":
                result = subprocess.run(
                    ["bash", "-e", "-c", b.code], env=env, capture_output=True, text=True
                )
                assert result.returncode == 0, f"{where} failed:\n{result.stdout}\n{result.stderr}"
    finally:
        os.chdir(cwd)


def test_block_parser_reads_markers(tmp_path):
    """The parser pairs each block with the marker right before it, and only that one."""
    page = tmp_path / "p.md"
    page.write_text(
        "<!-- skip: needs data -->\n```python\nraise SystemExit\n```\n\n"
        "<!-- file: a.toml -->\n```toml\nx = 1\n```\n\ntext\n```text\nout\n```\n"
        "```python\nvalue = 2\n```\n```{toctree}\nindex\n```\n",
        encoding="utf-8",
    )
    blocks = code_blocks(page)
    assert [(b.language, b.mark, b.value) for b in blocks] == [
        ("python", "skip", "needs data"),
        ("toml", "file", "a.toml"),
        ("text", None, ""),
        ("python", None, ""),
    ]
    assert problems(page) == ["p.md:12: a 'text' block with no marker"]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    page.write_text(
        "<!-- file: a.toml -->\n```toml\nx = 1\n```\n```python\nn = 3\n```\n"
        "```bash\ntest \"$(cat a.toml)\" = 'x = 1'\n```\n",
        encoding="utf-8",
    )
    run_page(page, run_dir)
    assert (run_dir / "a.toml").read_text() == "x = 1\n"
    page.write_text("```bash\nfalse\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="p.md:1 failed"):
        run_page(page, run_dir)
    page.write_text("```python\nassert n == 3\n```\n", encoding="utf-8")
    with pytest.raises(NameError):  # a fresh namespace per page
        run_page(page, run_dir)


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: p.name)
def test_every_block_runs_or_says_why_not(page):
    assert problems(page) == []


def test_readme_blocks_run(tmp_path):
    """README.md's python and bash blocks (what a newcomer copies first)."""
    run_page(ROOT / "README.md", tmp_path)


def test_readme_stays_short_and_points_into_the_site():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert "make demo" in text and "make test" in text and "../shared" not in text
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / target).exists(), target


def test_cli_reference_lists_every_command_and_key():
    """The generated reference has a section per command and a row per config key."""
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    try:
        from cli_markdown import reference_markdown
    finally:
        sys.path.pop(0)
    import dataclasses

    from devito_uq.apps import commands

    text = "\n".join(reference_markdown())
    for cmd in commands():
        assert f"## `devito-uq {cmd.name}`" in text
        section = text.split(f"## `devito-uq {cmd.name}`")[1].split("\n## ")[0]
        for f in dataclasses.fields(cmd.config):
            if f.metadata.get("cli", True):
                assert f"| `{f.name}` <br>" in section, (cmd.name, f.name)
                assert " ".join(f.metadata["help"].split()).replace("|", "\\|") in section


@pytest.mark.skipif(
    os.environ.get("DEVITO_UQ_DOCS_CHECK") != "1",
    reason="the pages' tutorials take minutes: make docs-check sets DEVITO_UQ_DOCS_CHECK=1",
)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT / "docs")))
def test_page_blocks_run(page, tmp_path):
    run_page(page, tmp_path)
