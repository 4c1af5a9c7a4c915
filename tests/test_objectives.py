"""Choosing k without labels: stability and prediction strength, the seed policy, multi-objective search.

Real fits (scikit-learn and the ``dask`` backend), real Optuna studies (sqlite), real MLflow
runs and registry on the module's temp store, the session's 2-worker Dask cluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from _records import children, running
from mlflow import MlflowClient
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from toolkit.backends.scikit import SklearnBackend
from toolkit.config import MetricsConfig, ModelConfig, SearchConfig, load_experiment
from toolkit.errors import ConfigError
from toolkit.metrics import prediction_strength, stability
from toolkit.names import EVAL_METRICS, METRIC_DIRECTIONS, OBJECTIVES, RESAMPLING_METRICS
from toolkit.search import search
from toolkit.search.objectives import CHOSEN_TAG, knee_point
from toolkit.search.sklearn_cv import ClusterScorer
from toolkit.search.space import trial_model
from toolkit.search.study import open_study, study_storage
from toolkit.search.trials import run_trial
from toolkit.train import fit_and_score

REPO = Path(__file__).resolve().parents[1]
BLOBS = REPO / "experiments" / "blobs.yaml"
DIGITS = REPO / "experiments" / "digits.yaml"

RESAMPLING = MetricsConfig(stability=True, stability_resamples=4, stability_sample=1000)


@pytest.fixture(scope="module")
def separated():
    """5 well separated 4-D blobs (1,000 rows) with their labels."""
    X, y = make_blobs(n_samples=1000, n_features=4, centers=5, cluster_std=0.3, center_box=(-10, 10),
                      random_state=3)
    return X.astype(np.float32), y


def _score(X, k, metrics=RESAMPLING, backend=None, **model):
    _, m = fit_and_score(backend or SklearnBackend(), X, ModelConfig(n_clusters=k, **model), metrics)
    return m


# -- the metrics --------------------------------------------------------------------------


def test_stability_is_one_at_the_true_k_and_lower_at_a_wrong_one(separated):
    X, _ = separated
    true = _score(X, 5)
    assert true["stability"] == pytest.approx(1.0, abs=1e-3)
    assert true["prediction_strength"] >= 0.99
    for wrong in (3, 8):  # merged or split blobs: the refits disagree on where
        m = _score(X, wrong)
        assert m["stability"] < 0.95, (wrong, m["stability"])
        assert m["prediction_strength"] < 0.8, (wrong, m["prediction_strength"])


def test_same_configuration_scores_the_same(separated):
    """The refits' seeds derive from model.random_state and metrics.seed: no luck in the value."""
    X, _ = separated
    a, b = _score(X, 7, n_init=1), _score(X, 7, n_init=1)
    assert a["stability"] == b["stability"] and a["prediction_strength"] == b["prediction_strength"]


def test_metric_functions_on_known_labellings():
    same = np.repeat(np.arange(4), 25)
    assert stability([same, (same + 1) % 4, same]) == pytest.approx(1.0)  # ids do not matter
    assert prediction_strength(same, (same + 2) % 4) == pytest.approx(1.0)
    # One test cluster split in two by the other half's centres: its pairs are half kept.
    split = same.copy()
    split[(same == 0) & (np.arange(100) % 2 == 0)] = 9
    ps = prediction_strength(same, split)
    assert ps == pytest.approx((13 * 12 + 12 * 11) / (25 * 24))


def test_resampling_metrics_are_objectives_not_eval_metrics():
    assert set(RESAMPLING_METRICS) <= set(OBJECTIVES)
    assert {METRIC_DIRECTIONS[m] for m in RESAMPLING_METRICS} == {"maximize"}
    # A registered model alone cannot be refitted, so promotion cannot compare on them.
    assert not set(RESAMPLING_METRICS) & set(EVAL_METRICS)


def test_stability_on_a_data_parallel_backend(client, separated):
    """The dask backend refits on the sample through its own prepare/fit, like any trial."""
    from toolkit.backends.dask_lloyd import DaskBackend
    from toolkit.data import Dataset

    X, _ = separated
    backend = DaskBackend(client=client, chunk_rows=250)
    placed = backend.prepare(Dataset("blobs", X, None, [], "test"))
    m = _score(placed, 5, MetricsConfig(stability=True, stability_resamples=2, stability_sample=400),
               backend=backend)
    assert m["stability"] == pytest.approx(1.0, abs=1e-3)


def test_grid_and_random_score_stability_too(separated):
    """The CV strategies' scorer: clones of the fold's estimator refitted with other seeds."""
    X, _ = separated
    scorer = ClusterScorer("stability", metrics=MetricsConfig(stability_resamples=3, stability_sample=500))
    assert scorer(KMeans(n_clusters=5, n_init=1, random_state=0).fit(X), X) == pytest.approx(1.0, abs=1e-3)
    assert scorer(KMeans(n_clusters=8, n_init=1, random_state=0).fit(X), X) < 0.95


def test_knee_point_scales_each_objective():
    pts = np.array([[0.90, 2], [0.85, 6], [0.40, 9], [0.20, 10]])
    assert knee_point(pts, ["maximize", "maximize"]) == 1
    # The same front with the second objective minimised: k=2 is best on both.
    assert knee_point(pts, ["maximize", "minimize"]) == 0


# -- the seed policy ----------------------------------------------------------------------


def test_fixed_seed_policy_same_params_same_value(separated):
    """Fixed (the default): trials 0 and 5 with the same params fit the same model and score the
    same; per_trial: their seeds differ, and so may their values."""
    X, _ = separated
    assert SearchConfig().seed_policy == "fixed"
    base = ModelConfig(n_clusters=7, init="random", n_init=1, random_state=11)
    params = {"n_clusters": 7, "init": "random"}
    fixed = [trial_model(base, params, n) for n in (0, 5)]
    assert {m.random_state for m in fixed} == {11}
    a, b = (run_trial(n, SklearnBackend(), X, m, MetricsConfig(), None) for n, m in zip((0, 5), fixed, strict=True))
    assert a.ok and b.ok and a.metrics["silhouette"] == b.metrics["silhouette"]
    np.testing.assert_array_equal(a.centers, b.centers)
    per_trial = [trial_model(base, params, n, "per_trial") for n in (0, 5)]
    assert [m.random_state for m in per_trial] == [11, 16]


# -- multi-objective search ---------------------------------------------------------------


def _multi_cfg(experiment: str, storage: str, *overrides: str):
    return load_experiment(BLOBS, [
        f"tracking.experiment={experiment}", f"search.storage={storage}", "data.n_samples=600",
        "metrics.silhouette_sample=600", "search.objectives=[silhouette, n_clusters]", "search.n_trials=6",
        "search.sampler=random", "search.space.init=null", "search.space.n_clusters.low=2",
        "search.space.n_clusters.high=9", "tracking.log_plot=false", *overrides,
    ])


def test_multi_objective_search_end_to_end(store, client, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = _multi_cfg("objectives-multi", storage, "registry.native_name=multi-kmeans",
                     "registry.sklearn_name=multi-kmeans-sklearn")
    outcome = search(cfg, client=client, register=True)
    mlc = MlflowClient()
    parent = mlc.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["search.objectives"] == "silhouette,n_clusters"
    assert parent.data.tags["search.directions"] == "maximize,maximize"
    assert "plots/pareto_front.png" in {f.path for f in mlc.list_artifacts(parent.info.run_id, "plots")}

    study = optuna.load_study(study_name=outcome.study_name, storage=study_storage(storage))
    assert len(study.directions) == 2
    front = {t.number for t in study.best_trials}
    number, _, reason = parent.data.tags[CHOSEN_TAG].partition(": ")
    chosen = study.trials[int(number)]
    assert chosen.number in front and "Pareto front" in reason
    assert outcome.best_params["n_clusters"] == chosen.params["n_clusters"] == chosen.values[1]
    assert outcome.best_value == pytest.approx(chosen.values[0])
    assert parent.data.metrics["chosen_n_clusters"] == chosen.values[1]

    # The refitted and registered model is the chosen point's configuration.
    assert outcome.best_fit is not None and outcome.best_fit.centers.shape[0] == chosen.params["n_clusters"]
    reg = outcome.registered
    assert reg is not None and reg.native_name == "multi-kmeans"
    version = mlc.get_model_version(reg.native_name, reg.native_version)
    assert version.run_id == outcome.parent_run_id
    kids = children(mlc, outcome.parent_run_id)
    assert len(kids) == 6 and {k.info.status for k in kids} == {"FINISHED"}
    assert not running(mlc)


def test_multi_objective_resume_is_refused_in_one_line(store, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with pytest.raises(ConfigError) as err:
        _multi_cfg("objectives-resume", storage, "search.resume=true")
    assert "search.resume=true is not supported with search.objectives" in str(err.value)
    assert "\n" not in str(err.value)
    # A single-objective resume that finds a multi-objective study of the same name: refused.
    cfg = _multi_cfg("objectives-resume", storage)
    study, _, lease = open_study(cfg, ["maximize", "maximize"])
    lease.release()
    single = load_experiment(BLOBS, [f"search.storage={storage}", "search.resume=true"])
    with pytest.raises(ConfigError, match="multi-objective study") as err:
        open_study(single, "maximize")
    assert "\n" not in str(err.value) and study.study_name in str(err.value)


@pytest.mark.parametrize("strategy", ["grid", "random"])
def test_multi_objective_needs_optuna(strategy):
    with pytest.raises(ConfigError) as err:
        load_experiment(BLOBS, ["search.objectives=[silhouette, n_clusters]", f"search.strategy={strategy}"])
    assert "needs search.strategy=optuna" in str(err.value) and "\n" not in str(err.value)


def test_multi_objective_refuses_cmaes():
    with pytest.raises(ConfigError, match="sampler=cmaes cannot run") as err:
        load_experiment(BLOBS, ["search.objectives=[silhouette, fit_seconds]", "search.sampler=cmaes"])
    assert "\n" not in str(err.value)


def test_digits_optimises_an_unsupervised_objective():
    cfg = load_experiment(DIGITS)
    assert cfg.search.objective not in ("adjusted_rand",) and cfg.search.seed_policy == "fixed"
