"""Label-stable models: a retrain keeps the champion's cluster IDs, and churn gates promotion.

Everything runs against a real sqlite MLflow store (the module's ``store``): models are fitted
for real (scikit-learn ``KMeans`` and the ``dask`` backend's ``DaskKMeans``), registered with
:func:`log_and_register`, loaded back through the verified loader and promoted.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from toolkit.convert import predict_labels, to_numpy, to_sklearn
from toolkit.kmeans_dask import DaskKMeans
from toolkit.registry import CHAMPION, Registration, flavor, integrity, log_and_register, promote, stable
from toolkit.tracking import tracked_run

# (backend, seed of the retrain): seeds whose raw fit numbers the same 5 blobs differently.
RETRAINS = [("sklearn", 1), ("dask", 2)]


@pytest.fixture(scope="module")
def mlc(store):
    return MlflowClient(tracking_uri=store, registry_uri=store)


@pytest.fixture(scope="module")
def data():
    """3,000 x 2 rows in 5 tight, well separated blobs; and the same rows shuffled."""
    X, _ = make_blobs(n_samples=3000, n_features=2, centers=5, cluster_std=0.3, random_state=7,
                      center_box=(-10, 10))
    X = X.astype(np.float32)
    return X, X[np.random.default_rng(1).permutation(len(X))]


def _fit(backend: str, X: np.ndarray, k: int, seed: int):
    if backend == "sklearn":
        native = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(X)
    else:
        native = DaskKMeans(n_clusters=k, random_state=seed).fit(X)
    return native, to_sklearn(native)


def _register(name: str, backend: str, fitted, sample: np.ndarray, **kwargs):
    native, twin = fitted
    with tracked_run(f"stable-{name}", "fit") as run_id:
        return log_and_register(native, twin, sample, Registration(
            run_id=run_id, backend=backend, native_name=name, sklearn_name=f"{name}-sklearn",
            feature_names=["x0", "x1"], **kwargs))


def _labels(model, X: np.ndarray) -> np.ndarray:
    return predict_labels(model, X)  # in the model's float width (a twin casts anyway)


def _file_hashes(mlc: MlflowClient, model_id: str, tmp_path) -> dict[str, str]:
    """sha256 of every file in a LoggedModel's storage, read straight from the store."""
    dst = tmp_path / model_id
    local = mlflow.artifacts.download_artifacts(artifact_uri=mlc.get_logged_model(model_id).artifact_location,
                                                dst_path=str(dst))
    return integrity.manifest_of(local)


# -- (1) a retrain keeps the IDs -------------------------------------------------------------


@pytest.mark.parametrize("backend, seed", RETRAINS)
def test_retrain_keeps_champion_ids(store, mlc, data, backend, seed):
    X, shuffled = data
    name = f"stable-retrain-{backend}"
    sample = X[:2000]
    v1 = _register(name, backend, _fit(backend, X, 5, 0), sample)
    assert (v1.native_version, v1.sklearn_version) == ("1", "1")
    tags1 = mlc.get_model_version(name, "1").tags
    assert tags1["stable.status"].startswith("first registration")

    # The reference sample is kept inside the champion's LoggedModel, in its manifest.
    assert stable.REFERENCE_FILE in json.loads(tags1["integrity.sha256"])
    champion, reference = stable.load_with_reference(f"models:/{name}@{CHAMPION}")
    assert np.array_equal(reference, sample)

    raw = _fit(backend, shuffled, 5, seed)
    raw_churn = float(np.mean(_labels(champion, reference) != _labels(raw[0], reference)))
    assert raw_churn > 0.5  # what every table keyed on cluster IDs would have suffered

    v2 = _register(name, backend, raw, shuffled[:2000])
    assert v2.native_version == "2"
    for uri in (f"models:/{name}/2", f"models:/{name}-sklearn/2"):
        assert np.array_equal(_labels(flavor.load_model(uri), reference), _labels(champion, reference))
    tags = mlc.get_model_version(name, "2").tags
    assert tags["stable.status"] == "matched to champion"
    assert tags["stable.champion_version"] == "1"
    assert json.loads(tags["stable.champion_ids"]) == {str(i): i for i in range(5)}
    # stable.mapping is the renumbering applied: the raw fit's labels through it are the registered ones.
    applied = json.loads(tags["stable.mapping"])
    assert sorted(applied) == [str(i) for i in range(5)] and applied != {str(i): i for i in range(5)}
    relabelled = np.array([applied[str(i)] for i in _labels(raw[0], reference)])
    assert np.array_equal(relabelled, _labels(flavor.load_model(f"models:/{name}/2"), reference))
    assert float(tags["stable.churn"]) == 0.0
    assert json.loads(tags["stable.new_ids"]) == [] and json.loads(tags["stable.vanished_ids"]) == []
    distances = json.loads(tags["stable.matched_distance"])
    assert sorted(distances) == [str(i) for i in range(5)] and max(distances.values()) < 0.1
    assert tags["stable.reference"] == "champion v1 (2000 rows)"
    twin_tags = mlc.get_model_version(f"{name}-sklearn", "2").tags
    assert twin_tags["stable.mapping"] == tags["stable.mapping"]
    assert twin_tags["stable.champion_ids"] == tags["stable.champion_ids"]
    # The fitted model handed in is not changed: the copy was reordered.
    assert not np.array_equal(to_numpy(raw[0].cluster_centers_),
                              to_numpy(flavor.load_model(f"models:/{name}/2").cluster_centers_))


def test_a_retrain_on_other_columns_keeps_its_ids_and_says_why(store, mlc, data):
    """Centres are matched coordinate by coordinate: a model of the champion's columns in
    another order is registered with the IDs it was fitted with, and its version says why."""
    X, _ = data
    name = "stable-columns"
    _register(name, "sklearn", _fit("sklearn", X, 5, 0), X[:2000])
    swapped = X[:, ::-1].copy()
    native, twin = _fit("sklearn", swapped, 5, 0)
    with tracked_run(f"stable-{name}", "fit") as run_id:
        v2 = log_and_register(native, twin, swapped[:2000], Registration(
            run_id=run_id, backend="sklearn", native_name=name, sklearn_name=f"{name}-sklearn",
            feature_names=["x1", "x0"]))
    tags = mlc.get_model_version(name, v2.native_version).tags
    assert tags["stable.status"].startswith(
        "not matched: the model's columns (x1, x0) are not those of champion v1 (x0, x1)"), tags["stable.status"]
    assert "stable.mapping" not in tags
    np.testing.assert_array_equal(_labels(flavor.load_model(f"models:/{name}/2"), swapped), _labels(native, swapped))


# -- (2) one more cluster: old IDs kept, one new ID ------------------------------------------


@pytest.mark.parametrize("backend, seed", RETRAINS)
def test_retrain_with_one_more_cluster_adds_one_new_id(store, mlc, data, backend, seed):
    X, shuffled = data
    name = f"stable-grow-{backend}"
    _register(name, backend, _fit(backend, X, 5, 0), X[:2000])
    champion, reference = stable.load_with_reference(f"models:/{name}/1")
    _register(name, backend, _fit(backend, shuffled, 6, seed), shuffled[:2000])
    tags = mlc.get_model_version(name, "2").tags
    assert json.loads(tags["stable.new_ids"]) == [5]
    assert json.loads(tags["stable.vanished_ids"]) == []
    assert json.loads(tags["stable.champion_ids"]) == {**{str(i): i for i in range(5)}, "5": None}
    assert sorted(json.loads(tags["stable.mapping"]).values()) == list(range(6))  # a renumbering of 6
    old, new = _labels(champion, reference), _labels(flavor.load_model(f"models:/{name}/2"), reference)
    kept = new != 5
    assert kept.any() and (~kept).any()
    assert np.array_equal(new[kept], old[kept])  # every row not in the new cluster keeps its ID
    assert float(tags["stable.churn"]) == pytest.approx(float(np.mean(~kept)))


def test_fewer_clusters_record_the_vanished_ones():
    old = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    new = np.array([[10.1, 10.0], [0.1, 0.0], [9.9, 0.0]])  # champion cluster 2 is gone
    m = stable.match_centers(new, old)
    # IDs must be 0..k-1: old ID 3 does not fit in 3 clusters and takes the free ID 2.
    assert m.mapping == {0: 0, 1: 1, 2: 3}
    assert m.vanished_ids == [2] and m.new_ids == []
    assert np.array_equal(new[m.order], old[[0, 1, 3]] + [[0.1, 0], [-0.1, 0], [0.1, 0]])


# -- (3) churn gates promotion, (4) files never rewritten -----------------------------------


def test_promote_refuses_a_winner_that_relabels_too_much(store, mlc, data, tmp_path):
    X, shuffled = data
    name = "stable-gate"
    # Champion: 4 clusters on 5 blobs (two merged); challenger: 5, better on silhouette, and the
    # rows of the split blob move to the new ID 4.
    v1 = _register(name, "sklearn", _fit("sklearn", X, 4, 0), X[:2000])
    before = {mid: _file_hashes(mlc, mid, tmp_path / "before") for mid in (v1.native_model_id, v1.sklearn_model_id)}
    _register(name, "sklearn", _fit("sklearn", shuffled, 5, 1), shuffled[:2000])
    churn = float(mlc.get_model_version(name, "2").tags["stable.churn"])
    assert 0.1 < churn < 0.5

    res = promote(name, X, metric="silhouette", max_churn=0.1)
    assert not res.promoted
    assert res.challenger_score > res.champion_score  # it wins on the metric...
    assert res.churn == pytest.approx(churn)  # ...measured on the champion's reference sample
    assert "beats champion v1" in res.reason and f"churn {churn:.2f} > max 0.10" in res.reason
    assert "\n" not in res.reason
    tags = mlc.get_model_version(name, "2").tags
    assert tags["promotion.outcome"] == "rejected" and tags["promotion.max_churn"] == "0.1"
    assert tags["promotion.churn_reference"] == "champion v1's reference sample (2000 rows)"
    assert str(mlc.get_registered_model(name).aliases[CHAMPION]) == "1"

    ok = promote(name, X, metric="silhouette", max_churn=0.5)
    assert ok.promoted and ok.reason.endswith(f"churn {churn:.2f} <= max 0.50")
    for n in (name, f"{name}-sklearn"):
        assert str(mlc.get_registered_model(n).aliases[CHAMPION]) == "2"

    # (4) Nothing of version 1 was rewritten by the second registration or the promotion.
    for mid, hashes in before.items():
        assert _file_hashes(mlc, mid, tmp_path / "after") == hashes
        assert json.loads(mlc.get_logged_model(mid).tags["integrity.sha256"]) == hashes
    for uri in (f"models:/{name}/1", f"models:/{name}-sklearn/1", f"models:/{name}/2"):
        flavor.load_model(uri)  # checks every file against the manifest first


def test_force_promotes_past_the_churn_gate_and_bad_limits_are_refused(store, mlc, data):
    X, shuffled = data
    name = "stable-force"
    _register(name, "sklearn", _fit("sklearn", X, 4, 0), X[:2000])
    _register(name, "sklearn", _fit("sklearn", shuffled, 5, 1), shuffled[:2000])
    from toolkit.errors import ModelError

    with pytest.raises(ModelError, match="max_churn must be between 0 and 1"):
        promote(name, X, max_churn=1.5)
    res = promote(name, X, max_churn=0.0, force=True)
    assert res.promoted and res.reason.endswith("> max 0.00; forced")


def test_stable_labels_off_keeps_fitted_ids(store, mlc, data):
    X, shuffled = data
    name = "stable-off"
    _register(name, "sklearn", _fit("sklearn", X, 5, 0), X[:2000])
    raw = _fit("sklearn", shuffled, 5, 1)
    _register(name, "sklearn", raw, shuffled[:2000], stable_labels=False)
    tags = mlc.get_model_version(name, "2").tags
    assert tags["stable.status"].startswith("off") and "stable.mapping" not in tags
    assert np.array_equal(flavor.load_model(f"models:/{name}/2").cluster_centers_, raw[0].cluster_centers_)
