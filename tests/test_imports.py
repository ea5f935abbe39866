"""The import graph of devito_uq: no circle, and every module imports on its own.

The graph is read from the source (``ast``), not from a running interpreter: every
``import`` statement counts, at module level or inside a function (a lazy import still
ties two modules together), and ``from package import name`` points at the submodule
``package.name`` when there is one, else at the package. A strongly connected component
of more than one module is a circle; the test names its modules and the lines that make
it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "devito_uq"


def _modules() -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` file under devito_uq/."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom, modules: dict) -> list[str]:
    """The devito_uq modules an import statement of ``module`` names."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the package of ``module``
            package = module.split(".")
            if modules[module].name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, base] if base else package)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = []
    for name in names:
        while name and name not in modules:  # ``import devito_uq.x.y`` of a name in x.y
            name = name.rpartition(".")[0]
        if name and name != module:
            out.append(name)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """``module → {imported module: line of the first such import}`` over devito_uq/."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, node, modules):
                    edges[target] = min(edges.get(target, node.lineno), node.lineno)
        graph[module] = edges
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_finds_a_circle_and_resolves_relative_imports(tmp_path, monkeypatch):
    """The checker itself: a three-module circle through a relative ``from . import``."""
    package = tmp_path / "devito_uq"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("from . import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from devito_uq.c import x\n")
    (package / "c.py").write_text("import devito_uq.sub.a\nx = 1\n")
    (package / "d.py").write_text("from devito_uq.sub import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", package)
    graph = import_graph()
    assert graph["devito_uq.sub.a"] == {"devito_uq.sub.b": 1}
    assert graph["devito_uq.d"] == {"devito_uq.sub.a": 1}
    assert circles(graph) == [["devito_uq.c", "devito_uq.sub.a", "devito_uq.sub.b"]]


def test_no_import_circle():
    graph = import_graph()
    report = []
    for component in circles(graph):
        members = set(component)
        lines = [
            f"  {m} imports {t} (line {graph[m][t]})"
            for m in component
            for t in sorted(graph[m])
            if t in members
        ]
        report.append(f"circle of {len(component)} modules:\n" + "\n".join(lines))
    assert not report, "\n".join(report)


def test_imaging_never_imports_amortize():
    """One direction between the applications: amortize builds on imaging, never back
    (``devito-uq invert --amortized`` is dispatched by the CLI)."""
    graph = import_graph()
    back = [
        f"{m} imports {t} (line {line})"
        for m, edges in graph.items()
        if m == "devito_uq.apps.imaging" or m.startswith("devito_uq.apps.imaging.")
        for t, line in edges.items()
        if t.startswith("devito_uq.apps.amortize")
    ]
    assert not back, "\n".join(back)


_IMPORT_EACH = """
import importlib, json, sys, traceback
failed = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m == "devito_uq" or m.startswith("devito_uq.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed[name] = traceback.format_exc(limit=-3)
print(json.dumps(failed))
"""


def test_every_module_imports_on_its_own():
    """Each module imports with no devito_uq module loaded before it (one interpreter,
    devito_uq cleared between modules: third-party imports such as torch stay loaded,
    which keeps this to seconds)."""
    names = sorted(m for m in _modules() if not m.endswith("__main__"))
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH, json.dumps(names)],
        capture_output=True,
        text=True,
        cwd=ROOT.parent,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    failed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failed, "\n".join(f"{k}:\n{v}" for k, v in failed.items())
