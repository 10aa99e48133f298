"""No import cycles among tightfit's modules.

The graph is built statically with ``ast`` from module-level imports (also those inside
module-level ``if``/``try``, but not under ``TYPE_CHECKING`` and not inside functions, which
run only after every module has loaded). ``from pkg import name`` is an edge to ``pkg.name``
when that is a module, else to ``pkg`` itself (the name is read from its ``__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import tightfit

SRC = Path(tightfit.__file__).resolve().parent.parent


def module_files(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node.test):
            yield from _module_level_imports(node.body)
            yield from _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level_imports(block)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".")[: len(module.split(".")) - (0 if is_package else 1) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    return [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at module level."""
    modules = module_files(root, package)
    graph = {}
    for module, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = {target for node in _module_level_imports(tree.body)
                         for target in _targets(node, module, is_package, modules)
                         if target in modules and target != module}
    return graph


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of two or more modules: each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph is a few hundred modules deep at most
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(set(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path a -> ... -> a) per tangle."""
    return [path_through(graph, component) for component in tangles(graph)]


def path_through(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    came_from = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    path = [node]
                    while came_from[path[-1]] is not None:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def test_tightfit_has_no_import_cycles():
    found = cycles(import_graph(SRC, "tightfit"))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


# (files of a tiny package, the cycles expected) — proves the detector, including what it skips
FAKE_PACKAGES = [
    ({"a.py": "from . import b\n", "b.py": "from .a import x\n"}, [["pkg.a", "pkg.b", "pkg.a"]]),
    ({"a.py": "def f():\n    from . import b\n", "b.py": "from . import a\n"}, []),
    ({"a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\n",
      "b.py": "from . import a\n"}, []),
    ({"a.py": "try:\n    from .b import y\nexcept ImportError:\n    y = None\n", "b.py": "import pkg.c\n",
      "c.py": "from pkg import a\n"}, [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]),
    ({"__init__.py": "from .a import x\n", "a.py": "from . import b\n", "b.py": "from pkg import name\n"},
     [["pkg", "pkg.a", "pkg.b", "pkg"]]),
    ({"__init__.py": "from .a import x\n", "a.py": "from .b import name\n", "b.py": "x = 1\n"}, []),
    ({"sub/__init__.py": "from ..a import x\n", "a.py": "from .sub import y\n"}, [["pkg.a", "pkg.sub", "pkg.a"]]),
]


def test_the_cycle_finder_on_tiny_packages(tmp_path):
    for number, (files, expected) in enumerate(FAKE_PACKAGES):
        root = tmp_path / str(number)
        for name, text in {"__init__.py": "", **files}.items():
            (root / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "pkg" / name).write_text(text)
        assert cycles(import_graph(root, "pkg")) == expected, files
