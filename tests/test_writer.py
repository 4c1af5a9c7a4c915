"""``toolkit.tracking.writer``: child runs written off the driver's thread, one at a time.

A writer process costs seconds to start (MLflow's imports), so the tests that are not about its
start-up share one (``shared``); its jobs are builtins (``os.getpid``, ``os.nice``, ``int``,
``time.sleep``) where the test's own functions would make the writer import this module.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from _mlflow_store import init_store
from mlflow import MlflowClient

from toolkit.search.record import log_trial_run
from toolkit.tracking import get_or_create_experiment, tracked_run
from toolkit.tracking.writer import MAX_DEATHS_PER_JOB, ChildWriter, WriterError


@pytest.fixture(scope="module")
def shared():
    """One writer process for the module, started with ``KMEANS_LIFECYCLE_WRITER_NICE=0`` (on a
    loaded test machine a nice-10 writer waits minutes for a core); with the niceness its first
    process got (the dead-writer test replaces that process)."""
    w = ChildWriter(process=True)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KMEANS_LIFECYCLE_WRITER_NICE", "0")
            mp.delenv("KMEANS_LIFECYCLE_SPEEDUPS", raising=False)
            first_nice = w.submit(os.nice, 0).result(timeout=300)[0]  # a bound: minutes when loaded
        yield w, first_nice
    finally:
        w.shutdown()


def _small_search(experiment: str, tmp_path: Path, rows: int, trials: int, *extra: str) -> Any:
    """A search on the blobs experiment small enough for one in-process worker thread."""
    from toolkit.config import load_experiment

    return load_experiment(Path(__file__).resolve().parents[1] / "experiments" / "blobs.yaml", [
        f"tracking.experiment={experiment}", f"search.storage={tmp_path}/study.log", f"data.n_samples={rows}",
        f"search.n_trials={trials}", "metrics.silhouette_sample=100", "tracking.log_plot=false",
        "search.baseline_sample=0", "registry.register_best=false", "cluster.n_workers=1", "cluster.processes=false",
        *extra])


@pytest.fixture(params=["process", "thread"])
def writer(request):
    if request.param == "process":
        yield request.getfixturevalue("shared")[0]
        return
    w = ChildWriter(process=False)
    try:
        yield w
    finally:
        w.shutdown()


def test_writes_children_where_the_submitter_points(writer, tmp_path, monkeypatch):
    stores = [init_store(tmp_path / f"{i}" / "mlflow.db") for i in range(2)]
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    parents, futures = [], []
    for i, uri in enumerate(stores):
        # The store changes between jobs: each job goes to the store of its submission.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        get_or_create_experiment("w")
        with tracked_run("w", f"parent-{i}", {}) as parent:
            parents.append(parent)
        for n in range(3):
            futures.append(writer.submit(
                log_trial_run, parent, "study", n, {"n_clusters": n + 2}, {"objective": 0.5 + n},
                {"backend": "sklearn"}, "FINISHED", 1.0e9, 1.0e9 + 2, None, None,
            ))
    results = [f.result(timeout=120) for f in futures]
    assert all(isinstance(rid, str) and wall > 0 and 0 < cpu for rid, wall, cpu in results)
    for i, uri in enumerate(stores):
        mlc = MlflowClient(tracking_uri=uri)
        exp = mlc.get_experiment_by_name("w")
        kids = mlc.search_runs(
            [exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parents[i]}'"
        )
        assert sorted(r.data.params["n_clusters"] for r in kids) == ["2", "3", "4"]
        assert {r.info.status for r in kids} == {"FINISHED"}
        assert {r.info.run_id for r in kids} == {rid for rid, *_ in results[3 * i : 3 * i + 3]}


def test_process_writer_runs_elsewhere_and_errors_come_back(writer):
    pid, *_ = writer.submit(os.getpid).result(timeout=120)
    assert (pid != os.getpid()) == (writer.kind == "process")
    with pytest.raises(ValueError, match="no such run"):
        writer.submit(int, "no such run").result(timeout=60)  # ValueError: invalid literal ...
    assert writer.submit(os.getpid).result(timeout=60)[0] == pid  # still the same writer after an error


@pytest.mark.slow
def test_a_dead_writer_is_replaced_and_every_run_written_once(shared, tracking_uri, monkeypatch):
    """kill -9 of the writer process while it writes: a new one takes every unfinished job, in
    order, and each trial has exactly one FINISHED child run.  A job that kills its writer each
    time it runs fails after MAX_DEATHS_PER_JOB deaths with an error naming the writer."""
    monkeypatch.setenv("KMEANS_LIFECYCLE_WRITER_NICE", "0")  # its successors too: not starved
    get_or_create_experiment("w")
    with tracked_run("w", "parent", {}) as parent:
        pass
    w, _ = shared  # not about start-up: the module's writer (its successors are left to the module)
    deaths = w.deaths
    pid, *_ = w.submit(os.getpid).result(timeout=120)
    first = w.submit(log_trial_run, parent, "study", 0, {"n_clusters": 2}, {"objective": 0.5}, {},
                     "FINISHED", 1.0e9, 1.0e9 + 2)
    # A builtin: nothing to import, so the writer is in it at once; replayed in full by the successor.
    busy = w.submit(time.sleep, 4.0)
    trials = [w.submit(log_trial_run, parent, "study", n, {"n_clusters": n + 2}, {"objective": 0.5 + n}, {},
                       "FINISHED", 1.0e9, 1.0e9 + 2) for n in range(1, 5)]
    first.result(timeout=60)
    time.sleep(0.5)  # in the sleeping job now
    os.kill(pid, signal.SIGKILL)
    # Bounds for a successor's start (MLflow's imports): minutes on a loaded 2-core machine.
    busy.result(timeout=300)  # replayed in the new writer
    second, *_ = w.submit(os.getpid).result(timeout=300)
    ids = [first.result()[0]] + [f.result(timeout=60)[0] for f in trials]
    assert second not in (pid, os.getpid()) and w.deaths == deaths + 1 and w.kind == "process"

    with pytest.raises(WriterError, match="writer process died 2 times while running _exit"):
        w.submit(os._exit, 1).result(timeout=300)
    third, *_ = w.submit(os.getpid).result(timeout=300)
    assert third not in (pid, second, os.getpid()) and w.deaths == deaths + 1 + MAX_DEATHS_PER_JOB
    w.shutdown()  # every job ended (a later submit starts a new writer)
    kids = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("w").experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in kids) == [0, 1, 2, 3, 4]
    assert {r.info.status for r in kids} == {"FINISHED"} and {r.info.run_id for r in kids} == set(ids)


def test_a_replayed_trial_run_is_written_once(tracking_uri):
    """A writer that died after writing a run, or half of one: the replay finds the whole run,
    or discards the half-written one and writes it again; never a second run for the trial."""
    from toolkit.tracking import writer

    get_or_create_experiment("w")
    with tracked_run("w", "parent", {}) as parent:
        pass
    args = (parent, "study", 0, {"n_clusters": 2}, {"objective": 0.5}, {}, "FINISHED", 1.0e9, 1.0e9 + 2)
    whole = log_trial_run(*args)
    mlc = MlflowClient()
    exp = mlc.get_experiment_by_name("w").experiment_id
    half = mlc.create_run(exp, tags={"mlflow.parentRunId": parent, "optuna.trial_number": "1"}).info.run_id
    token = writer._REPLAY.set(True)
    try:
        assert log_trial_run(*args) == whole
        rewritten = log_trial_run(parent, "study", 1, *args[3:])
    finally:
        writer._REPLAY.reset(token)
    kids = mlc.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted((r.data.tags["optuna.trial_number"], r.info.status) for r in kids) == [
        ("0", "FINISHED"), ("1", "FINISHED")]
    assert {r.info.run_id for r in kids} == {whole, rewritten} and rewritten != half
    assert mlc.get_run(half).info.lifecycle_stage == "deleted"


def test_writer_process_yields_the_cpu_to_the_fits(monkeypatch):
    """By default nice 10 more than the driver (a writer of its own: the priority is set at start)."""
    monkeypatch.delenv("KMEANS_LIFECYCLE_WRITER_NICE", raising=False)
    ours = os.nice(0)
    w = ChildWriter(process=True)
    try:
        theirs, *_ = w.submit(os.nice, 0).result(timeout=300)  # nice 10 on a loaded machine: slow
    finally:
        w.shutdown()
    assert theirs == min(19, ours + 10)
    assert os.nice(0) == ours  # the driver keeps its priority


def test_writer_niceness_setting_0_keeps_the_drivers_priority(shared):
    """``KMEANS_LIFECYCLE_WRITER_NICE=0`` (the module's writer was started with it)."""
    assert shared[1] == os.nice(0)


def test_thread_writer_leaves_the_driver_priority_alone(monkeypatch):
    monkeypatch.setenv("KMEANS_LIFECYCLE_WRITER_NICE", "10")
    ours = os.nice(0)
    w = ChildWriter(process=False)
    try:
        assert w.submit(os.nice, 0).result(timeout=60)[0] == ours
    finally:
        w.shutdown()


def test_a_writer_that_dies_at_start_up_stops_the_search_in_one_line(tracking_uri, tmp_path, monkeypatch):
    """The writer process's first import fails (``PYTHONPATH`` in its environment names a
    ``multiprocessing`` that raises ImportError; the driver, started before, is unaffected): the
    search stops after its first trial with one line naming the writer, its parent run FAILED,
    no run left RUNNING (was: the writes went silently to a thread of the driver).  A tiny
    search on threads: no other process is started while the variable is set."""
    from toolkit.search import search
    from toolkit.tracking.writer import shared_writer

    broken = tmp_path / "broken" / "multiprocessing"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('planted: the writer cannot import multiprocessing')\n")
    shared_writer().shutdown()  # the search starts the next writer process: with the variable below
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(broken.parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("KMEANS_QUIET", "1")
    monkeypatch.setenv("KMEANS_LIFECYCLE_WRITER", "process")  # 3 trials: auto would write from a thread
    cfg = _small_search("writer-start", tmp_path, 200, 3)
    started = time.monotonic()
    try:
        with pytest.raises(WriterError) as err:
            search(cfg)
    finally:
        shared_writer().prefer(False)  # later tests in this process write from a thread again
    assert time.monotonic() - started < 240  # bounded: no wait for writes that never come
    line = str(err.value)
    assert "\n" not in line and "writer process died at start-up" in line and "-- fix:" in line
    mlc = MlflowClient(tracking_uri=tracking_uri)
    runs = mlc.search_runs([mlc.get_experiment_by_name("writer-start").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.status for r in parents] == ["FAILED"]
    assert "RUNNING" not in {r.info.status for r in runs}


# -- auto: a thread, or a process for many trials on small data -----------------------------------


def test_auto_keeps_the_thread_for_few_trials_or_big_data(monkeypatch):
    """Under ``auto`` fewer than AUTO_MIN_TRIALS trials, or trials on more than AUTO_MAX_VALUES
    values (fits longer than a write), keep a thread writer a thread."""
    from toolkit.tracking.writer import AUTO_MAX_VALUES, AUTO_MIN_TRIALS, writer_for

    monkeypatch.delenv("KMEANS_LIFECYCLE_WRITER", raising=False)
    w = ChildWriter(process=False)
    try:
        assert writer_for(AUTO_MIN_TRIALS - 1, 600, w) is w
        assert w.submit(os.getpid).result(timeout=60)[0] == os.getpid()
        assert writer_for(AUTO_MIN_TRIALS, AUTO_MAX_VALUES + 1, w) is w
        assert w.submit(os.getpid).result(timeout=60)[0] == os.getpid() and w.kind == "thread"
    finally:
        w.shutdown()


def test_the_writer_kind_changes_only_between_jobs(monkeypatch):
    """A change asked for while a job is unfinished leaves the jobs on the writer they were
    queued on, in order; the next job submitted after they end goes to the chosen kind."""
    w = ChildWriter(process=False)
    try:
        slow = w.submit(time.sleep, 0.5)
        w.prefer(True)
        assert w.kind == "thread" and not slow.done()
        assert w.submit(os.getpid).result(timeout=60)[0] == os.getpid()
        slow.result(timeout=60)
        w.prefer(False)
        assert w.kind == "thread"
    finally:
        w.shutdown()


def test_a_process_asked_for_where_none_can_start_keeps_the_running_thread(monkeypatch):
    """A driver whose main module a writer process could not import (``python -``) writes from
    a thread whatever is asked: asking for a process then leaves the idle thread as it is,
    rather than replacing it with another thread."""
    import toolkit.tracking.writer as writer_mod

    monkeypatch.setattr(writer_mod, "_main_reimportable", lambda: False)
    w = ChildWriter(process=False)
    try:
        w.submit(os.getpid).result(timeout=60)
        pool = w._pool
        w.prefer(True)
        assert w._pool is pool and w.kind == "thread"
        assert w.submit(os.getpid).result(timeout=60)[0] == os.getpid()
    finally:
        w.shutdown()


@pytest.mark.parametrize("value", ["proces", "2"])
def test_a_writer_kind_that_is_none_is_one_line_naming_the_fix(monkeypatch, value):
    from toolkit.errors import ConfigError
    from toolkit.tracking.writer import writer_for

    monkeypatch.setenv("KMEANS_LIFECYCLE_WRITER", value)
    with pytest.raises(ConfigError) as err:
        writer_for(40, 600, ChildWriter(process=False))
    line = str(err.value)
    assert "\n" not in line and f"KMEANS_LIFECYCLE_WRITER='{value}'" in line
    assert "auto, process, thread" in line and "-- fix:" in line


def test_a_search_of_many_short_trials_writes_from_a_process_that_is_kept_until_thread(
        tracking_uri, tmp_path, monkeypatch):
    """The search asks for its writer by its trials and data: 32 trials on 300 rows x 2 take a
    process (and the record is whole).  A later small search keeps the process (its start is
    paid), as ``process`` does for any search; ``thread`` turns it back into a thread, so later
    tests in this process pay for no writer start."""
    from toolkit.search import search
    from toolkit.tracking.writer import AUTO_MIN_TRIALS, shared_writer, writer_for

    monkeypatch.delenv("KMEANS_LIFECYCLE_WRITER", raising=False)
    monkeypatch.setenv("KMEANS_LIFECYCLE_WRITER_NICE", "0")
    monkeypatch.setenv("KMEANS_QUIET", "1")
    w = shared_writer()
    w.prefer(False)
    cfg = _small_search("auto-writer", tmp_path, 300, AUTO_MIN_TRIALS, "search.sampler=random")

    def pid() -> int:
        return w.submit(os.getpid).result(timeout=300)[0]

    try:
        out = search(cfg)
        first = pid()
        kind = w.kind
        writer_for(2, 600)  # a small search after it
        kept = pid()
        monkeypatch.setenv("KMEANS_LIFECYCLE_WRITER", "process")
        writer_for(2, 10**9)
        kept_for_process = pid()
        monkeypatch.setenv("KMEANS_LIFECYCLE_WRITER", "thread")
        writer_for(AUTO_MIN_TRIALS, 600)
        back = pid()
    finally:
        w.prefer(False)
    assert kind == "process" and first != os.getpid()
    assert kept == kept_for_process == first
    assert back == os.getpid() and w.kind == "thread"
    mlc = MlflowClient(tracking_uri=tracking_uri)
    kids = mlc.search_runs([mlc.get_experiment_by_name("auto-writer").experiment_id],
                           filter_string=f"tags.`mlflow.parentRunId` = '{out.parent_run_id}'")
    assert sorted(int(k.data.tags["optuna.trial_number"]) for k in kids) == list(range(AUTO_MIN_TRIALS))
    assert {k.info.status for k in kids} == {"FINISHED"}


def test_a_search_with_a_writer_kind_that_is_none_fails_before_any_run(tracking_uri, tmp_path, monkeypatch):
    """Checked before the study and the parent run: nothing is left behind to clean up."""
    from toolkit.errors import ConfigError
    from toolkit.search import search
    from toolkit.tracking.writer import shared_writer

    shared_writer()  # this process's writer exists already, as after an earlier search
    monkeypatch.setenv("KMEANS_LIFECYCLE_WRITER", "threads")
    cfg = _small_search("bad-writer", tmp_path, 200, 2)
    with pytest.raises(ConfigError, match="KMEANS_LIFECYCLE_WRITER='threads' is not a writer kind"):
        search(cfg)
    mlc = MlflowClient(tracking_uri=tracking_uri)
    exp = mlc.get_experiment_by_name("bad-writer")
    assert exp is None or mlc.search_runs([exp.experiment_id]) == []
    assert not (tmp_path / "study.log").exists()
