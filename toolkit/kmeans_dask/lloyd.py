"""The driver side of the Dask k-means: moments, initialisations, Lloyd iterations.

Everything here runs in the client process on results of size ``k x d`` at most; the data is
only touched through an :class:`~toolkit.kmeans_dask.engines.Engine`.  Semantics are
scikit-learn's ``_kmeans_single_lloyd`` (see :mod:`toolkit.kmeans_dask`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from toolkit.kmeans_dask.engines import Engine, make_engine
from toolkit.kmeans_dask.kernels import (
    k_farthest,
    k_final,
    k_moments,
    k_par_sample,
    k_par_weights,
    k_take,
    kernel_centers,
    new_centers,
)

__all__ = [
    "check_init_array",
    "fit_one",
    "init_kmeans_parallel",
    "init_kmeanspp",
    "init_random",
    "lloyd_fit",
    "moments",
    "origin",
    "tolerance",
]

#: Rows gathered to the driver for ``init="k-means++"``.
_KPP_SAMPLE = 10_000
#: Sampling rounds of k-means|| (Bahmani et al. find ~5 enough in practice).
_PAR_ROUNDS = 5

_F32 = np.float32
_F64 = np.float64


def moments(engine: Engine) -> tuple[np.ndarray, np.ndarray]:
    """Column means and (population) variances of the data, merged in block order."""
    n, mean, m2 = 0, np.zeros(engine.n_features), np.zeros(engine.n_features)
    for nb, mb, m2b in engine.run(k_moments):
        if nb == 0:
            continue
        tot = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta * delta * (n * nb / tot)
        n = tot
    return mean, m2 / max(n, 1)


def tolerance(variances: np.ndarray, tol: float) -> float:
    """scikit-learn's ``tolerance``: ``tol`` relative to the mean feature variance."""
    return 0.0 if tol == 0 else float(np.mean(variances) * tol)


def origin(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """The float32 point the kernels centre rows on.

    scikit-learn centres ``X`` on its mean so that float32 products stay small.  When the mean
    lies within one standard deviation of 0 (``||mean||^2 <= sum(var)``) centring would at most
    halve the float32 error, so the origin is 0 and the Lloyd kernel skips the subtraction
    (~15% of its time); farther data is centred on its mean.
    """
    mean = np.asarray(mean, dtype=_F64)
    if float(mean @ mean) <= float(np.sum(var)):
        return np.zeros(mean.shape, dtype=_F32)
    return mean.astype(_F32)


def _take_rows(engine: Engine, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """float64 rows at the given global indices (in the given order), fetched from the blocks."""
    rows = np.asarray(rows, dtype=np.int64)
    uniq = np.unique(rows)
    blocks = np.unique(np.searchsorted(engine.starts, uniq, side="right") - 1)
    got = np.concatenate(engine.run(k_take, uniq, blocks=blocks.tolist()), axis=0)
    return got[np.searchsorted(uniq, rows)].astype(_F64)


def init_random(engine: Engine, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _take_rows(engine, rng.choice(engine.n_rows, size=k, replace=False))


def init_kmeanspp(
    engine: Engine, k: int, seed: int, sample_size: int = _KPP_SAMPLE
) -> np.ndarray:
    from sklearn.cluster import kmeans_plusplus

    rng = np.random.default_rng(seed)
    m = min(engine.n_rows, max(sample_size, k))
    sample = _take_rows(engine, np.sort(rng.choice(engine.n_rows, size=m, replace=False)))
    centers, _ = kmeans_plusplus(sample, k, random_state=seed)
    return np.asarray(centers, dtype=_F64)


def init_kmeans_parallel(
    engine: Engine,
    k: int,
    seed: int,
    o: np.ndarray,
    oversampling_factor: float,
    rounds: int = _PAR_ROUNDS,
    note: Callable[..., None] | None = None,
) -> np.ndarray:
    """Scalable k-means++ (k-means||): candidates on the workers, reclustered on the driver.

    ``note(phase, inertia=...)`` is called after each of its passes over the data (a sampling
    round, with the candidates' cost, then the weighting pass), for progress reports.
    """
    from sklearn.cluster import KMeans, kmeans_plusplus

    rng = np.random.default_rng(seed)
    ell = float(oversampling_factor) * k
    o64 = o.astype(_F64)

    cand = _take_rows(engine, [rng.integers(engine.n_rows)])
    for rnd in range(rounds):
        outs = engine.run(k_par_sample, o, *kernel_centers(cand - o64), ell, seed, rnd)
        phi = sum(out[0] for out in outs)
        if note is not None:
            note("init k-means||", inertia=float(phi))
        if not phi > 0:  # every row already sits on a candidate
            break
        new = [rows[kappa > phi].astype(_F64) for _, kappa, rows in outs]
        cand = np.concatenate([cand, *new], axis=0)
    weights = np.sum(engine.run(k_par_weights, o, *kernel_centers(cand - o64)), axis=0)
    if note is not None:
        note("init k-means||")
    keep = weights > 0
    cand, weights = cand[keep], weights[keep]
    if cand.shape[0] < k:  # degenerate data: top up with random rows
        extra = _take_rows(engine, rng.choice(engine.n_rows, size=k - cand.shape[0], replace=False))
        cand = np.concatenate([cand, extra])
        weights = np.concatenate([weights, np.ones(extra.shape[0])])
    centers, _ = kmeans_plusplus(cand, k, sample_weight=weights, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct candidates than k is fine here
        km = KMeans(n_clusters=k, init=centers, n_init=1, random_state=seed).fit(
            cand, sample_weight=weights
        )
    return np.asarray(km.cluster_centers_, dtype=_F64)


def _relocate_empty(
    engine: Engine,
    o: np.ndarray,
    centred: np.ndarray,
    C2: np.ndarray,
    cn: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
    empty: np.ndarray,
) -> None:
    """scikit-learn's empty-cluster rule (see the module docstring); updates sums/counts."""
    m = int(empty.size)
    outs = [out for out in engine.run(k_farthest, o, C2, cn, centred, m) if out[0].size]
    dist = np.concatenate([out[0] for out in outs])
    rows = np.concatenate([out[1] for out in outs])
    X = np.concatenate([out[2] for out in outs])
    lab = np.concatenate([out[3] for out in outs])
    order = np.lexsort((rows, -dist))[:m]
    for j, t in zip(empty, order, strict=True):
        sums[lab[t]] -= X[t]
        counts[lab[t]] -= 1
        sums[j] = X[t]
        counts[j] = 1


def _lloyd(
    engine: Engine, centred: np.ndarray, o: np.ndarray, max_iter: int, tol_abs: float
) -> tuple[np.ndarray, int, int]:
    """Lloyd iterations from centred centers: (final centred centers, iterations, re-seeded).

    The engine runs iterations until convergence, ``max_iter`` or an iteration that leaves a
    cluster empty (on the workers, where it can: :meth:`Engine.iterate`); that iteration is
    finished here with scikit-learn's empty-cluster rule, and the engine resumes.
    """
    centers = np.array(centred, dtype=_F64)
    d = centers.shape[1]
    relocated = n_iter = 0
    while n_iter < max_iter:
        centers, done, total = engine.iterate(o, centers, max_iter - n_iter, tol_abs)
        n_iter += done
        if total is None:  # converged or out of iterations
            break
        sums, counts = total[:, :d], total[:, d].copy()
        empty = np.flatnonzero(counts == 0)
        C2, cn = kernel_centers(centers)
        _relocate_empty(engine, o, centers, C2, cn, sums, counts, empty)
        relocated += int(empty.size)
        new = new_centers(sums, counts)
        shift = float(np.sum((new - centers) ** 2))
        centers = new
        if shift <= tol_abs:
            break
    return centers, n_iter, relocated


def _inertia(engine: Engine, centred: np.ndarray, o: np.ndarray) -> float:
    """Global inertia against the final centers (labels recomputed: the final E-step)."""
    C2, cn = kernel_centers(centred)
    return float(sum(engine.run(k_final, o, C2, cn, centred)))


def fit_one(
    engine: Engine,
    init_centers: np.ndarray,
    o: np.ndarray,
    max_iter: int,
    tol_abs: float,
    note: Callable[..., None] | None = None,
) -> tuple[np.ndarray, float, int, int]:
    """One run: (centers in data coordinates, inertia, n_iter, clusters re-seeded); ``note``
    is called after the final inertia pass (progress reports)."""
    o64 = o.astype(_F64)
    centred, n_iter, relocated = _lloyd(engine, init_centers - o64, o, max_iter, tol_abs)
    inertia = _inertia(engine, centred, o)
    if note is not None:
        note("final inertia", inertia=inertia, iterations=n_iter)
    return centred + o64, inertia, n_iter, relocated


def check_init_array(init: Any, k: int | None, d: int) -> np.ndarray:
    C = np.array(init, dtype=_F64)
    if C.ndim != 2 or C.shape[1] != d or (k is not None and C.shape[0] != k):
        want = f"({k}, {d})" if k is not None else f"(k, {d})"
        raise ValueError(f"init centers have shape {C.shape}, expected {want}")
    if not np.all(np.isfinite(C)):
        raise ValueError("init centers contain NaN or infinite values")
    return C


def lloyd_fit(
    X: Any,
    init_centers: np.ndarray,
    *,
    max_iter: int = 300,
    tol: float = 1e-4,
    client: Any = None,
) -> tuple[np.ndarray, float, int]:
    """One Lloyd run from given centers, with scikit-learn's semantics (see module docstring).

    Args:
        X: ``(n, d)`` Dask array (persisted -> blocks stay on the workers; lazy -> streamed each
            iteration) or NumPy array (computed in this process).
        init_centers: ``(k, d)`` initial centroids.
        max_iter: most Lloyd iterations.
        tol: relative tolerance: stop when the squared center shift is
            ``<= tol * mean(var(X, axis=0))``.
        client: Dask client; defaults to the one holding ``X``'s blocks, then the default one.

    Returns:
        ``(centers, inertia, n_iter)``: float64 ``(k, d)`` centroids, the global inertia
        against them, and the number of iterations run.
    """
    engine, _ = make_engine(X, client)
    with engine:
        C0 = check_init_array(init_centers, None, engine.n_features)
        mean, var = moments(engine)
        centers, inertia, n_iter, _ = fit_one(
            engine, C0, origin(mean, var), int(max_iter), tolerance(var, tol)
        )
        return centers, inertia, n_iter
