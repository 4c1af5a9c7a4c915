"""Out-of-core fits (``backend=dask``, ``data.persist=false``): progress every pass, per-iteration
metrics on the run, a memory limit too small for a partition refused before the fit, and a
worker paused for memory ending the fit in one line within a bounded time.

One process LocalCluster of this module's own (one worker, one thread, a tight 600 MiB limit),
small Parquet files in a temp dir; every wait is bounded.
"""

from __future__ import annotations

import itertools
import logging
import time

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from _mlflow_store import init_store
from mlflow import MlflowClient

from toolkit import console
from toolkit.backends.dask_lloyd import DaskBackend
from toolkit.config import load_experiment
from toolkit.data import Dataset
from toolkit.errors import ConfigError
from toolkit.train import train

LIMIT = 600 * 2**20


@pytest.fixture(scope="module")
def tight():
    """A client on one process worker with a 600 MiB memory limit, closed by its own handles; the
    worker a fresh interpreter, as users' are (the memory figures here are about one)."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):  # conftest's SPAWNED_WORKERS
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit=LIMIT,
                               host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster, timeout="30s")
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    """Four Parquet files of 3,000 x 4 float32 rows around 3 well separated centres."""
    folder = tmp_path_factory.mktemp("parquet")
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0, 0], [10, 10, 0, 0], [0, 10, 10, 0]], dtype=np.float32)
    for i in range(4):
        X = centres[rng.integers(0, 3, 3000)] + rng.normal(0, 0.5, (3000, 4)).astype(np.float32)
        pd.DataFrame(X, columns=[f"f{j}" for j in range(4)]).to_parquet(folder / f"part-{i}.parquet")
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = init_store(tmp_path_factory.mktemp("ooc") / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.delenv("KMEANS_QUIET", raising=False)
        yield uri


def test_the_memory_check_measures_a_worker_with_its_kernels_loaded(tight):
    """The worker's own figure, taken once Numba and the kernels are in (first in the module: a
    fresh worker, which the heartbeat's figure describes before those imports)."""
    import sys

    from toolkit.kmeans_dask.preload import settled_memory

    def loaded() -> bool:
        return "toolkit.kmeans_dask.kernels" in sys.modules and "numba" in sys.modules

    assert not any(tight.run(loaded).values())
    rss = tight.run(settled_memory)
    assert all(tight.run(loaded).values())
    assert all(50 * 2**20 < v < LIMIT for v in rss.values()), rss


def test_out_of_core_train_reports_every_pass_and_logs_each_iteration(store, tight, parquet_dir, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr(console, "PASS_EVERY_S", 0.0)  # a line per pass (10 s apart by default)
    cfg = load_experiment(None, {
        "backend": "dask", "data.source": "file", "data.path": str(parquet_dir / "*.parquet"),
        "data.persist": False, "model.n_clusters": 3, "model.init": "k-means||", "model.max_iter": 4,
        "model.tol": 0.0, "tracking.log_plot": False, "tracking.experiment": "ooc",
    })
    outcome = train(cfg, client=tight)
    out = capsys.readouterr().out
    assert outcome.result.extra["engine"] == "graph"  # re-read every pass: out of core
    lines = [ln for ln in out.splitlines() if ln.startswith("fit dask: pass ")]
    phases = [ln.split("(", 1)[1].split(")", 1)[0] for ln in lines]
    assert phases[0] == "moments" and phases[-1] == "final inertia", out
    assert phases.count("init k-means||") >= 2  # the k-means|| rounds are passes too
    n_iter = outcome.result.n_iter
    assert phases.count("lloyd") == n_iter >= 1
    lloyd = [ln for ln in lines if "(lloyd)" in ln]
    assert all("inertia=" in ln and "shift=" in ln and ln.endswith(" s") for ln in lloyd), lloyd
    history = MlflowClient(tracking_uri=store).get_metric_history(outcome.run_id, "fit/inertia")
    assert sorted(m.step for m in history) == list(range(1, n_iter + 1))
    # Each pass's inertia (from its sums) is that of the previous centres: it never rises, and
    # ends above the final (row by row) inertia by no more than the last shift allows.
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert all(b <= a * (1 + 1e-9) for a, b in itertools.pairwise(values))
    assert values[-1] >= outcome.result.inertia * (1 - 1e-6)


def test_a_partition_too_big_for_the_memory_limit_is_refused_before_any_pass(tight):
    # 4M x 16 float32 rows in one block (244 MiB, ~1.4 GiB while read) against 600 MiB: never read.
    X = da.zeros((4_000_000, 16), dtype=np.float32, chunks=(4_000_000, 16))
    ds = Dataset(name="big", X=X, y=None, feature_names=[f"f{j}" for j in range(16)], source="big")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        DaskBackend(tight, persist=False).prepare(ds)
    assert time.perf_counter() - t0 < 5
    line = str(err.value)
    assert "\n" not in line and " -- fix: " in line
    assert "4,000,000 rows x 16 columns (244 MiB as float32" in line
    assert "memory limit of 600 MiB" in line and "cluster.memory_limit=" in line
    need = int(line.split("cluster.memory_limit=")[1].split("MiB")[0])
    assert need > 600


def test_small_partitions_pass_the_check(tight):
    X = da.zeros((40_000, 16), dtype=np.float32, chunks=(10_000, 16))
    ds = Dataset(name="small", X=X, y=None, feature_names=[f"f{j}" for j in range(16)], source="small")
    assert DaskBackend(tight, persist=False).prepare(ds).shape == (40_000, 16)


def _hog(limit: int) -> int:
    """Grow ballast in this worker (touched pages) to 86% of ``limit``, measured on the process
    itself: above Dask's pause fraction (80%), below where the nanny restarts it (95%).  A fixed
    size from a lagging memory metric has overshot into a restart on a loaded machine.  It returns
    at once: ``client.run`` runs it on the worker's event loop, where the memory monitor that
    pauses the worker cannot run until it returns."""
    import builtins

    import psutil
    proc = psutil.Process()
    ballast = builtins.__dict__.setdefault("_ooc_hog", [])  # test ballast
    while proc.memory_info().rss + 8 * 2**20 < 0.86 * limit:
        ballast.append(np.ones(2 * 2**20, dtype=np.float32))  # 8 MiB
    return sum(b.nbytes for b in ballast) // 2**20


def _free() -> None:
    import builtins

    builtins.__dict__.pop("_ooc_hog", None)


def test_a_worker_paused_for_memory_ends_the_fit_in_one_line(tight):
    from toolkit.config import ModelConfig

    X = da.random.default_rng(0).random((8_000, 4), chunks=(2_000, 4)).astype(np.float32)
    backend = DaskBackend(tight, persist=False, paused_grace_s=2.0)
    # Above the pause fraction (80%), below terminate (95%): the worker stops taking tasks.
    tight.run(_hog, LIMIT)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            statuses = [w["status"] for w in tight.scheduler_info(n_workers=-1)["workers"].values()]
            if statuses == ["paused"]:
                break
            time.sleep(0.2)
        assert statuses == ["paused"]
        t0 = time.perf_counter()
        with pytest.raises(ConfigError) as err:
            backend.fit(X, ModelConfig(n_clusters=2, init="random", max_iter=2))
        assert time.perf_counter() - t0 < 20
    finally:
        tight.run(_free)
    line = str(err.value)
    assert "\n" not in line and "paused for memory" in line and "cluster.memory_limit" in line
