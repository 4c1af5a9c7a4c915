"""Engines: how one block kernel reaches every block of the data.  ``run`` returns results in
block order, so the driver's sums are the same whichever worker ran what.

* persisted Dask array -> :class:`_ActorEngine` (one actor per worker holding its blocks) or,
  where actors cannot be made, :class:`_FuturesEngine` (one pinned task per worker per pass);
* lazy Dask array -> :class:`_GraphEngine` (one delayed task per block per pass);
* NumPy array -> :class:`_LocalEngine` (the kernels in-process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Self

import numpy as np

from toolkit.faults import is_infrastructure_error
from toolkit.kmeans_dask.kernels import aligned_f32, as_f32, run_blocks

__all__ = ["ENGINES", "Engine", "make_engine"]

#: Actors run kernels on the worker's event loop (not a thread) while a worker holds at most
#: this many values: a Lloyd pass is then short enough not to hold up the worker's loop.
_INLINE_VALUES = 1 << 24
#: Rows per in-process block when the input is a NumPy array.
_LOCAL_BLOCK = 262_144


class _BlockHolder:
    """Dask actor on one worker: keeps that worker's blocks and runs kernels on them.

    Calls go straight from the client to the worker, so an iteration costs one network round
    trip per worker instead of several scheduler hops.
    """

    def __init__(self, indices: list[int], offsets: list[int], *blocks: Any) -> None:
        # Same objects as in the worker's memory when they are aligned float32 already (no copy).
        self.blocks = [aligned_f32(b) for b in blocks]
        self.indices = list(indices)
        self.offsets = list(offsets)

    def run(
        self, kernel: Callable[..., Any], args: tuple, subset: frozenset[int] | None = None
    ) -> list:
        """Run ``kernel`` on the blocks (in the worker's actor thread)."""
        return run_blocks(kernel, self.blocks, self.indices, self.offsets, args, subset)

    async def run_inline(
        self, kernel: Callable[..., Any], args: tuple, subset: frozenset[int] | None = None
    ) -> list:
        """:meth:`run` on the worker's event loop: one thread hand-off less per call, which is
        several ms on a busy machine; only used while a pass takes well under a second."""
        return run_blocks(kernel, self.blocks, self.indices, self.offsets, args, subset)


class Engine:
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


class _LocalEngine(Engine):
    """NumPy data, kernels run in this process."""

    kind = "local"

    def __init__(self, X: np.ndarray, block_rows: int = _LOCAL_BLOCK) -> None:
        X = as_f32(X)
        self._blocks = [X[s : s + block_rows] for s in range(0, X.shape[0], block_rows)]
        super().__init__([b.shape[0] for b in self._blocks], X.shape[1])

    def _run(self, kernel: Callable[..., Any], args: tuple, subset: frozenset[int] | None) -> list:
        return run_blocks(
            kernel, self._blocks, range(self.n_blocks), self.starts[:-1].tolist(), args, subset
        )


class _GroupedEngine(Engine):
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
                run_blocks,
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


class _GraphEngine(Engine):
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
            dask.delayed(run_blocks, pure=False)(
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


#: ``engine`` values :func:`make_engine` accepts.
ENGINES = ("auto", "actors", "futures", "graph")


def make_engine(X: Any, client: Any = None, engine: str = "auto") -> tuple[Engine, Any]:
    """An engine for ``X`` (NumPy or Dask array) and the Dask array it iterates (or None)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
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
