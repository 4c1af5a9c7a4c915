"""Imports follow the README's layer table, and no import cycle exists.

The graph is read with an AST scan of every ``.py`` file of ``toolkit/``, ``mlproject/`` and
``benchmarks/``, so imports inside functions count as much as those at module level (a lazy
import hides a cycle or an upward reach from Python until the day both modules are imported
first from the other side).  ``from toolkit.x import y`` is an edge to ``toolkit.x.y`` when ``y``
is a submodule, else to ``toolkit.x``; a package's ``__init__`` is the node of the package and
counts as importing what it imports.  Parent packages that Python runs on the way to a
submodule are not edges: every module would then depend on ``toolkit/__init__.py``, the face
that hands the public API on from everywhere.

The layer table lives in ONE place, the README's "Layout" section; this file parses it, so the
table and the test cannot drift apart.  Each row names modules or packages of ``toolkit`` (the
top row: the repository's folders and the package face) and the layers they may import from.  A
module belongs to the row of the longest entry that names it or a package above it; an import
between two modules of one entry (one package) is free, any other must go to a layer the
importer's row names.  ``toolkit/__init__.py``'s docstring states the same layers and is held
against the table too.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The packages whose imports of each other the layer table governs.
PACKAGES = ("toolkit", "mlproject", "benchmarks")


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


@dataclass(frozen=True)
class Edge:
    """One import statement's edge: ``source`` imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: str
    line: int
    in_function: bool  # inside a def or lambda: run on call, not on import

    def where(self) -> str:
        return f"{self.path}:{self.line} ({'function-level' if self.in_function else 'module-level'})"


def _import_nodes(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement of ``tree``, with whether it sits inside a function."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def _edges(module: str, path: Path, modules: dict[str, Path], packages: tuple[str, ...], root: Path) -> list[Edge]:
    """The edges from ``module`` to modules of ``packages``, one per import statement and target."""
    is_pkg = path.name == "__init__.py"
    rel = path.relative_to(root).as_posix()
    out: list[Edge] = []
    for node, in_function in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            # `from a import b` imports a.b when b is a submodule, else a name of a.
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        for target in targets:
            if target.split(".")[0] in packages:
                resolved = _resolve(target, modules)
                if resolved is not None and resolved != module:
                    out.append(Edge(module, resolved, rel, node.lineno, in_function))
    return out


def import_edges(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Edge]:
    """Every import edge among the modules of ``packages`` under ``root`` (those present)."""
    modules: dict[str, Path] = {}
    for package in packages:
        if (root / package).is_dir():
            modules.update(_module_names(root, package))
    return [e for name, path in modules.items() for e in _edges(name, path, modules, packages, root)]


def import_graph(root: Path, package: str = "toolkit") -> dict[str, set[str]]:
    """``{module: modules of package it imports}`` for every module of ``package`` under ``root``."""
    graph: dict[str, set[str]] = {name: set() for name in _module_names(root, package)}
    for edge in import_edges(root, (package,)):
        graph[edge.source].add(edge.target)
    return graph


# -- the layer table ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One row of the layer table: ``layer`` (None: the top row), its entries, what they may import."""

    layer: int | None
    entries: tuple[str, ...]  # dotted module names: toolkit.errors, toolkit.stats, mlproject, ...
    written: tuple[str, ...]  # the entries as the README writes them
    allowed: frozenset[int] | None  # None: every layer (the top row)
    text: str  # the row's "import from" cell, for messages


def parse_layer_table(readme: str) -> list[Row]:
    """The rows of the table in ``readme``'s "## Layout" section, in order.

    Raises:
        AssertionError: no such section or table, or a row that cannot be read.
    """
    assert "\n## Layout" in readme, 'README.md has no "## Layout" section'
    section = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    assert len(lines) > 2 and "layer" in lines[0] and "import from" in lines[0], "no layer table in ## Layout"
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        assert len(cells) == 3, f"layer table row with {len(cells)} cells: {ln}"
        layer_cell, module_cell, rule = cells
        written = tuple(re.findall(r"`([^`]+)`", module_cell))
        if layer_cell == "top":
            entries = tuple("toolkit" if w == "toolkit/__init__.py" else w.rstrip("/").replace("/", ".")
                            for w in written)
            rows.append(Row(None, entries, written, None, rule))
            continue
        layer = int(layer_cell)
        if rule == "nothing of the toolkit":
            allowed: frozenset[int] = frozenset()
        elif m := re.fullmatch(r"layer (\d+)", rule):
            allowed = frozenset({int(m[1])})
        elif m := re.fullmatch(r"layers (\d+)-(\d+)", rule):
            allowed = frozenset(range(int(m[1]), int(m[2]) + 1))
        else:
            raise AssertionError(f"layer {layer}: cannot read the rule {rule!r}")
        rows.append(Row(layer, tuple(f"toolkit.{w}" for w in written), written, allowed, rule))
    return rows


def _row_of(module: str, rows: list[Row]) -> tuple[Row, str] | None:
    """The row and the entry ``module`` belongs to: the longest entry naming it or a package above
    (an entry written as a file, ``toolkit/__init__.py``, names that module alone)."""
    best: tuple[Row, str] | None = None
    for row in rows:
        for written, entry in zip(row.written, row.entries, strict=True):
            inside = module.startswith(entry + ".") and not written.endswith(".py")
            if (module == entry or inside) and (best is None or len(entry) > len(best[1])):
                best = (row, entry)
    return best


def layer_violations(edges: list[Edge], rows: list[Row]) -> list[str]:
    """One line per edge that breaks the table (or whose end is in no row), naming edge and rule."""
    problems = []
    for e in edges:
        src, dst = _row_of(e.source, rows), _row_of(e.target, rows)
        for name, found in ((e.source, src), (e.target, dst)):
            if found is None:
                problems.append(f"{name} is in no row of README.md's layer table: add it to the row of its layer")
        if src is None or dst is None:
            continue
        (srow, sentry), (drow, dentry) = src, dst
        if sentry == dentry or srow.allowed is None:
            continue  # inside one package, or from the top row
        if drow.layer is None or drow.layer not in srow.allowed:
            where = "the top row" if drow.layer is None else f"layer {drow.layer}"
            problems.append(f"{e.where()}: {e.source} imports {e.target}, but `{sentry.removeprefix('toolkit.')}` "
                            f"(layer {srow.layer}) may import {srow.text} and its own package only; "
                            f"`{dentry.removeprefix('toolkit.')}` is {where}")
    return sorted(set(problems))


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
            # _compat: the leaf holding private reaches (a Dask actor call), guarded by its own tests;
            # _metric_kernels: the leaf holding the Numba decorator every kernel shares (its disk cache).
            # _lazy: the leaf that exports a package's names on first use (workers load no estimator).
            assert outside <= {"toolkit.faults", "toolkit.errors", "toolkit._compat", "toolkit._metric_kernels",
                               "toolkit._lazy"}, (
                name, outside)


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


# -- the layer table, enforced ------------------------------------------------------------------
def _readme_rows() -> list[Row]:
    return parse_layer_table((REPO / "README.md").read_text(encoding="utf-8"))


def test_imports_follow_the_readme_layer_table():
    """Every edge among toolkit/, mlproject/ and benchmarks/, module- or function-level, goes
    down the README's table; every toolkit module has a row; every entry of the table exists."""
    rows = _readme_rows()
    assert [r.layer for r in rows if r.layer is not None] == list(range(len(rows) - 1)), "layers 0..n, then top"
    assert rows[-1].layer is None and {"toolkit", "mlproject", "benchmarks"} <= set(rows[-1].entries)
    for row in rows[:-1]:  # the table itself runs one way
        assert row.allowed is not None and row.allowed <= set(range(row.layer)), (row.layer, row.text)
    modules = {**_module_names(REPO, "toolkit"), **_module_names(REPO, "mlproject"),
               **_module_names(REPO, "benchmarks")}
    ghosts = [w for row in rows for w, entry in zip(row.written, row.entries, strict=True) if entry not in modules]
    assert not ghosts, f"README.md's layer table names modules that do not exist: {ghosts}"
    homeless = sorted(m for m in modules if _row_of(m, rows) is None)
    assert not homeless, f"modules in no row of README.md's layer table (add each to its layer's row): {homeless}"
    edges = import_edges(REPO)
    assert len(edges) > 300 and any(e.in_function for e in edges)  # the scan found the packages
    problems = layer_violations(edges, rows)
    assert not problems, "imports against README.md's layer table:\n" + "\n".join(problems)


def test_the_package_docstring_states_the_readme_layers():
    """``toolkit/__init__.py`` lists the layers bottom up (``a``/``b`` <- ``c`` ...), as the table does."""
    doc = ast.get_docstring(ast.parse((REPO / "toolkit" / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert "Imports run one way" in doc
    chain = doc.split("Imports run one way", 1)[1].split(":", 1)[1].split(";", 1)[0]
    stated = [re.findall(r"``([^`]+)``", part) for part in chain.split("<-")]
    table = [list(r.written) for r in _readme_rows() if r.layer is not None]
    assert stated == table, f"toolkit/__init__.py's layers {stated} differ from README.md's {table}"


def test_benchmarks_and_entry_points_have_no_import_cycle():
    for package in ("benchmarks", "mlproject"):
        graph = import_graph(REPO, package)
        assert len(graph) > 2, package
        cycles = find_cycles(graph)
        assert not cycles, f"import cycles in {package}/:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_layer_check_names_the_edge_and_the_rule(tmp_path):
    """The checker itself: a function-level import of a higher layer and one of another package
    of the same layer are refused, each named with its line and the rule; a module in no row is
    named; imports down the table, inside a package and from the top row pass."""
    readme = """# x\n\n## Layout\n\n| layer | modules | import from |\n|--|--|--|\n
| 0 | `errors` | nothing of the toolkit |
| 1 | `stats`, `tracking` | layer 0 |
| 2 | `monitoring` | layers 0-1 |
| top | `mlproject/`, `toolkit/__init__.py` (the face) | `toolkit` |

## Next\n\n| layer | modules | import from |\n|--|--|--|\n| 9 | `ignored` | layer 0 |
"""
    rows = parse_layer_table(readme)
    assert [(r.layer, r.entries, r.allowed) for r in rows] == [
        (0, ("toolkit.errors",), frozenset()),
        (1, ("toolkit.stats", "toolkit.tracking"), frozenset({0})),
        (2, ("toolkit.monitoring",), frozenset({0, 1})),
        (None, ("mlproject", "toolkit"), None),
    ]
    pkg = tmp_path / "toolkit"
    (pkg / "stats").mkdir(parents=True)
    (tmp_path / "mlproject").mkdir()
    (pkg / "__init__.py").write_text("from toolkit.monitoring import f\n")
    (pkg / "errors.py").write_text("import os\n")
    (pkg / "tracking.py").write_text("from toolkit import errors\n")
    (pkg / "stats" / "__init__.py").write_text("")
    (pkg / "stats" / "drift.py").write_text(
        "from toolkit.stats import profile\nfrom . import profile as p\n\n\n"
        "def f():\n    from toolkit.monitoring import g\n\n\nimport toolkit.tracking\n")
    (pkg / "stats" / "profile.py").write_text("from toolkit.errors import x\n")
    (pkg / "monitoring.py").write_text("from toolkit.stats.drift import f\nfrom toolkit import tracking, errors\n")
    (tmp_path / "mlproject" / "__init__.py").write_text("")
    (tmp_path / "mlproject" / "predict.py").write_text("def main():\n    from toolkit.monitoring import f\n")
    edges = import_edges(tmp_path)
    upward = [e for e in edges if e.target == "toolkit.monitoring" and e.source == "toolkit.stats.drift"]
    assert [(e.line, e.in_function) for e in upward] == [(6, True)]
    assert layer_violations(edges, rows) == sorted([
        "toolkit/stats/drift.py:6 (function-level): toolkit.stats.drift imports toolkit.monitoring, but `stats` "
        "(layer 1) may import layer 0 and its own package only; `monitoring` is layer 2",
        "toolkit/stats/drift.py:9 (module-level): toolkit.stats.drift imports toolkit.tracking, but `stats` "
        "(layer 1) may import layer 0 and its own package only; `tracking` is layer 1",
    ])
    (pkg / "extra.py").write_text("from toolkit import errors\n")
    assert ("toolkit.extra is in no row of README.md's layer table: add it to the row of its layer"
            in layer_violations(import_edges(tmp_path), rows))
