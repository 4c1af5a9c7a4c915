"""``toolkit.search.search`` in process, on the session's 2-worker cluster and a temp sqlite store.

One search per scenario, small data; the trial-parallel blobs search is shared by several tests.
Nothing is mocked: real Optuna studies (sqlite), real MLflow runs, real Dask workers.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import flaky_backend
import numpy as np
import optuna
import pandas as pd
import pytest
from _records import children, running
from mlflow import MlflowClient
from optuna.trial import TrialState

import toolkit.backends
from toolkit.config import load_experiment
from toolkit.errors import ConfigError, ToolkitError
from toolkit.search import search
from toolkit.search.study import study_storage

REPO = Path(__file__).resolve().parents[1]
BLOBS = REPO / "experiments" / "blobs.yaml"
DIGITS = REPO / "experiments" / "digits.yaml"
TRIAL_METRICS = {
    "silhouette",
    "inertia",
    "objective",
    "davies_bouldin",
    "calinski_harabasz",
    "fit_seconds",
    "n_iter",
}


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite MLflow store for this module (each test uses its own experiment).

    The working directory moves to a temp dir too, so default artifact roots land there.
    """
    root = tmp_path_factory.mktemp("search")
    uri = f"sqlite:///{root / 'mlflow.db'}"
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


@pytest.fixture()
def optuna_url(tmp_path):
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def make_cfg(experiment: str, storage: str, *overrides: str, path: Path = BLOBS):
    return load_experiment(
        path,
        [
            f"tracking.experiment={experiment}",
            f"search.storage={storage}",
            "metrics.silhouette_sample=1000",
            *overrides,
        ],
    )


def runs_of(mlc: MlflowClient, experiment: str) -> list:
    exp = mlc.get_experiment_by_name(experiment)
    return [] if exp is None else mlc.search_runs([exp.experiment_id], max_results=1000)


def assert_none_running(mlc: MlflowClient) -> None:
    left = running(mlc)
    assert not left, [(r.info.run_name, r.info.run_id) for r in left]


def artifact_paths(mlc: MlflowClient, run_id: str, path: str) -> set[str]:
    return {f.path for f in mlc.list_artifacts(run_id, path)}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")


@pytest.fixture(scope="module")
def blobs_search(store, mlc, client, tmp_path_factory):
    """Trial-parallel sklearn search on blobs: 8 trials over n_clusters 2..10, on 2 workers.

    Every log record (root, mlflow, sqlalchemy, optuna, distributed) and the driver's
    stdout/stderr are captured, for the one-writer check.
    """
    # The default kind of Optuna storage: a journal file (RDB storage: the tests below).
    storage = str(tmp_path_factory.mktemp("optuna-blobs") / "optuna.log")
    cfg = make_cfg("search-blobs", storage, "data.n_samples=4000", "search.n_trials=8")
    assert cfg.search.space.n_clusters.low == 2 and cfg.search.space.n_clusters.high == 10
    handler = _Records()
    loggers = [
        logging.getLogger(n)
        for n in ("", "mlflow", "sqlalchemy", "optuna", "distributed", "alembic")
    ]
    for lg in loggers:
        lg.addHandler(handler)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            outcome = search(cfg, client=client)
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    captured = "\n".join(handler.lines) + out.getvalue() + err.getvalue()
    return (
        cfg,
        outcome,
        mlc.get_run(outcome.parent_run_id),
        children(mlc, outcome.parent_run_id),
        captured,
    )


# -- trial-parallel on blobs --------------------------------------------------------------


def test_blobs_search_finds_six_clusters(blobs_search, mlc):
    _, outcome, parent, _, _ = blobs_search
    assert outcome.best_params["n_clusters"] == 6
    assert parent.data.params["best.n_clusters"] == "6"
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["search.parallelism"] == "trial"
    assert outcome.counts == {"complete": 8, "failed": 0, "pruned": 0}
    assert parent.data.metrics["trials_complete"] == 8
    assert parent.data.metrics["best_silhouette"] == pytest.approx(outcome.best_value)
    assert outcome.best_value > 0.8
    # The refitted best model is on the parent.
    assert outcome.best_fit is not None and outcome.best_fit.centers.shape == (6, 2)
    assert {"best_model/centroids.csv", "best_model/centroids.npy"} <= artifact_paths(
        mlc, parent.info.run_id, "best_model"
    )


def test_blobs_search_study_remembers_parent(blobs_search):
    cfg, outcome, parent, _, _ = blobs_search
    assert outcome.study_name == "blobs-sklearn"
    storage = study_storage(cfg.search.storage)
    assert isinstance(storage, optuna.storages.JournalStorage)
    study = optuna.load_study(study_name=outcome.study_name, storage=storage)
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8
    assert study.best_trial.params["n_clusters"] == 6


def test_best_model_is_the_best_trials_own_fit_and_equals_a_refit(blobs_search, mlc):
    """No refit after a trial-parallel sklearn search: the best trial's fit on all rows is the
    model; a real refit of the same parameters gives the same centres, labels and inertia."""
    from toolkit.backends import get_backend
    from toolkit.data import load_dataset
    from toolkit.search.runner import BEST_FROM_TAG
    from toolkit.search.space import model_for
    from toolkit.train import fit_and_score

    cfg, outcome, parent, kids, _ = blobs_search
    best = outcome.best_params
    best_numbers = {int(k.data.tags["optuna.trial_number"]) for k in kids
                    if k.data.metrics.get("objective") == outcome.best_value}
    assert outcome.best_fit.extra["trial"] in best_numbers
    number = outcome.best_fit.extra["trial"]
    assert parent.data.tags[BEST_FROM_TAG] == f"trial {number} (its fit on all rows, not refitted)"

    backend = get_backend("sklearn")()
    dataset = load_dataset(cfg.data)
    X = backend.prepare(dataset)
    model = model_for(cfg.model, {k: v for k, v in best.items() if k != "random_state"}, seed=best.get("random_state"))
    refit, metrics = fit_and_score(backend, X, model, cfg.metrics, dataset.y)
    got = outcome.best_fit
    # Equal up to float32 rounding: the trial ran on one thread, a refit here on the driver's
    # OpenMP threads, and the thread count changes the order of Lloyd's sums.
    np.testing.assert_allclose(got.centers, refit.centers, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got.labels, refit.labels)
    np.testing.assert_array_equal(got.model.predict(X), refit.model.predict(X))
    assert got.model.cluster_centers_.dtype == refit.model.cluster_centers_.dtype == np.float32
    assert got.inertia == pytest.approx(refit.inertia, rel=1e-6)
    assert got.n_iter == refit.n_iter
    for name in ("silhouette", "davies_bouldin", "calinski_harabasz", "adjusted_rand", "inertia"):
        assert outcome.best_metrics[name] == pytest.approx(metrics[name], rel=1e-6), name


def test_trial_parallel_runs_trials_on_the_workers(blobs_search, client):
    _, _, _, kids, _ = blobs_search
    workers = set(client.scheduler_info()["workers"])
    assert len(workers) == 2
    # Which workers: the scheduler's choice. Millisecond trials may all land on one worker
    # when the machine is loaded, so the test asks that they ran there, not on the driver.
    ran_on = {k.data.tags["trial.worker"] for k in kids}
    assert ran_on and ran_on <= workers
    assert {k.data.tags["search.parallelism"] for k in kids} == {"trial"}


def test_one_writer_no_child_missing_no_lock(blobs_search, mlc):
    cfg, _, _, kids, captured = blobs_search
    assert len(kids) == cfg.search.n_trials == 8
    assert sorted(int(k.data.tags["optuna.trial_number"]) for k in kids) == list(range(8))
    assert "database is locked" not in captured.lower()
    assert_none_running(mlc)


def test_child_runs_named_and_complete(blobs_search, mlc):
    _, outcome, parent, kids, _ = blobs_search
    study = outcome.study_name
    # Named by what each trial tried (the UI cuts names at ~20 characters): "k=6 k-means++ #007".
    assert sorted(k.info.run_name[-4:] for k in kids) == [f"#{i:03d}" for i in range(8)]
    for k in kids:
        assert k.info.status == "FINISHED"
        assert k.info.experiment_id == parent.info.experiment_id
        assert k.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert k.data.tags["optuna.study_name"] == study
        assert k.info.run_name == (f"k={k.data.params['n_clusters']} {k.data.params['init']} "
                                   f"#{int(k.data.tags['optuna.trial_number']):03d}")
        assert len(k.info.run_name) <= 20
        assert int(k.data.params["n_clusters"]) in range(2, 11)
        assert k.data.params["init"] in ("k-means++", "random")
        assert {"max_iter", "tol", "n_init", "random_state"} <= set(k.data.params)
        assert TRIAL_METRICS <= set(k.data.metrics)
        assert k.data.metrics["objective"] == pytest.approx(k.data.metrics["silhouette"])
        assert k.info.start_time and k.info.end_time
        assert (
            parent.info.start_time <= k.info.start_time <= k.info.end_time <= parent.info.end_time
        )
        assert float(k.data.tags["trial.duration_s"]) >= 0
        assert {"centroids/centroids.csv", "centroids/centroids.npy"} <= artifact_paths(
            mlc, k.info.run_id, "centroids"
        )
    # Centroids match the trial's n_clusters.
    one = kids[0]
    local = mlc.download_artifacts(one.info.run_id, "centroids/centroids.npy")
    assert np.load(local).shape == (int(one.data.params["n_clusters"]), 2)


def test_parent_plots_and_tables(blobs_search, mlc):
    _, _, parent, _, _ = blobs_search
    run_id = parent.info.run_id
    assert {
        "plots/optimization_history.png",
        "plots/elbow.png",
        "plots/param_importance.png",
    } <= artifact_paths(mlc, run_id, "plots")
    assert {"search/trials.csv", "search/study_trials.csv"} <= artifact_paths(mlc, run_id, "search")
    trials = pd.read_csv(mlc.download_artifacts(run_id, "search/trials.csv"))
    assert len(trials) == 8 and set(trials["state"]) == {"FINISHED"}
    assert list(trials["number"]) == list(range(8))  # by trial number, not in the order they ended
    study_trials = pd.read_csv(mlc.download_artifacts(run_id, "search/study_trials.csv"))
    assert list(study_trials["number"]) == list(range(8))
    # The toolkit's timing figures sit with MLflow's system metrics, not among the model's.
    assert {"system/search_seconds", "system/trial_overhead_median_s",
            "system/trial_schedule_median_s"} <= set(parent.data.metrics)
    assert not {"search_seconds", "trial_overhead_median_s", "trial_schedule_median_s"} & set(parent.data.metrics)
    assert "system/cpu_utilization_percentage" in parent.data.metrics  # the parent's own samples
    assert {
        f"best.{k}" for k in ("n_clusters", "init", "n_init", "max_iter", "tol", "random_state")
    } <= set(parent.data.params)
    assert parent.data.params["search.n_trials"] == "8"


# -- digits: adjusted Rand index next to the plain KMeans baseline -------------------------


def test_baseline_is_fitted_on_a_bounded_seeded_sample(store, mlc, client, optuna_url):
    # Its cost must not grow with the data: the baseline fits and scores a seeded sample.
    from toolkit.data import load_dataset
    from toolkit.search.summary import baseline_ari

    cfg = make_cfg("search-baseline", optuna_url, "search.n_trials=2", "data.n_samples=3000",
                   "search.baseline_sample=1200", "tracking.log_plot=false")
    outcome = search(cfg, client=client)
    tags = mlc.get_run(outcome.parent_run_id).data.tags
    assert tags["baseline"].endswith("on a seeded sample of 1,200 of 3,000 rows")
    dataset = load_dataset(cfg.data)
    assert outcome.baseline == baseline_ari(dataset, cfg.model.random_state, 1200)  # seeded: the same sample
    # well-separated blobs: the same clusters, whether found on the sample or on all rows
    assert outcome.baseline == pytest.approx(baseline_ari(dataset, cfg.model.random_state, 3000), abs=0.02)
    off = search(make_cfg("search-baseline", optuna_url, "search.n_trials=2", "data.n_samples=3000",
                          "search.baseline_sample=0", "tracking.log_plot=false"), client=client)
    assert off.baseline is None
    assert "baseline_adjusted_rand" not in mlc.get_run(off.parent_run_id).data.metrics


def test_digits_reports_ari_next_to_baseline(store, mlc, client, optuna_url):
    cfg = make_cfg(
        "search-digits",
        optuna_url,
        "search.n_trials=4",
        "metrics.silhouette_sample=500",
        "tracking.log_plot=false",
        path=DIGITS,
    )
    # Optimised without the labels; the adjusted Rand index is still reported, as a check.
    assert cfg.search.objective == "silhouette"
    outcome = search(cfg, client=client)
    parent = mlc.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert outcome.baseline is not None and 0.3 < outcome.baseline <= 1.0
    assert parent.data.metrics["baseline_adjusted_rand"] == pytest.approx(outcome.baseline)
    assert parent.data.tags["baseline"].startswith("sklearn KMeans(n_clusters=10")
    assert parent.data.tags["baseline"].endswith("on all rows")  # 1,797 digits: fewer than the sample
    assert "adjusted_rand" in outcome.best_metrics
    assert 0.0 < outcome.best_metrics["adjusted_rand"] <= 1.0
    assert parent.data.metrics["best_silhouette"] == pytest.approx(outcome.best_value)
    assert parent.data.metrics["adjusted_rand"] == pytest.approx(outcome.best_metrics["adjusted_rand"])
    assert len(children(mlc, outcome.parent_run_id)) == 4
    assert_none_running(mlc)


# -- data-parallel ------------------------------------------------------------------------


def test_data_parallel_dask_ml(store, mlc, client, optuna_url):
    cfg = make_cfg(
        "search-daskml",
        optuna_url,
        "backend=dask-ml",
        "data.n_samples=600",
        "data.chunk_rows=150",
        "search.n_trials=3",
        "search.space.init=null",
        "search.space.n_clusters.low=4",
        "search.space.n_clusters.high=7",
        "tracking.log_plot=false",
    )
    outcome = search(cfg, client=client)
    parent = mlc.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["search.parallelism"] == "data"
    assert outcome.study_name == "blobs-dask-ml"
    kids = children(mlc, outcome.parent_run_id)
    assert len(kids) == 3
    for k in kids:
        assert k.info.status == "FINISHED"
        assert k.data.tags["search.parallelism"] == "data"
        assert k.data.tags["backend"] == "dask-ml"
        assert k.data.tags["trial.worker"] == "driver"
        assert "silhouette" in k.data.metrics
    assert 4 <= outcome.best_params["n_clusters"] <= 7
    assert_none_running(mlc)


def test_dask_ml_cannot_run_trial_parallel(store, mlc, client, optuna_url):
    cfg = make_cfg(
        "search-daskml-trial",
        optuna_url,
        "backend=dask-ml",
        "search.parallelism=trial",
        "data.n_samples=600",
    )
    with pytest.raises(ConfigError, match="data-parallel"):
        search(cfg, client=client)
    assert runs_of(mlc, "search-daskml-trial") == []


# -- scikit-learn CV strategies on joblib-dask -------------------------------------------


@pytest.mark.parametrize("prefetch, in_flight", [(0, 2), (2, 6)])
def test_prefetch_queues_trials_behind_the_running_ones(store, mlc, client, tmp_path, prefetch, in_flight):
    """With 2 worker threads, the sampler is asked for 2 x (1 + prefetch) trials before the
    first result is told, but the last 2 trials only once a thread is free (never queued behind a
    running trial); every trial still gets its one finished child run."""
    storage = str(tmp_path / "optuna.log")
    cfg = make_cfg(f"search-prefetch-{prefetch}", storage, "data.n_samples=600", "search.n_trials=8",
                   "search.sampler=random", f"search.prefetch={prefetch}", "tracking.log_plot=false",
                   "search.refit=false", "registry.register_best=false")
    outcome = search(cfg, client=client)
    study = optuna.load_study(study_name=outcome.study_name, storage=study_storage(storage))
    trials = study.get_trials(deepcopy=False)
    first_told = min(t.datetime_complete for t in trials)
    assert sum(t.datetime_start < first_told for t in trials) == in_flight
    for last in sorted(trials, key=lambda t: t.number)[-2:]:
        told_before = sum(t.datetime_complete <= last.datetime_start for t in trials if t.datetime_complete)
        # At most one other trial still in flight when it was asked for: 2 threads, none queued.
        assert told_before >= last.number - 1, (last.number, told_before)
    kids = children(mlc, outcome.parent_run_id)
    assert sorted(int(k.data.tags["optuna.trial_number"]) for k in kids) == list(range(8))
    assert {k.info.status for k in kids} == {"FINISHED"}
    assert all(r["schedule_s"] >= 0 and r["overhead_s"] >= r["mlflow_write_s"] > 0 for r in outcome.trials)
    assert_none_running(mlc)


def test_auto_prefetch_queues_one_and_more_behind_short_trials():
    """``auto``: one trial queued per thread, more (up to 3) when trials are shorter than the
    ~50 ms hand-off; a data-parallel runner never has more than one fit."""
    from types import SimpleNamespace

    from toolkit.search.loop import in_flight_target as _in_flight_target

    trial_runner = SimpleNamespace(slots=2, mode="trial")

    def rows(seconds):
        return [{"duration_s": seconds}] * 8

    assert _in_flight_target(trial_runner, "auto", []) == 2 * 2
    assert _in_flight_target(trial_runner, "auto", rows(30.0)) == 2 * 2
    assert _in_flight_target(trial_runner, "auto", rows(0.04)) == 2 * 3
    assert _in_flight_target(trial_runner, "auto", rows(0.02)) == 2 * 4
    assert _in_flight_target(trial_runner, "auto", rows(0.0001)) == 2 * 4
    assert _in_flight_target(trial_runner, 0, rows(0.001)) == 2
    assert _in_flight_target(trial_runner, 5, rows(1.0)) == 2 * 6
    assert _in_flight_target(SimpleNamespace(slots=1, mode="data"), 3, rows(0.01)) == 1
    # The last trials of a search go to free threads only.
    assert _in_flight_target(trial_runner, 2, rows(1.0), left=3) == 2 * 3
    assert _in_flight_target(trial_runner, 2, rows(1.0), left=2) == 2
    assert _in_flight_target(trial_runner, "auto", rows(0.01), left=1) == 2


def test_grid_strategy_child_per_grid_point(store, mlc, client, optuna_url):
    cfg = make_cfg(
        "search-grid",
        optuna_url,
        "search.strategy=grid",
        "data.n_samples=600",
        "search.cv=2",
        "search.space.init=null",
        "search.space.n_clusters.low=5",
        "search.space.n_clusters.high=7",
        "tracking.log_plot=false",
    )
    outcome = search(cfg, client=client)
    parent = mlc.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert outcome.study_name.startswith("blobs-sklearn-grid-")
    kids = children(mlc, outcome.parent_run_id)
    assert len(kids) == 3
    assert sorted(int(k.data.params["n_clusters"]) for k in kids) == [5, 6, 7]
    assert sorted(k.info.run_name for k in kids) == [
        f"k={k} k-means++ #{i:03d}" for i, k in enumerate((5, 6, 7))
    ]
    assert {k.data.tags["trial.worker"] for k in kids} == {"dask-joblib"}
    assert all(k.info.status == "FINISHED" and "cv_silhouette" in k.data.metrics for k in kids)
    assert "search/cv_results.csv" in artifact_paths(mlc, outcome.parent_run_id, "search")
    table = pd.read_csv(mlc.download_artifacts(outcome.parent_run_id, "search/cv_results.csv"))
    assert len(table) == 3 and "mean_test_score" in table
    assert outcome.best_params["n_clusters"] == 6
    assert parent.data.params["best.n_clusters"] == "6"
    assert_none_running(mlc)


def test_random_strategy_n_trials_candidates(store, mlc, client, optuna_url):
    cfg = make_cfg(
        "search-random",
        optuna_url,
        "search.strategy=random",
        "search.n_trials=3",
        "data.n_samples=600",
        "search.cv=2",
        "tracking.log_plot=false",
    )
    outcome = search(cfg, client=client)
    assert mlc.get_run(outcome.parent_run_id).info.status == "FINISHED"
    kids = children(mlc, outcome.parent_run_id)
    assert len(kids) == 3
    assert sum(outcome.counts.values()) == 3
    assert "search/cv_results.csv" in artifact_paths(mlc, outcome.parent_run_id, "search")
    assert_none_running(mlc)


# -- failed trials ------------------------------------------------------------------------


@pytest.fixture()
def flaky_sklearn(monkeypatch):
    """Register tests/flaky_backend.py as the sklearn backend (fails when n_clusters == 3)."""
    target = f"{flaky_backend.__name__}:SklearnBackend"
    monkeypatch.setitem(toolkit.backends.BACKENDS, "sklearn", target)
    assert toolkit.backends.get_backend("sklearn") is flaky_backend.SklearnBackend
    return target


def test_failed_trial_is_recorded_and_search_goes_on(store, mlc, client, optuna_url, flaky_sklearn):
    # Optuna's grid sampler over n_clusters 3..5: each point once, so n_clusters=3 surely runs
    # (and n_trials above the grid size is capped at it, with no crash when the grid is covered).
    cfg = make_cfg(
        "search-flaky",
        optuna_url,
        "search.parallelism=data",
        "search.sampler=grid",
        "search.n_trials=5",
        "data.n_samples=600",
        "search.space.init=null",
        "search.space.n_clusters.low=3",
        "search.space.n_clusters.high=5",
        "tracking.log_plot=false",
    )
    outcome = search(cfg, client=client)
    parent = mlc.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_failed"] >= 1
    assert outcome.counts == {"complete": 2, "failed": 1, "pruned": 0}
    kids = children(mlc, outcome.parent_run_id)
    assert sorted(int(k.data.params["n_clusters"]) for k in kids) == [3, 4, 5]
    for k in kids:
        if k.data.params["n_clusters"] == "3":
            assert k.info.status == "FAILED"
            assert "boom" in k.data.tags["error"]
            assert k.data.tags["trial.state"] == "FAILED"
            assert "objective" not in k.data.metrics
        else:
            assert k.info.status == "FINISHED" and "error" not in k.data.tags
    study = optuna.load_study(study_name=outcome.study_name, storage=optuna_url)
    states = {t.params["n_clusters"]: t.state for t in study.trials}
    assert states == {3: TrialState.FAIL, 4: TrialState.COMPLETE, 5: TrialState.COMPLETE}
    assert outcome.best_params["n_clusters"] in (4, 5)
    assert_none_running(mlc)


def test_all_trials_failing_fails_the_parent(store, mlc, client, optuna_url, flaky_sklearn):
    cfg = make_cfg(
        "search-allfail",
        optuna_url,
        "search.parallelism=data",
        "search.n_trials=2",
        "data.n_samples=600",
        "search.space.init=null",
        "search.space.n_clusters.low=3",
        "search.space.n_clusters.high=3",
    )
    with pytest.raises(ToolkitError, match="no trial"):
        search(cfg, client=client)
    runs = runs_of(mlc, "search-allfail")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FAILED"
    assert "no trial" in parent.data.tags["error"]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(kids) == 2
    assert all(k.info.status == "FAILED" and "boom" in k.data.tags["error"] for k in kids)
    assert_none_running(mlc)


# -- config checks before any trial -------------------------------------------------------


def _assert_no_trial_work(mlc: MlflowClient, experiment: str, storage: str) -> None:
    runs = runs_of(mlc, experiment)
    assert all("mlflow.parentRunId" not in r.data.tags for r in runs), "no child run may exist"
    for r in runs:  # the parent (if any) ends FAILED with the reason, never RUNNING
        assert r.info.status == "FAILED" and r.data.tags["error"]
    for summary in optuna.get_all_study_summaries(storage):
        assert summary.n_trials == 0
    assert_none_running(mlc)


def test_space_init_not_supported_by_backend(store, mlc, client, optuna_url):
    cfg = make_cfg(
        "search-badinit", optuna_url, "data.n_samples=600", "search.space.init=[k-means||]"
    )
    with pytest.raises(ConfigError, match=r"k-means\|\|"):
        search(cfg, client=client)
    _assert_no_trial_work(mlc, "search-badinit", optuna_url)


def test_space_n_clusters_above_n_samples(store, mlc, client, optuna_url):
    cfg = make_cfg(
        "search-bigk", optuna_url, "data.n_samples=50", "search.space.n_clusters.high=60"
    )
    with pytest.raises(ConfigError, match="exceeds the 50 samples"):
        search(cfg, client=client)
    _assert_no_trial_work(mlc, "search-bigk", optuna_url)


def test_adjusted_rand_needs_labels(store, mlc, client, optuna_url, tmp_path):
    rng = np.random.default_rng(0)
    csv = tmp_path / "points.csv"
    pd.DataFrame(rng.normal(size=(200, 2)), columns=["a", "b"]).to_csv(csv, index=False)
    cfg = make_cfg(
        "search-nolabels",
        optuna_url,
        "data.source=file",
        f"data.path={csv}",
        "search.objective=adjusted_rand",
    )
    assert cfg.data.label_column is None
    with pytest.raises(ConfigError, match="ground-truth labels"):
        search(cfg, client=client)
    _assert_no_trial_work(mlc, "search-nolabels", optuna_url)


def test_storage_in_a_missing_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot open Optuna storage") as err:
        study_storage(str(tmp_path / "nowhere" / "optuna.log"))
    assert "journal file path" in err.value.fix


def test_resume_settles_what_a_killed_driver_left(store, mlc, tmp_path):
    """Deterministic version of the kill/resume race: one child run half-written (RUNNING) for
    a COMPLETE trial, one COMPLETE trial never written, one trial left RUNNING in Optuna."""
    from toolkit.search.resume import INTERRUPTED_ATTR
    from toolkit.search.resume import settle as _fail_stale
    from toolkit.search.study import study_storage

    cfg = make_cfg("search-settle", str(tmp_path / "optuna.log"))
    study = optuna.create_study(study_name="settle", storage=study_storage(cfg.search.storage),
                                direction="maximize")
    exp_id = mlc.create_experiment("search-settle")
    parent = mlc.create_run(exp_id, run_name="parent").info.run_id
    half, unwritten, stale = study.ask(), study.ask(), study.ask()
    for t in (half, unwritten, stale):
        t.suggest_int("n_clusters", 2, 8)
    study.tell(half, 0.7)
    study.tell(unwritten, 0.6)
    cut = mlc.create_run(exp_id, run_name="settle-trial-000", tags={
        "mlflow.parentRunId": parent, "optuna.trial_number": str(half.number)})

    assert _fail_stale(cfg, study, parent, ["x0", "x1"]) == 1

    kids = children(mlc, parent)
    by_number: dict[int, list] = {}
    for k in kids:
        by_number.setdefault(int(k.data.tags["optuna.trial_number"]), []).append(k)
    assert sorted(by_number) == [0, 1, 2] and all(len(v) == 1 for v in by_number.values())
    (done,) = by_number[half.number]
    assert done.info.run_id == cut.info.run_id  # the half-written run was finished, not duplicated
    assert done.info.status == "FINISHED" and done.data.metrics["objective"] == 0.7
    assert done.data.tags["trial.backfilled"] == "true"
    (late,) = by_number[unwritten.number]
    assert late.info.status == "FINISHED" and late.data.metrics["objective"] == 0.6
    (gone,) = by_number[stale.number]
    assert gone.info.status == "FAILED" and "interrupted" in gone.data.tags["error"]
    states = {t.number: t.state for t in study.trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.COMPLETE, 2: TrialState.FAIL}
    assert study.trials[2].user_attrs[INTERRUPTED_ATTR] is True
    mlc.set_terminated(parent)  # the search would go on; here only the children matter
    assert_none_running(mlc)


def test_trial_runner_cancel_stops_queued_trials(client):
    """A search that stops early cancels the trials it queued (with ``search.prefetch`` there
    are more of them than threads), and the shared cluster stays usable."""
    from sklearn.datasets import make_blobs

    from toolkit.config import MetricsConfig, ModelConfig
    from toolkit.search.trials import TrialParallelRunner

    X, _ = make_blobs(n_samples=100_000, n_features=4, centers=8, random_state=0)
    runner = TrialParallelRunner(client, "sklearn", X.astype(np.float32), None, MetricsConfig())
    for i in range(6):
        runner.submit(i, ModelConfig(n_clusters=8, n_init=3, max_iter=500, tol=0.0, random_state=i))
    futures = list(runner._futures)
    runner.cancel()
    assert runner.pending() == 0
    assert {f.status for f in futures} == {"cancelled"}
    assert client.submit(sum, [1, 2], pure=False).result() == 3


def test_trial_run_name_says_what_the_trial_tried():
    from toolkit.search.record import trial_run_name

    assert trial_run_name(7, {"n_clusters": 6, "init": "k-means++", "tol": 1e-4}) == "k=6 k-means++ #007"
    assert trial_run_name(12, {"n_clusters": 3, "init": "random"}) == "k=3 random #012"
    assert trial_run_name(1234, {"n_clusters": 10}) == "k=10 #1234"  # whatever the trial had


# -- cluster.processes=auto ---------------------------------------------------------------------


def test_own_cluster_runs_sklearn_trials_on_threads_of_the_driver(store, mlc, tmp_path):
    """``cluster.processes=auto`` (the default): a trial-parallel sklearn search that starts its
    own cluster runs the trials on in-process workers (``inproc://``), the same trials as on
    worker processes would, each child run still written by the one writer."""
    cfg = make_cfg("search-own-threads", str(tmp_path / "optuna.log"), "data.n_samples=1500",
                   "search.n_trials=4", "tracking.log_plot=false", "registry.register_best=false")
    assert cfg.cluster.processes == "auto"
    out = search(cfg)  # no client: the search starts (and closes) its own cluster
    kids = children(mlc, out.parent_run_id)
    assert len(kids) == 4 and all(k.info.status == "FINISHED" for k in kids)
    assert {k.data.tags["trial.worker"].split("://")[0] for k in kids} == {"inproc"}
    assert mlc.get_run(out.parent_run_id).info.status == "FINISHED"


@pytest.mark.parametrize("setting, suits, processes", [
    ("auto", True, False), ("auto", False, True), (True, True, True), (False, False, False),
])
def test_processes_setting(setting, suits, processes):
    from toolkit.cluster import use_processes
    from toolkit.config import ClusterConfig

    assert use_processes(ClusterConfig(processes=setting), threads_suit=suits) is processes


@pytest.mark.parametrize("overrides, small", [
    (["data.n_samples=250000", "data.n_features=16"], True),
    (["data.n_samples=1000000", "data.n_features=16"], False),
    (["data.source=sklearn", "data.dataset=digits"], True),
])
def test_threaded_workers_only_for_data_known_to_be_small(overrides, small):
    from toolkit.train import _small_data

    assert _small_data(load_experiment(BLOBS, overrides)) is small


def test_a_file_source_gets_worker_processes(tmp_path):
    from toolkit.train import _small_data

    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    assert _small_data(load_experiment(BLOBS, ["data.source=file", f"data.path={path}"])) is False
