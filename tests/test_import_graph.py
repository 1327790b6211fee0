"""No import circle inside ``s2_policy``: the graph of module-level imports, read with ``ast``, has no cycle.

Only imports that run when a module is imported are edges: those at module level, also inside module-level
``if``/``try``/``with`` blocks and class bodies. Imports inside functions (deferred on purpose) and under
``if TYPE_CHECKING:`` are not. Importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` unless the importer
lives inside it, so such packages are edges too.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def module_names(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``root/package``."""
    out = {}
    for f in sorted((root / package).rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_nodes(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module body runs (not in functions, not under TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_nodes(node.body)
            yield from _import_time_nodes(node.orelse)
        elif isinstance(node, ast.Try | getattr(ast, "TryStar", ast.Try)):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _import_time_nodes(block)
        elif isinstance(node, ast.With | ast.ClassDef | ast.For | ast.While):
            yield from _import_time_nodes(node.body)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """``{module: modules of the package it imports at import time}``."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]  # the package relative imports start from

        def add(target: str, through: bool, mod: str = mod) -> None:
            """Edge to ``target`` (a module of ours), and to its parent packages that ``mod`` is not in."""
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in modules or name == mod:
                    continue
                inside = mod.startswith(name + ".")
                if name == target and through or not inside:
                    graph[mod].add(name)

        for node in _import_time_nodes(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, through=False)
                continue
            if node.level:
                if node.level - 1 > len(here):
                    raise ValueError(f"{path}: relative import beyond the top-level package")
                base = here[: len(here) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:  # `from pkg import module`
                    add(sub, through=False)
                    add(source, through=False)
                else:  # `from module import name`: the name comes from that module, even our own package
                    add(source, through=True)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, set(comp)) for comp in components]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A concrete cycle through the first module of a strongly connected component (breadth-first)."""
    start = min(comp)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & comp):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    raise AssertionError("a strongly connected component without a cycle")


def test_no_import_circle_in_s2_policy() -> None:
    graph = import_graph(REPO, "s2_policy")
    assert len(graph) > 50 and "s2_policy.data.lerobot.reader" in graph
    assert "s2_policy.data.store" in graph["s2_policy.data.lerobot.reader"]  # the graph sees real edges
    cycles = find_cycles(graph)
    assert not cycles, "import circles (module-level imports):\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_finds_circles_and_skips_deferred_imports(tmp_path: Path) -> None:
    """The checker itself, on a made-up package: it must report the circle and nothing else."""
    files = {
        "pkg/__init__.py": "from pkg.a import f\n",
        "pkg/a.py": "from .sub import g\n\ndef f():\n    from pkg.c import h  # deferred: not an edge\n",
        "pkg/sub/__init__.py": "from .b import g\n",
        "pkg/sub/b.py": "import pkg.sub.d\n",
        "pkg/sub/d.py": "try:\n    from ..a import f\nexcept ImportError:\n    pass\n",
        "pkg/sub/__main__.py": "from . import b\n",
        "pkg/c.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n"
            "class C:\n    from pkg import sub\n"
        ),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.a"] == {"pkg.sub"}  # the function-level import of pkg.c is not an edge
    assert graph["pkg.c"] == {"pkg.sub"}  # TYPE_CHECKING is not an edge; a class body is
    assert graph["pkg.sub.__main__"] == {"pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg.sub.d"}
    assert graph["pkg.sub.d"] == {"pkg.a"}  # inside try: an edge
    assert find_cycles(graph) == [["pkg.a", "pkg.sub", "pkg.sub.b", "pkg.sub.d", "pkg.a"]]
    (tmp_path / "pkg/sub/d.py").write_text("def late():\n    from ..a import f\n")
    assert find_cycles(import_graph(tmp_path, "pkg")) == []


@pytest.mark.parametrize("source, edge", [
    ("from . import x\n", "pkg.x"),
    ("from .x import name\n", "pkg.x"),
    ("from pkg import name\n", "pkg"),  # a name from our own package's __init__: it must have run
    ("import pkg.x\n", "pkg.x"),
])
def test_edges_of_each_import_form(tmp_path: Path, source: str, edge: str) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "x.py").write_text("")
    (tmp_path / "pkg" / "y.py").write_text(source)
    assert import_graph(tmp_path, "pkg")["pkg.y"] == {edge}
