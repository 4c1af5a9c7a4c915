"""The ``clustering`` evaluator of ``mlflow.models.evaluate``, for real.

Models are fitted for real (scikit-learn ``KMeans`` and the ``dask`` backend's ``DaskKMeans``),
registered with :func:`log_and_register` in the module's sqlite store and evaluated through
MLflow's own ``mlflow.models.evaluate`` (the plugin is found through its entry point).  Every
figure is checked against the toolkit's metric functions to 1e-9; promotion's scores and churn
are checked against the evaluator's.  One test does the same through a real ``mlflow server``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from importlib.metadata import entry_points

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from toolkit.convert import centers_of, input_dtype, to_numpy, to_sklearn
from toolkit.errors import ModelError
from toolkit.evaluation import verified_pyfunc
from toolkit.kmeans_dask import DaskKMeans
from toolkit.metrics import adjusted_rand, cluster_metrics
from toolkit.registry import Registration, flavor, log_and_register, promote, stable
from toolkit.stats.scores import DISTANCE_QUANTILES
from toolkit.tracking import tracked_run

# The twins remember their training columns' names; the checks here predict plain arrays.
pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names:UserWarning")

NAME = "eval-kmeans"
TWIN = f"{NAME}-sklearn"
SIZE_KEYS = [f"cluster_size_{i}" for i in range(5)]


@pytest.fixture(scope="module")
def mlc(store):
    return MlflowClient(tracking_uri=store, registry_uri=store)


@pytest.fixture(scope="module")
def data():
    """3,000 x 3 rows in 5 blobs with their ground truth (float32, as the toolkit reads data)."""
    X, y = make_blobs(n_samples=3000, n_features=3, centers=5, cluster_std=0.8, random_state=3)
    return X.astype(np.float32), y.astype(np.int32)


def _register(name: str, native, sample: np.ndarray, backend: str):
    with tracked_run(f"evaluate-{name}", "fit") as run_id:
        return log_and_register(native, to_sklearn(native), sample, Registration(
            run_id=run_id, backend=backend, native_name=name, sklearn_name=f"{name}-sklearn",
            feature_names=["a", "b", "c"]))


@pytest.fixture(scope="module")
def registered(store, data):
    """v1 (scikit-learn, k=5): champion; v2 (the dask backend's DaskKMeans, k=4): challenger."""
    X, _ = data
    v1 = _register(NAME, KMeans(n_clusters=5, n_init=1, random_state=0).fit(X), X[:2000], "sklearn")
    v2 = _register(NAME, DaskKMeans(n_clusters=4, random_state=1).fit(X), X[:2000], "dask")
    return v1, v2


def _expected(uri: str, X: np.ndarray, y: np.ndarray | None) -> dict[str, float]:
    """The toolkit's own figures for the model at ``uri``, computed here without the evaluator."""
    model = flavor.load_model(uri)  # verified
    Xm = X.astype(input_dtype(model))
    labels = np.asarray(to_numpy(model.predict(Xm))).ravel()
    centers = np.asarray(centers_of(model), dtype=np.float64)
    inertia = float(((Xm - centers[labels]) ** 2).sum())
    out = cluster_metrics(Xm, labels, len(centers), inertia=inertia, y_true=y, seed=0)
    sizes = np.bincount(labels, minlength=len(centers))
    out.update({f"cluster_size_{i}": float(s) for i, s in enumerate(sizes)})
    out["n_rows"] = float(len(X))
    if y is not None:
        from sklearn.metrics import normalized_mutual_info_score

        out["normalized_mutual_info"] = normalized_mutual_info_score(y, labels)
    return out


def _assert_figures(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(expected) <= set(got)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


# -- the plugin is registered -----------------------------------------------------------------


def test_entry_point_registers_the_clustering_evaluator():
    from mlflow.models.evaluation.evaluator_registry import _model_evaluation_registry

    from toolkit.evaluation import ClusteringEvaluator

    eps = {ep.name: ep.value for ep in entry_points(group="mlflow.model_evaluator")}
    assert eps["clustering"] == "toolkit.evaluation:ClusteringEvaluator"
    assert "clustering" in mlflow.models.list_evaluators()
    assert _model_evaluation_registry.get_evaluator("clustering").__class__ is ClusteringEvaluator
    assert ClusteringEvaluator.can_evaluate(model_type="clustering", evaluator_config={})
    assert not ClusteringEvaluator.can_evaluate(model_type="classifier", evaluator_config={})


# -- native model and twin: the toolkit's figures, artifacts, metrics on the LoggedModel -------


@pytest.mark.parametrize("kind", ["native-uri", "twin-verified-pyfunc"])
def test_evaluate_registered_model_equals_toolkit_metrics(store, mlc, registered, data, kind):
    X, y = data
    v1, _ = registered
    if kind == "native-uri":
        # models:/name@alias: MLflow cannot tell the model's id, the evaluator attaches the metrics.
        model, uri, model_id = f"models:/{NAME}@champion", f"models:/{NAME}@champion", v1.native_model_id
    else:
        # A pyfunc built by the verified loader: MLflow knows its id and attaches the metrics.
        uri, model_id = f"models:/{TWIN}@champion", v1.sklearn_model_id
        model = verified_pyfunc(uri)
        assert model.model_id == model_id
    result = mlflow.models.evaluate(model, X, targets=y, model_type="clustering", evaluators=["clustering"])

    expected = _expected(uri, X, y)
    _assert_figures(result.metrics, expected)
    assert result.metrics["adjusted_rand"] == pytest.approx(adjusted_rand(y, _labels(uri, X)), abs=1e-12)
    from sklearn.metrics import silhouette_score

    assert result.metrics["silhouette"] == pytest.approx(silhouette_score(X, _labels(uri, X)), rel=1e-6)
    assert sum(result.metrics[k] for k in SIZE_KEYS) == len(X)

    # Logged on the evaluation run, attached to the LoggedModel and to the evaluation dataset.
    run = mlc.get_run(result.run_id)
    assert run.data.metrics["silhouette"] == pytest.approx(expected["silhouette"], rel=1e-9)
    digests = {d.dataset.digest for d in run.inputs.dataset_inputs}
    assert len(digests) == 1
    attached = [m for m in mlc.get_logged_model(model_id).metrics if m.run_id == result.run_id]
    by_key = {m.key: m for m in attached}
    assert set(expected) <= set(by_key)
    assert by_key["silhouette"].value == pytest.approx(expected["silhouette"], rel=1e-9)
    assert by_key["silhouette"].dataset_digest in digests
    assert len(attached) == len(by_key)  # each metric once, not once per logger

    # Artifacts: both figures and the per-cluster distance quantiles, in CSV and JSON.
    names = {a.path for a in mlc.list_artifacts(result.run_id, "clustering")}
    assert names == {"clustering/cluster_sizes.png", "clustering/centroids.png",
                     "clustering/distance_quantiles.csv", "clustering/distance_quantiles.json"}
    assert set(result.artifacts) == {"cluster_sizes", "centroids", "distance_quantiles", "distance_quantiles_json"}
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="clustering")
    for png in ("cluster_sizes.png", "centroids.png"):
        with open(os.path.join(local, png), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(local, "distance_quantiles.csv")) as fh:
        rows = list(csv.DictReader(fh))
    with open(os.path.join(local, "distance_quantiles.json")) as fh:
        assert json.load(fh) == [{k: _num(v) for k, v in r.items()} for r in rows]
    assert [int(r["cluster"]) for r in rows] == list(range(5))
    assert [int(r["size"]) for r in rows] == [int(result.metrics[k]) for k in SIZE_KEYS]
    q_cols = [f"q{round(q * 100):02d}" for q in DISTANCE_QUANTILES]
    d = _distances(uri, X)
    labels = _labels(uri, X)
    for r in rows:
        qs = [float(r[c]) for c in q_cols]
        assert qs == sorted(qs)
        own = d[labels == int(r["cluster"])]
        assert qs == pytest.approx(np.quantile(own, DISTANCE_QUANTILES).tolist(), rel=1e-9)
        assert float(r["mean"]) == pytest.approx(own.mean(), rel=1e-9)


def _num(v: str) -> float | int:
    f = float(v)
    return int(f) if f.is_integer() and "." not in v else f


def _labels(uri: str, X: np.ndarray) -> np.ndarray:
    model = flavor.load_model(uri)
    return np.asarray(to_numpy(model.predict(X.astype(input_dtype(model))))).ravel()


def _distances(uri: str, X: np.ndarray) -> np.ndarray:
    model = flavor.load_model(uri)
    Xm = X.astype(input_dtype(model))
    centers = np.asarray(centers_of(model), dtype=np.float64)
    return np.sqrt(((Xm - centers[_labels(uri, X)]) ** 2).sum(axis=1))


def test_native_and_twin_score_alike_and_targets_add_label_metrics(store, registered, data):
    X, y = data
    native = mlflow.models.evaluate(f"models:/{NAME}@champion", X, model_type="clustering",
                                    evaluators=["clustering"])
    # A twin's URI string works too (MLflow's sklearn loader, then the verified copy is scored).
    twin = mlflow.models.evaluate(f"models:/{TWIN}@champion", X, model_type="clustering",
                                  evaluators="clustering", evaluator_config={"metric_prefix": "eval_"})
    assert "adjusted_rand" not in native.metrics and "normalized_mutual_info" not in native.metrics
    for key, value in native.metrics.items():
        assert twin.metrics[f"eval_{key}"] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    with_y = mlflow.models.evaluate(f"models:/{NAME}@champion", X, targets=y, model_type="clustering")
    assert 0.5 < with_y.metrics["adjusted_rand"] <= 1.0
    assert 0.5 < with_y.metrics["normalized_mutual_info"] <= 1.0


# -- churn against a baseline, and promotion gating on the same computation --------------------


def test_churn_against_baseline_and_promotion_uses_the_same_figures(store, mlc, registered, data):
    X, y = data
    v1, v2 = registered
    champion, challenger = f"models:/{NAME}@champion", f"models:/{NAME}@challenger"
    on_data = mlflow.models.evaluate(challenger, X, model_type="clustering", evaluators=["clustering"],
                                     evaluator_config={"clustering": {"baseline_model": champion}})
    by_hand = float(np.mean(_labels(champion, X) != _labels(challenger, X)))
    assert on_data.metrics["churn"] == pytest.approx(by_hand, abs=1e-12)
    assert 0.0 < on_data.metrics["churn"] < 1.0 and on_data.metrics["churn_rows"] == len(X)
    assert mlc.get_run(on_data.run_id).data.tags["evaluation.clustering.baseline_model"] == champion

    on_ref = mlflow.models.evaluate(challenger, X, model_type="clustering", evaluators=["clustering"],
                                    evaluator_config={"clustering": {"baseline_model": champion,
                                                                     "churn_on": "reference"}})
    base, reference = stable.load_with_reference(champion)
    assert on_ref.metrics["churn"] == pytest.approx(stable.churn(base, flavor.load_model(challenger), reference))
    assert on_ref.metrics["churn_rows"] == len(reference)

    # promote scores challenger and champion through their twins: the evaluator's figures.
    res = promote(NAME, X, y, metric="silhouette", max_churn=1.0)
    def by_hand(version: str) -> float:
        return mlflow.models.evaluate(verified_pyfunc(f"models:/{TWIN}/{version}"), X, targets=y,
                                      model_type="clustering", evaluators=["clustering"]).metrics["silhouette"]

    assert res.challenger_score == by_hand(v2.sklearn_version)
    assert res.champion_score == by_hand(v1.sklearn_version)
    assert res.churn == pytest.approx(on_ref.metrics["churn"], abs=1e-12)
    assert res.challenger_version == v2.native_version


def test_bad_settings_are_one_line_errors(store, registered, data):
    X, _ = data
    with pytest.raises(ModelError, match="unknown clustering evaluator setting"):
        mlflow.models.evaluate(f"models:/{NAME}/1", X, model_type="clustering", evaluators=["clustering"],
                               evaluator_config={"clustering": {"baseline": "models:/x/1"}})
    with pytest.raises(ModelError, match="does not exist"):
        mlflow.models.evaluate(f"models:/{NAME}/1", X, model_type="clustering", evaluators=["clustering"],
                               evaluator_config={"clustering": {"baseline_model": "models:/no-such-model/1"}})


# -- layering ----------------------------------------------------------------------------------


def test_promotion_imports_only_the_pure_score_function():
    """registry -> stats.scores -> metrics; the stats package knows nothing of MLflow or the registry."""
    import ast
    from pathlib import Path

    from test_import_graph import import_graph

    root = Path(__file__).resolve().parents[1]
    graph = import_graph(root)
    assert "toolkit.stats.scores" in graph["toolkit.registry.promote"]
    assert graph["toolkit.stats.scores"] <= {"toolkit.metrics", "toolkit.convert"}
    registry = {m for m in graph if m.startswith("toolkit.registry")}
    assert not any(d.startswith("toolkit.evaluation") for m in registry for d in graph[m])
    for path in (root / "toolkit" / "stats").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] == "mlflow" for n in names), (path.name, node.lineno)


# -- through a real tracking server -------------------------------------------------------------


@pytest.fixture()
def mlflow_server(shared_mlflow_server, monkeypatch):
    """The session's real ``mlflow server`` (conftest), as tracking and registry URI."""
    from _mlflow_store import mlflow_pointed_at

    with mlflow_pointed_at(shared_mlflow_server, monkeypatch) as url:
        yield url


@pytest.mark.server
@pytest.mark.slow
def test_evaluate_alias_uri_through_tracking_server(mlflow_server, data):
    X, y = data
    reg = _register("served-eval", KMeans(n_clusters=5, n_init=1, random_state=0).fit(X), X[:2000], "sklearn")
    uri = "models:/served-eval@champion"
    result = mlflow.models.evaluate(uri, X, targets=y, model_type="clustering", evaluators=["clustering"])
    _assert_figures(result.metrics, _expected(uri, X, y))
    c = MlflowClient(mlflow_server)
    assert {a.path for a in c.list_artifacts(result.run_id, "clustering")} >= {
        "clustering/cluster_sizes.png", "clustering/distance_quantiles.csv"}
    attached = {m.key: m.value for m in c.get_logged_model(reg.native_model_id).metrics
                if m.run_id == result.run_id}
    assert attached["inertia"] == pytest.approx(result.metrics["inertia"], rel=1e-12)
    csv_text = mlflow.artifacts.load_text(f"runs:/{result.run_id}/clustering/distance_quantiles.csv")
    assert len(list(csv.DictReader(io.StringIO(csv_text)))) == 5


# -- the benchmark section runs (its figures mean nothing at this size) --------------------------


@pytest.mark.slow
def test_benchmark_evaluate_section_runs_on_a_throwaway_store(store, tmp_path):
    from benchmarks import run as bench

    out = bench.bench_evaluate(str(tmp_path), rows=5_000, features=4, k=3, repeats=1)
    assert out["evaluate_s"] > 0 and out["by_hand_s"] > 0 and out["evaluate_over_by_hand"] > 0
    assert set(out["targets"]) == {"evaluate <= 1.5x predict + metric passes"}
    # The caller's store is the tracking and registry URI again, and got nothing of the benchmark.
    assert mlflow.get_tracking_uri() == store and os.environ["MLFLOW_TRACKING_URI"] == store
    assert mlflow.get_registry_uri() == store
    assert MlflowClient(store).search_registered_models(filter_string="name = 'bench-eval'") == []
