"""The ``dask`` backend and its Lloyd k-means (:mod:`toolkit.kmeans_dask`) against scikit-learn,
on the session LocalCluster."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from toolkit.backends import make_backend
from toolkit.backends.dask_lloyd import DaskBackend
from toolkit.config import ModelConfig
from toolkit.convert import sklearn_from_centers
from toolkit.data import Dataset
from toolkit.kmeans_dask import DaskKMeans, lloyd_fit
from toolkit.kmeans_dask.kernels import k_stats, kernel_centers


def _data(n: int, d: int, seed: int) -> np.ndarray:
    """Overlapping Gaussian data away from the origin (Lloyd needs tens of iterations)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d) + 3.0).astype(np.float32)


def _init(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    return X[np.random.default_rng(seed).choice(len(X), k, replace=False)].copy()


def _persisted(client, X: np.ndarray, blocks: int = 4):
    return client.persist(da.from_array(X, chunks=(-(-len(X) // blocks), X.shape[1])))


def _sklearn(X: np.ndarray, C0: np.ndarray, **kw) -> KMeans:
    return KMeans(C0.shape[0], init=C0, n_init=1, algorithm="lloyd", **kw).fit(X)


def _assert_same_as_sklearn(km: DaskKMeans, sk: KMeans, X: np.ndarray) -> None:
    scale = float(np.abs(X).max())
    np.testing.assert_allclose(
        km.cluster_centers_, sk.cluster_centers_, rtol=1e-5, atol=1e-5 * scale
    )
    assert km.n_iter_ == sk.n_iter_
    assert abs(km.inertia_ - sk.inertia_) <= 1e-5 * sk.inertia_
    labels = km.labels_.compute() if hasattr(km.labels_, "compute") else km.labels_
    np.testing.assert_array_equal(labels, sk.labels_)


@pytest.mark.parametrize(
    ("n", "d", "k", "seed"), [(2000, 2, 6, 0), (5000, 16, 8, 1), (3000, 5, 3, 2)]
)
def test_same_init_same_result_as_sklearn(client, n, d, k, seed):
    X = _data(n, d, seed)
    C0 = _init(X, k, seed)
    sk = _sklearn(X, C0, tol=1e-4)
    km = DaskKMeans(k, init=C0, tol=1e-4).fit(_persisted(client, X), client=client)
    assert km.fit_info_["engine"] in ("actors", "futures")
    assert km.n_iter_ > 3  # a real run, not a trivial one
    _assert_same_as_sklearn(km, sk, X)
    assert isinstance(km.labels_, da.Array)  # lazy
    assert km.cluster_centers_.dtype == np.float64 and km.n_features_in_ == d


def test_lloyd_fit_function_and_strict_convergence(client):
    X = _data(3000, 5, 3)
    C0 = _init(X, 4, 3)
    sk = _sklearn(X, C0, tol=0.0)  # stops only when labels no longer change
    centers, inertia, n_iter = lloyd_fit(
        _persisted(client, X), C0, max_iter=300, tol=0.0, client=client
    )
    assert n_iter == sk.n_iter_ < 300
    np.testing.assert_allclose(centers, sk.cluster_centers_, rtol=1e-5, atol=1e-5 * np.abs(X).max())
    assert abs(inertia - sk.inertia_) <= 1e-5 * sk.inertia_
    # NumPy input runs the same kernels in-process.
    c2, i2, n2 = lloyd_fit(X, C0, max_iter=300, tol=0.0)
    assert n2 == n_iter and i2 == pytest.approx(inertia, rel=1e-6)
    np.testing.assert_allclose(c2, centers, rtol=1e-6, atol=1e-6 * np.abs(X).max())


def test_tol_and_max_iter(client):
    X = _data(4000, 4, 4)
    C0 = _init(X, 5, 4)
    Xd = _persisted(client, X)
    loose = DaskKMeans(5, init=C0, tol=1e-2).fit(Xd, client=client)
    tight = DaskKMeans(5, init=C0, tol=1e-7).fit(Xd, client=client)
    assert loose.n_iter_ < tight.n_iter_
    _assert_same_as_sklearn(loose, _sklearn(X, C0, tol=1e-2), X)
    capped = DaskKMeans(5, init=C0, tol=0.0, max_iter=3).fit(Xd, client=client)
    assert capped.n_iter_ == 3
    # Stopped by max_iter: inertia and labels are against the final centers (final E-step).
    _assert_same_as_sklearn(capped, _sklearn(X, C0, tol=0.0, max_iter=3), X)


def test_empty_cluster_is_reseeded_like_sklearn(client):
    X = _data(2000, 3, 5)
    C0 = _init(X, 5, 5)
    C0[2] = 1e3  # far from every point: gets none in the first iteration
    km = DaskKMeans(5, init=C0, tol=1e-4).fit(_persisted(client, X), client=client)
    assert km.fit_info_["relocated_clusters"] >= 1
    # One empty cluster: the farthest point from its center takes it, as in scikit-learn.
    _assert_same_as_sklearn(km, _sklearn(X, C0, tol=1e-4), X)
    assert np.bincount(km.labels_.compute(), minlength=5).min() > 0


def test_several_empty_clusters_deterministic(client):
    X = _data(2000, 3, 6)
    C0 = _init(X, 6, 6)
    C0[1], C0[4] = 1e3, -1e3
    Xd = _persisted(client, X)
    a = DaskKMeans(6, init=C0).fit(Xd, client=client)
    b = DaskKMeans(6, init=C0).fit(Xd, engine="futures", client=client)
    assert a.fit_info_["relocated_clusters"] >= 2
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_
    assert np.bincount(a.labels_.compute(), minlength=6).min() > 0


def test_engines_agree(client):
    """Actors on the event loop, actors in their thread, pinned tasks: the same fit."""
    X = _data(3000, 3, 10)
    C0 = _init(X, 4, 10)
    Xd = _persisted(client, X)
    inline = DaskKMeans(4, init=C0, actor_kernels="event_loop").fit(Xd, client=client, engine="actors")
    threaded = DaskKMeans(4, init=C0, actor_kernels="thread").fit(Xd, client=client, engine="actors")
    tasks = DaskKMeans(4, init=C0).fit(Xd, client=client, engine="futures")
    for other in (threaded, tasks):
        np.testing.assert_array_equal(inline.cluster_centers_, other.cluster_centers_)
        assert inline.inertia_ == other.inertia_ and inline.n_iter_ == other.n_iter_
    with pytest.raises(ValueError, match="engine"):
        DaskKMeans(4, init=C0).fit(Xd, client=client, engine="nope")
    with pytest.raises(ValueError, match="lloyd_loop"):
        DaskKMeans(4, init=C0, lloyd_loop="nope").fit(Xd, client=client)
    with pytest.raises(ValueError, match="actor_kernels"):
        DaskKMeans(4, init=C0, actor_kernels="nope").fit(Xd, client=client)


def test_ties_go_to_lowest_index_center():
    X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]], dtype=np.float32)
    centers = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])  # centers 0 and 1 coincide
    o = np.zeros(2, np.float32)
    out = k_stats(X, 0, 0, o, *kernel_centers(centers))
    np.testing.assert_array_equal(out[:, -1], [2, 0, 1])
    np.testing.assert_allclose(out[0, :2], [0.1, 0.0], rtol=1e-6)


def test_not_persisted_streams_and_matches_persisted(client):
    X = _data(3000, 4, 7)
    C0 = _init(X, 4, 7)
    lazy = da.from_array(X, chunks=(750, 4))  # lazy: every pass re-reads the blocks
    a = DaskKMeans(4, init=C0, max_iter=6, tol=0.0).fit(lazy, client=client)
    b = DaskKMeans(4, init=C0, max_iter=6, tol=0.0).fit(client.persist(lazy), client=client)
    assert a.fit_info_["engine"] == "graph" and b.fit_info_["engine"] != "graph"
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert a.inertia_ == b.inertia_ and a.n_iter_ == b.n_iter_
    np.testing.assert_array_equal(a.labels_.compute(), b.labels_.compute())


@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_init_methods(client, blobs_small, init):
    X, y = blobs_small
    Xd = _persisted(client, X)
    km = DaskKMeans(6, init=init, random_state=0).fit(Xd, client=client)
    again = DaskKMeans(6, init=init, random_state=0).fit(Xd, client=client)
    np.testing.assert_array_equal(km.cluster_centers_, again.cluster_centers_)  # seeded
    assert km.cluster_centers_.shape == (6, 2) and np.isfinite(km.inertia_)
    if init == "k-means||":
        assert adjusted_rand_score(y, km.labels_.compute()) == 1.0


def test_n_init_keeps_lowest_inertia(client):
    X = _data(2000, 2, 8)
    Xd = _persisted(client, X)
    one = DaskKMeans(7, init="random", n_init=1, random_state=3).fit(Xd, client=client)
    three = DaskKMeans(7, init="random", n_init=3, random_state=3).fit(Xd, client=client)
    assert three.inertia_ <= one.inertia_  # the first of the three runs is ``one``


def test_backend_prepare_fit_predict_to_sklearn(client, blobs_small):
    X, y = blobs_small
    backend = make_backend("dask", client)
    assert isinstance(backend, DaskBackend) and backend.parallelism == "data"
    Xd = backend.prepare(Dataset(name="b", X=X, y=y, feature_names=["a", "b"], source="t"))
    assert Xd.dtype == np.float32
    # Persisted blocks are aligned float32 (numpy/BLAS fast paths every iteration).
    flags = Xd.map_blocks(lambda b: np.full(len(b), b.flags.aligned), drop_axis=1, dtype=bool)
    assert bool(flags.all().compute())
    res = backend.fit(Xd, ModelConfig(n_clusters=6, init="k-means||", random_state=0))
    assert isinstance(res.model, DaskKMeans) and res.fit_seconds > 0
    assert res.centers.shape == (6, 2) and res.centers.dtype == np.float64
    labels = res.labels.compute()
    assert adjusted_rand_score(y, labels) == 1.0
    expected = ((X.astype(np.float64) - res.centers[labels]) ** 2).sum()
    assert res.inertia == pytest.approx(expected, rel=1e-9)
    np.testing.assert_array_equal(backend.predict(res.model, Xd).compute(), labels)
    np.testing.assert_array_equal(res.model.predict(X), labels)  # NumPy in, NumPy out
    sk = backend.to_sklearn(res.model)
    assert isinstance(sk, KMeans) and sk.init == "k-means++"
    assert sk.cluster_centers_.dtype == np.float64 and sk.n_iter_ == res.n_iter
    np.testing.assert_array_equal(sk.predict(X.astype(np.float64)), labels)
    # The fitted model pickles (its lazy labels_ are left out).
    clone = pickle.loads(pickle.dumps(res.model))
    assert not hasattr(clone, "labels_")
    np.testing.assert_array_equal(clone.predict(X), labels)


def test_backend_not_persisted(client, blobs_small):
    X, y = blobs_small
    backend = make_backend("dask", client, persist=False)
    Xd = backend.prepare(Dataset(name="b", X=X, y=y, feature_names=["a", "b"], source="t"))
    res = backend.fit(Xd, ModelConfig(n_clusters=6, init="k-means++", random_state=1))
    assert res.extra["engine"] == "graph"
    assert adjusted_rand_score(y, res.labels.compute()) == 1.0


def test_sklearn_from_centers():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    C = X[:4]
    sk = sklearn_from_centers(
        C, inertia=1.5, n_iter=7, params={"init": "k-means||", "max_iter": 50}
    )
    assert sk.init == "k-means++" and sk.max_iter == 50 and sk.n_clusters == 4
    assert sk.inertia_ == 1.5 and sk.n_iter_ == 7 and sk._n_features_out == 4
    expected = ((X[:, None, :] - C[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(sk.predict(X), expected)
    f32 = sklearn_from_centers(C, params=ModelConfig(n_clusters=4), dtype=np.float32)
    np.testing.assert_array_equal(f32.predict(X.astype(np.float32)), expected)
    with pytest.raises(ValueError, match="n_clusters"):
        sklearn_from_centers(C, params={"n_clusters": 5})


def test_numpy_input_and_bad_init():
    X = _data(1500, 3, 9)
    C0 = _init(X, 3, 9)
    km = DaskKMeans(3, init=C0).fit(X)
    assert km.fit_info_["engine"] == "local" and isinstance(km.labels_, np.ndarray)
    _assert_same_as_sklearn(km, _sklearn(X, C0, tol=1e-4), X)
    with pytest.raises(ValueError, match="shape"):
        DaskKMeans(4, init=C0).fit(X)


@pytest.mark.parametrize("centred", [False, True])
def test_kernel_on_read_only_and_odd_address_blocks(centred):
    """Blocks received over the network are read-only and can sit at odd addresses."""
    X = _data(5000, 4, 3) - (0.0 if centred else 3.0)
    o = X.mean(axis=0) if centred else np.zeros(4, np.float32)
    C = _init(X, 3, 3).astype(np.float64) - o
    expected = k_stats(X, 0, 0, o, *kernel_centers(C))
    raw = np.empty(X.nbytes + 1, np.uint8)
    odd = raw[1:].view(np.float32).reshape(X.shape)  # 1 byte off: not float32-aligned
    odd[...] = X
    odd.setflags(write=False)
    assert not odd.flags.aligned
    np.testing.assert_array_equal(k_stats(odd, 0, 0, o, *kernel_centers(C)), expected)
    assert expected[:, -1].sum() == len(X) and np.all(expected[:, -1] > 0)
