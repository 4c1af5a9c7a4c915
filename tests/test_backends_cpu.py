"""CPU backends: registry, validation, and sklearn / dask-ml agreeing on well separated blobs."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from toolkit.backends import KMeansBackend, get_backend, make_backend
from toolkit.backends.daskml import DaskMLBackend
from toolkit.backends.scikit import SklearnBackend
from toolkit.config import ModelConfig
from toolkit.data import Dataset
from toolkit.errors import ConfigError
from toolkit.names import BACKEND_FACTS


def _dataset(X, y=None) -> Dataset:
    return Dataset(
        name="t", X=X, y=y, feature_names=[f"x{i}" for i in range(X.shape[1])], source="test"
    )


def _sorted_rows(centers: np.ndarray) -> np.ndarray:
    return centers[np.lexsort(centers.T[::-1])]


# (Every registry entry resolving to a class of its name: tests/test_backend_contract.py.)


def test_a_registered_backend_cannot_declare_its_facts_again():
    """device, parallelism, inits and honours have one home, toolkit.names.BACKEND_FACTS."""
    with pytest.raises(TypeError, match=r"declares inits: backend 'sklearn' takes them from toolkit.names"):

        class Again(SklearnBackend):
            name = "sklearn"
            inits = ("k-means++", "random")

    class StandIn(SklearnBackend):  # a stand-in keeps its parent's name and facts
        pass

    assert StandIn.facts is BACKEND_FACTS["sklearn"] and StandIn.inits == SklearnBackend.inits


@pytest.mark.parametrize("name, cls", [("sklearn", SklearnBackend), ("dask-ml", DaskMLBackend)])
def test_get_backend_cpu(name, cls):
    got = get_backend(name)
    assert got is cls
    assert issubclass(got, KMeansBackend)
    assert got.name == name
    assert got.device == "cpu"


def test_unknown_backend():
    with pytest.raises(ConfigError) as err:
        make_backend("tensorflow")
    msg = str(err.value)
    assert "\n" not in msg
    assert "tensorflow" in msg and "sklearn" in msg


def test_parallelism_and_inits():
    assert SklearnBackend.parallelism == "trial"
    assert DaskMLBackend.parallelism == "data"
    assert "k-means||" in DaskMLBackend.inits
    assert "k-means||" not in SklearnBackend.inits


def test_validate_rejects_more_clusters_than_samples():
    backend = make_backend("sklearn")
    with pytest.raises(ConfigError) as err:
        backend.validate(ModelConfig(n_clusters=11), n_samples=10)
    msg = str(err.value)
    assert "\n" not in msg and "n_clusters=11" in msg and "10 samples" in msg
    backend.validate(ModelConfig(n_clusters=10), n_samples=10)  # equal is fine


def test_validate_rejects_unsupported_init():
    backend = make_backend("sklearn")
    with pytest.raises(ConfigError) as err:
        backend.validate(ModelConfig(init="k-means||"), n_samples=100)
    msg = str(err.value)
    assert "\n" not in msg and "k-means||" in msg and "'sklearn'" in msg


def test_fit_validates_before_work():
    backend = make_backend("sklearn")
    X = np.zeros((5, 2), np.float32)
    with pytest.raises(ConfigError, match="n_clusters=6"):
        backend.fit(X, ModelConfig(n_clusters=6))


@pytest.fixture(scope="module")
def sklearn_fit(blobs_small):
    X, y = blobs_small
    backend = make_backend("sklearn")
    prepared = backend.prepare(_dataset(X, y))
    return backend.fit(prepared, ModelConfig(n_clusters=6, random_state=0))


@pytest.fixture(scope="module")
def daskml_fit(client, blobs_small):
    X, y = blobs_small
    backend = make_backend("dask-ml", client=client, chunk_rows=500)
    prepared = backend.prepare(_dataset(X, y))
    return prepared, backend.fit(
        prepared, ModelConfig(n_clusters=6, init="k-means++", random_state=0)
    )


def test_sklearn_fit_blobs(sklearn_fit, blobs_small):
    X, y = blobs_small
    res = sklearn_fit
    assert isinstance(res.labels, np.ndarray) and res.labels.shape == (len(X),)
    assert res.centers.shape == (6, 2) and res.centers.dtype == np.float64
    assert adjusted_rand_score(y, res.labels) == 1.0
    assert res.n_iter >= 1 and res.fit_seconds > 0
    # inertia is the sum of squared distances to the assigned centre
    d2 = ((X.astype(np.float64) - res.centers[res.labels]) ** 2).sum()
    assert res.inertia == pytest.approx(d2, rel=1e-3)


def test_daskml_fit_blobs_lazy_labels(daskml_fit, blobs_small):
    X, y = blobs_small
    prepared, res = daskml_fit
    assert isinstance(prepared, da.Array)
    assert prepared.dtype == np.float32
    assert prepared.numblocks[0] >= 2  # spread over the workers
    assert isinstance(res.labels, da.Array)  # lazy, not computed on the driver
    labels = res.labels.compute()
    assert labels.shape == (len(X),)
    assert adjusted_rand_score(y, labels) == 1.0
    assert res.centers.shape == (6, 2)
    d2 = ((X.astype(np.float64) - res.centers[labels]) ** 2).sum()
    assert res.inertia == pytest.approx(d2, rel=1e-3)


def test_daskml_scalable_init_without_client(blobs_small):
    # k-means|| is dask-ml's own init; it is latency-bound (many small computes), so run it on
    # the local threaded scheduler here -- the session cluster path is covered above.
    X, y = blobs_small
    backend = make_backend("dask-ml", client=None, chunk_rows=1000)
    with dask.config.set(scheduler="threads"):
        prepared = backend.prepare(_dataset(X, y))
        res = backend.fit(prepared, ModelConfig(n_clusters=6, init="k-means||", random_state=0))
        labels = res.labels.compute()
    assert prepared.numblocks[0] == 2
    assert adjusted_rand_score(y, labels) == 1.0


def test_sklearn_and_daskml_agree(sklearn_fit, daskml_fit):
    _, dres = daskml_fit
    assert adjusted_rand_score(sklearn_fit.labels, dres.labels.compute()) == 1.0
    np.testing.assert_allclose(
        _sorted_rows(sklearn_fit.centers), _sorted_rows(dres.centers), atol=1e-3
    )
    assert sklearn_fit.inertia == pytest.approx(dres.inertia, rel=1e-3)


def test_predict_matches_fit_labels(sklearn_fit, daskml_fit, blobs_small):
    X, _ = blobs_small
    sk = make_backend("sklearn")
    np.testing.assert_array_equal(sk.predict(sklearn_fit.model, X), sklearn_fit.labels)
    prepared, dres = daskml_fit
    dk = make_backend("dask-ml")
    np.testing.assert_array_equal(
        np.asarray(dk.predict(dres.model, prepared).compute()), dres.labels.compute()
    )


def test_sklearn_prepare_computes_lazy_data(blobs_small):
    X, _ = blobs_small
    prepared = make_backend("sklearn").prepare(_dataset(da.from_array(X, chunks=(700, 2))))
    assert isinstance(prepared, np.ndarray) and prepared.flags.c_contiguous
    np.testing.assert_array_equal(prepared, X)


def test_library_versions():
    versions = make_backend("dask-ml").library_versions()
    assert {"numpy", "scikit-learn"} <= set(versions)
    assert any(k.replace("_", "-") == "dask-ml" for k in versions)


def test_daskml_n_init_seeds():
    """dask-ml's KMeans runs one initialisation; the adaptor runs n_init of them (the contract
    suite checks it keeps the best): the first seed is random_state itself, so n_init=1 is the
    fit it always was, and the others are drawn from it, the same every time."""
    from toolkit.backends.base import init_seeds as _init_seeds

    assert _init_seeds(7, 1) == [7]
    seeds = _init_seeds(7, 4)
    assert seeds[0] == 7 and len(set(seeds)) == 4 and seeds == _init_seeds(7, 4)
    assert all(isinstance(s, int) and 0 <= s < 2**32 for s in seeds)
