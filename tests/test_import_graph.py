"""No import cycle inside ``toolkit/``: the import graph, read from the source, is acyclic.

The graph is read with an AST scan of every ``toolkit/**/*.py`` file, so imports inside
functions count as much as those at module level (a lazy import hides a cycle from Python
until the day both modules are imported first from the other side).  ``from toolkit.x import y``
is an edge to ``toolkit.x.y`` when ``y`` is a submodule, else to ``toolkit.x``; a package's
``__init__`` is the node of the package and counts as importing what it imports.  Parent
packages that Python runs on the way to a submodule are not edges: every module would then
depend on ``toolkit/__init__.py``, which imports the public API from everywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module_names(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` file under ``root / package``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The known module ``name`` is, or the closest known package above it."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, modules: dict[str, Path], package: str) -> set[str]:
    """Modules of ``package`` that ``module`` imports anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            # `from a import b` imports a.b when b is a submodule, else a name of a.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        else:
            continue
        for target in targets:
            if target == package or target.startswith(package + "."):
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != module:
                    found.add(resolved)
    return found


def import_graph(root: Path, package: str = "toolkit") -> dict[str, set[str]]:
    """``{module: modules it imports}`` for every module of ``package`` under ``root``."""
    modules = _module_names(root, package)
    return {name: _imports(name, path, modules, package) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) through each strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan; the graph has a few dozen nodes, recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for comp in components:
        start = min(comp)
        # Shortest way back to `start` inside the component (breadth first).
        prev: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in prev:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & comp):
                    if w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        while path[-1] != start or len(path) == 1:
            path.append(prev[path[-1]])
        cycles.append(path[::-1])
    return cycles


def test_toolkit_has_no_import_cycle():
    graph = import_graph(REPO)
    assert len(graph) > 30 and "toolkit.convert" in graph  # the scan found the package
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in toolkit/:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_conversion_sits_below_the_backends_and_the_dask_kmeans():
    """``convert`` owns every conversion: it imports no backend and not the Dask k-means."""
    graph = import_graph(REPO)
    assert not {m for m in graph["toolkit.convert"] if m.startswith(("toolkit.backends", "toolkit.kmeans_dask"))}
    # The standalone k-means package knows nothing of MLflow, the configs or the backends.
    for name, deps in graph.items():
        if name.startswith("toolkit.kmeans_dask"):
            outside = {d for d in deps if not d.startswith("toolkit.kmeans_dask")}
            assert outside <= {"toolkit.faults", "toolkit.errors"}, (name, outside)


def test_the_scan_sees_lazy_relative_and_package_imports(tmp_path):
    """The checker itself: a cycle through a function-level, a relative and an ``__init__`` import."""
    pkg = tmp_path / "toolkit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from toolkit.sub import b\n")
    (pkg / "a.py").write_text("def f():\n    from toolkit import sub\n")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nimport toolkit.c\n")
    (pkg / "c.py").write_text("import os\n")
    graph = import_graph(tmp_path)
    assert graph["toolkit"] == {"toolkit.sub.b"}
    assert graph["toolkit.a"] == {"toolkit.sub"}
    assert graph["toolkit.sub"] == {"toolkit.sub.b"}
    assert graph["toolkit.sub.b"] == {"toolkit.a", "toolkit.c"}
    assert find_cycles(graph) == [["toolkit.a", "toolkit.sub", "toolkit.sub.b", "toolkit.a"]]
    (pkg / "a.py").write_text("import os\n")
    assert find_cycles(import_graph(tmp_path)) == []
