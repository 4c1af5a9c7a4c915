"""``dask`` backend: our own data-parallel Lloyd k-means on Dask; the fast CPU cluster path.

Design
------
The data stays where it is: float32 row blocks persisted on the workers (or, with
``persist=False``, a lazy Dask array that is re-read block by block every pass, so memory stays
bounded by a few blocks).  Every pass over the data runs one small *kernel* per block on the
worker that holds it; a kernel returns a result of size ``k x d`` at most, and the driver
combines the per-block results **in block order** (so results are bit-for-bit reproducible
whichever worker ran what).  Nothing of size ``n_samples`` crosses the network.

How kernels reach the blocks (an "engine"):

* persisted Dask array -> one Dask *actor* per worker holds that worker's blocks (references,
  no copy); each pass is one direct call per worker, no scheduler round trip (~1-5 ms instead
  of ~10-40 ms per pass on a busy machine).  While a worker holds at most
  :data:`_INLINE_VALUES` values the call runs on the worker's event loop, saving a thread
  hand-off.  If actors cannot be created: one task per worker per pass, pinned to the worker
  holding its blocks ("futures").
* lazy Dask array -> one delayed task per block per pass, computed on the client's cluster;
  blocks stream from their source.
* NumPy array -> the same kernels in-process (handy for tests and small data).

Lloyd iteration kernel (per block): a compiled Numba loop (``_lloyd_kernels.lloyd_stats``)
runs, per tile of 1024 rows, one float32 BLAS GEMM for ``-2 x c^T``, then per row the closest
center (strict ``<``: a tie goes to the lowest index, as in scikit-learn) fused with adding the
row to that center's sums and count (float32 within a tile, float64 across tiles and blocks).
No labels are materialised.  Data whose mean is far from 0 (farther than one standard
deviation) is centred tile by tile first, as scikit-learn centres ``X``, so float32 products
stay small.  Single-threaded the kernel is faster per core than scikit-learn's Cython Lloyd
step (benchmarks/run.py measures both).

Semantics (scikit-learn's ``_kmeans_single_lloyd``)
---------------------------------------------------
* ``tol`` is relative: ``tol_abs = tol * mean(var(X, axis=0))``; the run stops after the
  iteration whose squared Frobenius center shift is ``<= tol_abs``; ``n_iter`` counts that
  iteration; ``max_iter`` bounds the loop.
* scikit-learn also stops when the labels did not change ("strict convergence").  Here the sums
  are deterministic, so unchanged labels give exactly the same centers, a shift of exactly 0
  and the same stop at the same iteration -- without keeping ``n_samples`` labels anywhere.
* Inertia and labels are always computed against the final centers (scikit-learn's final
  E-step), in float64 from ``x - c`` (no cancellation).
* Empty clusters (scikit-learn's rule): when ``m`` clusters get no point, the ``m`` points
  farthest from their assigned center (ties: lower row index first) are taken, in decreasing
  distance, and the ``j``-th one becomes the sole member of the ``j``-th empty cluster (by
  increasing cluster index); it is removed from its donor cluster's sums.  Deterministic for
  given data and centers; identical to scikit-learn for a single empty cluster.

Initialisation: ``"k-means||"`` (Bahmani et al., scalable k-means++: ``oversampling_factor * k``
expected candidates per round, :data:`_PAR_ROUNDS` rounds, one pass each, then weighted
k-means++ and a weighted Lloyd refinement of the candidates on the driver), ``"k-means++"``
(scikit-learn's ``kmeans_plusplus`` on a seeded sample of up to :data:`_KPP_SAMPLE` rows),
``"random"`` (``k`` distinct seeded rows), or an explicit ``(k, d)`` array.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Self

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin

from toolkit.backends import _lloyd_kernels as _kernels
from toolkit.backends.base import FitResult, KMeansBackend, is_infrastructure_error
from toolkit.backends.daskml import to_dask_array
from toolkit.config import ModelConfig
from toolkit.data import Dataset

__all__ = ["DaskBackend", "DaskKMeans", "lloyd_fit", "sklearn_from_centers"]

#: Rows per tile for the k-means||, moments and distance kernels.
_TILE = 4096
#: Actors run kernels on the worker's event loop (not a thread) while a worker holds at most
#: this many values: a Lloyd pass then takes ~50 ms or less.
_INLINE_VALUES = 1 << 24
#: Rows per in-process block when the input is a NumPy array.
_LOCAL_BLOCK = 262_144
#: Rows gathered to the driver for ``init="k-means++"``.
_KPP_SAMPLE = 10_000
#: Sampling rounds of k-means|| (Bahmani et al. find ~5 enough in practice).
_PAR_ROUNDS = 5

_F32 = np.float32
_F64 = np.float64


# ---------------------------------------------------------------------------------------------
# Block kernels.  They run on the workers: plain functions of (block, block_index, row_offset,
# *args) returning small results; imported by reference, so keep them module-level.
# ---------------------------------------------------------------------------------------------
def _as_f32(block: Any) -> np.ndarray:
    """The block as a C-contiguous float32 array (no copy when it already is one)."""
    return np.ascontiguousarray(block, dtype=_F32)


def _aligned_f32(block: Any) -> np.ndarray:
    """``block`` as an aligned, C-contiguous float32 array; the same object when it is one."""
    return np.require(block, dtype=_F32, requirements=("C", "A"))


def _tiles(n: int) -> range:
    return range(0, n, _TILE)


def _k_stats(
    block: Any, i: int, off: int, o: np.ndarray, C2: np.ndarray, cn: np.ndarray
) -> np.ndarray:
    """One Lloyd step on a block: ``(k, d + 1)`` float64 ``[sums of (x - o) | counts]``."""
    x = _aligned_f32(block)
    k, d = C2.shape[1], x.shape[1]
    sums, counts = np.zeros((k, d)), np.zeros(k)
    _kernels.lloyd_stats(x, o, C2, cn, bool(np.any(o)), sums, counts)
    return np.concatenate([sums, counts[:, None]], axis=1)


def _labels_of(x: np.ndarray, o: np.ndarray, C2: np.ndarray, cn: np.ndarray) -> np.ndarray:
    """int32 index of the closest center for every row (first one on ties)."""
    x = _aligned_f32(x)
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


def _k_final(
    block: Any, i: int, off: int, o: np.ndarray, C2: np.ndarray, cn: np.ndarray, centers: np.ndarray
) -> float:
    """Inertia of a block against the final (centred) centers: the final E-step."""
    x = _as_f32(block)
    if x.shape[0] == 0:
        return 0.0
    return float(_sq_dist_to_assigned(x, o, _labels_of(x, o, C2, cn), centers).sum())


def _k_farthest(
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
    x = _as_f32(block)
    if x.shape[0] == 0:
        return np.empty(0), np.empty(0, np.int64), np.empty((0, x.shape[1])), np.empty(0, np.int32)
    lab = _labels_of(x, o, C2, cn)
    dist = _sq_dist_to_assigned(x, o, lab, centers)
    m = min(m, x.shape[0])
    top = np.argpartition(dist, -m)[-m:] if m < x.shape[0] else np.arange(x.shape[0])
    top = top[np.lexsort((top, -dist[top]))]
    rows = x[top].astype(_F64) - o.astype(_F64)
    return dist[top], top.astype(np.int64) + off, rows, lab[top]


def _k_moments(block: Any, i: int, off: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(rows, column means, column sums of squared deviations), float64."""
    x = _as_f32(block)
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


def _k_take(block: Any, i: int, off: int, rows: np.ndarray) -> np.ndarray:
    """The block's rows among the sorted global row indices ``rows``."""
    n = block.shape[0]
    lo, hi = np.searchsorted(rows, [off, off + n])
    return _as_f32(np.asarray(block)[rows[lo:hi] - off])


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


def _k_par_sample(
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

    ``C2, cn`` are :func:`_kernel_centers` of the current (centred) candidates.  Row ``i`` is
    sampled with probability ``min(1, ell * d_i^2 / phi)`` (``phi`` = global cost), i.e. when
    ``kappa_i = ell * d_i^2 / u_i > phi`` for ``u_i ~ U(0, 1)``.  The global ``phi`` is only
    known after this pass, but it is at least this block's cost, so returning the rows with
    ``kappa_i`` above the block's cost (about ``ell`` rows) lets the driver finish the selection
    exactly, in one pass per round.
    """
    x = _as_f32(block)
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


def _k_par_weights(
    block: Any, i: int, off: int, o: np.ndarray, C2: np.ndarray, cn: np.ndarray
) -> np.ndarray:
    """How many of the block's rows are closest to each k-means|| candidate."""
    w = np.zeros(C2.shape[1], dtype=_F64)
    for _, _, D in _candidate_tiles(_as_f32(block), o, C2, cn):
        w += np.bincount(D.argmin(axis=1), minlength=C2.shape[1])
    return w


def _labels_block(block: Any, o: np.ndarray, C2: np.ndarray, cn: np.ndarray) -> np.ndarray:
    """``map_blocks`` kernel: labels of one block."""
    return _labels_of(_as_f32(block), o, C2, cn)


def _run_blocks(
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


class _BlockHolder:
    """Dask actor on one worker: keeps that worker's blocks and runs kernels on them.

    Calls go straight from the client to the worker, so an iteration costs one network round
    trip per worker instead of several scheduler hops.
    """

    def __init__(self, indices: list[int], offsets: list[int], *blocks: Any) -> None:
        # Same objects as in the worker's memory when they are aligned float32 already (no copy).
        self.blocks = [_aligned_f32(b) for b in blocks]
        self.indices = list(indices)
        self.offsets = list(offsets)

    def run(
        self, kernel: Callable[..., Any], args: tuple, subset: frozenset[int] | None = None
    ) -> list:
        """Run ``kernel`` on the blocks (in the worker's actor thread)."""
        return _run_blocks(kernel, self.blocks, self.indices, self.offsets, args, subset)

    async def run_inline(
        self, kernel: Callable[..., Any], args: tuple, subset: frozenset[int] | None = None
    ) -> list:
        """:meth:`run` on the worker's event loop: one thread hand-off less per call, which is
        several ms on a busy machine; only used while a pass takes well under a second."""
        return _run_blocks(kernel, self.blocks, self.indices, self.offsets, args, subset)


# ---------------------------------------------------------------------------------------------
# Engines: how one kernel reaches every block.  ``run`` returns results in block order.
# ---------------------------------------------------------------------------------------------
class _Engine:
    kind: ClassVar[str] = "?"

    def __init__(self, sizes: Sequence[int], n_features: int) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.n_rows = int(self.starts[-1])
        self.n_features = int(n_features)

    @property
    def n_blocks(self) -> int:
        return len(self.sizes)

    def run(
        self, kernel: Callable[..., Any], *args: Any, blocks: Sequence[int] | None = None
    ) -> list:
        subset = None if blocks is None else frozenset(int(b) for b in blocks)
        pairs = self._run(kernel, args, subset)
        pairs.sort(key=lambda p: p[0])
        return [r for _, r in pairs]

    def _run(self, kernel: Callable[..., Any], args: tuple, subset: frozenset[int] | None) -> list:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the engine holds on the cluster."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LocalEngine(_Engine):
    """NumPy data, kernels run in this process."""

    kind = "local"

    def __init__(self, X: np.ndarray, block_rows: int = _LOCAL_BLOCK) -> None:
        X = _as_f32(X)
        self._blocks = [X[s : s + block_rows] for s in range(0, X.shape[0], block_rows)]
        super().__init__([b.shape[0] for b in self._blocks], X.shape[1])

    def _run(self, kernel: Callable[..., Any], args: tuple, subset: frozenset[int] | None) -> list:
        return _run_blocks(
            kernel, self._blocks, range(self.n_blocks), self.starts[:-1].tolist(), args, subset
        )


class _GroupedEngine(_Engine):
    """Persisted blocks, grouped by the worker that holds them."""

    def __init__(
        self, futures: list[Any], sizes: Sequence[int], n_features: int, client: Any
    ) -> None:
        from distributed import wait

        super().__init__(sizes, n_features)
        self.client = client
        wait(futures)
        who = client.who_has(futures)
        self.groups: dict[str | None, list[int]] = {}
        for i, f in enumerate(futures):
            holders = who.get(f.key) or [None]
            self.groups.setdefault(min(holders), []).append(i)
        self.futures = futures


class _ActorEngine(_GroupedEngine):
    """One actor per worker holding its blocks; one direct call per worker per pass."""

    kind = "actors"

    def __init__(
        self, futures: list[Any], sizes: Sequence[int], n_features: int, client: Any
    ) -> None:
        super().__init__(futures, sizes, n_features, client)
        starts = self.starts[:-1].tolist()
        pending = []
        for worker, idx in self.groups.items():
            pending.append(
                client.submit(
                    _BlockHolder,
                    idx,
                    [starts[i] for i in idx],
                    *[futures[i] for i in idx],
                    actor=True,
                    workers=None if worker is None else [worker],
                    pure=False,
                )
            )
        self._actor_futures = pending
        self._actors = [f.result() for f in pending]
        # Small enough per worker that a pass blocks its event loop only briefly (tens of ms).
        most = max(sum(int(self.sizes[i]) for i in idx) for idx in self.groups.values())
        self._inline = most * n_features <= _INLINE_VALUES

    def _run(self, kernel: Callable[..., Any], args: tuple, subset: frozenset[int] | None) -> list:
        method = "run_inline" if self._inline else "run"
        calls = [getattr(a, method)(kernel, args, subset) for a in self._actors]  # all start first
        return [pair for c in calls for pair in c.result()]

    def close(self) -> None:
        # Dropping the actor futures deletes the actors and their references to the blocks.
        self._actors = []
        self._actor_futures = []


class _FuturesEngine(_GroupedEngine):
    """One task per worker per pass, pinned to the worker that holds the blocks."""

    kind = "futures"

    def _run(self, kernel: Callable[..., Any], args: tuple, subset: frozenset[int] | None) -> list:
        starts = self.starts[:-1].tolist()
        futs = [
            self.client.submit(
                _run_blocks,
                kernel,
                [self.futures[i] for i in idx],
                idx,
                [starts[i] for i in idx],
                args,
                subset,
                workers=None if worker is None else [worker],
                allow_other_workers=True,
                pure=False,
            )
            for worker, idx in self.groups.items()
            if subset is None or subset.intersection(idx)
        ]
        return [pair for part in self.client.gather(futs) for pair in part]


class _GraphEngine(_Engine):
    """Lazy Dask array: one delayed task per block per pass; blocks are re-read each pass."""

    kind = "graph"

    def __init__(self, X: Any, client: Any) -> None:
        super().__init__(X.chunks[0], X.shape[1])
        self.client = client
        self._delayed = X.to_delayed().ravel().tolist()

    def _run(self, kernel: Callable[..., Any], args: tuple, subset: frozenset[int] | None) -> list:
        import dask

        starts = self.starts[:-1].tolist()
        wanted = range(self.n_blocks) if subset is None else sorted(subset)
        tasks = [
            dask.delayed(_run_blocks, pure=False)(
                kernel, [self._delayed[i]], [i], [starts[i]], args
            )
            for i in wanted
        ]
        parts = self.client.gather(self.client.compute(tasks)) if self.client is not None else dask.compute(*tasks)
        return [pair for part in parts for pair in part]


def _default_client() -> Any:
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _block_futures(X: Any) -> list[Any] | None:
    """The futures of a persisted Dask array's blocks, in row order; None if any is lazy."""
    try:
        from distributed import futures_of
    except ImportError:
        return None
    keys = [k for row in X.__dask_keys__() for k in row]
    found = {f.key: f for f in futures_of(X)}
    if not keys or any(k not in found for k in keys):
        return None
    return [found[k] for k in keys]


def _prepare_dask(X: Any, client: Any) -> tuple[Any, list[Any] | None, Any]:
    """One column chunk, known row chunks; (array, block futures or None, client)."""
    futures = _block_futures(X)
    if client is None:
        client = futures[0].client if futures else _default_client()
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {X.shape}")
    if X.numblocks[1] != 1 or any(np.isnan(c) for c in X.chunks[0]):
        was_persisted = futures is not None
        if any(np.isnan(c) for c in X.chunks[0]):
            X = X.compute_chunk_sizes()
        X = X.rechunk({1: -1})
        if was_persisted and client is not None:  # keep the fast path: re-place the new blocks
            X = client.persist(X)
        futures = _block_futures(X)
    return X, futures, client


_ENGINES = ("auto", "actors", "futures", "graph")


def _make_engine(X: Any, client: Any = None, engine: str = "auto") -> tuple[_Engine, Any]:
    """An engine for ``X`` (NumPy or Dask array) and the Dask array it iterates (or None)."""
    if engine not in _ENGINES:
        raise ValueError(f"engine must be one of {', '.join(_ENGINES)}, got {engine!r}")
    if not hasattr(X, "dask"):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D array, got shape {X.shape}")
        return _LocalEngine(X), None
    X, futures, client = _prepare_dask(X, client)
    if futures is not None and client is not None and engine in ("auto", "actors", "futures"):
        if engine in ("auto", "actors"):
            try:
                return _ActorEngine(futures, X.chunks[0], X.shape[1], client), X
            except Exception as exc:
                # Pinned tasks are the fallback where actors cannot be made, not a way round
                # lost blocks or a dead worker: those fail every engine, so they are raised
                # as they are (the search places the data again and retries the trial).
                if engine == "actors" or is_infrastructure_error(exc):
                    raise
        return _FuturesEngine(futures, X.chunks[0], X.shape[1], client), X
    return _GraphEngine(X, client), X


# ---------------------------------------------------------------------------------------------
# Driver-side algorithm.
# ---------------------------------------------------------------------------------------------
def _moments(engine: _Engine) -> tuple[np.ndarray, np.ndarray]:
    """Column means and (population) variances of the data, merged in block order."""
    n, mean, m2 = 0, np.zeros(engine.n_features), np.zeros(engine.n_features)
    for nb, mb, m2b in engine.run(_k_moments):
        if nb == 0:
            continue
        tot = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta * delta * (n * nb / tot)
        n = tot
    return mean, m2 / max(n, 1)


def _tolerance(variances: np.ndarray, tol: float) -> float:
    """scikit-learn's ``_tolerance``: ``tol`` relative to the mean feature variance."""
    return 0.0 if tol == 0 else float(np.mean(variances) * tol)


def _origin(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
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


def _kernel_centers(centred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd kernel arguments from centred centers: float32 ``-2 c^T`` ``(d, k)`` and
    ``||c||^2`` ``(k,)``."""
    c32 = np.asarray(centred, dtype=_F32)
    c64 = c32.astype(_F64)
    cn = np.einsum("ij,ij->i", c64, c64).astype(_F32)
    return np.ascontiguousarray(-2.0 * c32.T), cn


def _take_rows(engine: _Engine, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """float64 rows at the given global indices (in the given order), fetched from the blocks."""
    rows = np.asarray(rows, dtype=np.int64)
    uniq = np.unique(rows)
    blocks = np.unique(np.searchsorted(engine.starts, uniq, side="right") - 1)
    got = np.concatenate(engine.run(_k_take, uniq, blocks=blocks.tolist()), axis=0)
    return got[np.searchsorted(uniq, rows)].astype(_F64)


def _init_random(engine: _Engine, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _take_rows(engine, rng.choice(engine.n_rows, size=k, replace=False))


def _init_kmeanspp(
    engine: _Engine, k: int, seed: int, sample_size: int = _KPP_SAMPLE
) -> np.ndarray:
    from sklearn.cluster import kmeans_plusplus

    rng = np.random.default_rng(seed)
    m = min(engine.n_rows, max(sample_size, k))
    sample = _take_rows(engine, np.sort(rng.choice(engine.n_rows, size=m, replace=False)))
    centers, _ = kmeans_plusplus(sample, k, random_state=seed)
    return np.asarray(centers, dtype=_F64)


def _init_kmeans_parallel(
    engine: _Engine,
    k: int,
    seed: int,
    o: np.ndarray,
    oversampling_factor: float,
    rounds: int = _PAR_ROUNDS,
) -> np.ndarray:
    """Scalable k-means++ (k-means||): candidates on the workers, reclustered on the driver."""
    from sklearn.cluster import KMeans, kmeans_plusplus

    rng = np.random.default_rng(seed)
    ell = float(oversampling_factor) * k
    o64 = o.astype(_F64)

    cand = _take_rows(engine, [rng.integers(engine.n_rows)])
    for rnd in range(rounds):
        outs = engine.run(_k_par_sample, o, *_kernel_centers(cand - o64), ell, seed, rnd)
        phi = sum(out[0] for out in outs)
        if not phi > 0:  # every row already sits on a candidate
            break
        new = [rows[kappa > phi].astype(_F64) for _, kappa, rows in outs]
        cand = np.concatenate([cand, *new], axis=0)
    weights = np.sum(engine.run(_k_par_weights, o, *_kernel_centers(cand - o64)), axis=0)
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
    engine: _Engine,
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
    outs = [out for out in engine.run(_k_farthest, o, C2, cn, centred, m) if out[0].size]
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


def _new_centers(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Centred means; a cluster left without any point keeps its (centred) sums, as sklearn."""
    out = sums.copy()
    filled = counts > 0
    out[filled] /= counts[filled, None]
    return out


def _lloyd(
    engine: _Engine, centred: np.ndarray, o: np.ndarray, max_iter: int, tol_abs: float
) -> tuple[np.ndarray, int, int]:
    """Lloyd iterations from centred centers: (final centred centers, iterations, re-seeded)."""
    centers = np.array(centred, dtype=_F64)
    d = centers.shape[1]
    relocated = n_iter = 0
    for _ in range(max_iter):
        n_iter += 1
        C2, cn = _kernel_centers(centers)
        parts = engine.run(_k_stats, o, C2, cn)
        total = parts[0].copy()
        for part in parts[1:]:  # fixed order: identical labels give identical sums
            total += part
        sums, counts = total[:, :d], total[:, d].copy()
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            _relocate_empty(engine, o, centers, C2, cn, sums, counts, empty)
            relocated += int(empty.size)
        new = _new_centers(sums, counts)
        shift = float(np.sum((new - centers) ** 2))
        centers = new
        # Unchanged labels give shift == 0 exactly, so this is also sklearn's strict stop.
        if shift <= tol_abs:
            break
    return centers, n_iter, relocated


def _inertia(engine: _Engine, centred: np.ndarray, o: np.ndarray) -> float:
    """Global inertia against the final centers (labels recomputed: the final E-step)."""
    C2, cn = _kernel_centers(centred)
    return float(sum(engine.run(_k_final, o, C2, cn, centred)))


def _fit_one(
    engine: _Engine, init_centers: np.ndarray, o: np.ndarray, max_iter: int, tol_abs: float
) -> tuple[np.ndarray, float, int, int]:
    """One run: (centers in data coordinates, inertia, n_iter, clusters re-seeded)."""
    o64 = o.astype(_F64)
    centred, n_iter, relocated = _lloyd(engine, init_centers - o64, o, max_iter, tol_abs)
    inertia = _inertia(engine, centred, o)
    return centred + o64, inertia, n_iter, relocated


def _check_init_array(init: Any, k: int | None, d: int) -> np.ndarray:
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
    engine, _ = _make_engine(X, client)
    with engine:
        C0 = _check_init_array(init_centers, None, engine.n_features)
        mean, var = _moments(engine)
        centers, inertia, n_iter, _ = _fit_one(
            engine, C0, _origin(mean, var), int(max_iter), _tolerance(var, tol)
        )
        return centers, inertia, n_iter


# ---------------------------------------------------------------------------------------------
# Estimator.
# ---------------------------------------------------------------------------------------------
class DaskKMeans(ClusterMixin, BaseEstimator):
    """Data-parallel k-means on Dask arrays, following scikit-learn's estimator conventions.

    Parameters:
        n_clusters: number of clusters ``k``.
        init: ``"k-means||"``, ``"k-means++"``, ``"random"`` or a ``(k, d)`` array.
        max_iter: most Lloyd iterations per run.
        tol: relative tolerance on the squared center shift (scikit-learn's definition).
        n_init: runs from different seeds; the one with the lowest inertia is kept (1 when
            ``init`` is an array).
        oversampling_factor: k-means|| expects ``oversampling_factor * k`` candidates per round.
        random_state: int seed (or None for fresh entropy).

    Fitted attributes: ``cluster_centers_`` (float64), ``inertia_``, ``n_iter_``, ``labels_``
    (lazy Dask array for Dask input, NumPy for NumPy input), ``n_features_in_``, and
    ``fit_info_`` (engine, timings).  ``labels_`` of Dask input is not pickled: it refers to
    data on the cluster.
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: str | np.ndarray = "k-means||",
        max_iter: int = 300,
        tol: float = 1e-4,
        n_init: int = 1,
        oversampling_factor: float = 2.0,
        random_state: int | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.oversampling_factor = oversampling_factor
        self.random_state = random_state

    # -- fitting ------------------------------------------------------------------------------
    def _seeds(self, n: int) -> list[int]:
        ss = np.random.SeedSequence(self.random_state)
        return [int(s.generate_state(1)[0]) for s in ss.spawn(n)]

    def _initial_centers(self, engine: _Engine, seed: int, o: np.ndarray) -> np.ndarray:
        k = int(self.n_clusters)
        if not isinstance(self.init, str):
            return _check_init_array(self.init, k, engine.n_features)
        if self.init == "k-means||":
            return _init_kmeans_parallel(engine, k, seed, o, self.oversampling_factor)
        if self.init == "k-means++":
            return _init_kmeanspp(engine, k, seed)
        if self.init == "random":
            return _init_random(engine, k, seed)
        raise ValueError(
            f"init must be 'k-means||', 'k-means++', 'random' or an array, got {self.init!r}"
        )

    def fit(self, X: Any, y: Any = None, *, client: Any = None, engine: str = "auto") -> DaskKMeans:
        """Fit on ``X`` (Dask or NumPy array, ``(n, d)``).

        Args:
            X: the data; persisted Dask arrays are iterated where they live.
            y: ignored.
            client: Dask client (default: the one holding ``X``, then the default client).
            engine: ``"auto"`` (actors, else pinned tasks, for persisted data), ``"actors"``,
                ``"futures"`` or ``"graph"`` (re-read blocks each pass); benchmarking aid.
        """
        k = int(self.n_clusters)
        if k < 1:
            raise ValueError(f"n_clusters must be >= 1, got {k}")
        n_init = int(self.n_init)
        if not isinstance(self.init, str) and n_init != 1:
            warnings.warn(
                f"Explicit initial center position passed: performing only one init in "
                f"{type(self).__name__} instead of n_init={n_init}.",
                RuntimeWarning,
                stacklevel=2,
            )
            n_init = 1
        eng, Xd = _make_engine(X, client, engine)
        with eng:
            if k > eng.n_rows:
                raise ValueError(f"n_samples={eng.n_rows} should be >= n_clusters={k}")
            t0 = time.perf_counter()
            mean, var = _moments(eng)
            o = _origin(mean, var)
            tol_abs = _tolerance(var, float(self.tol))
            best: tuple[float, np.ndarray, int, int] | None = None
            t_init = t_lloyd = 0.0
            for seed in self._seeds(max(1, n_init)):
                t1 = time.perf_counter()
                C0 = self._initial_centers(eng, seed, o)
                t2 = time.perf_counter()
                centers, inertia, n_iter, relocated = _fit_one(
                    eng, C0, o, int(self.max_iter), tol_abs
                )
                t_init += t2 - t1
                t_lloyd += time.perf_counter() - t2
                if best is None or inertia < best[0]:
                    best = (inertia, centers, n_iter, relocated)
            assert best is not None
            inertia, centers, n_iter, relocated = best
            self.cluster_centers_ = centers
            self.inertia_ = float(inertia)
            self.n_iter_ = int(n_iter)
            self.n_features_in_ = eng.n_features
            self._origin = o  # distances are computed on x - o; keeps labels_ == predict
            self.fit_info_ = {
                "engine": eng.kind,
                "n_blocks": eng.n_blocks,
                "n_samples": eng.n_rows,
                "init_seconds": t_init,
                "lloyd_seconds": t_lloyd,
                "total_seconds": time.perf_counter() - t0,
                "relocated_clusters": relocated,
            }
        self.labels_ = self._predict(Xd if Xd is not None else X)
        return self

    # -- prediction ---------------------------------------------------------------------------
    def _predict(self, X: Any) -> Any:
        o = getattr(self, "_origin", np.zeros(self.n_features_in_, dtype=_F32))
        C2, cn = _kernel_centers(self.cluster_centers_ - o.astype(_F64))
        if hasattr(X, "dask"):
            if X.ndim != 2 or X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has shape {X.shape}, expected (n, {self.n_features_in_})")
            if X.numblocks[1] != 1:
                X = X.rechunk({1: -1})
            return X.map_blocks(
                _labels_block, o, C2, cn, drop_axis=1, dtype=np.int32, meta=np.empty(0, np.int32)
            )
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {X.shape}, expected (n, {self.n_features_in_})")
        return _labels_of(_as_f32(X), o, C2, cn)

    def predict(self, X: Any) -> Any:
        """Closest center of every row: a lazy Dask array for Dask input, NumPy otherwise."""
        if not hasattr(self, "cluster_centers_"):
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet.")
        return self._predict(X)

    def fit_predict(self, X: Any, y: Any = None, *, client: Any = None) -> Any:
        """Fit, then return ``labels_``."""
        return self.fit(X, client=client).labels_

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if "labels_" in state and not isinstance(state["labels_"], np.ndarray):
            state = dict(state)
            del state["labels_"]  # a Dask graph over blocks on a cluster: not portable
        return state


# ---------------------------------------------------------------------------------------------
# scikit-learn conversion.
# ---------------------------------------------------------------------------------------------
_SKLEARN_PARAMS = ("n_clusters", "init", "max_iter", "tol", "n_init", "random_state", "algorithm")


def sklearn_from_centers(
    centers: np.ndarray,
    *,
    inertia: float | None = None,
    n_iter: int | None = None,
    params: Mapping[str, Any] | ModelConfig | None = None,
    labels: np.ndarray | None = None,
    dtype: Any = np.float64,
) -> Any:
    """A fitted ``sklearn.cluster.KMeans`` that predicts with ``centers``; nothing is refit.

    Args:
        centers: ``(k, d)`` centroids.
        inertia: training inertia (``inertia_``; NaN when unknown).
        n_iter: iterations run (``n_iter_``; 0 when unknown).
        params: constructor parameters (a mapping such as ``get_params()`` or a
            :class:`ModelConfig`); unknown keys are ignored and ``init="k-means||"`` becomes
            ``"k-means++"`` (scikit-learn has no k-means||).
        labels: training labels as NumPy, if cheaply available (``labels_`` is omitted
            otherwise).
        dtype: dtype of ``cluster_centers_``.  scikit-learn's ``predict`` needs input of the
            same dtype as the centers (its Cython kernels take one dtype), so a float64 model
            predicts float64 input; pass ``np.float32`` for a model that predicts float32.
    """
    from sklearn.cluster import KMeans

    C = np.array(centers, dtype=dtype)
    if C.ndim != 2:
        raise ValueError(f"centers must be 2-D (k, d), got shape {C.shape}")
    k, d = C.shape
    if params is None:
        raw: dict[str, Any] = {}
    elif isinstance(params, Mapping):
        raw = dict(params)
    else:
        raw = params.model_dump()
    kw = {key: raw[key] for key in _SKLEARN_PARAMS if key in raw}
    if kw.get("n_clusters", k) != k:
        raise ValueError(f"params say n_clusters={kw['n_clusters']} but centers has {k} rows")
    kw["n_clusters"] = k
    init = kw.get("init", "k-means++")
    usable = init in ("k-means++", "random") if isinstance(init, str) else np.shape(init) == (k, d)
    if not usable:
        kw["init"] = "k-means++"
    km = KMeans(**kw)
    km.cluster_centers_ = C
    km.n_features_in_ = d
    km._n_threads = 1
    km._n_features_out = k
    km.inertia_ = float("nan") if inertia is None else float(inertia)
    km.n_iter_ = 0 if n_iter is None else int(n_iter)
    if labels is not None:
        km.labels_ = np.asarray(labels, dtype=np.int32)
    return km


# ---------------------------------------------------------------------------------------------
# Backend.
# ---------------------------------------------------------------------------------------------
class DaskBackend(KMeansBackend):
    """Our data-parallel Lloyd k-means on Dask (persisted float32 blocks on the workers)."""

    name: ClassVar[str] = "dask"
    parallelism = "data"
    inits = ("k-means||", "k-means++", "random")
    requires = ("dask", "distributed")

    def prepare(self, dataset: Dataset) -> Any:
        """The data as a float32 Dask array, persisted on the workers unless ``persist=False``."""
        in_memory = isinstance(dataset.X, np.ndarray)
        # NumPy data is persisted by to_dask_array itself: scattered evenly, already aligned.
        X = to_dask_array(dataset, self.client, self.persist and in_memory, self.chunk_rows)
        if self.persist and not in_memory:
            # Blocks read by tasks can sit at odd addresses, which keeps NumPy and BLAS off
            # their fast paths every iteration: persist them aligned (and float32), in one
            # pass.  Already aligned float32 blocks are kept as they are, not copied.
            X = X.map_blocks(_aligned_f32, dtype=_F32)
            X = self.client.persist(X) if self.client is not None else X.persist()
        elif X.dtype != _F32:  # Dataset promises float32
            X = X.astype(_F32)
        return X

    def estimator(self, params: ModelConfig) -> DaskKMeans:
        """An unfitted :class:`DaskKMeans` for ``params``."""
        return DaskKMeans(
            n_clusters=params.n_clusters,
            init=params.init,
            max_iter=params.max_iter,
            tol=params.tol,
            n_init=params.n_init,
            oversampling_factor=params.oversampling_factor,
            random_state=params.random_state,
        )

    def _fit(self, X: Any, params: ModelConfig) -> FitResult:
        km = self.estimator(params).fit(X, client=self.client)
        return FitResult(
            model=km,
            centers=np.asarray(km.cluster_centers_, dtype=_F64),
            inertia=float(km.inertia_),
            n_iter=int(km.n_iter_),
            fit_seconds=0.0,
            labels=km.labels_,  # lazy Dask array for Dask input
            extra=dict(km.fit_info_),
        )

    def to_sklearn(self, model: Any) -> Any:
        """A fitted ``sklearn.cluster.KMeans`` with the same centers (float64)."""
        labels = getattr(model, "labels_", None)
        return sklearn_from_centers(
            model.cluster_centers_,
            inertia=getattr(model, "inertia_", None),
            n_iter=getattr(model, "n_iter_", None),
            params=model.get_params(),
            labels=labels if isinstance(labels, np.ndarray) else None,
        )
