"""The ``large`` section: milliseconds per Lloyd iteration at 4M rows and beyond, ``dask`` against its peers.

At this size the difference of two fits (``per_iteration`` of the ``iteration`` section) swings
with the VM's speed: scikit-learn read 18-54 ms per iteration at 4M x 16 in one run.  Here every
implementation runs fixed-iteration fits (``tol=0``, the same start) at several iteration counts
(``--large-iters``, 5, 20 and 40 by default), ``--large-rounds`` rounds, the implementations
rotated so each round sees them in another order.  Per implementation the figure is the
least-squares slope of fit time over iterations across every fit of every round (fixed costs --
validation, set-up, the final labelling pass -- fall into the intercept), and the ratio to
scikit-learn is the ratio of those pooled slopes.  A single round's slope is not used for the
ratio: with two fits per round, one fit's noise (about 0.5 s at 4M rows) became the whole
slope's, and scikit-learn's round slopes ranged from -4 to 88 ms per iteration for a true ~40;
each round's own ratio is still reported, as the spread.

Rows (each where installed): ``sklearn`` (``KMeans(algorithm="lloyd")``), ``dask`` (the toolkit's
Lloyd on a local cluster of ``--workers`` processes, data persisted), ``dask-threads`` (the same on
threaded workers of this process), ``sklearnex`` (scikit-learn-intelex's ``KMeans``) and ``faiss``
(``faiss.Kmeans``, its own float32 Lloyd).  The peers are benchmark-time dependencies only:
``pip install scikit-learn-intelex faiss-cpu``.

Target (issue 25): ``dask`` at most 1.0x scikit-learn per iteration at 4M and 16M x 16.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from benchmarks._common import Section, blobs, environ, initial_centers

__all__ = ["SECTION", "bench_large", "slope"]

#: The implementations, in the order of the table; a peer that is not installed is skipped.
IMPLEMENTATIONS = ("sklearn", "dask", "dask-threads", "sklearnex", "faiss")
_PEER_MODULES = {"sklearnex": "sklearnex", "faiss": "faiss"}


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of ``seconds`` over ``iterations`` for ``[(iterations, seconds), ...]``."""
    n = np.array([p[0] for p in points], dtype=float)
    t = np.array([p[1] for p in points], dtype=float)
    if len(set(n)) < 2:
        return float("nan")
    return float(np.polyfit(n, t, 1)[0])


def installed(name: str) -> bool:
    """Whether the peer ``name``'s module can be imported here (without importing it)."""
    module = _PEER_MODULES.get(name)
    return module is None or importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def _dask_fitter(X: np.ndarray, C0: np.ndarray, workers: int, processes: bool) -> Iterator[Callable[[int], int]]:
    """``fit(n) -> iterations run`` of the toolkit's Lloyd on a local cluster holding ``X``."""
    from toolkit.backends.dask_lloyd import lloyd_fit
    from toolkit.cluster import dask_client, scatter_rows
    from toolkit.config import ClusterConfig

    per_worker = X.nbytes / workers
    limit = f"{max(4, int(3 * per_worker / 2**30) + 2)}GiB"
    # Threaded workers share the driver's memory: a per-worker limit means nothing there (the config refuses it).
    cfg = ClusterConfig(n_workers=workers, threads_per_worker=1, memory_limit=limit if processes else "auto",
                        scheduler_address=None, processes=processes)
    with environ(DASK_SCHEDULER_ADDRESS=None), dask_client(cfg) as client:
        dX = scatter_rows(X, client, max(1, len(X) // (4 * workers)))

        def fit(n: int) -> int:
            return int(lloyd_fit(dX, C0, max_iter=n, tol=0.0, client=client)[2])

        fit(2)  # warm-up: worker imports, compiled kernels, the per-worker actors
        yield fit


def _fitters(X: np.ndarray, C0: np.ndarray, names: list[str], workers: int,
             stack: contextlib.ExitStack) -> dict[str, Callable[[int], int]]:
    k = len(C0)
    out: dict[str, Callable[[int], int]] = {}
    for name in names:
        if name == "sklearn":
            from sklearn.cluster import KMeans

            out[name] = lambda n: int(KMeans(n_clusters=k, init=C0, n_init=1, max_iter=n, tol=0.0,
                                             algorithm="lloyd").fit(X).n_iter_)
        elif name == "sklearnex":
            from sklearnex.cluster import KMeans as XKMeans

            out[name] = lambda n: int(XKMeans(n_clusters=k, init=C0, n_init=1, max_iter=n, tol=0.0,
                                              algorithm="lloyd").fit(X).n_iter_)
        elif name == "faiss":
            import faiss

            C32 = np.ascontiguousarray(C0, dtype=np.float32)

            def faiss_fit(n: int, C32: np.ndarray = C32) -> int:
                km = faiss.Kmeans(X.shape[1], k, niter=n, seed=0, max_points_per_centroid=len(X), verbose=False)
                km.train(X, init_centroids=C32)
                return n

            out[name] = faiss_fit
        elif name in ("dask", "dask-threads"):
            out[name] = stack.enter_context(_dask_fitter(X, C0, workers, processes=name == "dask"))
    return out


def bench_large(row_sizes: list[int], features: int, k: int, iters: tuple[int, ...], rounds: int, workers: int,
                names: list[str] | None = None) -> dict[str, Any]:
    """The ``large`` section (module docstring): per row size, ms per iteration and ratios to scikit-learn."""
    wanted = [n for n in (names or IMPLEMENTATIONS) if n in IMPLEMENTATIONS]
    skipped = [n for n in wanted if not installed(n)]
    names = [n for n in wanted if n not in skipped]
    if len(set(iters)) < 2:
        raise ValueError(f"large: at least two different iteration counts are needed for a slope, got {iters}")
    table = []
    for rows in row_sizes:
        X = blobs(rows, features, k)
        C0 = initial_centers(X, k)
        points: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
        per_round: dict[str, list[float]] = {n: [] for n in names}
        load = []
        with contextlib.ExitStack() as stack:
            fits = _fitters(X, C0, names, workers, stack)
            for rnd in range(rounds):
                order = names[rnd % len(names):] + names[:rnd % len(names)]
                for name in order:
                    mine = []
                    for n in (iters if rnd % 2 == 0 else tuple(reversed(iters))):
                        t = time.perf_counter()
                        ran = fits[name](n)
                        mine.append((ran, time.perf_counter() - t))
                    points[name] += mine
                    per_round[name].append(slope(mine))
                load.append(os.getloadavg()[0])
                print(f"large {rows:,} round {rnd + 1}/{rounds}: " + ", ".join(
                    f"{n} {1e3 * per_round[n][-1]:.1f}" for n in names) + f" ms/iter (load {load[-1]:.1f})", flush=True)
        del X
        row: dict[str, Any] = {"rows": rows, "load_average": statistics.median(load),
                               "ms_per_iter": {n: 1e3 * slope(points[n]) for n in names},
                               "round_ms_per_iter": {n: [1e3 * s for s in per_round[n]] for n in names}}
        if "sklearn" in names:
            base = slope(points["sklearn"])
            row["over_sklearn"] = {n: slope(points[n]) / base for n in names if n != "sklearn"}
            row["round_over_sklearn"] = {n: [a / b for a, b in zip(per_round[n], per_round["sklearn"], strict=True)]
                                         for n in names if n != "sklearn"}
        table.append(row)
    out: dict[str, Any] = {"features": features, "k": k, "iterations": ", ".join(map(str, iters)), "rounds": rounds,
                           "workers": workers, "skipped": skipped, "table": table,
                           "method": "least-squares slope of fit seconds over iterations (tol=0, same start), "
                                     "pooled over every round; ratio: of the pooled slopes"}
    # Both placements: processes (data read from files) and threads (cluster.processes=auto for
    # data made in the driver, the toolkit's default there).
    out["targets"] = {f"large: {n} <= 1.0x sklearn per iteration at {r['rows']:,}": r["over_sklearn"][n] <= 1.0
                      for r in table for n in ("dask", "dask-threads") if n in r.get("over_sklearn", {})}
    return out


def _print_large(la: dict[str, Any]) -> None:
    print(f"\n-- large: ms per Lloyd iteration, {la['features']} features, k={la['k']}, fits of {la['iterations']} "
          f"iterations, {la['rounds']} rotating rounds, {la['workers']} workers; {la['method']}")
    if la["skipped"]:
        print(f"   not installed (pip install scikit-learn-intelex faiss-cpu): {', '.join(la['skipped'])}")
    names = list(la["table"][0]["ms_per_iter"]) if la["table"] else []
    print(f"{'rows':>12} {'load':>5} " + " ".join(f"{n:>13}" for n in names))
    for r in la["table"]:
        cells = []
        for n in names:
            ratio = r.get("over_sklearn", {}).get(n)
            cells.append(f"{r['ms_per_iter'][n]:7.1f}" + (f" {ratio:4.2f}x" if ratio is not None else " " * 6))
        print(f"{r['rows']:>12,} {r['load_average']:>5.1f} " + " ".join(f"{c:>13}" for c in cells))
    print("  (ms per iteration, then its ratio to scikit-learn's)")
    for r in la["table"]:
        for n, ratios in r.get("round_over_sklearn", {}).items():
            print(f"  {r['rows']:,} {n}: each round's own ratio " + ", ".join(f"{x:.2f}" for x in ratios))


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--large-rows", default="4000000,16000000", help="large: comma list of row counts")
    p.add_argument("--large-iters", default="5,20,40", help="large: comma list of the fixed fits' iteration counts")
    p.add_argument("--large-rounds", type=int, default=3, help="large: rounds (implementations rotated)")
    p.add_argument("--large-impl", default=",".join(IMPLEMENTATIONS),
                   help="large: comma list of " + ", ".join(IMPLEMENTATIONS) + " (peers not installed are skipped)")


def _run(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    iters = tuple(int(x) for x in args.large_iters.split(","))
    return bench_large([int(r) for r in args.large_rows.split(",")], args.features, args.k, iters,
                       args.large_rounds, args.workers, [s.strip() for s in args.large_impl.split(",") if s.strip()])


#: The section as ``python -m benchmarks.run --sections large`` runs it.
SECTION = Section(_run, _print_large, _add_arguments)
