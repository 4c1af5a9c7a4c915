"""Shared fixtures: one Dask LocalCluster per session, a temp sqlite MLflow store per test."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

import dask
import numpy as np
import pytest
from _mlflow_run import run_env

REPO = Path(__file__).resolve().parents[1]

# Dask's worker processes start from a fork server in this suite, as in Dask's own: each new
# worker is a fork of one process that imported Dask, NumPy and pandas once, instead of a fresh
# interpreter importing them again; the suite starts many (clusters of its own, the
# benchmarks', every driver subprocess's), and its run time is CPU-bound.  Set here, before any
# cluster starts, and in the environment the suite's subprocesses inherit; an exported value
# wins.  ``spawn`` stays the default users get: the test of a killed driver's
# process tree (tests/test_chaos.py) runs its driver with it.
START_METHOD = "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"
os.environ.setdefault(START_METHOD, "forkserver")
dask.config.set({"distributed.worker.multiprocessing-method": os.environ[START_METHOD]})
#: What this process's fork server imports once for every worker forked from it: Dask's own
#: list, plus what a worker would import on its first trial or fit (scikit-learn, the
#: toolkit's scoring, Numba and the Lloyd kernels), about 1.8 s of CPU per worker otherwise.
#: Only names importable from anywhere: the fork server does not get this process's sys.path.
WORKER_PRELOAD = ["distributed", "dask.array", "numpy", "pandas", "sklearn.cluster", "sklearn.metrics",
                  "toolkit.metrics", "toolkit.search.trials", "numba", "toolkit.kmeans_dask.kernels"]
if os.environ[START_METHOD] == "forkserver":
    from distributed.utils import get_mp_context

    # Dask sets its own list on its first call; this one, made after it, is the one used.
    get_mp_context().set_forkserver_preload(WORKER_PRELOAD)

#: Dask config for a test about a fresh worker process (what is imported in it, what it loads
#: from a shipped copy): started as users' are, with ``spawn``, nothing preloaded.
SPAWNED_WORKERS = {"distributed.worker.multiprocessing-method": "spawn"}


@pytest.fixture()
def spawned_workers():
    """Worker processes started during the test are fresh interpreters (:data:`SPAWNED_WORKERS`)."""
    with dask.config.set(SPAWNED_WORKERS):
        yield

#: Seconds each test module took in one whole run (``pytest --record-module-costs``): the suite
#: runs on several processes, a module at a time (``--dist loadfile``), and starting the longest
#: modules first keeps one of them from running alone at the end.
MODULE_COSTS = Path(__file__).with_name("module_costs.json")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record-module-costs", action="store_true",
                     help=f"write each module's seconds in this run to {MODULE_COSTS.name} (run the whole suite)")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: a worker per core, at most 4 (each may start a Dask cluster of its own and
    entry-point subprocesses; one worker more than cores was tried and showed no clear gain:
    its contention ate about what it filled of the waits, benchmarks/RESULTS.md)."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def _module_of(nodeid: str) -> str:
    return nodeid.partition("::")[0]


def _order_by_cost(items: list[pytest.Item]) -> None:
    """Longest modules first (costs from the last recorded run; unknown ones after, in their
    collection order), tests within a module in their own order: the sort is stable, and a
    module's tests are together in the collection and share one key."""
    try:
        costs = json.loads(MODULE_COSTS.read_text())
    except (OSError, ValueError):
        return
    items.sort(key=lambda it: -costs.get(_module_of(it.nodeid), 0.0))


_spent: Counter[str] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Runs where the reports arrive: the main process, also under xdist.
    _spent[_module_of(report.nodeid)] += report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not session.config.getoption("--record-module-costs") or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    costs = {m: round(s, 1) for m, s in sorted(_spent.items(), key=lambda kv: -kv[1]) if s >= 1.0}
    MODULE_COSTS.write_text(json.dumps(costs, indent=1) + "\n")


def _gpu_available() -> bool:
    from toolkit.env import gpu_available

    return gpu_available(("cuml", "cupy"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _order_by_cost(items)
    if not any("gpu" in item.keywords for item in items):
        return
    if _gpu_available():
        return
    from toolkit.env import gpu_problem

    problem = gpu_problem(("cuml", "cupy"))  # says whether cuML, CuPy or the device is missing
    skip = pytest.mark.skip(reason=f"needs cuML and a CUDA GPU, but {problem} (pip install '.[gpu-cu13]' "
                                   "or '.[gpu]' on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _private_key_home(tmp_path_factory):
    """Signing keys made for test stores go to a session temp dir, never the user's home; no key
    configured outside the tests reaches them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
        for var in ("KMEANS_LIFECYCLE_SIGNING_KEY", "KMEANS_LIFECYCLE_TRUSTED_KEYS",
                    "KMEANS_LIFECYCLE_ALLOW_PICKLE", "KMEANS_LIFECYCLE_ALLOW_UNSIGNED"):
            mp.delenv(var, raising=False)
        yield


@pytest.fixture(scope="session")
def dask_cluster():
    """One 2-worker LocalCluster for the whole session, closed by its own handle.

    With the toolkit's lean diagnostics, as clusters it starts have: Dask's defaults keep an idle
    cluster at about a tenth of a core, for the whole session, on every test process.  Its memory
    monitors and event-loop ticks run once a second, not every 100-200 ms: that halves what it
    costs idle again, and no test of it is about how fast a worker reacts to its memory (those
    that are start clusters of their own)."""
    import dask
    from distributed import LocalCluster

    from toolkit.cluster import LEAN_DIAGNOSTICS

    idle = {"distributed.worker.memory.monitor-interval": "1s", "distributed.admin.tick.interval": "1s"}
    with dask.config.set({**LEAN_DIAGNOSTICS, **idle}):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, memory_limit="2GiB",
            dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
        )
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def gpu_client():
    """One Dask-CUDA cluster (a worker per visible GPU) for the ``gpu`` tests, closed by its own
    client; only ever started by a GPU test that runs, i.e. where cuML and a GPU exist."""
    from toolkit.cluster import dask_client
    from toolkit.config import ClusterConfig

    with dask_client(ClusterConfig(), gpu=True) as c:
        yield c


@pytest.fixture(scope="session")
def client(dask_cluster):
    from distributed import Client

    c = Client(dask_cluster)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture()
def tracking_uri(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store in a temp dir, set as the tracking and registry URI; MLflow's
    process-wide URIs (and their environment variables) are restored afterwards.

    A copy of a migrated store (``init_store``): MLflow's schema migrations cost ~2 s of CPU per
    new sqlite file, in this process or in each ``mlflow run`` subprocess that opens it first."""
    import mlflow
    from _mlflow_store import init_store, mlflow_pointed_at

    uri = init_store(tmp_path / "mlflow.db")
    with mlflow_pointed_at(uri, monkeypatch):
        while mlflow.active_run():
            mlflow.end_run()
        yield uri
        while mlflow.active_run():
            mlflow.end_run()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A migrated sqlite store per test module, as tracking and registry URI (env and mlflow)."""
    from _mlflow_store import init_store, mlflow_pointed_at

    uri = init_store(tmp_path_factory.mktemp("store") / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp, mlflow_pointed_at(uri, mp):
        yield uri


@pytest.fixture(scope="session")
def shared_mlflow_server(tmp_path_factory):
    """One real ``mlflow server`` (sqlite, artifacts proxied) for the tests that need a server but
    not a fresh one; each uses names of its own in it.  Stopped at the end of the session."""
    from _servers import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture(scope="session")
def blobs_small():
    """6 tight, well separated 2-D blobs (2,000 rows) with ground-truth labels."""
    from sklearn.datasets import make_blobs

    X, y = make_blobs(n_samples=2000, n_features=2, centers=6, cluster_std=0.1, random_state=0)
    return X.astype(np.float32), y.astype(np.int32)


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable


@pytest.fixture()
def subprocess_env(tracking_uri):
    """Environment for real ``mlflow run`` subprocesses pointed at the temp store."""
    return run_env(tracking_uri)
