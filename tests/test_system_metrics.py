"""MLflow system metrics on the toolkit's runs: on by default, off with a switch, stopped with the run."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from _mlflow_store import init_store
from mlflow import MlflowClient

from toolkit.config import load_experiment
from toolkit.tracking import tracked_run
from toolkit.train import train

REPO = Path(__file__).resolve().parents[1]
BLOBS = REPO / "experiments" / "blobs.yaml"
CPU = "system/cpu_utilization_percentage"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = init_store(tmp_path_factory.mktemp("sysmetrics") / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        mp.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)
        yield uri


@pytest.fixture()
def mlc(store):
    return MlflowClient(tracking_uri=store)


def _monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]


#: What MLflow's sampler logs (the toolkit's own timings share the ``system/`` prefix).
SAMPLED = ("system/cpu_", "system/system_memory_", "system/disk_", "system/network_", "system/gpu_")


def _system(run) -> set[str]:
    return {k for k in run.data.metrics if k.startswith(SAMPLED)}


def test_train_run_records_system_metrics_by_default(store, mlc):
    cfg = load_experiment(BLOBS, ["data.n_samples=2000", "tracking.experiment=sys-on", "tracking.log_plot=false"])
    assert cfg.tracking.system_metrics is True
    run = mlc.get_run(train(cfg).run_id)
    assert run.info.status == "FINISHED"
    # A run shorter than the sampling interval still gets its one step (sampled at its end).
    assert {CPU, "system/system_memory_usage_megabytes"} <= _system(run)
    assert 0 <= run.data.metrics[CPU] <= 100
    history = mlc.get_metric_history(run.info.run_id, CPU)
    assert history and all(m.timestamp <= run.info.end_time for m in history)
    assert not _monitor_threads()


def test_train_run_without_system_metrics(store, mlc):
    cfg = load_experiment(BLOBS, ["data.n_samples=2000", "tracking.experiment=sys-off",
                                  "tracking.log_plot=false", "tracking.system_metrics=false"])
    run = mlc.get_run(train(cfg).run_id)
    assert run.info.status == "FINISHED"
    assert not _system(run)
    assert {"inertia", "silhouette"} <= set(run.data.metrics)


def test_sampler_stops_before_the_run_ends(store, mlc, monkeypatch):
    # Several samples, then the block ends: every step is written before the run's end.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.3")
    with tracked_run("sys-long", "long", system_metrics=True) as run_id:
        threading.Event().wait(1.5)
        assert _monitor_threads()
    assert not _monitor_threads()
    run = mlc.get_run(run_id)
    history = mlc.get_metric_history(run_id, CPU)
    assert run.info.status == "FINISHED"
    assert len(history) >= 2
    assert all(m.timestamp <= run.info.end_time for m in history)


def test_sampler_stops_when_the_run_fails(store, mlc):
    with pytest.raises(RuntimeError, match="boom"), tracked_run("sys-fail", "fails", system_metrics=True) as run_id:
        raise RuntimeError("boom")
    assert not _monitor_threads()
    run = mlc.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "boom"
    assert CPU in run.data.metrics


def test_a_resumed_run_continues_its_steps(store, mlc):
    with tracked_run("sys-resume", "first", system_metrics=True) as run_id:
        pass
    with tracked_run("sys-resume", "again", resume_run_id=run_id, system_metrics=True):
        pass
    steps = sorted(m.step for m in mlc.get_metric_history(run_id, CPU))
    assert steps == [0, 1]
    assert mlc.get_run(run_id).info.status == "FINISHED"
