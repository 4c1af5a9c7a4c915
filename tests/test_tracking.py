"""Run lifecycle and logging helpers against a real sqlite MLflow store."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from _mlflow_store import init_store
from mlflow import MlflowClient

from toolkit.errors import DataError
from toolkit.tracking import (
    DEFAULT_TRACKING_URI,
    get_or_create_experiment,
    log_centroids,
    log_metrics,
    log_params,
    log_tags,
    mark_failed,
    run_url,
    start_run,
    tracked_run,
    tracking_uri,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for this module (creating one costs ~2 s); tests use their own experiments."""
    uri = init_store(tmp_path_factory.mktemp("tracking") / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        yield uri


@pytest.fixture()
def mlc(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return MlflowClient(tracking_uri=store)


def _runs(mlc: MlflowClient, experiment: str):
    exp = mlc.get_experiment_by_name(experiment)
    return mlc.search_runs([exp.experiment_id]) if exp else []


def test_tracking_uri_from_env(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert tracking_uri() == store
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri() == DEFAULT_TRACKING_URI


def test_tracked_run_finishes(mlc):
    with tracked_run("t-finish", "my-run", {"entry_point": "test"}) as run_id:
        assert mlc.get_run(run_id).info.status == "RUNNING"
    run = mlc.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "my-run"
    assert run.data.tags["entry_point"] == "test"
    assert "error" not in run.data.tags
    assert mlc.get_experiment(run.info.experiment_id).name == "t-finish"


def test_tracked_run_user_error_fails_with_tag(mlc):
    with pytest.raises(DataError), tracked_run("t-user-error") as run_id:
        raise DataError("data has 3 NaN values", "drop them")
    run = mlc.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "data has 3 NaN values -- fix: drop them"
    assert run.data.tags["error.type"] == "DataError"
    assert "error.traceback" not in run.data.tags  # user errors need no traceback
    assert not [r for r in _runs(mlc, "t-user-error") if r.info.status == "RUNNING"]


def test_tracked_run_bug_records_traceback(mlc):
    with pytest.raises(ZeroDivisionError), tracked_run("t-bug") as run_id:
        1 / 0  # noqa: B018
    run = mlc.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "division by zero"
    assert "ZeroDivisionError" in run.data.tags["error.traceback"]


def test_tracked_run_keyboard_interrupt(mlc):
    with pytest.raises(KeyboardInterrupt), tracked_run("t-interrupt") as run_id:
        raise KeyboardInterrupt
    run = mlc.get_run(run_id)
    assert run.info.status == "FAILED"
    assert "KeyboardInterrupt" in run.data.tags["error"]


def test_mark_failed_keeps_first_line(mlc):
    run_id = start_run("t-mark")
    mark_failed(run_id, "first line\nsecond line")
    run = mlc.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "first line"


def test_start_run_resumes_mlflow_run_id_but_children_do_not(mlc, monkeypatch):
    exp_id = get_or_create_experiment("t-resume")
    outer = mlc.create_run(exp_id).info.run_id  # what `mlflow run` creates before our code runs
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    top = start_run("t-resume", "resumed", {"k": "v"})
    assert top == outer
    assert mlc.get_run(outer).data.tags["k"] == "v"
    assert mlc.get_run(outer).info.run_name == "resumed"
    child = start_run("t-resume", "child", parent_run_id=outer)
    assert child != outer
    assert mlc.get_run(child).data.tags["mlflow.parentRunId"] == outer
    for rid in (child, outer):
        mlc.set_terminated(rid)


def test_get_or_create_experiment_restores_deleted(mlc):
    exp_id = get_or_create_experiment("t-deleted")
    assert get_or_create_experiment("t-deleted") == exp_id
    mlc.delete_experiment(exp_id)
    assert get_or_create_experiment("t-deleted") == exp_id
    assert mlc.get_experiment(exp_id).lifecycle_stage == "active"


def test_log_params_metrics_tags(mlc):
    with tracked_run("t-log") as run_id:
        params = {f"p{i:03d}": i for i in range(150)}  # more than one batch of 100
        params["long"] = "x" * 7000
        params["none"] = None
        log_params(run_id, params)
        log_metrics(run_id, {"good": 0.5, "nan": math.nan, "inf": math.inf, "none": None, "int": 3})
        log_tags(run_id, {"a": 1, "b": "two"})
    data = mlc.get_run(run_id).data
    assert len([k for k in data.params if k.startswith("p")]) == 150
    assert data.params["p149"] == "149"
    assert len(data.params["long"]) == 6000 and data.params["long"].endswith("...")
    assert data.params["none"] == "None"
    assert data.metrics == {"good": 0.5, "int": 3.0}  # NaN / inf / None are skipped
    assert data.tags["a"] == "1" and data.tags["b"] == "two"


def test_log_centroids_without_plot(mlc, tmp_path):
    centers = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    with tracked_run("t-centroids") as run_id:
        log_centroids(run_id, centers, ["u", "v"])
    names = sorted(f.path for f in mlc.list_artifacts(run_id, "centroids"))
    assert names == ["centroids/centroids.csv", "centroids/centroids.npy"]
    local = mlc.download_artifacts(run_id, "centroids", str(tmp_path))
    np.testing.assert_array_equal(np.load(f"{local}/centroids.npy"), centers)
    lines = Path(local, "centroids.csv").read_text().splitlines()
    assert lines[0] == "cluster,u,v"
    assert len(lines) == 1 + 3


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_centroids_csv_is_the_table_pandas_writes(dtype):
    """The hand-written centroid CSV matches ``DataFrame.to_csv`` byte for byte: shortest
    round-trip floats, NaN as an empty field, a quoted column name."""
    import pandas as pd

    from toolkit.tracking.record import _centroids_csv

    centers = (np.random.default_rng(0).normal(size=(8, 5)) * 1e3).astype(dtype)
    if dtype != np.int64:
        centers[0, :4] = [1e-8, 123456789.0, -0.0, np.nan]
    names = ["a", "b", 'c,"d"', "e", "f"]
    frame = pd.DataFrame(centers, columns=names)
    frame.index.name = "cluster"
    text = _centroids_csv(centers, names)
    assert text == frame.to_csv()
    back = pd.read_csv(io.StringIO(text), index_col="cluster")
    assert list(back.columns) == names
    np.testing.assert_array_equal(back.to_numpy(dtype), centers)


def test_run_url_for_sqlite(mlc, store):
    with tracked_run("t-url") as run_id:
        pass
    url = run_url(run_id)
    assert store in url and run_id in url and "mlflow ui" in url


# -- sqlite store in WAL mode -------------------------------------------------------------


def _journal_mode(db: Path) -> str:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        con.close()


def test_sqlite_store_is_written_in_wal_mode_and_others_are_left_alone(tmp_path, monkeypatch):
    """The toolkit's own store switches to WAL (readers such as ``mlflow ui`` no longer block
    the writer); another sqlite database the same process opens keeps its journal mode."""
    import sqlalchemy

    from toolkit.tracking import get_or_create_experiment, tracked_run

    monkeypatch.delenv("KMEANS_LIFECYCLE_SQLITE_WAL", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")  # relative, as the default
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    get_or_create_experiment("wal")
    with tracked_run("wal", "one", {}) as run_id:
        pass
    assert _journal_mode(tmp_path / "mlflow.db") == "wal"
    assert MlflowClient("sqlite:///mlflow.db").get_run(run_id).info.status == "FINISHED"

    other = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    with other.begin() as con:
        con.execute(sqlalchemy.text("CREATE TABLE t (x INTEGER)"))
    other.dispose()
    assert _journal_mode(tmp_path / "other.db") == "delete"


def test_wal_can_be_turned_off(tmp_path, monkeypatch):
    """A store on a network file system must not use WAL: ``KMEANS_LIFECYCLE_SQLITE_WAL=0``."""
    from toolkit.tracking import get_or_create_experiment

    monkeypatch.setenv("KMEANS_LIFECYCLE_SQLITE_WAL", "0")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'nfs.db'}")
    get_or_create_experiment("no-wal")
    assert _journal_mode(tmp_path / "nfs.db") == "delete"
