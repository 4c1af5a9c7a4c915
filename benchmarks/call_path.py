"""How far a newcomer walks from ``mlflow run . -e search`` to the backend's fit.

Runs one tiny data-parallel search in process (``mlproject.search.main``, the function
``mlflow run`` starts) under :func:`sys.setprofile`, and at the first call of a backend's
``fit`` reads the call stack, keeping the frames of ``mlproject/`` and ``toolkit/``:

* **functions**: the project frames on that stack, from ``main`` to ``fit`` (the path one
  follows reading the code);
* **climbs**: how often, going down that path, a call goes back UP a layer (layers below).

It also counts, over the whole run until that fit, the upward calls made anywhere
(``all_climbs``, each listed in ``climb_edges``; a module body run by an import is left out)
and the distinct project functions entered (``entered``).

    python benchmarks/call_path.py        # prints one JSON line

Layers, top to bottom: 0 ``mlproject``; 1 the search engine and ``toolkit/train.py``;
2 tracking, registry, evaluation, monitoring, serving; 3 the core modules (config, data,
metrics, cluster, ...); 4 backends and ``kmeans_dask``.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: mlproject/ is not installed
    sys.path.insert(0, str(REPO))
_LAYER2 = ("tracking", "registry", "evaluation", "monitoring", "serving")


def layer(path: str) -> int | None:
    """The layer of a source file of the project (None: not the project's)."""
    try:
        rel = Path(path).resolve().relative_to(REPO)
    except ValueError:
        return None
    parts = rel.parts
    if parts[0] == "mlproject":
        return 0
    if parts[0] != "toolkit":
        return None
    if len(parts) > 1 and (parts[1] == "search" or parts[1] == "train.py"):
        return 1
    if len(parts) > 1 and parts[1] in _LAYER2:
        return 2
    if len(parts) > 1 and parts[1] in ("backends", "kmeans_dask"):
        return 4
    return 3


def _is_fit(frame) -> bool:
    return frame.f_code.co_name == "fit" and layer(frame.f_code.co_filename) == 4


def trace(argv: list[str]) -> dict:
    """Run ``mlproject.search.main`` with ``argv``; the figures at the first backend fit."""
    from mlproject import search as entry

    cache: dict[str, int | None] = {}
    seen: set[tuple[str, str]] = set()
    found: dict = {}
    all_climbs = 0
    edges: dict[str, int] = {}

    def lay(code) -> int | None:
        if code.co_filename not in cache:
            cache[code.co_filename] = layer(code.co_filename)
        return cache[code.co_filename]

    def profile(frame, event, arg):
        nonlocal all_climbs
        if event != "call" or found:
            return
        here = lay(frame.f_code)
        if here is None:
            return
        seen.add((frame.f_code.co_filename, frame.f_code.co_qualname))
        caller = frame.f_back
        while caller is not None and lay(caller.f_code) is None:
            caller = caller.f_back
        # A module body run by an import is not a step of the path (imports happen where they happen).
        if caller is not None and lay(caller.f_code) > here and "<module>" not in (
                caller.f_code.co_name, frame.f_code.co_name):
            all_climbs += 1
            edge = f"{caller.f_code.co_qualname} -> {frame.f_code.co_qualname}"
            edges[edge] = edges.get(edge, 0) + 1
        if _is_fit(frame):
            stack = []
            f = frame
            while f is not None:
                if lay(f.f_code) is not None:
                    stack.append((f.f_code.co_filename, f.f_code.co_qualname, lay(f.f_code)))
                f = f.f_back
            stack.reverse()
            start = next(i for i, s in enumerate(stack) if s[1] == "main")
            found["path"] = stack[start:]

    old_argv = sys.argv
    sys.argv = ["mlproject.search", *argv]
    sys.setprofile(profile)
    try:
        entry.main()
    finally:
        sys.setprofile(None)
        sys.argv = old_argv
    path = found["path"]
    climbs = sum(1 for a, b in itertools.pairwise(path) if b[2] < a[2])
    return {
        "functions": len(path),
        "climbs": climbs,
        "all_climbs": all_climbs,
        "entered": len(seen),
        "climb_edges": edges,
        "path": [f"{Path(p).relative_to(REPO)}:{q}" for p, q, _ in path],
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        os.environ.setdefault("KMEANS_QUIET", "1")
        out = trace(["--config", str(REPO / "experiments" / "blobs.yaml"), "--parallelism", "data",
                     "--n-trials", "2", "--n-workers", "1", "--storage", f"{tmp}/study.log",
                     "--set", "data.n_samples=2000 search.refit=false registry.register_best=false "
                            "tracking.log_plot=false search.baseline_sample=0 metrics.silhouette_sample=500"])
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
