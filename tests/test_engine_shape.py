"""The search engine's orchestration stays readable: no function over 60 lines or 6 parameters.

Read from the source (AST) of ``toolkit/search/``, ``toolkit/train.py`` and the registration
(``toolkit/registry/register.py``, ``register_fit`` in ``toolkit/registry/__init__.py``).  Parameters count
``*args`` and ``**kwargs`` as one each, and not ``self``/``cls``; lines run from ``def`` to the
function's last line, docstring included.  A step that needs more takes a parameter object
(:class:`toolkit.search.record.TrialRecord`, :class:`toolkit.train.FittedModel`,
:class:`toolkit.search.loop.LoopTarget`, :class:`toolkit.registry.register.Registration`) or becomes
a method of the object that holds the state.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 60
MAX_PARAMS = 6

#: Not orchestration: task bodies whose signature is the payload a Dask worker or the writer
#: process receives (plain picklable arguments, one per field), never called by a reader's path.
EXEMPT = {
    ("toolkit/search/trials.py", "run_trial"): "the fit-and-score body both runners share (worker side)",
    ("toolkit/search/trials.py", "_worker_trial"): "the Dask task body on a worker",
    ("toolkit/search/figures.py", "draw_summary_figures"): "a writer-process job (picklable payload)",
}


def _files() -> list[Path]:
    return [*sorted((REPO / "toolkit" / "search").glob("*.py")), REPO / "toolkit" / "train.py",
            REPO / "toolkit" / "registry" / "register.py", REPO / "toolkit" / "registry" / "__init__.py"]


def _n_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    n = len(names) + (a.vararg is not None) + (a.kwarg is not None)
    return n - (1 if names and names[0] in ("self", "cls") else 0)


def oversized(path: Path, root: Path = REPO) -> list[str]:
    """``file:line name (N lines, M params)`` for every function of ``path`` over the limits."""
    rel = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or (rel, node.name) in EXEMPT:
            continue
        lines, params = node.end_lineno - node.lineno + 1, _n_params(node)
        if lines > MAX_LINES or params > MAX_PARAMS:
            found.append(f"{rel}:{node.lineno} {node.name} ({lines} lines, {params} params)")
    return found


def test_no_orchestration_function_over_60_lines_or_6_parameters():
    found = [f for path in _files() for f in oversized(path)]
    assert not found, "split these, or give them a parameter object:\n" + "\n".join(found)


def test_the_exemptions_still_exist():
    """An exemption whose function is gone (or renamed) is dropped, not kept as a loophole."""
    for rel, name in EXEMPT:
        tree = ast.parse((REPO / rel).read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == name for n in ast.walk(tree)), (rel, name)


def test_the_check_sees_an_oversized_function(tmp_path):
    """The counter itself: 7 parameters, or 61 lines, are caught; 6 plus ``self`` is not."""
    many = tmp_path / "many.py"
    many.write_text("def f(a, b, c, d, e, g, h):\n    return a\n\n\ndef ok(self, a, b, c, d, e, g):\n    return a\n"
                    "\n\ndef long():\n" + "    x = 1\n" * 60)
    assert [line.split(" ")[1] for line in oversized(many, tmp_path)] == ["f", "long"]
