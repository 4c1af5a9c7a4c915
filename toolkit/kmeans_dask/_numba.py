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
use and cached on disk (:func:`toolkit._metric_kernels.kernel`: a read-only install caches in
the user's cache folder, a corrupt entry is recompiled), so later processes -- a fresh Dask
worker's first fit -- load it in milliseconds.

:func:`kmeans_plusplus` is scikit-learn's greedy k-means++ without the GIL, so trials on threads
seed side by side (scikit-learn's own holds the GIL between its NumPy steps and two threads
took turns).
"""

from __future__ import annotations

import numpy as np

from toolkit._metric_kernels import kernel

__all__ = ["TILE", "assign", "kmeans_plusplus", "lloyd_stats", "lloyd_stats_columns"]

#: Rows per GEMM tile: scores (TILE x k) and the centred copy (TILE x d) stay in L2 cache.
#: 256-4096 measured within 2% of each other for d=16, k=8.
TILE = 1024


@kernel()
def _tile(x, s, e, o, centre, buf):  # pragma: no cover - compiled
    """Rows ``s:e`` of ``x``, centred into ``buf`` when asked (else a view)."""
    if not centre:
        return x[s:e]
    d = x.shape[1]
    for i in range(e - s):
        for j in range(d):
            buf[i, j] = x[s + i, j] - o[j]
    return buf[: e - s]


@kernel(inline="always")
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


@kernel()
def _step(xt, Ct, cn, st, tsum, tcnt, sums, counts):  # pragma: no cover - compiled
    """One tile of a Lloyd step: scores, closest centers, the tile's float32 sums and counts
    added to the float64 totals.  The one copy of this arithmetic, so a block and the same rows
    given as columns (:func:`lloyd_stats_columns`) give identical sums."""
    k, d = cn.shape[0], xt.shape[1]
    np.dot(xt, Ct, st)
    tsum[:] = 0
    tcnt[:] = 0
    for r in range(xt.shape[0]):
        best = _closest(st, r, cn)
        tcnt[best] += 1
        for j in range(d):
            tsum[best, j] += xt[r, j]
    for c in range(k):
        counts[c] += tcnt[c]
        for j in range(d):
            sums[c, j] += tsum[c, j]


@kernel()
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
        _step(_tile(x, s, e, o, centre, buf), Ct, cn, scores[: e - s], tsum, tcnt, sums, counts)


@kernel()
def lloyd_stats_columns(cols, o, Ct, cn, centre, buf, fill, flush, sums, counts):  # pragma: no cover - compiled
    """:func:`lloyd_stats` on rows given as columns: a typed list of ``d`` equally long float32
    arrays (a file's Arrow columns, no row-major copy of the block), gathered tile by tile.

    One call takes one run of rows; a block in several runs is several calls that carry the
    partly filled tile: ``buf`` (``(TILE, d)`` float32) holds ``fill`` rows on entry, and the
    return value is its fill on exit.  ``flush`` (the block's last run) runs the last partial
    tile.  Tiles start at the same rows as :func:`lloyd_stats`'s, so the sums are identical.
    """
    d = buf.shape[1]
    k = cn.shape[0]
    scores = np.empty((TILE, k), np.float32)
    tsum = np.empty((k, d), np.float32)
    tcnt = np.empty(k, np.int64)
    n = len(cols[0]) if d else 0
    r0 = 0
    while r0 < n:
        take = min(TILE - fill, n - r0)
        for j in range(d):
            src = cols[j][r0 : r0 + take]
            if take == TILE:  # a whole tile: a constant trip count the compiler unrolls
                if centre:
                    for i in range(TILE):
                        buf[i, j] = src[i] - o[j]
                else:
                    for i in range(TILE):
                        buf[i, j] = src[i]
            elif centre:
                for i in range(take):
                    buf[fill + i, j] = src[i] - o[j]
            else:
                for i in range(take):
                    buf[fill + i, j] = src[i]
        fill += take
        r0 += take
        if fill == TILE:
            _step(buf[:TILE], Ct, cn, scores[:TILE], tsum, tcnt, sums, counts)
            fill = 0
    if flush and fill > 0:
        _step(buf[:fill], Ct, cn, scores[:fill], tsum, tcnt, sums, counts)
        fill = 0
    return fill


@kernel()
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



@kernel()
def _sq_to(x, i, c):  # pragma: no cover - compiled
    """``||x_i - c||^2`` in float64 (differences, not the expanded form: no cancellation)."""
    s = 0.0
    for j in range(x.shape[1]):
        t = np.float64(x[i, j]) - c[j]
        s += t * t
    return s


@kernel()
def kmeans_plusplus(x, first, draws):  # pragma: no cover - compiled
    """Row indices of greedy k-means++ centres of ``x``: scikit-learn's algorithm
    (``sklearn.cluster.kmeans_plusplus``, unit weights) on the same random draws, without the GIL.

    Args:
        x: ``(n, d)`` rows (float32 or float64).
        first: index of the first centre (scikit-learn: ``rs.choice(n, p=uniform weights)``).
        draws: ``(k - 1, n_local_trials)`` float64 uniforms in ``[0, 1)``, in the order
            scikit-learn draws them (``rs.uniform(size=n_local_trials)`` per further centre).

    Returns:
        ``(k,)`` int64 row indices.  Per further centre, ``n_local_trials`` candidates are
        sampled with probability proportional to the squared distance to the closest chosen
        centre (``searchsorted`` on its cumulative sum), and the one that lowers the summed
        distance most is kept (the first of equals).  Sums are float64 where scikit-learn sums
        float32 data in float32 (through BLAS), so on float32 data a draw that falls within
        rounding of a boundary can pick a neighbouring row.
    """
    n, d = x.shape
    k = draws.shape[0] + 1
    trials = draws.shape[1]
    idx = np.empty(k, np.int64)
    idx[0] = first
    cvecs = np.empty((trials, d))
    for j in range(d):
        cvecs[0, j] = x[first, j]
    closest = np.empty(n)
    pot = 0.0
    for i in range(n):
        closest[i] = _sq_to(x, i, cvecs[0])
        pot += closest[i]
    cum = np.empty(n)
    cand = np.empty(trials, np.int64)
    pots = np.empty(trials)
    row = np.empty(d)
    for c in range(1, k):
        acc = 0.0
        for i in range(n):
            acc += closest[i]
            cum[i] = acc
        for t in range(trials):
            cand[t] = min(np.searchsorted(cum, draws[c - 1, t] * pot), n - 1)
            for j in range(d):
                cvecs[t, j] = x[cand[t], j]
        pots[:] = 0.0
        for i in range(n):
            for j in range(d):  # the row once, for every candidate
                row[j] = x[i, j]
            for t in range(trials):
                s = 0.0
                for j in range(d):
                    u = row[j] - cvecs[t, j]
                    s += u * u
                pots[t] += min(closest[i], s)
        best = 0
        for t in range(1, trials):
            if pots[t] < pots[best]:
                best = t
        idx[c] = cand[best]
        pot = pots[best]
        # One more pass rather than a (trials x n) distance table: memory stays O(n).
        for i in range(n):
            closest[i] = min(closest[i], _sq_to(x, i, cvecs[best]))
    return idx
