"""The speed tricks (:mod:`toolkit._speedups`) change when work happens, never what is written.

One small search with the tricks on, one with ``KMEANS_LIFECYCLE_SPEEDUPS=0``: the same child
runs (count and status), the same best parameters and value, the same baseline.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from _records import children
from mlflow import MlflowClient

from toolkit import _speedups
from toolkit.config import load_experiment
from toolkit.search import search

BLOBS = Path(__file__).resolve().parents[1] / "experiments" / "blobs.yaml"


def test_the_switch_turns_every_trick_off(monkeypatch):
    monkeypatch.setenv(_speedups.SWITCH_ENV, "0")
    monkeypatch.setenv(_speedups.NICE_ENV, "10")
    called: list[int] = []
    _speedups.warm(called.append, 1)
    where = _speedups.background(lambda: threading.current_thread().name).result()
    assert (called, where, _speedups.writer_niceness(), _speedups.quick_exit_allowed()) == (
        [], threading.current_thread().name, 0, False)
    monkeypatch.setenv(_speedups.SWITCH_ENV, "1")
    _speedups.warm(called.append, 1)
    where = _speedups.background(lambda: threading.current_thread().name, name="speed-test").result()
    assert (called, where.startswith("speed-test"), _speedups.writer_niceness(), _speedups.quick_exit_allowed()) == (
        [1], True, 10, True)


def test_off_in_line_background_hands_errors_to_the_future(monkeypatch):
    monkeypatch.setenv(_speedups.SWITCH_ENV, "off")
    fut = _speedups.background(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        fut.result()


def test_the_trial_parallel_runner_warms_its_workers_only_when_on(client, tmp_path, monkeypatch):
    """The runner's worker warm-up is one of the tricks: off, no worker runs it; on, every worker."""
    from toolkit.config import MetricsConfig
    from toolkit.search import trials

    def warm_up(backend_name: str) -> None:  # on the workers (local processes: they share tmp_path)
        (tmp_path / f"{backend_name}-{os.getpid()}").touch()

    monkeypatch.setattr(trials, "_warm_up", warm_up)
    X = np.zeros((8, 2), dtype=np.float32)
    for setting in ("0", "1"):
        monkeypatch.setenv(_speedups.SWITCH_ENV, setting)
        trials.TrialParallelRunner(client, "sklearn", X, None, MetricsConfig())
        warmed = sorted(p.name for p in tmp_path.iterdir())
        assert len(warmed) == (0 if setting == "0" else len(client.scheduler_info()["workers"])), (setting, warmed)


def _record(mlc: MlflowClient, out) -> dict:
    runs = children(mlc, out.parent_run_id)
    parent = mlc.get_run(out.parent_run_id).data
    return {"children": sorted((r.data.tags["optuna.trial_number"], r.info.status) for r in runs),
            "best_params": out.best_params, "best_value": out.best_value, "counts": out.counts,
            "baseline": out.baseline, "best_from": parent.tags.get("search.best_model_from"),
            "parent_metrics": sorted(k for k in parent.metrics if not k.startswith("system/")
                                     and "seconds" not in k and "_s" not in k)}


def test_a_search_with_the_tricks_off_writes_the_same_record(store, client, tmp_path, monkeypatch):
    """Two trials on 300 rows each way, on one writer (a writer process costs seconds of CPU for
    its imports; the writer's own tricks, priority and exit, write nothing of the record and
    are tested in ``test_writer.py``).  Its priority stays the driver's: a nice-10 writer waits
    for a core on a loaded test machine."""
    mlc = MlflowClient(tracking_uri=store)
    monkeypatch.setenv("KMEANS_QUIET", "1")
    monkeypatch.setenv(_speedups.NICE_ENV, "0")
    got = {}
    for setting in ("1", "0"):
        monkeypatch.setenv(_speedups.SWITCH_ENV, setting)
        cfg = load_experiment(BLOBS, [
            f"tracking.experiment=speedups-{setting}", f"search.storage={tmp_path}/s{setting}.log",
            "data.n_samples=300", "search.n_trials=2", "metrics.silhouette_sample=100",
            "tracking.log_plot=false", "search.baseline_sample=300"])
        got[setting] = _record(mlc, search(cfg, client=client))
    assert got["1"] == got["0"]
    assert len(got["0"]["children"]) == 2 and got["0"]["baseline"] is not None


def test_the_dask_backend_starts_loading_kernels_on_workers_only_when_on(client, tmp_path, monkeypatch):
    """The dask backend's worker warm-up is one of the tricks: off, no worker starts it; on, every one."""
    from toolkit.backends.dask_lloyd import DaskBackend
    from toolkit.kmeans_dask import preload

    def start() -> bool:  # on the workers (local processes: they share tmp_path)
        (tmp_path / f"preload-{os.getpid()}").touch()
        return True

    monkeypatch.setattr(preload, "_start_loading", start)
    for setting in ("0", "1"):
        monkeypatch.setenv(_speedups.SWITCH_ENV, setting)
        DaskBackend(client=client)
        started = sorted(p.name for p in tmp_path.iterdir())
        assert len(started) == (0 if setting == "0" else len(client.scheduler_info()["workers"])), (setting, started)


def _kernels_loaded_by_preload() -> bool:
    """On a worker: wait for the preload thread, then whether the Lloyd kernel is loaded."""
    from toolkit.kmeans_dask import preload

    if preload._thread is None:
        return False
    preload._thread.join(120)
    from toolkit.kmeans_dask import _numba

    return bool(_numba.lloyd_stats.signatures) and bool(_numba.assign.signatures)


def test_load_on_workers_loads_the_lloyd_kernels_in_the_background(client):
    from toolkit.kmeans_dask.preload import load_on_workers

    load_on_workers(client)
    assert set(client.run(_kernels_loaded_by_preload).values()) == {True}
