"""The package's import graph: no import cycles, no private name imported from another module.

The graph is read from the source with :mod:`ast` (nothing is imported): one node per module of
``src/chestdx``, one edge per ``import`` / ``from ... import`` statement anywhere in the module
(top level or inside a function: a lazy import is still a dependency), except under
``if TYPE_CHECKING:``. ``from a.b import c`` is an edge to ``a.b.c`` where that is a module, else to
``a.b``. A cycle is a strongly connected component of more than one module.

Run it as a script to print the graph's cycles and private imports::

    python tests/test_import_graph.py
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "chestdx"


def module_files(src: Path = SRC) -> dict[str, Path]:
    """``{"chestdx.engine.train": path, "chestdx.models": .../models/__init__.py, ...}``."""
    out = {}
    for p in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(p.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node``, skipping ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for alt in child.orelse:
                yield alt
                yield from _walk(alt)
            continue
        yield child
        yield from _walk(child)


def _absolute(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def imports(module: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, str, int]]:
    """``(imported module, imported name or "", line)`` for each chestdx import in ``module``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == PACKAGE:
                    yield a.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node.level, node.module)
            if base.split(".")[0] != PACKAGE:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                yield (sub, "", node.lineno) if sub in modules else (base, a.name, node.lineno)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: {modules it imports}}`` over chestdx's own modules."""
    modules = module_files(src)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m, p in modules.items():
        for target, _, _ in imports(m, p, modules):
            if target in modules and target != m:
                graph[m].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def private_imports(src: Path = SRC) -> list[str]:
    """``"importer:line imports module._name"`` for each private name taken from another module."""
    modules = module_files(src)
    out = []
    for m, p in modules.items():
        for target, name, line in imports(m, p, modules):
            if target == m:
                continue
            leaf = name or target.rsplit(".", 1)[-1]
            if leaf.startswith("_") and not leaf.startswith("__"):
                out.append(f"{m}:{line} imports {target}{'.' + name if name else ''}")
    return out


def test_the_graph_reader_sees_cycles_and_private_imports(tmp_path):
    """The checker itself: a made-up package with one cycle (through a lazy import) and one private import."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from chestdx.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from chestdx import a\n    return a\n")
    (pkg / "sub" / "__init__.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                             "    from chestdx.a import x\n")
    (pkg / "sub" / "c.py").write_text("from ..b import _hidden\nfrom . import d\n")
    (pkg / "sub" / "d.py").write_text("import chestdx.sub.c\n")
    graph = import_graph(tmp_path)
    assert graph["chestdx.sub"] == set()  # TYPE_CHECKING imports are not dependencies
    assert cycles(graph) == [["chestdx.a", "chestdx.b"], ["chestdx.sub.c", "chestdx.sub.d"]]
    assert private_imports(tmp_path) == ["chestdx.sub.c:1 imports chestdx.b._hidden"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_private_name_is_imported_from_another_module():
    found = private_imports()
    assert not found, "private names imported across modules:\n" + "\n".join(found)


if __name__ == "__main__":
    g = import_graph()
    cyc = cycles(g)
    print(f"{len(g)} modules, {sum(map(len, g.values()))} import edges, {len(cyc)} cycles")
    for c in cyc:
        print("  cycle:", " <-> ".join(c))
    priv = private_imports()
    print(f"{len(priv)} private imports")
    for line in priv:
        print("  ", line)
