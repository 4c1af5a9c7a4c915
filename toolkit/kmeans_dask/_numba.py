"""Compiled (Numba) inner loops of the Dask k-means' Lloyd step, run on the workers.

One call handles a whole block, tile by tile, with no Python between tiles:

1. ``scores = x_tile @ (-2 C^T)``: one float32 BLAS GEMM per tile of :data:`TILE` rows (rows
   centred on ``o`` first when asked, as scikit-learn centres ``X`` so float32 products stay
   small);
2. per row, ``argmin_c (scores[r, c] + ||c||^2)`` -- the squared distance minus the row's own
   constant ``||x||^2`` -- with a strict ``<`` so a tie goes to the lowest center index, as
   ``numpy.argmin`` and scikit-learn do;
3. fused with (2), the row is added to its center's float32 tile sums and counts, which are
   added to the float64 block totals after each tile.

Single-threaded this is ~1.4x faster than the NumPy version of the same step it replaced
(three array passes and two extra GEMMs per tile) and faster per core than scikit-learn's
Cython Lloyd step; ``nogil`` lets the worker's event loop run meanwhile.  Compiled on first
use in each process and cached on disk (``cache=True``), so later processes load it in
milliseconds.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["TILE", "assign", "lloyd_stats"]

#: Rows per GEMM tile: scores (TILE x k) and the centred copy (TILE x d) stay in L2 cache.
#: 256-4096 measured within 2% of each other for d=16, k=8.
TILE = 1024


@njit(cache=True, nogil=True)
def _tile(x, s, e, o, centre, buf):  # pragma: no cover - compiled
    """Rows ``s:e`` of ``x``, centred into ``buf`` when asked (else a view)."""
    if not centre:
        return x[s:e]
    d = x.shape[1]
    for i in range(e - s):
        for j in range(d):
            buf[i, j] = x[s + i, j] - o[j]
    return buf[: e - s]


@njit(cache=True, nogil=True, inline="always")
def _closest(st, r, cn):  # pragma: no cover - compiled
    """Index of the smallest ``st[r, c] + cn[c]``; the first one on ties (strict ``<``)."""
    best = 0
    low = st[r, 0] + cn[0]
    for c in range(1, cn.shape[0]):
        v = st[r, c] + cn[c]
        if v < low:
            low = v
            best = c
    return best


@njit(cache=True, nogil=True)
def lloyd_stats(x, o, Ct, cn, centre, sums, counts):  # pragma: no cover - compiled
    """Add one Lloyd step's per-center sums of the (centred) rows and counts of ``x``.

    Args:
        x: ``(n, d)`` float32, C-contiguous.
        o: ``(d,)`` float32 origin the rows are centred on when ``centre``.
        Ct: ``(d, k)`` float32, ``-2 c^T`` of the centred centers.
        cn: ``(k,)`` float32, ``||c||^2``.
        centre: subtract ``o`` from every row first.
        sums: ``(k, d)`` float64, added to.
        counts: ``(k,)`` float64, added to.
    """
    n, d = x.shape
    k = cn.shape[0]
    buf = np.empty((TILE, d), np.float32)
    scores = np.empty((TILE, k), np.float32)
    tsum = np.empty((k, d), np.float32)
    tcnt = np.empty(k, np.int64)
    for s in range(0, n, TILE):
        e = min(n, s + TILE)
        xt = _tile(x, s, e, o, centre, buf)
        st = scores[: e - s]
        np.dot(xt, Ct, st)
        tsum[:] = 0
        tcnt[:] = 0
        for r in range(e - s):
            best = _closest(st, r, cn)
            tcnt[best] += 1
            for j in range(d):
                tsum[best, j] += xt[r, j]
        for c in range(k):
            counts[c] += tcnt[c]
            for j in range(d):
                sums[c, j] += tsum[c, j]


@njit(cache=True, nogil=True)
def assign(x, o, Ct, cn, centre, labels):  # pragma: no cover - compiled
    """Write into ``labels`` (``(n,)`` int32) the closest center of each row (lowest on ties);
    arguments as in :func:`lloyd_stats`."""
    n, d = x.shape
    buf = np.empty((TILE, d), np.float32)
    scores = np.empty((TILE, cn.shape[0]), np.float32)
    for s in range(0, n, TILE):
        e = min(n, s + TILE)
        xt = _tile(x, s, e, o, centre, buf)
        st = scores[: e - s]
        np.dot(xt, Ct, st)
        for r in range(e - s):
            labels[s + r] = _closest(st, r, cn)
