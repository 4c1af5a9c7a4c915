"""Dask cluster management: a local cluster by default, an existing scheduler by address.

``dask_client(cfg, gpu=False)`` is a context manager that yields a ``distributed.Client`` and
closes what it opened (the client always, the cluster only if it started it), on success and
on failure.  ``gpu=True`` starts a ``dask_cuda.LocalCUDACluster`` instead of a ``LocalCluster``.
Before it yields, every worker is checked to run this driver's toolkit and library versions
(:mod:`toolkit.workers`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from toolkit.config import ClusterConfig
from toolkit.errors import BackendUnavailableError, ToolkitError, first_line
from toolkit.workers import check_workers

__all__ = [
    "BLOCKS_PER_WORKER",
    "block_count",
    "block_rows",
    "client_info",
    "cuda_cluster_options",
    "dask_client",
    "n_workers",
    "scatter_rows",
    "scheduler_address",
]

#: Data spread over a Dask cluster is cut into at least this many blocks per worker, so that
#: every worker has work even on small data and a slow block can be balanced by another.
BLOCKS_PER_WORKER = 2


def n_workers(client: Any) -> int:
    """Workers of ``client``'s cluster (1 without a client or before any worker joined)."""
    if client is None:
        return 1
    return max(1, len(client.scheduler_info().get("workers", {})))


def block_count(n_rows: int, workers: int, chunk_rows: int) -> int:
    """Blocks to cut ``n_rows`` rows into: :data:`BLOCKS_PER_WORKER` per worker at least, more
    when that leaves over ``chunk_rows`` rows in a block, and never more blocks than rows."""
    want = max(BLOCKS_PER_WORKER * max(1, workers), -(-n_rows // max(1, int(chunk_rows))))
    return max(1, min(n_rows, want))


def block_rows(n_rows: int, workers: int, chunk_rows: int) -> int:
    """Rows per block for :func:`block_count`'s rule: at most ``chunk_rows``, and few enough
    that every worker gets :data:`BLOCKS_PER_WORKER` blocks."""
    return max(1, min(int(chunk_rows), -(-n_rows // (BLOCKS_PER_WORKER * max(1, workers)))))


def scheduler_address(cfg: ClusterConfig) -> str | None:
    """The scheduler to connect to: the config's, else ``DASK_SCHEDULER_ADDRESS``, else None."""
    return cfg.scheduler_address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


#: Dask settings of ``cluster.diagnostics: lean``.  Dask's defaults keep an idle cluster busy
#: (the worker profiler samples every thread's stack every 10 ms, the tick checks the event
#: loop every 20 ms), and on a small machine that CPU is taken from the fits; lean keeps a
#: fraction of it.  Memory monitoring is unchanged.
LEAN_DIAGNOSTICS: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "200ms",
    "distributed.admin.system-monitor.interval": "2s",
}


def _diagnostics(cfg: ClusterConfig) -> Any:
    """The Dask config a cluster is created under (workers take a copy when they start)."""
    import dask

    return dask.config.set(LEAN_DIAGNOSTICS if cfg.diagnostics == "lean" else {})


#: ``cluster.processes=auto`` runs trials on threads only for in-memory data up to this many
#: values (rows x features; 250k x 16 is 4 million).  Above it, the GIL that scikit-learn's
#: k-means++ initialisation holds (it serialises two threads' inits) costs more than starting
#: worker processes and copying the data to them; figures in benchmarks/RESULTS.md.
THREAD_WORKERS_MAX_VALUES = 4_000_000


#: ``cluster.processes=auto`` runs a data-parallel fit of in-memory data (blobs, a bundled
#: dataset) on threads up to this many values (2 GiB as float32).  Its kernels release the GIL, so
#: threads compute side by side, with the data in this process once: 1M x 16 peaked at 661 MiB
#: over the whole process tree against 1,043 MiB with two worker processes (benchmarks/memory.py).
#: Above it, processes: a threaded worker's memory monitor counts the whole driver process
#: against its own limit, and would pause the workers of a fit of a big in-memory array.
DATA_THREADS_MAX_VALUES = 512_000_000


def use_processes(cfg: ClusterConfig, threads_suit: bool = False) -> bool:
    """Whether a local cluster for ``cfg`` runs its workers as processes.

    ``threads_suit``: the work is trials whose fits release the GIL, which threads of this
    process run side by side without starting processes or copying the data to them.  A
    ``memory_limit`` of the user's own means processes: it limits each worker process, and a
    threaded worker would count the whole driver against it (see ``ClusterConfig``).
    """
    if cfg.processes == "auto":
        return not threads_suit or cfg.limits_each_worker
    return bool(cfg.processes)


def _local_cluster(cfg: ClusterConfig, processes: bool) -> Any:
    from distributed import LocalCluster

    with _diagnostics(cfg):
        return LocalCluster(
            n_workers=cfg.n_workers,
            threads_per_worker=cfg.threads_per_worker,
            memory_limit=cfg.memory_limit,
            processes=processes,
            dashboard_address=cfg.dashboard_address,
            silence_logs=logging.ERROR,
            **_loopback(processes),
        )


#: Where the HTTP server of every worker the toolkit starts listens (its /health, /metrics and,
#: with Bokeh installed, its dashboard pages): this machine only, a free port.
WORKER_HTTP_ADDRESS = "127.0.0.1:0"


def _loopback(processes: bool) -> dict[str, Any]:
    """LocalCluster keywords that keep a cluster for this process alone off the network.

    Worker processes (and their nannies) listen on ``host`` and serve HTTP there.  Threaded
    workers talk in-process ("inproc://", where a host is not accepted), and Dask then serves
    each worker's HTTP endpoints on every interface (0.0.0.0 and ::) unless given an address.
    Only the scheduler's dashboard follows ``cluster.dashboard_address``: the one explicit way
    to listen beyond loopback.
    """
    if processes:
        return {"host": "127.0.0.1"}
    return {"worker_dashboard_address": WORKER_HTTP_ADDRESS}


def cuda_cluster_options(cfg: ClusterConfig) -> dict[str, Any]:
    """``LocalCUDACluster`` keywords for ``cfg``: one worker per GPU, one thread each.

    ``cluster.n_workers`` is honoured only when set explicitly (its default, 2, is for CPU
    clusters: a Dask-CUDA cluster has one worker per visible GPU, and asking for more workers
    than GPUs is an error); ``cluster.memory_limit`` is each worker's host-memory limit, as on
    a CPU cluster.  ``threads_per_worker`` is always 1: a GPU runs one CUDA stream per worker.
    """
    kwargs: dict[str, Any] = {
        "threads_per_worker": 1,
        "dashboard_address": cfg.dashboard_address,
        # As for LocalCluster: scheduler, nannies, workers and the workers' HTTP servers on
        # loopback (LocalCUDACluster hands these to LocalCluster), not reachable from the network.
        "host": "127.0.0.1",
        "worker_dashboard_address": WORKER_HTTP_ADDRESS,
        "memory_limit": cfg.memory_limit,
    }
    if "n_workers" in cfg.model_fields_set:
        kwargs["n_workers"] = cfg.n_workers
    if cfg.device_memory_limit:
        kwargs["device_memory_limit"] = cfg.device_memory_limit
    if cfg.rmm_pool_size:
        kwargs["rmm_pool_size"] = cfg.rmm_pool_size
    return kwargs


def _cuda_cluster(cfg: ClusterConfig) -> Any:  # pragma: no cover - needs a GPU
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise BackendUnavailableError(
            f"GPU backends need dask-cuda ({exc.name or 'dask_cuda'} is not installed)",
            'pip install ".[gpu]" on a machine with an NVIDIA GPU, or use backend sklearn/dask',
        ) from None
    kwargs = cuda_cluster_options(cfg)
    try:
        with _diagnostics(cfg):
            return LocalCUDACluster(**kwargs)
    except Exception as exc:  # NVML / CUDA driver errors
        raise BackendUnavailableError(
            f"cannot start a LocalCUDACluster: {type(exc).__name__}: {first_line(exc)}",
            "run GPU backends on a machine with an NVIDIA GPU and driver",
        ) from None


def _use_rmm_for_cupy() -> None:  # pragma: no cover - needs a GPU
    # With an RMM pool on the workers, CuPy must allocate through RMM or it bypasses the pool.
    import cupy
    import rmm.allocators.cupy

    cupy.cuda.set_allocator(rmm.allocators.cupy.rmm_cupy_allocator)


@contextlib.contextmanager
def _dask_logs_at_error() -> Iterator[None]:
    # The logger, not only Dask's own console handler: where logging was configured first
    # (pytest, a notebook, an app) Dask adds no handler and its records reach the root's.
    log = logging.getLogger("distributed")
    old = log.level
    log.setLevel(max(old, logging.ERROR))
    try:
        yield
    finally:
        log.setLevel(old)


@contextlib.contextmanager
def dask_client(cfg: ClusterConfig, gpu: bool = False, threads_suit: bool = False) -> Iterator[Any]:
    """Yield a Dask client; close the client (and any cluster it started) on exit.

    ``threads_suit``: the work suits threaded workers (see :func:`use_processes`); with
    ``cluster.processes=auto`` a local CPU cluster then runs its workers as threads.

    Every worker is checked first (:func:`toolkit.workers.check_workers`): it must run this
    driver's toolkit and backend libraries; ``cfg.ship_package`` ships the toolkit to workers
    whose copy differs.

    Raises:
        ToolkitError: the scheduler address cannot be reached, or a worker runs another toolkit
            or other library versions.
        BackendUnavailableError: ``gpu=True`` without dask-cuda or a GPU.
    """
    from distributed import Client

    address = scheduler_address(cfg)
    cluster = None
    client = None
    quiet = contextlib.ExitStack()
    try:
        if address:
            try:
                client = Client(address, timeout="10s")
            except OSError as exc:
                raise ToolkitError(
                    f"cannot reach Dask scheduler {address}: {exc}",
                    "start it (dask scheduler) or unset cluster.scheduler_address/DASK_SCHEDULER_ADDRESS",
                ) from None
        else:
            # Dask quiets its loggers only while the cluster starts; the scheduler (and threaded
            # workers) live in this process, and their INFO lines when comms close at shutdown
            # (a traceback included) would reach the user's console, worst when a run fails.
            quiet.enter_context(_dask_logs_at_error())
            cluster = _cuda_cluster(cfg) if gpu else _local_cluster(cfg, use_processes(cfg, threads_suit))
            client = Client(cluster)
        # Before the first task (the RMM setup below is one): a worker running another toolkit
        # or other library versions would fail, or compute something else, only later.
        check_workers(client, gpu=gpu, ship=cfg.ship_package)
        if gpu and cfg.rmm_pool_size:
            client.run(_use_rmm_for_cupy)
        yield client
    finally:
        with quiet:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()


def _bound_host(client: Any) -> str | None:
    """The address the dashboard of a scheduler in this process listens on, else None."""
    server = getattr(getattr(getattr(client, "cluster", None), "scheduler", None), "http_server", None)
    from toolkit._compat import tornado_listening_sockets

    sockets = tornado_listening_sockets(server)
    if not isinstance(sockets, dict):
        return None
    hosts = {str(sock.getsockname()[0]) for sock in sockets.values()}
    return hosts.pop() if len(hosts) == 1 else None


def _dashboard_link(client: Any) -> str:
    """``client.dashboard_link`` with the host the dashboard really listens on.

    Dask builds the link from the scheduler's address, which for a threaded local cluster
    ("inproc://<the machine's IP>/...") is not where a dashboard bound to 127.0.0.1 answers.
    """
    link = str(client.dashboard_link or "")
    host = _bound_host(client)
    if not link or host is None or host in ("0.0.0.0", "::"):  # any interface: the link works
        return link
    parts = urlsplit(link)
    if parts.hostname == host or parts.port is None:
        return link
    netloc = f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def client_info(client: Any) -> dict[str, str]:
    """Tags describing the cluster: scheduler, dashboard link, workers, threads.

    The link's tag says whether it can still work when someone opens the run later.  A
    scheduler reached by address (``cluster.scheduler_address``) lives on after the run:
    ``dask.dashboard`` is a live link.  A cluster in this process (one the toolkit starts and
    closes with the run, or a caller's ``LocalCluster``) is gone once the run ends, so its link
    is tagged ``dask.dashboard_at_run_time``: still the page to open while the run is RUNNING
    (a long search), and afterwards plainly a record, not a link that ought to answer.  Kept
    rather than dropped for that live use, and because its port matches the cluster's logs.
    """
    info = client.scheduler_info()
    workers = info.get("workers", {})
    in_process = getattr(client, "cluster", None) is not None
    return {
        "dask.scheduler": str(client.scheduler.address),
        ("dask.dashboard_at_run_time" if in_process else "dask.dashboard"): _dashboard_link(client),
        "dask.workers": str(len(workers)),
        "dask.threads": str(sum(w.get("nthreads", 0) for w in workers.values())),
    }


#: A received block is a view into the message buffer, often at an odd address, which keeps
#: NumPy and BLAS off their fast paths: one aligned, owned copy for good.  NumPy's own function
#: (pickled by reference), so the workers need not import this module (pydantic, the config).
_own_aligned = functools.partial(np.require, requirements=("C", "A", "O"))


def scatter_rows(X: np.ndarray, client: Any, chunk_rows: int = 250_000) -> Any:
    """``X`` as a persisted Dask array whose row blocks are spread evenly over the workers.

    Every worker gets the same number of blocks (:func:`block_count`'s rule: at least
    :data:`BLOCKS_PER_WORKER`, at most ``chunk_rows`` rows each), sent straight to it with
    ``Client.scatter``.  A data-parallel pass then costs the same on every worker;
    ``client.persist(da.from_array(X))`` leaves placement to the scheduler (which may put most
    blocks on one worker) and embeds ``X`` in the task graph.

    Args:
        X: ``(n, d)`` NumPy array.
        client: ``distributed.Client``.
        chunk_rows: most rows per block.

    Returns:
        A ``dask.array.Array`` backed by futures, blocks in row order, one column chunk.
    """
    import dask
    import dask.array as da
    from distributed import wait

    workers = sorted(client.scheduler_info().get("workers", {}))
    w = max(1, len(workers))
    n = int(X.shape[0])
    blocks = block_count(n, w, chunk_rows)
    blocks = min(max(1, n), -(-blocks // w) * w)  # a multiple of the workers, none empty
    rows = -(-n // blocks)
    X = np.ascontiguousarray(X)  # no copy when it is (rows of a view are then C-contiguous)
    pieces = [X[s : s + rows] for s in range(0, n, rows)]
    futures: list[Any] = [None] * len(pieces)
    for j, worker in enumerate(workers or [None]):
        mine = list(range(j, len(pieces), w))  # round robin: worker j gets blocks j, j+w, ...
        sent = client.scatter([pieces[i] for i in mine], workers=worker and [worker], hash=False)
        for i, f in zip(mine, sent, strict=True):
            futures[i] = f
    parts = [
        da.from_delayed(dask.delayed(f), shape=p.shape, dtype=p.dtype)
        for f, p in zip(futures, pieces, strict=True)
    ]
    out = da.concatenate(parts)
    if not all(str(a).startswith("inproc://") for a in workers):
        # The copy runs where each block lives (it is the only input), so placement is kept.
        # Threaded workers (inproc://) got the very views of X, aligned: no second copy of it.
        out = out.map_blocks(_own_aligned, dtype=X.dtype)
    out = client.persist(out)
    wait(out)
    return out
