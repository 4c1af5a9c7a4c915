"""``toolkit.train.train``: one fit inside one MLflow run, with everything it should log."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from _mlflow_store import init_store
from mlflow import MlflowClient

from toolkit.config import load_experiment
from toolkit.errors import ConfigError
from toolkit.train import train

REPO = Path(__file__).resolve().parents[1]
BLOBS = REPO / "experiments" / "blobs.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = {
    "inertia",
    "silhouette",
    "davies_bouldin",
    "calinski_harabasz",
    "adjusted_rand",
    "fit_seconds",
    "n_iter",
    "n_clusters_found",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store shared by this module's runs (each test reads its own run)."""
    uri = init_store(tmp_path_factory.mktemp("train") / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_RUN_ID", raising=False)
        yield uri


@pytest.fixture(scope="module")
def mlc(store):
    return MlflowClient(tracking_uri=store)


@pytest.fixture(scope="module")
def sklearn_run(store, mlc):
    cfg = load_experiment(BLOBS, ["data.n_samples=2000", "tracking.experiment=train-sklearn"])
    outcome = train(cfg, client=None)
    return cfg, outcome, mlc.get_run(outcome.run_id)


@pytest.fixture(scope="module")
def daskml_run(store, mlc, client):
    cfg = load_experiment(
        BLOBS,
        [
            "backend=dask-ml",
            "data.n_samples=2000",
            "data.chunk_rows=500",
            "tracking.experiment=train-daskml",
        ],
    )
    outcome = train(cfg, client=client)
    return cfg, outcome, mlc.get_run(outcome.run_id)


def _artifacts(mlc, run_id, dst) -> Path:
    return Path(mlc.download_artifacts(run_id, "centroids", str(dst)))


# -- sklearn, no cluster ------------------------------------------------------------------


def test_sklearn_run_finished(sklearn_run, mlc):
    _, outcome, run = sklearn_run
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "train-sklearn-k6"
    assert mlc.get_experiment(run.info.experiment_id).name == "train-sklearn"
    assert outcome.backend == "sklearn"
    assert "error" not in run.data.tags


def test_sklearn_run_params(sklearn_run):
    _, _, run = sklearn_run
    p = run.data.params
    assert p["model.n_clusters"] == "6"
    assert p["model.init"] == "k-means++"
    assert p["experiment.backend"] == "sklearn"  # top-level keys are prefixed
    assert p["data.rows"] == "2000"
    assert p["data.features"] == "2"
    assert p["data.name"] == "blobs-2000x2-c6"
    assert p["data.n_samples"] == "2000"
    assert not any(k.startswith("search.") for k in p)  # the search's own settings are not logged


def test_sklearn_run_metrics(sklearn_run):
    _, outcome, run = sklearn_run
    m = run.data.metrics
    assert METRICS <= set(m)
    assert m["adjusted_rand"] == 1.0
    assert m["n_clusters_found"] == 6
    assert m["silhouette"] > 0.9  # tight, well separated blobs
    assert m["n_iter"] >= 1 and m["fit_seconds"] > 0 and m["inertia"] > 0
    for key in METRICS:
        assert m[key] == pytest.approx(outcome.metrics[key])
    assert m["inertia"] == pytest.approx(outcome.result.inertia)


def test_sklearn_run_tags(sklearn_run):
    _, _, run = sklearn_run
    tags = run.data.tags
    assert tags["backend"] == "sklearn"
    assert tags["device"] == "cpu"
    assert tags["parallelism"] == "trial"
    assert tags["entry_point"] == "train"
    assert tags["config"] == str(BLOBS)
    assert tags["version.numpy"] == np.__version__
    assert "version.scikit-learn" in tags
    assert not any(k.startswith("dask.") for k in tags)  # no cluster was used


def test_sklearn_train_runs_without_dask(store, monkeypatch):
    """A small sklearn train starts no cluster and never imports Dask (its start-up does not pay
    for either): with ``dask`` and ``distributed`` unimportable it still finishes."""
    import sys

    for name in ("dask", "dask.array", "distributed"):
        monkeypatch.setitem(sys.modules, name, None)  # `import dask` now raises ImportError
    cfg = load_experiment(BLOBS, ["data.n_samples=600", "tracking.experiment=train-no-dask"])
    outcome = train(cfg, client=None)
    assert outcome.metrics["n_clusters_found"] == 6 and isinstance(outcome.result.labels, np.ndarray)


def test_sklearn_run_artifacts(sklearn_run, mlc, tmp_path):
    _, outcome, run = sklearn_run
    names = sorted(f.path for f in mlc.list_artifacts(run.info.run_id, "centroids"))
    assert names == [
        "centroids/centroids.csv",
        "centroids/centroids.npy",
        "centroids/centroids.png",
    ]
    local = _artifacts(mlc, run.info.run_id, tmp_path)
    png = (local / "centroids.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 1000
    frame = pd.read_csv(local / "centroids.csv", index_col="cluster")
    assert frame.shape == (6, 2)
    assert list(frame.columns) == ["x0", "x1"]
    np.testing.assert_allclose(frame.to_numpy(), outcome.result.centers, rtol=1e-12)
    np.testing.assert_array_equal(np.load(local / "centroids.npy"), outcome.result.centers)


def test_sklearn_run_dataset_input(sklearn_run):
    _, _, run = sklearn_run
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    ds = inputs[0].dataset
    assert ds.name == "blobs-2000x2-c6"
    assert len(ds.digest) == 12
    assert ds.source_type == "code"
    assert "make_blobs" in ds.source
    assert '"x0"' in ds.schema and '"x1"' in ds.schema
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"


# -- dask-ml on the session cluster -------------------------------------------------------


def test_daskml_run(daskml_run, client):
    _, outcome, run = daskml_run
    assert run.info.status == "FINISHED"
    assert outcome.backend == "dask-ml"
    assert isinstance(outcome.result.labels, da.Array)  # labels stay lazy on the cluster
    m = run.data.metrics
    assert METRICS <= set(m)
    assert m["adjusted_rand"] == 1.0
    tags = run.data.tags
    assert tags["backend"] == "dask-ml" and tags["device"] == "cpu"
    assert tags["parallelism"] == "data"
    # The session's cluster lives in this process and ends with it: a record, not a live link.
    assert (
        tags["dask.dashboard_at_run_time"].startswith("http")
        and tags["dask.dashboard_at_run_time"] == client.dashboard_link
    )
    assert "dask.dashboard" not in tags
    assert tags["dask.scheduler"] == client.scheduler.address
    assert tags["dask.workers"] == "2"
    assert any(k.startswith("version.dask") for k in tags)


def test_daskml_matches_sklearn(daskml_run, sklearn_run, mlc, tmp_path):
    _, sk, _ = sklearn_run
    _, _, run = daskml_run
    local = _artifacts(mlc, run.info.run_id, tmp_path)
    centers = pd.read_csv(local / "centroids.csv", index_col="cluster").to_numpy()
    assert centers.shape == (6, 2)

    def order(c):
        return c[np.lexsort(c.T[::-1])]

    np.testing.assert_allclose(order(centers), order(sk.result.centers), atol=1e-3)
    assert (local / "centroids.png").read_bytes()[:8] == PNG_MAGIC


# -- dask on a cluster train starts itself -----------------------------------------------


def test_dask_train_on_its_own_cluster_returns_host_labels_and_times_the_fit_alone(store, mlc, client):
    """A fresh cluster's warm-up (worker imports, compiled kernels, data landing) is its own
    ``system/warmup_s`` metric, not part of ``fit_seconds``; the labels come back as NumPy,
    computed before the cluster ``train`` started is closed."""
    from toolkit.convert import predict_labels, to_sklearn
    from toolkit.data import load_dataset
    from toolkit.train import WARMUP_METRIC

    overrides = ["backend=dask", "data.n_samples=2000", "data.chunk_rows=500", "tracking.log_plot=false",
                 "tracking.experiment=train-dask-own"]
    cfg = load_experiment(BLOBS, overrides)
    outcome = train(cfg)  # no client: a fresh 2-worker LocalCluster, closed on return
    labels = outcome.result.labels
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int32 and labels.shape == (2000,)
    assert isinstance(outcome.result.model.labels_, np.ndarray)
    X = load_dataset(cfg.data).X
    np.testing.assert_array_equal(predict_labels(to_sklearn(outcome.result.model), X), labels)
    m = mlc.get_run(outcome.run_id).data.metrics
    assert m[WARMUP_METRIC] > 0 and m["fit_seconds"] > 0
    assert m["adjusted_rand"] == 1.0
    # A second fit on a cluster that is already running: the fresh cluster's fit, its warm-up
    # excluded, is of the same order (bounds generous for a loaded 2-core machine; the
    # warm-up itself took 4-8 s there, the fits 0.05-0.4 s).
    warm = train(load_experiment(BLOBS, overrides), client=client)
    assert isinstance(warm.result.labels, da.Array)  # the caller's cluster: labels stay lazy
    assert m["fit_seconds"] < 3 * warm.metrics["fit_seconds"] + 0.5


def test_warm_up_is_timed_once_per_backend_and_apart_from_the_fit(sklearn_run, blobs_small):
    """scikit-learn's import (seconds on a fresh process) is warm-up too; a backend warms once."""
    from toolkit.backends import make_backend
    from toolkit.config import ModelConfig
    from toolkit.data import Dataset
    from toolkit.train import WARMUP_METRIC

    _, outcome, run = sklearn_run
    assert run.data.metrics[WARMUP_METRIC] == pytest.approx(outcome.result.extra["warmup_seconds"])
    X, y = blobs_small
    backend = make_backend("sklearn")
    prepared = backend.prepare(Dataset("b", X, y, ["x0", "x1"], "test"))
    first, second = (backend.fit(prepared, ModelConfig(n_clusters=6)) for _ in range(2))
    assert first.extra["warmup_seconds"] >= 0 and "warmup_seconds" not in second.extra


# -- a file source, plot off --------------------------------------------------------------


def test_file_source_run(store, mlc, tmp_path, blobs_small):
    X, y = blobs_small
    frame = pd.DataFrame(X[:600], columns=["f0", "f1"])
    frame["truth"] = y[:600]
    path = tmp_path / "blobs.csv"
    frame.to_csv(path, index=False)
    cfg = load_experiment(
        None,
        {
            "data.source": "file",
            "data.path": str(path),
            "data.label_column": "truth",
            "model.n_clusters": 6,
            "tracking.log_plot": False,
            "tracking.experiment": "train-file",
        },
    )
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outcome = train(cfg)
    # MLflow registers its local dataset source twice and warns on every local path it resolves
    # against both; the run's dataset source is resolved against one of them, silently.
    assert not [w for w in seen if "interpreted in multiple ways" in str(w.message)]
    run = mlc.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["data.rows"] == "600"
    assert run.data.params["data.name"] == "blobs.csv"
    assert run.data.metrics["adjusted_rand"] == 1.0
    names = sorted(f.path for f in mlc.list_artifacts(outcome.run_id, "centroids"))
    assert names == ["centroids/centroids.csv", "centroids/centroids.npy"]  # no plot
    local = _artifacts(mlc, outcome.run_id, tmp_path / "dl")
    assert list(pd.read_csv(local / "centroids.csv", index_col="cluster").columns) == ["f0", "f1"]
    ds = run.inputs.dataset_inputs[0].dataset
    assert ds.source_type == "local"
    assert json.loads(ds.source) == {"uri": str(path)}  # what MLflow's own resolution records


def test_failed_train_ends_run_failed(store, mlc):
    cfg = load_experiment(
        None, ["data.n_samples=5", "model.n_clusters=8", "tracking.experiment=train-fail"]
    )
    with pytest.raises(ConfigError, match="n_clusters=8"):
        train(cfg)
    exp = mlc.get_experiment_by_name("train-fail")
    runs = mlc.search_runs([exp.experiment_id])
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert "n_clusters=8" in runs[0].data.tags["error"]
    assert runs[0].data.tags["error.type"] == "ConfigError"
