"""The whole GPU lifecycle, end to end, on a real GPU (every test is ``gpu``-marked and skips
cleanly where cuML or a device is missing; ``gpu/`` stages and runs them on a lent machine).

- ``cuml`` and ``cuml-dask`` on blobs (100k x 2, 6 tight centres): the same clustering as
  scikit-learn (adjusted Rand index 1.0) and the global inertia scikit-learn gives on the same
  centres.
- The multi-GPU flow of the seed notebook: ``cuml-dask`` fit -> combined single-GPU model ->
  registered (native flavor + scikit-learn twin) -> loaded -> ``load_predictor(uri, client)``
  rebuilds a ``cuml.dask.cluster.KMeans`` -> per-partition predict on dask_cudf (and on the
  pandas frames batch scoring reads) == local cuML predict == the registered twin's predict.
- Parquet files through dask_cudf; ``mlflow run . -e search -P backend=cuml`` with nested runs
  and a registered model; ``mlflow run . -e predict`` with that GPU model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _mlflow_run import mlflow_run
from mlflow import MlflowClient

from toolkit.config import DataConfig, ModelConfig, load_experiment

pytestmark = pytest.mark.gpu

ROWS, CENTRES = 100_000, 6


@pytest.fixture(scope="module")
def blobs():
    from toolkit.data import load_dataset

    return load_dataset(DataConfig(n_samples=ROWS, n_features=2, centers=CENTRES, cluster_std=0.1, random_state=0))


def _host(a):
    from toolkit.convert import to_numpy

    return to_numpy(a.compute() if hasattr(a, "compute") else a)


def _sklearn_inertia(X: np.ndarray, centers: np.ndarray) -> float:
    """scikit-learn's inertia of ``X`` on ``centers`` (nothing refitted)."""
    from toolkit.convert import sklearn_from_centers

    return -float(sklearn_from_centers(np.asarray(centers, np.float64)).score(np.asarray(X, np.float64)))


@pytest.mark.parametrize("backend", ["cuml", "cuml-dask"])
def test_gpu_backend_clusters_blobs_like_sklearn(backend, blobs, gpu_client):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from toolkit.backends import make_backend

    b = make_backend(backend, gpu_client if backend == "cuml-dask" else None)
    X = b.prepare(blobs)
    result = b.fit(X, ModelConfig(n_clusters=CENTRES, init="k-means||", n_init=3, random_state=0))
    _, labels = b.host_view(X, result.labels)
    labels = _host(labels)
    assert labels.shape == (ROWS,)  # every row, in input order
    ref = KMeans(n_clusters=CENTRES, n_init=10, random_state=0).fit(blobs.X)
    assert adjusted_rand_score(ref.labels_, labels) == 1.0
    assert result.inertia == pytest.approx(_sklearn_inertia(blobs.X, result.centers), rel=1e-4)


def test_multi_gpu_fit_registered_loaded_and_served_on_the_cluster(tracking_uri, gpu_client, blobs):
    import cudf
    import cuml
    import dask.dataframe as dd
    import dask_cudf

    from toolkit.registry import flavor
    from toolkit.serving import load_predictor
    from toolkit.train import train

    cfg = load_experiment(None, {
        "name": "gpu-seed", "backend": "cuml-dask", "data.n_samples": ROWS, "data.n_features": 2,
        "data.centers": CENTRES, "data.cluster_std": 0.1, "model.n_clusters": CENTRES, "model.init": "k-means||",
        "tracking.log_plot": False,
    })
    outcome = train(cfg, client=gpu_client, register=True)
    reg = outcome.registered
    assert reg.sklearn_version and reg.agreement == 1.0

    native = flavor.load_model(f"models:/{reg.native_name}/{reg.native_version}")
    twin = flavor.load_model(f"models:/{reg.sklearn_name}/{reg.sklearn_version}")
    assert type(native) is cuml.KMeans and not hasattr(twin, "labels_")
    X = blobs.X
    local = _host(native.predict(X))
    np.testing.assert_array_equal(local, twin.predict(X))

    predictor = load_predictor(f"models:/{reg.native_name}@champion", client=gpu_client)
    assert isinstance(predictor.dist, cuml.dask.cluster.KMeans)
    on_gpu = dask_cudf.from_cudf(cudf.DataFrame(X, columns=["x0", "x1"]), npartitions=4)
    np.testing.assert_array_equal(_host(predictor.predict(on_gpu)), local)
    # What batch scoring hands it: a pandas-backed frame with an index of its own.
    frame = pd.DataFrame(X, columns=["x0", "x1"], index=pd.RangeIndex(1_000, 1_000 + ROWS, name="id"))
    served = predictor.predict(dd.from_pandas(frame, npartitions=3)).compute()
    assert list(served.index[:3]) == [1_000, 1_001, 1_002]
    np.testing.assert_array_equal(served.to_numpy(), local)


def test_parquet_files_through_dask_cudf(tmp_path, gpu_client, blobs):
    from sklearn.metrics import adjusted_rand_score

    from toolkit.backends import make_backend
    from toolkit.data import load_dataset

    frame = pd.DataFrame(blobs.X, columns=["x0", "x1"])
    for i, part in enumerate(np.array_split(frame, 4)):
        part.to_parquet(tmp_path / f"part-{i}.parquet")
    ds = load_dataset(DataConfig(source="file", path=str(tmp_path / "*.parquet")))
    b = make_backend("cuml-dask", gpu_client)
    X = b.prepare(ds)
    result = b.fit(X, ModelConfig(n_clusters=CENTRES, init="k-means||", random_state=0))
    _, labels = b.host_view(X, result.labels)
    assert adjusted_rand_score(blobs.y, _host(labels)) == 1.0


@pytest.mark.slow
def test_gpu_search_registers_and_predict_serves_it(tracking_uri, subprocess_env, tmp_path, blobs):
    search = mlflow_run("search", {"backend": "cuml", "n_trials": 4,
                                   "overrides": "data.n_samples=20000 tracking.log_plot=false"},
                        env=subprocess_env, experiment="gpu-search", timeout=900)
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
    mlc = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    exp = mlc.get_experiment_by_name("gpu-search")
    runs = mlc.search_runs([exp.experiment_id], max_results=100)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(kids) == 4 and all(k.info.status == "FINISHED" for k in kids)
    native = mlc.get_model_version_by_alias("blobs-kmeans", "champion")
    assert native.tags["device"] == "gpu"

    frame = pd.DataFrame(blobs.X[:5000], columns=["x0", "x1"])
    frame.to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "scored.parquet"
    predict = mlflow_run("predict", {"model_uri": "models:/blobs-kmeans@champion",
                                     "input": str(tmp_path / "in.parquet"), "output": str(out)},
                         env=subprocess_env, timeout=900)
    assert predict.returncode == 0, predict.stdout[-3000:] + predict.stderr[-3000:]
    from toolkit.registry import flavor

    twin = flavor.load_model("models:/blobs-kmeans-sklearn@champion")
    scored = pd.read_parquet(out)
    np.testing.assert_array_equal(scored["label"].to_numpy(), twin.predict(frame.to_numpy(np.float32)))
