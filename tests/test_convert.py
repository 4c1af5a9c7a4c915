"""The conversion table: every entry predicts like its source; unknown types fail clearly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from sklearn.cluster import KMeans, MiniBatchKMeans

from toolkit.config import ModelConfig
from toolkit.convert import (
    CONVERSIONS,
    assert_equivalent,
    check_equivalent,
    class_key,
    predict_labels,
    register_conversion,
    sklearn_from_centers,
    to_cuml,
    to_numpy,
    to_sklearn,
    with_feature_names,
)
from toolkit.errors import ModelError, ToolkitError


@pytest.fixture(scope="module")
def sk_model(blobs_small):
    X, _ = blobs_small
    return KMeans(n_clusters=6, n_init=1, random_state=0).fit(X)


@pytest.fixture(scope="module")
def daskml_model(client, blobs_small):
    import dask.array as da
    from dask_ml.cluster import KMeans as DaskMLKMeans

    X, _ = blobs_small
    dX = client.persist(da.from_array(X, chunks=(500, 2)))
    # init="random": dask-ml's k-means|| takes ~14 s on this tiny array
    return DaskMLKMeans(n_clusters=6, init="random", random_state=0).fit(dX)


def _fake_class(module: str, name: str, body: dict) -> type:
    cls = type(name, (), body)
    cls.__module__ = module
    cls.__qualname__ = name
    return cls


# -- CPU conversions --------------------------------------------------------------------------
def test_sklearn_is_its_own_conversion(sk_model):
    assert to_sklearn(sk_model) is sk_model


def test_daskml_to_sklearn_predicts_the_same(client, daskml_model, blobs_small):
    X, _ = blobs_small
    sk = to_sklearn(daskml_model)
    assert type(sk) is KMeans
    assert not hasattr(sk, "labels_")  # lazy Dask labels are dropped, not computed
    np.testing.assert_array_equal(sk.cluster_centers_, daskml_model.cluster_centers_)
    assert sk.inertia_ == pytest.approx(daskml_model.inertia_)
    assert sk.n_iter_ == daskml_model.n_iter_
    assert sk.n_features_in_ == 2
    assert sk.init == "random"
    sample = X[::4]
    np.testing.assert_array_equal(sk.predict(sample), daskml_model.predict(sample).compute())
    assert check_equivalent(daskml_model, sk, sample) == 1.0
    assert list(sk.get_feature_names_out()) == [f"kmeans{i}" for i in range(6)]


def test_check_equivalent_detects_permuted_centers(sk_model, blobs_small):
    X, _ = blobs_small
    permuted = copy.deepcopy(sk_model)
    permuted.cluster_centers_ = np.roll(sk_model.cluster_centers_, 1, axis=0).copy()
    agree = check_equivalent(sk_model, permuted, X[:300])
    assert agree < 0.5
    with pytest.raises(ModelError, match="predict different labels"):
        assert_equivalent(sk_model, permuted, X[:300])
    assert_equivalent(sk_model, copy.deepcopy(sk_model), X[:300])


def test_check_equivalent_casts_the_sample_to_the_centers_dtype(sk_model, blobs_small):
    X, _ = blobs_small
    # A float32-fitted scikit-learn model cannot predict float64 rows by itself.
    assert check_equivalent(sk_model, sk_model, X[:50].astype(np.float64)) == 1.0


def test_unknown_type_is_a_model_error_listing_known_types():
    with pytest.raises(ModelError) as err:
        to_sklearn(MiniBatchKMeans(n_clusters=2))
    msg = str(err.value)
    assert "sklearn.cluster._kmeans.MiniBatchKMeans" in msg
    assert "dask_ml.cluster.k_means.KMeans" in msg and "cuml.cluster.kmeans.KMeans" in msg
    assert "\n" not in msg and isinstance(err.value, ToolkitError)
    with pytest.raises(ModelError, match="to cuml"):
        to_cuml(object())


def test_class_moved_to_another_private_module_still_dispatches(daskml_model, blobs_small):
    X, _ = blobs_small
    attrs = {
        k: getattr(daskml_model, k)
        for k in ("cluster_centers_", "inertia_", "n_iter_", "n_features_in_")
    }
    Moved = _fake_class(
        "dask_ml.cluster._k_means_v2",
        "KMeans",
        {"get_params": lambda self: {"n_clusters": 6, "init": "k-means||"}, **attrs},
    )
    sk = to_sklearn(Moved())
    assert sk.init == "k-means++"  # 'k-means||' has no scikit-learn name
    np.testing.assert_array_equal(sk.predict(X[:100]), daskml_model.predict(X[:100]).compute())


def test_old_cuml_without_as_sklearn_is_hand_built(sk_model, blobs_small):
    """cuML < 25.02 has no as_sklearn: the fallback copies what predict needs."""
    X, _ = blobs_small
    OldCuml = _fake_class(
        "cuml.cluster.kmeans",
        "KMeans",
        {
            "cluster_centers_": sk_model.cluster_centers_,
            "labels_": sk_model.labels_,
            "inertia_": sk_model.inertia_,
            "n_iter_": sk_model.n_iter_,
            "n_features_in_": 2,
            "get_params": lambda self: {
                "n_clusters": 6, "init": "scalable-k-means++", "max_iter": 300,
                "tol": 1e-4, "random_state": 0, "n_init": 1, "handle": None,
            },
        },
    )
    sk = to_sklearn(OldCuml())
    assert sk.init == "k-means++" and sk.n_init == 1 and sk.random_state == 0
    np.testing.assert_array_equal(sk.labels_, sk_model.labels_)
    assert_equivalent(sk, sk_model, X)


def test_multi_gpu_models_drop_worker0_labels_and_keep_global_inertia(sk_model):
    """KMeansMG labels cover worker 0 only; the Dask wrapper's inertia_ is the global one."""
    as_sklearn = lambda self: copy.deepcopy(sk_model)  # noqa: E731
    MG = _fake_class("cuml.cluster.kmeans_mg", "KMeansMG", {"as_sklearn": as_sklearn})
    Wrapper = _fake_class(
        "cuml.dask.cluster.kmeans",
        "KMeans",
        {"get_combined_model": lambda self: MG(), "inertia_": 123.0},
    )
    sk = to_sklearn(MG())
    assert not hasattr(sk, "labels_") and sk.inertia_ == sk_model.inertia_
    sk = to_sklearn(Wrapper())
    assert not hasattr(sk, "labels_") and sk.inertia_ == 123.0


def test_register_conversion(sk_model):
    Mine = _fake_class("mylib.models", "Centroids", {"km": sk_model})
    key = class_key(Mine)
    try:
        register_conversion(key, "sklearn", lambda m: m.km)
        assert to_sklearn(Mine()) is sk_model
    finally:
        CONVERSIONS.pop((key, "sklearn"), None)
    with pytest.raises(ModelError):
        register_conversion("NoModule", "sklearn", lambda m: m)


def test_to_numpy_handles_host_and_dask(client):
    import dask.array as da
    import pandas as pd

    a = np.arange(6.0).reshape(3, 2)
    assert to_numpy(a) is a
    np.testing.assert_array_equal(to_numpy(da.from_array(a, chunks=2)), a)
    np.testing.assert_array_equal(to_numpy(pd.DataFrame(a)), a)
    np.testing.assert_array_equal(to_numpy([1, 2]), [1, 2])


def test_dask_backend_model_to_sklearn(client, blobs_small):
    """The ``dask`` backend's DaskKMeans converts through the one sklearn_from_centers."""
    pytest.importorskip("toolkit.backends.dask_lloyd")
    from toolkit.backends import make_backend
    from toolkit.data import Dataset

    X, y = blobs_small
    ds = Dataset(name="blobs", X=X, y=y, feature_names=["x0", "x1"], source="test")
    backend = make_backend("dask", client)
    prepared = backend.prepare(ds)
    result = backend.fit(prepared, ModelConfig(n_clusters=6, init="k-means||"))
    assert class_key(result.model) == "toolkit.kmeans_dask.estimator.DaskKMeans"
    sk = to_sklearn(result.model)
    assert type(sk) is KMeans
    labels = to_numpy(backend.predict(result.model, prepared))
    np.testing.assert_array_equal(sk.predict(X.astype(sk.cluster_centers_.dtype)), labels)
    assert check_equivalent(result.model, sk, X) == 1.0
    # Built like every other twin: it predicts on the threads a fitted scikit-learn model uses.
    assert sk._n_threads == KMeans(n_clusters=2, n_init=1).fit(X[:10])._n_threads


def test_twin_with_feature_names_predicts_frames_and_arrays_without_warnings(sk_model, blobs_small):
    """A twin that knows its columns predicts a DataFrame silently (and checks its columns);
    the toolkit's own array paths name the rows for it (predict_labels)."""
    import warnings

    import pandas as pd

    X, _ = blobs_small
    frame = pd.DataFrame(X[:300], columns=["a", "b"])
    expected = sk_model.predict(X[:300])
    named = with_feature_names(sk_model, ["a", "b"])
    assert named is not sk_model and not hasattr(sk_model, "feature_names_in_")  # a copy
    built = sklearn_from_centers(sk_model.cluster_centers_, params=sk_model, feature_names=("a", "b"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model in (named, built):
            assert list(model.feature_names_in_) == ["a", "b"] and model.n_features_in_ == 2
            np.testing.assert_array_equal(model.predict(frame), expected)
            np.testing.assert_array_equal(predict_labels(model, X[:300]), expected)
            np.testing.assert_array_equal(predict_labels(model, X[:300].astype(np.float64)), expected)
        assert check_equivalent(named, sk_model, X[:300]) == 1.0
    with pytest.raises(ValueError, match="Feature names unseen at fit time"):
        named.predict(frame.rename(columns={"b": "zz"}))
    with pytest.raises(ValueError, match="3 feature names for a model of 2 features"):
        with_feature_names(sk_model, ["a", "b", "c"])


# -- GPU conversions (skipped without cuML and a device) -----------------------------------------
@pytest.mark.gpu
def test_cuml_to_sklearn_and_back(blobs_small):
    import cuml

    X, _ = blobs_small
    gm = cuml.KMeans(n_clusters=6, random_state=0, output_type="numpy").fit(X)
    sk = to_sklearn(gm)
    assert type(sk) is KMeans and sk.init == "k-means++"
    assert_equivalent(gm, sk, X)
    back = to_cuml(sk)
    assert type(back) is cuml.KMeans
    assert_equivalent(back, sk, X)


@pytest.mark.gpu
def test_sklearn_and_daskml_to_cuml(sk_model, daskml_model, blobs_small):
    import cuml

    X, _ = blobs_small
    gm = to_cuml(sk_model)
    assert type(gm) is cuml.KMeans
    assert_equivalent(gm, sk_model, X)
    gm2 = to_cuml(daskml_model)  # no labels_ on the way: placeholders keep from_sklearn happy
    assert_equivalent(gm2, daskml_model, X[:500])
