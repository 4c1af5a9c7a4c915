"""What the benchmark sections share: the section record, timing statistics, data, a cluster.

Every section module (``run.py``'s own sections, :mod:`benchmarks.peers`, and any new one)
imports from here and from ``toolkit``, never from :mod:`benchmarks.run`, which imports the
sections: the suite's imports run one way (``tests/test_import_graph.py`` fails on a cycle).

A new section is a :class:`Section` -- what it runs, how it prints, its own command-line flags --
added to :data:`benchmarks.run.SECTIONS`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Section",
    "blobs",
    "cluster",
    "environ",
    "gpu_available",
    "initial_centers",
    "median",
    "paired",
    "peak_cluster_memory",
    "per_iteration",
    "persist",
]


@dataclass(frozen=True)
class Section:
    """One section of the suite.

    Attributes:
        run: ``run(args, tmp)`` -> the section's report (a JSON-able dict; a ``"targets"`` dict
            of ``{target: met}`` in it is listed under "targets"); ``args`` are the parsed flags,
            ``tmp`` a scratch folder removed after the suite.
        show: prints the report (None: the report is in the JSON file only).
        add_arguments: adds the section's own flags to the suite's parser (None: it has none).
        default: runs when ``--sections`` is not given.
    """

    run: Callable[[argparse.Namespace, str], dict[str, Any]]
    show: Callable[[dict[str, Any]], None] | None = None
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    default: bool = False


def blobs(rows: int, features: int, k: int, seed: int = 0) -> np.ndarray:
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=rows, n_features=features, centers=k, cluster_std=1.0, random_state=seed)
    return X.astype(np.float32)


def initial_centers(X: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k distinct random rows: a start far enough from the optimum that Lloyd runs every iteration."""
    rng = np.random.default_rng(seed)
    return X[rng.choice(len(X), size=k, replace=False)].astype(np.float64)


def per_iteration(fits: dict[str, Callable[[int], int]], n1: int, n2: int,
                   repeats: int) -> dict[str, list[float]]:
    """Seconds per Lloyd iteration of each fit in each repeat, as (t(n2) - t(n1)) / (n2 - n1).

    Fixed costs (validation, centring, set-up, the final labelling pass) cancel out; repeats are
    interleaved across implementations so a noisy neighbour hurts them all alike, and the
    fits of one repeat, run back to back, can be compared pairwise (:func:`paired`).
    ``fit(n)`` runs ``n`` iterations from the shared start and returns the iterations run.
    """
    times: dict[str, list[float]] = {name: [] for name in fits}
    for _ in range(repeats):
        for name, fit in fits.items():
            t = time.perf_counter()
            it1 = fit(n1)
            t1 = time.perf_counter() - t
            t = time.perf_counter()
            it2 = fit(n2)
            t2 = time.perf_counter() - t
            if it2 <= it1:
                raise RuntimeError(f"{name} converged before {n2} iterations; use harder data or fewer iterations")
            times[name].append((t2 - t1) / (it2 - it1))
    return times


def median(times: list[float]) -> float:
    """The median; a non-positive one means fixed-cost noise swamped the iterations: no figure."""
    m = statistics.median(times)
    return m if m > 0 else float("nan")


def paired(slow: list[float], fast: list[float]) -> float:
    """Median of the ratios ``slow[i] / fast[i]`` of measurements taken back to back (one
    repeat, one round); pairs with a non-positive figure are left out.

    This VM's speed drifts by up to 1.7x over minutes; two fits run back to back see the same
    machine, so their ratio is steadier than the ratio of medians taken minutes apart.
    """
    ratios = [a / b for a, b in zip(slow, fast, strict=True) if a > 0 and b > 0]
    return statistics.median(ratios) if ratios else float("nan")


@contextlib.contextmanager
def cluster(workers: int, memory_limit: str = "4GiB") -> Iterator[Any]:
    """A local cluster as the toolkit starts one (its diagnostics settings included)."""
    from toolkit.cluster import dask_client
    from toolkit.config import ClusterConfig

    cfg = ClusterConfig(n_workers=workers, threads_per_worker=1, memory_limit=memory_limit,
                        scheduler_address=None)
    with environ(DASK_SCHEDULER_ADDRESS=None), dask_client(cfg) as client:
        yield client


def persist(X: np.ndarray, client: Any, chunk_rows: int) -> Any:
    """``X`` persisted with its blocks spread evenly over the workers (as the backends do)."""
    from toolkit.cluster import scatter_rows

    return scatter_rows(X, client, chunk_rows)


def peak_cluster_memory(client: Any, fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn``; return its result and the peak summed worker memory (bytes)."""
    from distributed.diagnostics import MemorySampler

    ms = MemorySampler()
    with ms.sample("run", client=client, measure="process", interval=0.05):
        out = fn()
    frame = ms.to_pandas()
    return out, float(frame.max().iloc[0]) if len(frame) else float("nan")


def _put_environ(values: dict[str, str | None]) -> None:
    """Set environment variables; a None value removes the variable."""
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def environ(**values: str | None) -> Iterator[None]:
    """Set (or, for None, remove) environment variables within the block, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _put_environ(values)
        yield
    finally:
        _put_environ(saved)


def gpu_available() -> bool:
    """Whether cuML and CuPy can run here (the GPU rows of the ``iteration`` section)."""
    from toolkit import env

    return env.gpu_available(("cuml", "cupy"))
