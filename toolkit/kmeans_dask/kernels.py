"""Block kernels of the Dask k-means: what runs on the workers, one row block at a time.

Every kernel is a plain module-level function of ``(block, block_index, row_offset, *args)``
returning a small result (``k x d`` at most): Dask ships it to the workers by reference, so it
must stay importable at module level.  The engines (:mod:`toolkit.kmeans_dask.engines`) call
them through :func:`run_blocks`; the driver (:mod:`toolkit.kmeans_dask.lloyd`) combines their
results in block order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from toolkit.kmeans_dask import _numba as _kernels

__all__ = [
    "aligned_f32",
    "as_f32",
    "combine_stats",
    "k_farthest",
    "k_final",
    "k_moments",
    "k_par_sample",
    "k_par_weights",
    "k_stats",
    "k_stats_columns",
    "k_stats_source",
    "k_take",
    "kernel_centers",
    "labels_block",
    "labels_of",
    "lloyd_advance",
    "new_centers",
    "run_blocks",
    "warm_kernels",
]

#: Rows per tile for the k-means||, moments and distance kernels.
_TILE = 4096

_F32 = np.float32
_F64 = np.float64


def as_f32(block: Any) -> np.ndarray:
    """The block as a C-contiguous float32 array (no copy when it already is one)."""
    return np.ascontiguousarray(block, dtype=_F32)


def aligned_f32(block: Any) -> np.ndarray:
    """``block`` as an aligned, C-contiguous float32 array; the same object when it is one."""
    return np.require(block, dtype=_F32, requirements=("C", "A"))


def _tiles(n: int) -> range:
    return range(0, n, _TILE)


def k_stats(
    block: Any, i: int, off: int, o: np.ndarray, C2: np.ndarray, cn: np.ndarray
) -> np.ndarray:
    """One Lloyd step on a block: ``(k, d + 1)`` float64 ``[sums of (x - o) | counts]``."""
    x = aligned_f32(block)
    k, d = C2.shape[1], x.shape[1]
    sums, counts = np.zeros((k, d)), np.zeros(k)
    _kernels.lloyd_stats(x, o, C2, cn, bool(np.any(o)), sums, counts)
    return np.concatenate([sums, counts[:, None]], axis=1)


def k_stats_columns(runs: Sequence[Sequence[np.ndarray]], o: np.ndarray, C2: np.ndarray,
                    cn: np.ndarray) -> np.ndarray:
    """:func:`k_stats` of a block given as runs of rows, each a sequence of ``d`` equally long
    float32 columns (a Parquet file's Arrow columns, read-only views): no row-major block is
    made, and the sums are identical to :func:`k_stats` on the same rows."""
    from numba.typed import List

    d, k = C2.shape
    sums, counts = np.zeros((k, d)), np.zeros(k)
    buf = np.empty((_kernels.TILE, d), dtype=_F32)
    centre, fill = bool(np.any(o)), 0
    for r, cols in enumerate(runs):
        typed = List()
        for c in cols:
            typed.append(c)
        fill = _kernels.lloyd_stats_columns(typed, o, C2, cn, centre, buf, fill, r == len(runs) - 1, sums, counts)
    return np.concatenate([sums, counts[:, None]], axis=1)


def k_stats_source(part: Any, i: int, off: int, o: np.ndarray, C2: np.ndarray, cn: np.ndarray) -> np.ndarray:
    """:func:`k_stats` of a block that ``part`` reads where this runs (one task: read and step).

    ``part`` is an entry of a Dask array's ``block_columns`` (see :mod:`toolkit.kmeans_dask.engines`;
    :class:`toolkit.data._ParquetPart` is one): ``part.read()`` gives the block's rows as runs of
    float32 columns (a list of runs), or, where it cannot, the block itself."""
    got = part.read()
    if isinstance(got, np.ndarray):
        return k_stats(got, i, off, o, C2, cn)
    return k_stats_columns(got, o, C2, cn)


def labels_of(x: np.ndarray, o: np.ndarray, C2: np.ndarray, cn: np.ndarray) -> np.ndarray:
    """int32 index of the closest center for every row (first one on ties)."""
    x = aligned_f32(x)
    lab = np.empty(x.shape[0], dtype=np.int32)
    _kernels.assign(x, o, C2, cn, bool(np.any(o)), lab)
    return lab


def _sq_dist_to_assigned(
    x: np.ndarray, o: np.ndarray, lab: np.ndarray, centers: np.ndarray
) -> np.ndarray:
    """float64 ``||(x_i - o) - c_{lab_i}||^2`` computed from the difference (no cancellation)."""
    out = np.empty(x.shape[0], dtype=_F64)
    o64 = o.astype(_F64)
    # Reused across tiles: see _candidate_tiles on allocations in Dask workers.
    diff = np.empty((min(_TILE, x.shape[0]), x.shape[1]), dtype=_F64)
    for s in _tiles(x.shape[0]):
        xt = x[s : s + _TILE]
        dt = diff[: xt.shape[0]]
        np.subtract(xt, o64, out=dt)
        dt -= centers[lab[s : s + _TILE]]
        out[s : s + _TILE] = np.einsum("ij,ij->i", dt, dt)
    return out


def k_final(
    block: Any, i: int, off: int, o: np.ndarray, C2: np.ndarray, cn: np.ndarray, centers: np.ndarray
) -> float:
    """Inertia of a block against the final (centred) centers: the final E-step."""
    x = as_f32(block)
    if x.shape[0] == 0:
        return 0.0
    return float(_sq_dist_to_assigned(x, o, labels_of(x, o, C2, cn), centers).sum())


def k_farthest(
    block: Any,
    i: int,
    off: int,
    o: np.ndarray,
    C2: np.ndarray,
    cn: np.ndarray,
    centers: np.ndarray,
    m: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The block's ``m`` rows farthest from their assigned center.

    Returns (squared distances, global row indices, centred rows as float64, labels), farthest
    first, ties by lower row index.
    """
    x = as_f32(block)
    if x.shape[0] == 0:
        return np.empty(0), np.empty(0, np.int64), np.empty((0, x.shape[1])), np.empty(0, np.int32)
    lab = labels_of(x, o, C2, cn)
    dist = _sq_dist_to_assigned(x, o, lab, centers)
    m = min(m, x.shape[0])
    top = np.argpartition(dist, -m)[-m:] if m < x.shape[0] else np.arange(x.shape[0])
    top = top[np.lexsort((top, -dist[top]))]
    rows = x[top].astype(_F64) - o.astype(_F64)
    return dist[top], top.astype(np.int64) + off, rows, lab[top]


def k_moments(block: Any, i: int, off: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(rows, column means, column sums of squared deviations), float64."""
    x = as_f32(block)
    n, d = x.shape
    if n == 0:
        return 0, np.zeros(d), np.zeros(d)
    x0 = x[0].astype(_F64)  # shift by a data point: no cancellation in sum of squares
    s = np.zeros(d)
    ss = np.zeros(d)
    for a in range(0, n, 16 * _TILE):
        t = x[a : a + 16 * _TILE].astype(_F64)
        t -= x0
        s += t.sum(axis=0)
        ss += np.einsum("ij,ij->j", t, t)
    return n, x0 + s / n, np.maximum(ss - s * s / n, 0.0)


def k_take(block: Any, i: int, off: int, rows: np.ndarray) -> np.ndarray:
    """The block's rows among the sorted global row indices ``rows``."""
    n = block.shape[0]
    lo, hi = np.searchsorted(rows, [off, off + n])
    return as_f32(np.asarray(block)[rows[lo:hi] - off])


def _candidate_tiles(
    x: np.ndarray, o: np.ndarray, C2: np.ndarray, cn: np.ndarray
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(start, centred tile, (rows, m) scores)`` against ``m`` k-means|| candidates.

    Plain NumPy (k-means|| makes a handful of passes, not one per iteration).  Buffers are
    allocated once: Dask workers set ``MALLOC_TRIM_THRESHOLD_``, which makes every large
    allocation a fresh ``mmap`` (page faults on each tile otherwise).
    """
    n, d = x.shape
    copy = bool(np.any(o)) or not x.flags.aligned  # centre on o; realign (BLAS fast path)
    t = 0
    for s in range(0, n, _TILE):
        xt = x[s : s + _TILE]
        if xt.shape[0] != t:
            t = xt.shape[0]
            D = np.empty((t, C2.shape[1]), _F32)
            buf = np.empty((t, d), _F32) if copy else None
        xs = np.subtract(xt, o, out=buf) if copy else xt
        np.matmul(xs, C2, out=D)
        D += cn
        yield s, xs, D


def k_par_sample(
    block: Any,
    i: int,
    off: int,
    o: np.ndarray,
    C2: np.ndarray,
    cn: np.ndarray,
    ell: float,
    seed: int,
    rnd: int,
) -> tuple[float, np.ndarray, np.ndarray]:
    """One k-means|| round on a block: (its cost, sampling keys, rows that may be sampled).

    ``C2, cn`` are :func:`kernel_centers` of the current (centred) candidates.  Row ``i`` is
    sampled with probability ``min(1, ell * d_i^2 / phi)`` (``phi`` = global cost), i.e. when
    ``kappa_i = ell * d_i^2 / u_i > phi`` for ``u_i ~ U(0, 1)``.  The global ``phi`` is only
    known after this pass, but it is at least this block's cost, so returning the rows with
    ``kappa_i`` above the block's cost (about ``ell`` rows) lets the driver finish the selection
    exactly, in one pass per round.
    """
    x = as_f32(block)
    d2 = np.empty(x.shape[0], dtype=_F64)
    for s, xs, D in _candidate_tiles(x, o, C2, cn):
        # min_j ||x - c_j||^2 = ||x||^2 + min_j (||c_j||^2 - 2 x . c_j), x and c centred
        d2[s : s + xs.shape[0]] = D.min(axis=1) + np.einsum("ij,ij->i", xs, xs)
    np.maximum(d2, 0.0, out=d2)
    cost = float(d2.sum())
    u = np.random.default_rng([seed, rnd, i]).random(x.shape[0])  # placement-independent
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = ell * d2 / u
    keep = np.flatnonzero(kappa > cost)
    return cost, kappa[keep], x[keep].copy()


def k_par_weights(
    block: Any, i: int, off: int, o: np.ndarray, C2: np.ndarray, cn: np.ndarray
) -> np.ndarray:
    """How many of the block's rows are closest to each k-means|| candidate."""
    w = np.zeros(C2.shape[1], dtype=_F64)
    for _, _, D in _candidate_tiles(as_f32(block), o, C2, cn):
        w += np.bincount(D.argmin(axis=1), minlength=C2.shape[1])
    return w


def labels_block(block: Any, o: np.ndarray, C2: np.ndarray, cn: np.ndarray) -> np.ndarray:
    """``map_blocks`` kernel: labels of one block."""
    return labels_of(as_f32(block), o, C2, cn)


def run_blocks(
    kernel: Callable[..., Any],
    blocks: Sequence[Any],
    indices: Sequence[int],
    offsets: Sequence[int],
    args: tuple,
    subset: frozenset[int] | None = None,
) -> list[tuple[int, Any]]:
    """Apply ``kernel`` to the blocks one worker holds; ``[(block index, result), ...]``."""
    return [
        (i, kernel(b, i, off, *args))
        for b, i, off in zip(blocks, indices, offsets, strict=True)
        if subset is None or i in subset
    ]


def kernel_centers(centred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd kernel arguments from centred centers: float32 ``-2 c^T`` ``(d, k)`` and
    ``||c||^2`` ``(k,)``."""
    c32 = np.asarray(centred, dtype=_F32)
    c64 = c32.astype(_F64)
    cn = np.einsum("ij,ij->i", c64, c64).astype(_F32)
    return np.ascontiguousarray(-2.0 * c32.T), cn


def combine_stats(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The :func:`k_stats` results of every block, added **in block order**: a fixed order of
    float64 additions, so identical labels give identical sums whoever adds them (the driver or
    every worker of a worker-side loop)."""
    total = np.array(parts[0], dtype=_F64)
    for part in parts[1:]:
        total += part
    return total


def new_centers(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Centred means; a cluster left without any point keeps its (centred) sums, as sklearn."""
    out = sums.copy()
    filled = counts > 0
    out[filled] /= counts[filled, None]
    return out


def lloyd_advance(
    centers: np.ndarray, total: np.ndarray, tol_abs: float
) -> tuple[np.ndarray | None, bool]:
    """The M-step of one Lloyd iteration from its combined ``[sums | counts]``.

    Returns ``(new centred centers, converged)``, or ``(None, False)`` when a cluster got no
    point: scikit-learn's empty-cluster rule needs a pass over the data that the caller runs.
    Shared by the driver's loop and the workers' loop so both do the same arithmetic.
    """
    d = centers.shape[1]
    counts = total[:, d]
    if not np.all(counts > 0):
        return None, False
    new = new_centers(total[:, :d], counts)
    # Unchanged labels give shift == 0 exactly, so this is also sklearn's strict stop.
    return new, float(np.sum((new - centers) ** 2)) <= tol_abs


def warm_kernels(n_features: int) -> None:
    """Compile (or load from Numba's disk cache) the Lloyd kernels for float32 rows of width
    ``n_features``, with the argument types a fit's blocks pass, both centred and not.

    What a worker runs before its first fit; it imports nothing but this module (no estimator,
    so no scikit-learn in the worker processes).
    """
    rows = np.arange(8 * n_features, dtype=_F32).reshape(8, n_features)
    C2, cn = kernel_centers(rows[:2].astype(_F64))
    for o in (np.zeros(n_features, dtype=_F32), np.ones(n_features, dtype=_F32)):
        k_stats(rows, 0, 0, o, C2, cn)
        labels_of(rows, o, C2, cn)
