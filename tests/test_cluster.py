"""``toolkit.cluster``: which scheduler is used, and that what was opened is closed."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

from toolkit.cluster import client_info, dask_client, scatter_rows, scheduler_address
from toolkit.config import ClusterConfig


def test_scheduler_address_precedence(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert scheduler_address(ClusterConfig()) is None
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://env:8786")
    assert scheduler_address(ClusterConfig()) == "tcp://env:8786"
    assert scheduler_address(ClusterConfig(scheduler_address="tcp://cfg:8786")) == "tcp://cfg:8786"


def test_connect_to_existing_scheduler_leaves_it_running(client, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    address = client.scheduler.address
    with dask_client(ClusterConfig(scheduler_address=address)) as c:
        assert c is not client
        assert c.submit(sum, [1, 2, 3]).result() == 6
        info = client_info(c)
    assert c.status == "closed"
    assert info["dask.scheduler"] == address
    assert info["dask.workers"] == "2" and info["dask.threads"] == "2"
    assert info["dask.dashboard"].startswith("http")  # an outside scheduler: the link stays live
    assert "dask.dashboard_at_run_time" not in info
    # The session cluster was not ours to close.
    assert client.submit(sum, [4, 5]).result() == 9


def test_scheduler_from_environment(client, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", client.scheduler.address)
    with dask_client(ClusterConfig()) as c:
        assert c.scheduler.address == client.scheduler.address
    assert c.status == "closed"


def test_a_memory_limit_of_your_own_runs_local_workers_as_processes(monkeypatch):
    """A threaded worker's memory monitor measures the whole driver process: under a limit of the
    user's own it paused both workers of a trial-parallel search for good.  With
    ``processes=auto`` such a limit now starts worker processes (each limited, as the key says);
    with ``processes=false`` it is refused in one line naming both keys and the fix."""
    from toolkit.cluster import use_processes
    from toolkit.config import load_experiment
    from toolkit.errors import ConfigError

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert not use_processes(ClusterConfig(), threads_suit=True)  # small trials: threads, as before
    assert not use_processes(ClusterConfig(memory_limit="0"), threads_suit=True)  # "0": no limit
    with dask_client(ClusterConfig(n_workers=1, memory_limit="1GiB"), threads_suit=True) as c:
        (pid,) = c.run(os.getpid).values()
        (limit,) = (w["memory_limit"] for w in c.scheduler_info()["workers"].values())
    assert pid != os.getpid() and limit == 2**30
    with pytest.raises(ConfigError) as exc:
        load_experiment(None, {"cluster.processes": False, "cluster.memory_limit": "512MiB"})
    text = str(exc.value)
    assert "\n" not in text and "memory_limit=512MiB" in text and "processes=false" in text
    assert "cluster.processes=true" in text


def test_local_cluster_is_closed_on_error(monkeypatch):
    # Explicitly about start/close: a small threaded LocalCluster, closed by dask_client itself.
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    cfg = ClusterConfig(n_workers=1, threads_per_worker=1, processes=False)
    cluster = None
    try:
        with pytest.raises(RuntimeError, match="boom"), dask_client(cfg) as c:
            cluster = c.cluster
            assert len(c.scheduler_info()["workers"]) == 1
            raise RuntimeError("boom")
        assert c.status == "closed"
        assert cluster is not None and cluster.status.name == "closed"
    finally:
        if cluster is not None and cluster.status.name != "closed":
            cluster.close()


def test_local_cluster_keeps_dask_info_lines_off_the_console_until_closed(monkeypatch):
    # The scheduler and threaded workers log in this process; Dask quiets them only while the
    # cluster starts, so a comm closed at shutdown printed an INFO traceback on a failed run.
    import logging

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    class _Console(logging.Handler):  # beside Dask's own stderr handler: sees what it prints
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    # Not caplog: Dask's loggers stop at "distributed" (no propagation to the root) unless
    # something earlier in the process changed that, so what caplog hears depends on test order.
    console = _Console()
    logging.getLogger("distributed").addHandler(console)
    before = logging.getLogger("distributed").level
    try:
        with dask_client(ClusterConfig(n_workers=1, threads_per_worker=1, processes=False)) as c:
            assert c.submit(sum, [1, 2]).result() == 3
            logging.getLogger("distributed.batched").info("Batched Comm Closed (test line)")
            logging.getLogger("distributed.worker").error("an error still shows")
    finally:
        logging.getLogger("distributed").removeHandler(console)
    assert "Batched Comm Closed (test line)" not in console.lines
    assert "an error still shows" in console.lines
    assert logging.getLogger("distributed").level == before  # the user's logging is theirs again


@pytest.mark.parametrize("rows", [10_001, 3])
def test_scatter_rows_spreads_blocks_evenly_and_keeps_order(client, rows):
    from distributed import futures_of

    X = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    dX = scatter_rows(X, client, chunk_rows=1000)
    futures = futures_of(dX)
    assert len(futures) == dX.numblocks[0] and dX.numblocks[1] == 1
    holders = [w for ws in client.who_has(futures).values() for w in ws]
    per_worker = {w: holders.count(w) for w in set(holders)}
    if rows > 1000:  # 11 blocks of <= 1000 rows, rounded up to 12 = 6 per worker
        assert sorted(per_worker.values()) == [6, 6] and max(dX.chunks[0]) <= 1000
    else:  # fewer rows than 2 blocks per worker: one row per block, none empty
        assert dX.chunks[0] == (1, 1, 1) and len(per_worker) == 2

    def aligned(dask_worker):
        keys = {f.key for f in futures}
        return all(v.flags.aligned and v.flags.c_contiguous and v.ctypes.data % 4 == 0
                   for k, v in dask_worker.data.items() if k in keys)

    assert all(client.run(aligned).values())
    np.testing.assert_array_equal(dX.compute(), X)  # last: computing copies blocks around


def _profiling(dask_worker=None) -> bool:
    import dask

    return bool(dask.config.get("distributed.worker.profile.enabled"))


@pytest.mark.parametrize("diagnostics, profiling", [("lean", False), ("full", True)])
def test_diagnostics_setting_reaches_the_workers_and_leaves_the_driver_alone(monkeypatch, diagnostics, profiling):
    import dask
    import distributed  # noqa: F401  (loads Dask's distributed config)

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    before = dask.config.get("distributed.admin.tick.interval")
    cfg = ClusterConfig(n_workers=1, memory_limit="1GiB", diagnostics=diagnostics)
    with dask_client(cfg) as c:
        assert list(c.run(_profiling).values()) == [profiling]
        ticks = c.run(lambda: __import__("dask").config.get("distributed.admin.tick.interval"))
        assert set(ticks.values()) == {"200ms" if diagnostics == "lean" else before}
    # The settings were scoped to the cluster's creation: this process's config is unchanged.
    assert dask.config.get("distributed.admin.tick.interval") == before
    assert dask.config.get("distributed.worker.profile.enabled") is True


def _listening(port: int) -> set[str]:
    """Addresses this process listens on at ``port``."""
    import psutil

    return {
        c.laddr.ip for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }  # fmt: skip


def _listeners() -> set[tuple[int, str, int]]:
    """(pid, address, port) of every listening socket of this process and its descendants
    (worker processes and their nannies included)."""
    import psutil

    me = psutil.Process()
    found = set()
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a child of another fixture that ended meanwhile
            found |= {(proc.pid, c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
    return found


def _dashboard_port(c) -> int:
    return int(c.scheduler_info()["services"]["dashboard"])


def test_local_cluster_listens_on_loopback_only(monkeypatch):
    # The default config, with processes (the tcp:// path, where host= applies) and one worker.
    from urllib.parse import urlsplit

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    before = _listeners()
    with dask_client(ClusterConfig(n_workers=1, memory_limit="1GiB")) as c:
        # Every socket the cluster opened, in this process and in the worker's and nanny's.
        opened = _listeners() - before
        worker_pids = set(c.run(os.getpid).values())
        assert worker_pids <= {pid for pid, _, _ in opened}  # the worker processes were seen
        assert {host for _, host, _ in opened} == {"127.0.0.1"}, opened
        port = _dashboard_port(c)
        assert _listening(port) == {"127.0.0.1"}
        assert urlsplit(c.dashboard_link).hostname == "127.0.0.1"
        info = client_info(c)
        # A cluster of this process ends with its run: the link is a record, not a live tag.
        assert "dask.dashboard" not in info
        assert urlsplit(info["dask.dashboard_at_run_time"]).hostname == "127.0.0.1"
        assert urlsplit(info["dask.dashboard_at_run_time"]).port == port
        assert c.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(w.startswith("tcp://127.0.0.1:") for w in c.scheduler_info()["workers"])
        assert _listening(int(c.scheduler.address.rsplit(":", 1)[1])) == {"127.0.0.1"}


def test_threaded_cluster_tag_names_the_bound_host(monkeypatch):
    # Threaded clusters talk "inproc://<the machine's IP>/..."; Dask's link takes that IP,
    # but the dashboard answers on 127.0.0.1 only: the tag must say where it really is.
    from urllib.parse import urlsplit

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    before = _listeners()
    with dask_client(ClusterConfig(n_workers=2, processes=False)) as c:
        # The scheduler's dashboard and each threaded worker's HTTP server (/health, /metrics),
        # all in this process: Dask binds the workers' to 0.0.0.0 and :: unless told.
        opened = _listeners() - before
        assert {pid for pid, _, _ in opened} == {os.getpid()}
        assert len(opened) == 3 and {host for _, host, _ in opened} == {"127.0.0.1"}, opened
        port = _dashboard_port(c)
        assert _listening(port) == {"127.0.0.1"}
        link = urlsplit(client_info(c)["dask.dashboard_at_run_time"])
        assert (link.hostname, link.port) == ("127.0.0.1", port)


@pytest.mark.parametrize("address, processes", [("0.0.0.0:0", False), (":0", True)])
def test_dashboard_address_can_expose_the_dashboard(monkeypatch, address, processes):
    # ":port" binds every interface too (as the config's description says), host= or not.
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    cfg = ClusterConfig(n_workers=1, processes=processes, memory_limit="1GiB" if processes else "auto",
                        dashboard_address=address)
    with dask_client(cfg) as c:
        assert _listening(_dashboard_port(c)) & {"0.0.0.0", "::"}
        # any interface: Dask's link works
        assert client_info(c)["dask.dashboard_at_run_time"] == c.dashboard_link


def test_cuda_cluster_options_follow_the_config():
    """What a Dask-CUDA cluster is started with (checked without a GPU): one worker per GPU
    unless n_workers is set explicitly, the host memory limit, loopback only."""
    from toolkit.cluster import cuda_cluster_options
    from toolkit.config import ClusterConfig

    default = cuda_cluster_options(ClusterConfig())
    assert "n_workers" not in default  # 2 is a CPU default: every visible GPU gets a worker
    assert default["threads_per_worker"] == 1 and default["host"] == "127.0.0.1"
    assert default["memory_limit"] == "auto" and default["dashboard_address"] == "127.0.0.1:0"
    # LocalCUDACluster(**kwargs) hands these to LocalCluster (dask-cuda 26.10's local_cuda_cluster.py):
    # the scheduler, nannies and workers, and each worker's HTTP server, on loopback.
    assert default["worker_dashboard_address"] == "127.0.0.1:0"
    assert cuda_cluster_options(ClusterConfig(dashboard_address="0.0.0.0:8787"))["host"] == "127.0.0.1"
    chosen = cuda_cluster_options(ClusterConfig(n_workers=1, memory_limit="8GiB", rmm_pool_size="20GB",
                                                device_memory_limit="0.8"))
    assert chosen["n_workers"] == 1 and chosen["memory_limit"] == "8GiB"
    assert chosen["rmm_pool_size"] == "20GB" and chosen["device_memory_limit"] == "0.8"
