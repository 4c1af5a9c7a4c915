"""``toolkit.cluster``: which scheduler is used, and that what was opened is closed."""

from __future__ import annotations

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
    assert info["dask.dashboard"].startswith("http")
    # The session cluster was not ours to close.
    assert client.submit(sum, [4, 5]).result() == 9


def test_scheduler_from_environment(client, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", client.scheduler.address)
    with dask_client(ClusterConfig()) as c:
        assert c.scheduler.address == client.scheduler.address
    assert c.status == "closed"


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
