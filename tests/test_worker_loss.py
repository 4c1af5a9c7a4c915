"""A search survives a lost Dask worker: lost trials are run again, not failed or counted as done.

Worker processes are SIGKILLed in the middle of real searches, on a 2-worker LocalCluster of
this module's own (its nannies start a replacement for each killed worker; the session's
shared cluster is never touched).  Each disturbed search is compared with the same search run
undisturbed: same seed, random sampler, so the parameters of a trial depend only on its number.
Nothing is mocked: real Optuna studies, real MLflow runs in a sqlite store, real workers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from _records import children, running
from distributed import Client, LocalCluster, futures_of
from distributed.client import FutureCancelledError
from distributed.comm.core import CommClosedError
from distributed.scheduler import KilledWorker
from mlflow import MlflowClient
from optuna.trial import TrialState

from toolkit.backends import get_backend
from toolkit.config import MetricsConfig, ModelConfig, load_experiment
from toolkit.data import Dataset
from toolkit.errors import ConfigError, ToolkitError
from toolkit.search import search
from toolkit.search.study import study_storage
from toolkit.search.trials import (
    INFRASTRUCTURE_ATTR,
    DataParallelRunner,
    TrialParallelRunner,
    is_infrastructure_error,
    wait_for_workers,
)

pytestmark = pytest.mark.slow

N_TRIALS = 8
#: Rows per backend: enough for the kill to land inside a data-parallel fit.
ROWS = {"sklearn": 4000, "dask": 20_000, "dask-ml": 20_000}


# -- fixtures and helpers -----------------------------------------------------------------


class _LossyCluster:
    """This module's own 2-worker cluster (worker processes under nannies): ours to kill."""

    def __init__(self) -> None:
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None
        self.start()

    def start(self) -> None:
        import dask

        from toolkit.cluster import LEAN_DIAGNOSTICS

        with dask.config.set(LEAN_DIAGNOSTICS):  # as the toolkit's clusters: an idle one costs little CPU
            self.cluster = LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, memory_limit="2GiB",
                dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL,
            )
        self.client = Client(self.cluster)

    def close(self) -> None:
        try:
            if self.client is not None:
                self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()
            self.client = self.cluster = None


@pytest.fixture(scope="module")
def lossy_cluster():
    bed = _LossyCluster()
    try:
        yield bed
    finally:
        bed.close()


@pytest.fixture()
def full_client(lossy_cluster):
    """The module's client, once both workers are up again (a previous test killed some).

    A nanny restarts its killed worker within seconds on a quiet machine, but on a loaded CI
    host a replacement has been seen never to arrive; what these tests are about is the search,
    not the nanny, so a cluster that stays short gets replaced by a fresh one.
    """
    try:
        lossy_cluster.client.wait_for_workers(2, timeout=30)
    except TimeoutError:
        lossy_cluster.close()
        lossy_cluster.start()
        lossy_cluster.client.wait_for_workers(2, timeout=120)
    return lossy_cluster.client


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A migrated sqlite MLflow store for this module; the working directory moves to a temp
    dir too, so default artifact roots land there."""
    from _mlflow_store import init_store

    root = tmp_path_factory.mktemp("worker-loss")
    uri = init_store(root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            mp.delenv(var, raising=False)
        mp.setenv("KMEANS_QUIET", "1")
        mp.chdir(root)
        yield uri


@pytest.fixture(scope="module")
def mlc(store):
    return MlflowClient(tracking_uri=store)


def make_cfg(backend: str, experiment: str, storage: Path, **overrides: Any):
    return load_experiment(None, {
        "backend": backend,
        "tracking.experiment": experiment,
        "tracking.log_plot": False,
        "registry.register_best": False,
        "data.n_samples": ROWS[backend],
        "model.init": "k-means++",
        "search.storage": str(storage),
        "search.sampler": "random",
        "search.n_trials": N_TRIALS,
        "search.space.init": None,
        "search.space.n_clusters.low": 3,
        "search.space.n_clusters.high": 8,
        "metrics.silhouette_sample": 1000,
        **overrides,
    })


class Killer(threading.Thread):
    """SIGKILLs worker processes once the study in ``storage`` has ``after`` complete trials.

    With ``kill_all`` false one worker dies: one that holds the only copy of some of the search's
    placed blocks.  A data-parallel fit may copy a block to the other worker (a stolen task reads
    it there) and until the scheduler drops the copy, losing the block's first home loses
    nothing: no fit would notice, and the test would prove nothing.
    """

    def __init__(self, client: Client, storage: Path, after: int, kill_all: bool) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.pids = client.run(os.getpid)  # worker address -> pid
        self.kill_all = kill_all
        self.storage, self.after = storage, after
        self.before = set(client.who_has())  # keys of earlier searches: not this search's data
        self.placed: set | None = None  # this search's keys in memory at its first complete trial
        self.killed_at: float | None = None
        self.states_at_kill: list[str] = []
        self.stop = threading.Event()

    def _states(self, storage: Any) -> list[str]:
        names = optuna.get_all_study_names(storage)
        if not names:
            return []
        study = optuna.load_study(study_name=names[0], storage=storage)
        return [t.state.name for t in study.get_trials(deepcopy=False)]

    def _victims(self) -> list[int]:
        if self.kill_all:
            return sorted(self.pids.values())
        held = {k: v for k, v in self.client.who_has().items() if k in (self.placed or ())}
        sole = [v[0] for v in held.values() if len(v) == 1 and v[0] in self.pids]
        return [self.pids[max(set(sole), key=sole.count)]] if sole else []

    def run(self) -> None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        while not self.storage.exists() and not self.stop.wait(0.02):
            pass
        storage = JournalStorage(JournalFileBackend(str(self.storage)))
        while not self.stop.is_set():
            states = self._states(storage)
            if self.placed is None and "COMPLETE" in states:
                self.placed = {k for k, v in self.client.who_has().items() if v} - self.before
            if states.count("COMPLETE") >= self.after:
                victims = self._victims()
                if victims:
                    for pid in victims:
                        os.kill(pid, signal.SIGKILL)
                    self.killed_at, self.states_at_kill = time.monotonic(), states
                    return
            self.stop.wait(0.02)


def _lost_search(client: Client, mlc: MlflowClient, tmp_path: Path, backend: str, kill_all: bool) -> None:
    """Run ``backend``'s search undisturbed, then again killing workers after 2 trials; the
    second must end normally with the same result and every trial FINISHED."""
    base_cfg = make_cfg(backend, f"undisturbed-{backend}", tmp_path / "base.log")
    base = search(base_cfg, client=client)
    assert base.counts["complete"] == N_TRIALS

    client.wait_for_workers(2, timeout=60)
    storage = tmp_path / "lossy.log"
    killer = Killer(client, storage, after=2, kill_all=kill_all)
    killer.start()
    try:
        outcome = search(make_cfg(backend, f"lossy-{backend}", storage), client=client)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed_at is not None, "the search ended before any worker was killed"
    assert "COMPLETE" in killer.states_at_kill and killer.states_at_kill.count("COMPLETE") < N_TRIALS, \
        killer.states_at_kill

    kids = children(mlc, outcome.parent_run_id)
    assert len(kids) == N_TRIALS
    assert {k.info.status for k in kids} == {"FINISHED"}, [k.data.tags.get("error") for k in kids]
    # The kill cost some trial an attempt: it was run again rather than failed.
    attempts = [int(k.data.tags.get("trial.attempts", "1")) for k in kids]
    assert max(attempts) >= 2, (attempts, killer.states_at_kill)
    assert not any("trial.infrastructure_failure" in k.data.tags for k in kids)
    assert mlc.get_run(outcome.parent_run_id).info.status == "FINISHED"
    assert not running(mlc)
    assert outcome.counts == {"complete": N_TRIALS, "failed": 0, "pruned": 0}
    assert outcome.best_params == base.best_params
    assert outcome.best_value == pytest.approx(base.best_value, rel=1e-6)
    assert outcome.best_fit is not None  # refitted on the data as placed after the loss


# -- searches that lose workers -----------------------------------------------------------


def test_trial_parallel_search_survives_losing_every_worker(store, mlc, full_client, tmp_path):
    """sklearn, trial-parallel: both workers killed, so the broadcast data is lost with them;
    the trials in flight are scattered again and run again, none fails."""
    _lost_search(full_client, mlc, tmp_path, "sklearn", kill_all=True)


@pytest.mark.parametrize("backend", ["dask", "dask-ml"])
def test_data_parallel_search_survives_a_lost_worker(store, mlc, full_client, tmp_path, backend):
    """dask / dask-ml, data-parallel: one worker killed during a fit; its blocks are placed
    again from the source and the fit run again."""
    _lost_search(full_client, mlc, tmp_path, backend, kill_all=False)


# -- the pieces, on purpose-lost data -----------------------------------------------------


def _blobs(n: int) -> Dataset:
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=n, n_features=2, centers=4, cluster_std=0.2, random_state=0)
    return Dataset("blobs", X.astype(np.float32), None, ["x0", "x1"], "blobs")


@pytest.mark.parametrize("backend", ["dask", "dask-ml"])
def test_data_parallel_runner_places_lost_data_again(full_client, backend):
    dataset = _blobs(4000)
    be = get_backend(backend)(client=full_client)
    runner = DataParallelRunner(be, be.prepare(dataset), None, MetricsConfig(silhouette_sample=500), dataset)
    lost = futures_of(runner.X)
    full_client.cancel(lost)  # as if their workers had died
    runner.submit(0, ModelConfig(n_clusters=4, random_state=0))
    (res,) = runner.results()
    assert res.ok and res.attempts == 2 and not res.infra, res.error
    assert not set(futures_of(runner.X)) & set(lost)
    assert {f.status for f in futures_of(runner.X)} == {"finished"}


def test_data_parallel_runner_without_source_reports_infrastructure_failure(full_client):
    """No dataset to place the data from: the lost fit is not retried, and says why it failed."""
    dataset = _blobs(2000)
    be = get_backend("dask")(client=full_client)
    runner = DataParallelRunner(be, be.prepare(dataset), None, MetricsConfig(silhouette_sample=500))
    full_client.cancel(futures_of(runner.X))
    runner.submit(0, ModelConfig(n_clusters=4, random_state=0))
    (res,) = runner.results()
    assert not res.ok and res.infra and res.attempts == 1


def _never_runs(block: Any) -> Any:
    return block


class _StallingDaskBackend(get_backend("dask")):
    """The real ``dask`` backend, except that its first fit first waits on a task that no worker
    may run (restricted to an address with no worker), over a block of the data that a worker
    which stays holds: a fit waiting for good after another worker was lost."""

    def _fit(self, X: Any, params: ModelConfig, init_centers: Any = None) -> Any:
        if not self.__dict__.get("stalled"):
            self.stalled = True
            held = self.client.who_has(futures_of(X))
            block = next(f for f in futures_of(X) if self.keeper in held.get(f.key, ()))
            self.waiting.set()
            self.client.submit(_never_runs, block, workers=["tcp://127.0.0.1:9"], allow_other_workers=False,
                               pure=False).result()
        return super()._fit(X, params, init_centers)


def test_data_parallel_fit_stalled_after_a_lost_worker_is_given_up_and_run_again(full_client):
    """A fit still running ``stall_after_loss_s`` after its cluster lost a worker is given up (its
    data cancelled) and run again on the data placed again, within the search's bounds."""
    dataset = _blobs(4000)
    be = _StallingDaskBackend(client=full_client)
    keeper, victim = sorted(full_client.nthreads())
    be.keeper, be.waiting = keeper, threading.Event()
    runner = DataParallelRunner(be, be.prepare(dataset), None, MetricsConfig(silhouette_sample=500), dataset,
                                stall_after_loss_s=2.0)
    runner.submit(0, ModelConfig(n_clusters=4, random_state=0))
    got: list = []
    fitting = threading.Thread(target=lambda: got.extend(runner.results()), daemon=True)
    start = time.monotonic()
    fitting.start()
    assert be.waiting.wait(60)
    os.kill(full_client.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
    fitting.join(timeout=90)
    assert not fitting.is_alive(), "the stalled fit was never given up"
    (res,) = got
    assert res.ok and res.attempts == 2 and not res.infra, res.error
    assert time.monotonic() - start < 60


def test_trial_parallel_runner_scatters_lost_data_again(full_client):
    dataset = _blobs(2000)
    runner = TrialParallelRunner(full_client, "sklearn", dataset.X, None, MetricsConfig(silhouette_sample=500))
    lost = runner._X
    full_client.cancel(lost)  # every replica gone, as when all its workers die
    for i in range(3):
        runner.submit(i, ModelConfig(n_clusters=4, random_state=i))
    got = []
    while runner.pending():
        got += runner.results()
    assert sorted(r.key for r in got) == [0, 1, 2]
    assert all(r.ok and r.attempts == 2 and not r.infra for r in got), [r.error for r in got]
    assert runner._X is not lost and runner._X.status == "finished"


def test_no_workers_is_a_one_line_toolkit_error():
    cluster = LocalCluster(n_workers=0, processes=False, dashboard_address=":0",
                           silence_logs=logging.CRITICAL)
    try:
        with Client(cluster) as client:
            start = time.monotonic()
            with pytest.raises(ToolkitError) as err:
                wait_for_workers(client, 2, replace_wait_s=0.2, no_workers_s=1.0)
            assert 1.0 <= time.monotonic() - start < 10
    finally:
        cluster.close()
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("the Dask cluster has no workers") and " -- fix: " in text
    assert not isinstance(err.value, ConfigError)


@pytest.mark.parametrize(("exc", "infra"), [
    (FutureCancelledError("x", "lost dependencies"), True),
    (concurrent.futures.CancelledError(), True),
    (asyncio.CancelledError(), True),
    (KilledWorker("x", None, 3), True),
    (CommClosedError("in <TCP (closed)>"), True),
    (OSError("Unable to contact Actor's worker"), True),
    (ConnectionResetError(104, "Connection reset by peer"), True),
    (TimeoutError("No valid workers found"), True),
    (ValueError("Worker holding Actor was lost"), True),
    (RuntimeError("cancelled for reason: already forgotten"), True),
    (RuntimeError("wrapped"), False),
    (ValueError("n_clusters=9 is larger than the 5 samples"), False),
    (FileNotFoundError(2, "No such file or directory"), False),
    (OSError(28, "No space left on device"), False),
    (MemoryError(), False),
    (ToolkitError("the worker was lost", "restart it"), False),
])
def test_infrastructure_error_rules(exc, infra):
    assert is_infrastructure_error(exc) is infra


def test_infrastructure_error_seen_through_its_cause():
    try:
        try:
            raise CommClosedError("stream closed")
        except CommClosedError as inner:
            raise RuntimeError("the fit failed") from inner
    except RuntimeError as outer:
        assert is_infrastructure_error(outer)


# -- resume -------------------------------------------------------------------------------


def test_infrastructure_failure_is_not_done_on_resume(store, mlc, full_client, tmp_path):
    """A trial the cluster lost after its last retry is failed with the infrastructure mark;
    a resume runs another trial in its place (a genuinely failed trial would count as done)."""
    storage = tmp_path / "optuna.log"
    cfg = make_cfg("sklearn", "resume-infra", storage, **{"search.n_trials": 2})
    first = search(cfg, client=full_client)
    study = optuna.load_study(study_name=first.study_name, storage=study_storage(str(storage)))
    lost = study.ask()
    lost.suggest_int("n_clusters", 3, 8)
    lost.set_user_attr(INFRASTRUCTURE_ATTR, True)  # what the search loop sets after the last retry
    study.tell(lost, state=TrialState.FAIL)

    resumed = search(make_cfg("sklearn", "resume-infra", storage,
                              **{"search.n_trials": 3, "search.resume": True}), client=full_client)

    assert resumed.resumed and resumed.study_name == first.study_name
    trials = optuna.load_study(study_name=first.study_name, storage=study_storage(str(storage))).trials
    states = [t.state for t in trials]
    assert len(trials) == 4, states  # 2 done + the lost one + the one run in its place
    assert states.count(TrialState.COMPLETE) == 3
    assert not running(mlc)
