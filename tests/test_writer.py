"""``toolkit.tracking.writer``: child runs written off the driver's thread, one at a time."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

import pytest
from _mlflow_store import init_store
from mlflow import MlflowClient

from toolkit.search.record import log_trial_run
from toolkit.tracking import get_or_create_experiment, tracked_run
from toolkit.tracking.writer import ChildWriter


def _boom(message: str) -> None:
    raise ValueError(message)


def _pid() -> int:
    return os.getpid()


@pytest.fixture(params=["process", "thread"])
def writer(request):
    w = ChildWriter(process=request.param == "process")
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
    pid, *_ = writer.submit(_pid).result(timeout=120)
    assert (pid != os.getpid()) == (writer.kind == "process")
    with pytest.raises(ValueError, match="no such run"):
        writer.submit(_boom, "no such run").result(timeout=60)
    assert writer.submit(_pid).result(timeout=60)[0] == pid  # still the same writer after an error


def test_a_dead_writer_process_falls_back_to_a_thread():
    w = ChildWriter(process=True)
    try:
        pid, *_ = w.submit(_pid).result(timeout=120)
        assert pid != os.getpid()
        with pytest.raises(BrokenProcessPool):  # the writer died under this job
            w.submit(os._exit, 1).result(timeout=60)
        assert w.submit(_pid).result(timeout=60)[0] == os.getpid() and w.kind == "thread"
    finally:
        w.shutdown()


def _niceness() -> int:
    return os.nice(0)


@pytest.mark.parametrize("setting, raise_by", [(None, 10), ("0", 0)])
def test_writer_process_yields_the_cpu_to_the_fits(setting, raise_by, monkeypatch):
    if setting is None:
        monkeypatch.delenv("KMEANS_LIFECYCLE_WRITER_NICE", raising=False)
    else:
        monkeypatch.setenv("KMEANS_LIFECYCLE_WRITER_NICE", setting)
    ours = os.nice(0)
    w = ChildWriter(process=True)
    try:
        theirs, *_ = w.submit(_niceness).result(timeout=120)
    finally:
        w.shutdown()
    assert theirs == min(19, ours + raise_by)
    assert os.nice(0) == ours  # the driver keeps its priority


def test_thread_writer_leaves_the_driver_priority_alone(monkeypatch):
    monkeypatch.setenv("KMEANS_LIFECYCLE_WRITER_NICE", "10")
    ours = os.nice(0)
    w = ChildWriter(process=False)
    try:
        assert w.submit(_niceness).result(timeout=60)[0] == ours
    finally:
        w.shutdown()
