"""Multi-fidelity search (``search.fidelity``): rungs, pruned trials, budget, resume.

Real searches on the session's 2-worker cluster, a temp sqlite MLflow store and real Optuna
studies; small blobs, so each search takes a few seconds.  Every CPU backend goes through the
same path: trial-parallel (sklearn) and data-parallel (dask, dask-ml).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from _records import children, running
from mlflow import MlflowClient
from optuna.trial import TrialState

from toolkit.config import load_experiment
from toolkit.errors import ConfigError
from toolkit.search import search
from toolkit.search.fidelity import RUNG_ATTR, subset_rows, take_rows
from toolkit.search.study import study_storage

BLOBS = Path(__file__).resolve().parents[1] / "experiments" / "blobs.yaml"
N = 900  # rungs of 1/9, 1/3 and all rows: 100, 300 and 900


@pytest.fixture(scope="module")
def mlc(store):
    return MlflowClient(tracking_uri=store)


def make_cfg(experiment: str, storage: str, *overrides: str):
    return load_experiment(BLOBS, [
        f"tracking.experiment={experiment}", f"search.storage={storage}", f"data.n_samples={N}",
        "metrics.silhouette_sample=1000", "tracking.log_plot=false", "search.sampler=random",
        "search.fidelity.pruner=successive_halving", "search.fidelity.min_fraction=0.1",
        "search.fidelity.reduction_factor=3", *overrides,
    ])


def check_record(mlc: MlflowClient, cfg, outcome, n_trials: int) -> tuple[list, list]:
    """Every trial has one ended child run telling the rung it reached; the best is full-fidelity;
    the parent has the budget per rung.  Returns (pruned, completed) child runs."""
    assert not running(mlc)
    parent = mlc.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    kids = children(mlc, outcome.parent_run_id)
    assert sorted(int(k.data.tags["optuna.trial_number"]) for k in kids) == list(range(n_trials))
    pruned = [k for k in kids if k.data.tags["trial.state"] == "PRUNED"]
    done = [k for k in kids if k.info.status == "FINISHED"]
    assert len(pruned) + len(done) == n_trials  # no failed trial on blobs
    for k in pruned:
        rung = int(k.data.tags["search.rung"])
        assert k.info.status == "KILLED" and 0 <= rung < 2
        assert "objective" not in k.data.metrics  # a rung's objective is not the trial's value
        steps = [m.step for m in mlc.get_metric_history(k.info.run_id, "rung_objective")]
        assert sorted(steps) == list(range(rung + 1))
        rows = {m.step: m.value for m in mlc.get_metric_history(k.info.run_id, "rung_rows")}
        assert rows[0] == 100
    for k in done:
        assert k.data.tags["search.rung"] == "2" and k.data.tags["search.rungs"] == "3"
        history = {m.step: m.value for m in mlc.get_metric_history(k.info.run_id, "rung_objective")}
        assert sorted(history) == [0, 1, 2]
        assert history[2] == pytest.approx(k.data.metrics["objective"])  # the full rung's is the value
    # The best trial, refitted, is a full-fidelity one.
    study = optuna.load_study(study_name=outcome.study_name, storage=study_storage(cfg.search.storage))
    assert study.best_trial.state == TrialState.COMPLETE and study.best_trial.user_attrs[RUNG_ATTR] == 2
    assert outcome.best_value == pytest.approx(study.best_value)
    assert parent.data.params["best.n_clusters"] == str(study.best_trial.params["n_clusters"])
    if outcome.best_fit is not None:  # refitted (a resume refits only a better best) on all rows
        assert outcome.best_fit.labels.shape[0] == N
    # Budget per rung on the parent: every trial fitted rung 0, fewer the later rungs.
    m = parent.data.metrics
    fits = [m[f"budget/rung_{i}_fits"] for i in range(3)]
    assert fits[0] == n_trials and fits[2] == len(done) and fits[0] >= fits[1] >= fits[2]
    assert [m[f"budget/rung_{i}_rows"] for i in range(3)] == [fits[0] * 100, fits[1] * 300, fits[2] * 900]
    assert m["budget/total_fits"] == sum(fits)
    assert m["budget/total_rows"] == fits[0] * 100 + fits[1] * 300 + fits[2] * 900
    assert m["trials_pruned"] == len(pruned) == outcome.counts["pruned"]
    table = pd.read_csv(mlc.download_artifacts(outcome.parent_run_id, "search/rungs.csv"))
    assert table["rows"].tolist() == [100, 300, 900] and table["trials_reached"].tolist() == fits
    assert parent.data.tags["search.fidelity"].startswith(f"{cfg.search.fidelity.pruner} over data_fraction")
    return pruned, done


@pytest.mark.parametrize("backend, n_trials", [("sklearn", 9), ("dask", 5), ("dask-ml", 5)])
def test_successive_halving_every_cpu_backend(store, mlc, client, tmp_path, backend, n_trials):
    cfg = make_cfg(f"fid-{backend}", str(tmp_path / "optuna.log"), f"backend={backend}",
                   f"search.n_trials={n_trials}", "search.space.init=null", "data.chunk_rows=300",
                   "search.prefetch=0")
    outcome = search(cfg, client=client)
    pruned, done = check_record(mlc, cfg, outcome, n_trials)
    assert pruned, "successive halving pruned no trial"
    assert outcome.counts == {"complete": len(done), "failed": 0, "pruned": len(pruned)}


@pytest.mark.parametrize("backend", ["sklearn", "dask"])
def test_synchronous_halving_keeps_exactly_the_best_third_of_each_rung(store, mlc, client, tmp_path, backend):
    # 9 trials: the whole of rung 0 reports before any decision, its best 3 climb, then the
    # best 1 of those 3 fits all the rows; asynchronous halving would let early trials climb.
    cfg = make_cfg(f"fid-sync-{backend}", str(tmp_path / "optuna.log"), f"backend={backend}",
                   "search.n_trials=9", "search.fidelity.pruner=synchronous_halving", "data.chunk_rows=300")
    outcome = search(cfg, client=client)
    pruned, done = check_record(mlc, cfg, outcome, 9)
    assert len(pruned) == 8
    m = mlc.get_run(outcome.parent_run_id).data.metrics
    assert [m[f"budget/rung_{i}_fits"] for i in range(3)] == [9, 3, 1] and len(done) == 1
    # Who climbed is the best of the whole rung (silhouette: higher is better; ties by number).
    kids = children(mlc, outcome.parent_run_id)
    climb = {int(k.data.tags["optuna.trial_number"]): (
        {h.step: h.value for h in mlc.get_metric_history(k.info.run_id, "rung_objective")},
        int(k.data.tags["search.rung"])) for k in kids}
    ranked = sorted(climb, key=lambda n: (-climb[n][0][0], n))
    assert {n for n in climb if climb[n][1] >= 1} == set(ranked[:3])
    climbed = sorted((n for n in climb if climb[n][1] >= 1), key=lambda n: (-climb[n][0][1], n))
    assert climb[climbed[0]][1] == 2 and all(climb[n][1] == 1 for n in climbed[1:])


def test_synchronous_halving_pruner_ranks_the_whole_step():
    from toolkit.search.pruners import SynchronousHalvingPruner

    for direction, values, kept in [("maximize", [0.1, 0.5, 0.5, 0.9, 0.2, 0.3], {3, 1}),
                                    ("minimize", [0.1, 0.5, 0.5, 0.9, 0.2, 0.3], {0, 4}),
                                    ("maximize", [0.4, 0.4], {0})]:  # fewer than 3: one goes on, ties by number
        study = optuna.create_study(direction=direction, pruner=SynchronousHalvingPruner(3))
        trials = [study.ask() for _ in values]
        for t, v in zip(trials, values, strict=True):
            t.report(v, step=1)
        assert {t.number for t in trials if not t.should_prune()} == kept, (direction, values)
    study = optuna.create_study(pruner=SynchronousHalvingPruner(3))
    t = study.ask()
    assert not t.should_prune()  # nothing reported yet
    t.report(float("nan"), step=1)
    assert t.should_prune()
    with pytest.raises(ValueError, match="at least 2"):
        SynchronousHalvingPruner(1)


def test_resume_keeps_pruned_trials(store, mlc, client, tmp_path):
    storage = str(tmp_path / "optuna.log")
    first = search(make_cfg("fid-resume", storage, "search.n_trials=6", "search.prefetch=0"), client=client)
    cfg = make_cfg("fid-resume", storage, "search.n_trials=9", "search.resume=true", "search.prefetch=0")
    outcome = search(cfg, client=client)
    assert outcome.resumed and outcome.parent_run_id == first.parent_run_id
    pruned, _ = check_record(mlc, cfg, outcome, 9)  # the pruned trials of the first run: not run again
    study = optuna.load_study(study_name=outcome.study_name, storage=study_storage(storage))
    assert len(study.trials) == 9 and sum(t.state == TrialState.PRUNED for t in study.trials) == len(pruned)


def test_hyperband_and_median_and_max_iter(store, mlc, client, tmp_path):
    """The other pruners and the max_iter resource take the same path (all rows every rung)."""
    for i, (pruner, resource) in enumerate([("hyperband", "data_fraction"), ("median", "max_iter")]):
        cfg = make_cfg(f"fid-{pruner}", str(tmp_path / f"optuna{i}.log"), f"search.fidelity.pruner={pruner}",
                       f"search.fidelity.resource={resource}", "search.n_trials=6")
        outcome = search(cfg, client=client)
        kids = children(mlc, outcome.parent_run_id)
        assert len(kids) == 6 and not running(mlc)
        assert all(k.info.status in ("FINISHED", "KILLED") and "search.rung" in k.data.tags for k in kids)
        parent = mlc.get_run(outcome.parent_run_id).data
        rows = 100 if resource == "data_fraction" else N
        assert parent.metrics["budget/rung_0_rows"] == parent.metrics["budget/rung_0_fits"] * rows
        assert parent.tags["search.fidelity"].startswith(f"{pruner} over {resource}")


def test_rungs_are_nested_and_seeded():
    small, large = subset_rows(N, 100, 0), subset_rows(N, 300, 0)
    assert len(small) == 100 and set(small) <= set(large)
    assert list(subset_rows(N, 100, 1)) != list(small)
    import dask.array as da
    import numpy as np

    X = np.arange(N * 2, dtype=np.float32).reshape(N, 2)
    sub, y = take_rows(da.from_array(X, chunks=300), np.arange(N), (100, 0))
    assert np.array_equal(sub.compute(), X[small]) and np.array_equal(y, small)
    assert take_rows(X, None, (N, 0))[0] is X


@pytest.mark.parametrize("override, match", [
    ("search.strategy=grid", "needs search.strategy=optuna"),
    ("search.objectives=[silhouette,n_clusters]", "multi-objective"),
    ("search.fidelity.min_fraction=0.5", "leaves one rung"),
])
def test_invalid_combination_is_one_line(override, match):
    with pytest.raises(ConfigError, match=match) as err:
        make_cfg("fid-bad", "optuna.log", override)
    assert "\n" not in str(err.value)


def test_first_rung_smaller_than_k_is_refused(store, mlc, client, tmp_path):
    """A first rung of 12 rows cannot fit k up to 12: refused before any trial runs."""
    cfg = make_cfg("fid-tiny", str(tmp_path / "optuna.log"), "data.n_samples=100",
                   "search.space.n_clusters.high=12")
    with pytest.raises(ConfigError, match="first rung fits 12 of the 100 rows") as err:
        search(cfg, client=client)
    assert "\n" not in str(err.value)


def test_a_rungs_silhouette_sample_shrinks_with_its_rows_and_the_last_rung_keeps_it():
    from toolkit.config import MetricsConfig
    from toolkit.search.fidelity import rung_metrics

    m = MetricsConfig(silhouette_sample=5000)
    assert rung_metrics(m, 1_000_000, 1_000_000) is m  # the trial's value: as configured
    assert rung_metrics(m, 37_038, 1_000_000).silhouette_sample == 1000  # the floor
    assert rung_metrics(m, 333_334, 1_000_000).silhouette_sample == 1667
    small = MetricsConfig(silhouette_sample=500)
    assert rung_metrics(small, 100, 900) is small  # never above the configured sample


def test_a_rung_is_scored_on_its_own_sample_size():
    """A trial task on a rung scores the silhouette on the rung's sample, the same for every
    trial of that rung; on all rows it scores on the configured one."""
    import numpy as np

    from toolkit.config import MetricsConfig
    from toolkit.metrics import cluster_metrics
    from toolkit.search.fidelity import rung_metrics
    from toolkit.search.trials import _worker_trial

    cfg = make_cfg("unused", "unused.log")
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(c, 0.5, size=(3000, 2)) for c in (-4, 0, 4)]).astype(np.float32)
    metrics = MetricsConfig(silhouette_sample=3000)
    params = cfg.model.model_copy(update={"n_clusters": 3})
    subset = (3000, 0)  # a third of the rows: a sample of 1,000 (the floor), not 3,000
    res = _worker_trial(0, "sklearn", X, params, metrics, None, subset)
    assert res.ok and not res.full_data
    rows = take_rows(X, None, subset)[0]
    assert rung_metrics(metrics, 3000, len(X)).silhouette_sample == 1000
    from sklearn.cluster import KMeans

    labels = KMeans(n_clusters=3, init=params.init, n_init=params.n_init, max_iter=params.max_iter,
                    tol=params.tol, random_state=params.random_state).fit(rows).labels_
    on_rung = cluster_metrics(rows, labels, 3, silhouette_sample=1000, seed=metrics.seed)["silhouette"]
    as_configured = cluster_metrics(rows, labels, 3, silhouette_sample=3000, seed=metrics.seed)["silhouette"]
    assert on_rung != pytest.approx(as_configured, rel=1e-9)  # the two sizes tell apart
    assert res.metrics["silhouette"] == pytest.approx(on_rung, rel=1e-6)
    full = _worker_trial(1, "sklearn", X, params, metrics, None, None)
    assert full.full_data
