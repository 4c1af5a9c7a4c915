"""Engines: how one block kernel reaches every block of the data.  ``run`` returns results in
block order, so the driver's sums are the same whichever worker ran what.

* persisted Dask array -> :class:`_ActorEngine` (one actor per worker holding its blocks; the
  Lloyd loop runs on the actors, which exchange partial sums directly, or for small data on
  one of them, given copies of all the blocks) or, where actors cannot be made,
  :class:`_FuturesEngine` (one pinned task per worker per pass);
* lazy Dask array -> :class:`_GraphEngine` (one delayed task per block per pass; where the
  array carries ``block_columns``, one reader per block, a Lloyd pass reads each block and
  steps on its columns in one task, with no row-major copy of the block);
* NumPy array -> :class:`_LocalEngine` (the kernels in-process).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Self

import numpy as np

from toolkit._compat import distributed_actor_call
from toolkit.faults import is_infrastructure_error
from toolkit.kmeans_dask.kernels import (
    aligned_f32,
    as_f32,
    combine_stats,
    k_stats,
    k_stats_source,
    kernel_centers,
    lloyd_advance,
    run_blocks,
)

__all__ = ["ACTOR_KERNELS", "ENGINES", "LLOYD_LOOPS", "Engine", "make_engine"]

#: Where an actor engine runs the Lloyd iterations (``lloyd_loop``): ``"gathered"``, one worker
#: holding copies of every block; ``"peers"``, each worker on its own blocks, exchanging partial
#: sums; ``"driver"``, one driver round trip per iteration (as the other engines always do);
#: ``"auto"``, gathered for data of at most :data:`_GATHER_VALUES` values, else peers.
LLOYD_LOOPS = ("auto", "gathered", "peers", "driver")
#: Where an actor runs a kernel (``actor_kernels``): on the worker's event loop, in the actor's
#: thread, or ``"auto"``: on the event loop while a worker holds at most :data:`_INLINE_VALUES`.
ACTOR_KERNELS = ("auto", "event_loop", "thread")
#: Actors run kernels on the worker's event loop (not a thread) while a worker holds at most
#: this many values: a Lloyd pass is then short enough not to hold up the worker's loop.
_INLINE_VALUES = 1 << 24
#: Rows per in-process block when the input is a NumPy array.
_LOCAL_BLOCK = 262_144
#: Data of at most this many values (262,144 rows x 16) is iterated on one worker (copies of
#: every block, one thread per worker holding blocks): a pass over it takes a few ms, no more
#: than exchanging partial sums between workers costs per iteration on a busy machine (see
#: benchmarks/RESULTS.md, issue 16).
_GATHER_VALUES = 1 << 22
#: Seconds a worker-side loop waits for a peer's partial sums before giving up: a safety net
#: for a driver that went away; a lost peer is normally reported by the driver (``abort``).
_PEER_TIMEOUT = 300.0

#: ``iterate``'s result: (centred centers, iterations run, the last iteration's
#: ``[sums | counts]`` when it left a cluster empty, else None).
Iterated = tuple[np.ndarray, int, np.ndarray | None]


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

    # -- the worker-side Lloyd loop -------------------------------------------------------------
    async def export(self) -> tuple[list[int], list[int], list[np.ndarray]]:
        """This worker's (block indices, row offsets, blocks), for a peer's :meth:`adopt`."""
        return self.indices, self.offsets, self.blocks

    async def adopt(self, peers: list[tuple[str, str]]) -> int:
        """Take copies of the peers' blocks (``(address, actor key)``), worker to worker, for
        a Lloyd loop on all the blocks here; other passes still use this worker's own."""
        from distributed import get_worker

        worker = get_worker()
        replies = await asyncio.gather(
            *[
                distributed_actor_call(worker, addr, key, "export", [])
                for addr, key in peers
            ]
        )
        idx, off, blk = list(self.indices), list(self.offsets), list(self.blocks)
        for reply in replies:
            if reply.get("status") != "OK":
                raise reply.get("exception") or RuntimeError("a peer worker failed")
            i, o, b = reply["result"]
            idx += list(i)
            off += list(o)
            blk += [aligned_f32(x) for x in b]
        order = sorted(range(len(idx)), key=idx.__getitem__)
        self._all = ([blk[j] for j in order], [idx[j] for j in order], [off[j] for j in order])
        return len(order)

    def _loop_blocks(self) -> tuple[list[np.ndarray], list[int], list[int]]:
        """(blocks, indices, offsets) the Lloyd loop runs on: adopted ones, else its own."""
        return self.__dict__.get("_all") or (self.blocks, self.indices, self.offsets)

    def _mailbox(self, token: str) -> dict[str, Any]:
        """Partial sums received for one loop (``token``), by iteration; created by whichever
        comes first, the loop or a faster peer's first message."""
        boxes = self.__dict__.setdefault("_boxes", {})
        if token not in boxes:
            boxes[token] = {"parts": {}, "event": asyncio.Event(), "abort": False}
        return boxes[token]

    async def put_stats(self, token: str, it: int, pairs: list) -> None:
        """A peer's ``[(block index, k_stats result), ...]`` for iteration ``it`` of a loop."""
        if token in self.__dict__.setdefault("_done", set()):
            return  # a loop that has ended (aborted): nothing waits for it
        box = self._mailbox(token)
        box["parts"].setdefault(it, []).append(pairs)
        box["event"].set()

    async def abort(self, token: str) -> None:
        """Stop a loop waiting for a peer that is gone (the driver saw it fail)."""
        box = self._mailbox(token)
        box["abort"] = True
        box["event"].set()

    async def _stats_in_threads(self, args: tuple, threads: int) -> list:
        """This worker's ``k_stats`` pairs, its blocks split into ``threads`` contiguous runs
        computed side by side (the kernel releases the GIL); the first run on this thread."""
        loop = asyncio.get_running_loop()
        blocks, indices, offsets = self._loop_blocks()
        runs = [r for r in np.array_split(np.arange(len(blocks)), threads) if r.size]

        def stats(run: np.ndarray) -> list:
            pick = run.tolist()
            return run_blocks(
                k_stats,
                [blocks[i] for i in pick],
                [indices[i] for i in pick],
                [offsets[i] for i in pick],
                args,
            )

        others = [loop.run_in_executor(None, stats, r) for r in runs[1:]]
        first = stats(runs[0])
        return first + [p for part in await asyncio.gather(*others) for p in part]

    @staticmethod
    def _acknowledged(sends: list[asyncio.Future]) -> list[asyncio.Future]:
        """The sends still in flight; raises what a finished one met (a lost peer: OSError)."""
        for t in sends:
            if t.done():
                reply = t.result()
                if reply.get("status") != "OK":
                    raise reply.get("exception") or RuntimeError("a peer worker failed")
        return [t for t in sends if not t.done()]

    @staticmethod
    async def _arrival(box: dict[str, Any], it: int, need: int) -> list:
        while len(box["parts"].get(it, ())) < need:
            if box["abort"]:
                raise RuntimeError("Lloyd loop aborted: a peer worker was lost")
            box["event"].clear()
            await box["event"].wait()
        return box["parts"].pop(it, [])

    async def lloyd_loop(
        self,
        token: str,
        peers: list[tuple[str, str]],
        o: np.ndarray,
        centers: np.ndarray,
        max_iter: int,
        tol_abs: float,
        inline: bool,
        threads: int = 1,
    ) -> Iterated:
        """:meth:`Engine.iterate` where the blocks are: each iteration this worker computes its
        blocks' partial sums, sends them to every peer (``(address, actor key)``) and waits for
        theirs; every worker then adds all blocks' sums in block order and takes the same
        M-step, so all reach the same centers and stop at the same iteration, with no driver
        or scheduler in between.  Runs on the worker's event loop (a coroutine, so peers'
        messages are taken in while it waits); the kernel runs inline while blocks are small
        (see :data:`_INLINE_VALUES`), in a thread otherwise.
        """
        from distributed import get_worker
        from distributed.protocol import to_serialize

        worker = get_worker()
        loop = asyncio.get_running_loop()
        blocks, indices, offsets = self._loop_blocks()
        box = self._mailbox(token)
        n = 0
        inflight: list[asyncio.Future] = []  # our sums on their way to the peers
        stopped: np.ndarray | None = None
        try:
            while n < max_iter:
                n += 1
                args = (o, *kernel_centers(centers))
                if threads > 1 and len(blocks) > 1:
                    mine = await self._stats_in_threads(args, threads)
                elif inline:
                    mine = run_blocks(k_stats, blocks, indices, offsets, args)
                else:
                    mine = await loop.run_in_executor(
                        None, run_blocks, k_stats, blocks, indices, offsets, args
                    )
                inflight += [
                    asyncio.ensure_future(
                        distributed_actor_call(
                            worker, addr, key, "put_stats",
                            [to_serialize(token), to_serialize(n), to_serialize(mine)],
                        )
                    )
                    for addr, key in peers
                ]
                # Wait for the peers' sums only: a peer's acknowledgement of ours would cost
                # the slower worker one more message latency per iteration; acknowledgements
                # are checked as they come in, and all of them before the loop returns.
                arrival = asyncio.ensure_future(self._arrival(box, n, len(peers)))
                try:
                    while not arrival.done():
                        done, _ = await asyncio.wait(
                            [arrival, *inflight],
                            timeout=_PEER_TIMEOUT,
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                        if not done:
                            raise TimeoutError(
                                f"no partial sums from a peer worker in {_PEER_TIMEOUT} s"
                            )
                        inflight = self._acknowledged(inflight)
                finally:
                    arrival.cancel()
                pairs = mine + [p for part in arrival.result() for p in part]
                pairs.sort(key=lambda p: p[0])
                total = combine_stats([r for _, r in pairs])
                new, converged = lloyd_advance(centers, total, tol_abs)
                if new is None:
                    stopped = total
                    break
                centers = new
                if converged:
                    break
            if inflight:
                await asyncio.wait(inflight, timeout=_PEER_TIMEOUT)
                if self._acknowledged(inflight):
                    raise TimeoutError(f"a peer worker did not answer in {_PEER_TIMEOUT} s")
            return centers, n, stopped
        finally:
            for t in inflight:
                t.cancel()
            self.__dict__.setdefault("_done", set()).add(token)
            self.__dict__.get("_boxes", {}).pop(token, None)


class Engine:
    kind: ClassVar[str] = "?"
    #: Called after every Lloyd pass the driver runs, with that pass's centred ``centers`` and
    #: combined ``[sums | counts]`` (progress lines, per-iteration metrics); None: nothing.
    on_pass: Callable[[np.ndarray, np.ndarray], None] | None = None

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

    def iterate(
        self, o: np.ndarray, centers: np.ndarray, max_iter: int, tol_abs: float
    ) -> Iterated:
        """Up to ``max_iter`` Lloyd iterations from centred ``centers``.

        Stops after the iteration that converges (squared shift ``<= tol_abs``) or that leaves
        a cluster empty; that one is returned unfinished, with its centers and combined
        ``[sums | counts]``, for the driver's empty-cluster rule.  Here: one pass per
        iteration from the driver; the actor engine runs the loop on the workers.
        """
        n = 0
        while n < max_iter:
            n += 1
            total = combine_stats(self.run(k_stats, o, *kernel_centers(centers)))
            if self.on_pass is not None:
                self.on_pass(centers, total)
            new, converged = lloyd_advance(centers, total, tol_abs)
            if new is None:
                return centers, n, total
            centers = new
            if converged:
                break
        return centers, n, None

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
        self,
        futures: list[Any],
        sizes: Sequence[int],
        n_features: int,
        client: Any,
        lloyd_loop: str = "auto",
        actor_kernels: str = "auto",
    ) -> None:
        super().__init__(futures, sizes, n_features, client)
        self._worker_loop = lloyd_loop != "driver"
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
        # Small data: one worker takes copies of the others' blocks and runs the Lloyd loop on
        # them all, on as many threads as there are workers holding blocks: a few ms of work
        # per iteration then waits for no peer.  Copied actor to actor, so the scheduler
        # keeps no replica: a lost worker still loses its blocks for the next fit, as before.
        self._home: Any = None
        self._threads = 1
        small = self.n_rows * self.n_features <= _GATHER_VALUES
        gather = lloyd_loop == "gathered" or (lloyd_loop == "auto" and small)
        if len(self._actors) > 1 and gather:
            rows = [sum(int(self.sizes[i]) for i in idx) for idx in self.groups.values()]
            h = max(range(len(rows)), key=lambda j: rows[j])
            others = [(a._address, a.key) for j, a in enumerate(self._actors) if j != h]
            self._actors[h].adopt(others).result()
            self._home, self._threads = self._actors[h], len(self._actors)
        # Small enough per worker that a pass blocks its event loop only briefly (tens of ms).
        most = max(sum(int(self.sizes[i]) for i in idx) for idx in self.groups.values())
        self._inline = actor_kernels == "event_loop" or (
            actor_kernels == "auto" and most * n_features <= _INLINE_VALUES
        )

    def _run(self, kernel: Callable[..., Any], args: tuple, subset: frozenset[int] | None) -> list:
        method = "run_inline" if self._inline else "run"
        calls = [getattr(a, method)(kernel, args, subset) for a in self._actors]  # all start first
        return [pair for c in calls for pair in c.result()]

    def iterate(
        self, o: np.ndarray, centers: np.ndarray, max_iter: int, tol_abs: float
    ) -> Iterated:
        """The loop on the workers (:meth:`_BlockHolder.lloyd_loop`): one call per worker for
        all the iterations, partial sums exchanged between the workers directly.  Every worker
        returns the same result; the first is kept."""
        if not self._worker_loop:
            return super().iterate(o, centers, max_iter, tol_abs)
        token = uuid.uuid4().hex
        if self._home is not None:  # every block on one worker: no peers
            calls = [
                self._home.lloyd_loop(
                    token, [], o, centers, max_iter, tol_abs, self._inline, self._threads
                )
            ]
            return self.client.sync(self._loops, calls, token)[0]
        peers = [(a._address, a.key) for a in self._actors]  # the actor's worker
        calls = [
            a.lloyd_loop(
                token, [p for p in peers if p != peers[i]], o, centers, max_iter, tol_abs,
                self._inline,
            )
            for i, a in enumerate(self._actors)
        ]
        outs = self.client.sync(self._loops, calls, token)
        return outs[0]

    async def _loops(self, calls: list, token: str) -> list:
        """The loops' results, or the first failure: then the others are stopped (they would
        wait for a lost peer) and that failure is raised, so a lost worker fails the fit as it
        would between driver passes and the search places the data again."""

        async def wait(call: Any) -> Any:
            return await call

        tasks = [asyncio.ensure_future(wait(c)) for c in calls]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t.exception() for t in tasks if t.done() and t.exception() is not None]
        if failed:
            for a in self._actors:
                # Not awaited: a lost worker's actor cannot answer (nor need it).
                with contextlib.suppress(Exception):
                    a.abort(token)
            for t in tasks:
                t.cancel()
            raise failed[0]
        return [t.result() for t in tasks]

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

    def __init__(self, X: Any, client: Any, paused_grace_s: float | None = None) -> None:
        super().__init__(X.chunks[0], X.shape[1])
        self.client = client
        self.paused_grace_s = paused_grace_s
        self._delayed = X.to_delayed().ravel().tolist()
        # Readers of X's blocks (one per block, picklable; toolkit.data sets them on its direct
        # Parquet arrays): a Lloyd pass then reads and steps in one task, straight from the
        # file's columns, instead of a read task that builds a row-major block for a step task.
        parts = getattr(X, "block_columns", None)
        self._parts = list(parts) if parts is not None and len(parts) == self.n_blocks else None

    def _run(self, kernel: Callable[..., Any], args: tuple, subset: frozenset[int] | None) -> list:
        import dask

        starts = self.starts[:-1].tolist()
        wanted = range(self.n_blocks) if subset is None else sorted(subset)
        if kernel is k_stats and self._parts is not None:
            tasks = [
                dask.delayed(run_blocks, pure=False)(
                    k_stats_source, [self._parts[i]], [i], [starts[i]], args
                )
                for i in wanted
            ]
        else:
            tasks = [
                dask.delayed(run_blocks, pure=False)(
                    kernel, [self._delayed[i]], [i], [starts[i]], args
                )
                for i in wanted
            ]
        if self.client is None:
            parts = dask.compute(*tasks)
        else:  # blocks re-read every pass: a worker paused for memory must not hold it for ever
            from toolkit.kmeans_dask.watch import gather_watched

            parts = gather_watched(self.client, self.client.compute(tasks), self.paused_grace_s)
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


def make_engine(
    X: Any,
    client: Any = None,
    engine: str = "auto",
    *,
    lloyd_loop: str = "auto",
    actor_kernels: str = "auto",
    paused_grace_s: float | None = None,
) -> tuple[Engine, Any]:
    """An engine for ``X`` (NumPy or Dask array) and the Dask array it iterates (or None).

    ``lloyd_loop`` (:data:`LLOYD_LOOPS`) and ``actor_kernels`` (:data:`ACTOR_KERNELS`) choose
    how an actor engine runs; the other engines ignore them.  ``paused_grace_s``: how long the
    block-by-block engine waits on a worker paused for memory (None: the default of
    :mod:`toolkit.kmeans_dask.watch`).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if lloyd_loop not in LLOYD_LOOPS:
        raise ValueError(f"lloyd_loop must be one of {', '.join(LLOYD_LOOPS)}, got {lloyd_loop!r}")
    if actor_kernels not in ACTOR_KERNELS:
        raise ValueError(
            f"actor_kernels must be one of {', '.join(ACTOR_KERNELS)}, got {actor_kernels!r}"
        )
    if not hasattr(X, "dask"):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-D array, got shape {X.shape}")
        return _LocalEngine(X), None
    X, futures, client = _prepare_dask(X, client)
    if futures is not None and client is not None and engine in ("auto", "actors", "futures"):
        if engine in ("auto", "actors"):
            try:
                return _ActorEngine(
                    futures, X.chunks[0], X.shape[1], client, lloyd_loop, actor_kernels
                ), X
            except Exception as exc:
                # Pinned tasks are the fallback where actors cannot be made, not a way round
                # lost blocks or a dead worker: those fail every engine, so they are raised
                # as they are (the search places the data again and retries the trial).
                if engine == "actors" or is_infrastructure_error(exc):
                    raise
        return _FuturesEngine(futures, X.chunks[0], X.shape[1], client), X
    return _GraphEngine(X, client, paused_grace_s), X
