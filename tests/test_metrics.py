"""Block-reduced metrics equal scikit-learn's, on NumPy and on chunked Dask arrays."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import (
    adjusted_rand_score,
    calinski_harabasz_score,
    davies_bouldin_score,
    silhouette_score,
)

from toolkit.metrics import (
    METRIC_DIRECTIONS,
    MetricSample,
    adjusted_rand,
    centre_statistics,
    cluster_metrics,
    cluster_statistics,
    objective_value,
    sample_rows,
    trial_metrics,
)


@pytest.fixture(scope="module")
def overlapping():
    """Overlapping blobs (so the metrics are not trivially extreme) and a k-means labelling."""
    X, y = make_blobs(n_samples=1200, n_features=3, centers=4, cluster_std=2.0, random_state=1)
    labels = KMeans(n_clusters=4, n_init=1, random_state=0).fit_predict(X)
    return X, y, labels


def _sk(X, labels):
    return davies_bouldin_score(X, labels), calinski_harabasz_score(X, labels)


def test_statistics_equal_sklearn_numpy(overlapping):
    X, _, labels = overlapping
    stats = cluster_statistics(X, labels, 4)
    db, ch = _sk(X, labels)
    assert stats["davies_bouldin"] == pytest.approx(db, rel=1e-6)
    assert stats["calinski_harabasz"] == pytest.approx(ch, rel=1e-6)
    assert stats["n_clusters_found"] == 4
    np.testing.assert_array_equal(stats["counts"], np.bincount(labels))
    for j in range(4):
        np.testing.assert_allclose(stats["means"][j], X[labels == j].mean(axis=0), rtol=1e-9)


def test_statistics_equal_sklearn_float32(overlapping):
    X, _, labels = overlapping
    X32 = X.astype(np.float32)
    stats = cluster_statistics(X32, labels, 4)
    db, ch = _sk(X32.astype(np.float64), labels)
    assert stats["davies_bouldin"] == pytest.approx(db, rel=1e-6)
    assert stats["calinski_harabasz"] == pytest.approx(ch, rel=1e-6)


@pytest.mark.parametrize("layout", ["fortran", "int", "strided"])
def test_statistics_any_array_layout(overlapping, layout):
    """The compiled passes take what users hand over: column-major, integer, every other row."""
    X, _, labels = overlapping
    if layout == "fortran":
        Xv, lv = np.asfortranarray(X), labels
    elif layout == "int":
        Xv, lv = np.round(X * 10).astype(np.int32), labels
    else:
        Xv, lv = X[::2], labels[::2]
    stats = cluster_statistics(Xv, lv, 4)
    db, ch = _sk(np.asarray(Xv, dtype=np.float64), lv)
    assert stats["davies_bouldin"] == pytest.approx(db, rel=1e-6)
    assert stats["calinski_harabasz"] == pytest.approx(ch, rel=1e-6)


@pytest.mark.parametrize("bad", [-1, 4])
def test_labels_outside_the_clusters_are_an_error(overlapping, bad):
    X, _, labels = overlapping
    wrong = labels.copy()
    wrong[7] = bad
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        cluster_statistics(X, wrong, 4)
    with pytest.raises(ValueError, match="labels for"):
        cluster_statistics(X, labels[:-1], 4)


def test_statistics_equal_sklearn_dask_chunks(client, overlapping):
    X, _, labels = overlapping
    dX = da.from_array(X, chunks=(250, 3))  # 5 blocks, last one short
    dl = da.from_array(labels, chunks=400)  # misaligned with X on purpose
    stats = cluster_statistics(dX, dl, 4)
    db, ch = _sk(X, labels)
    assert stats["davies_bouldin"] == pytest.approx(db, rel=1e-6)
    assert stats["calinski_harabasz"] == pytest.approx(ch, rel=1e-6)


def test_statistics_dask_with_numpy_labels_and_column_chunks(client, overlapping):
    X, _, labels = overlapping
    dX = da.from_array(X, chunks=(300, 2))  # split along features too
    stats = cluster_statistics(dX, labels, 4)
    db, ch = _sk(X, labels)
    assert stats["davies_bouldin"] == pytest.approx(db, rel=1e-6)
    assert stats["calinski_harabasz"] == pytest.approx(ch, rel=1e-6)


def test_unused_cluster_ids_are_ignored(overlapping):
    X, _, labels = overlapping
    sparse = np.where(labels == 1, 7, labels)  # ids 0, 2, 3, 7 of k=8
    stats = cluster_statistics(X, sparse, 8)
    db, ch = _sk(X, sparse)
    assert stats["n_clusters_found"] == 4
    assert stats["davies_bouldin"] == pytest.approx(db, rel=1e-6)
    assert stats["calinski_harabasz"] == pytest.approx(ch, rel=1e-6)


def test_one_cluster_is_nan():
    X = np.random.default_rng(0).normal(size=(50, 2))
    stats = cluster_statistics(X, np.zeros(50, dtype=int), 3)
    assert math.isnan(stats["davies_bouldin"]) and math.isnan(stats["calinski_harabasz"])
    m = cluster_metrics(X, np.zeros(50, dtype=int), 3)
    assert math.isnan(m["silhouette"])


def test_cluster_metrics_numpy(overlapping):
    X, y, labels = overlapping
    m = cluster_metrics(X, labels, 4, inertia=12.5, y_true=y, silhouette_sample=len(X))
    db, ch = _sk(X, labels)
    assert m["davies_bouldin"] == pytest.approx(db, rel=1e-6)
    assert m["calinski_harabasz"] == pytest.approx(ch, rel=1e-6)
    # sample >= n: the silhouette is over every row, so it equals scikit-learn's exactly
    assert m["silhouette"] == pytest.approx(silhouette_score(X, labels), rel=1e-6)
    assert m["adjusted_rand"] == pytest.approx(adjusted_rand_score(y, labels), rel=1e-12)
    assert m["inertia"] == 12.5
    assert m["n_clusters_found"] == 4.0


def test_cluster_metrics_dask(client, overlapping):
    X, y, labels = overlapping
    dX = da.from_array(X, chunks=(300, 3))
    dl = da.from_array(labels, chunks=300)
    m = cluster_metrics(dX, dl, 4, y_true=y, silhouette_sample=5000)
    db, ch = _sk(X, labels)
    assert m["davies_bouldin"] == pytest.approx(db, rel=1e-6)
    assert m["calinski_harabasz"] == pytest.approx(ch, rel=1e-6)
    assert m["silhouette"] == pytest.approx(silhouette_score(X, labels), rel=1e-6)
    assert m["adjusted_rand"] == pytest.approx(adjusted_rand_score(y, labels), rel=1e-12)
    assert "inertia" not in m


def test_silhouette_sample_is_seeded_subset(overlapping):
    X, _, labels = overlapping
    m1 = cluster_metrics(X, labels, 4, silhouette_sample=300, seed=1)
    m2 = cluster_metrics(X, labels, 4, silhouette_sample=300, seed=1)
    assert m1["silhouette"] == m2["silhouette"]
    xs, ls = sample_rows(X, labels, 300, seed=1)
    assert xs.shape == (300, 3)
    assert m1["silhouette"] == pytest.approx(silhouette_score(xs, ls), rel=1e-6)
    # each sampled row keeps its own label
    idx = [int(np.flatnonzero((X == row).all(axis=1))[0]) for row in xs[:20]]
    np.testing.assert_array_equal(labels[idx], ls[:20])


def test_sample_rows_dask_matches_numpy(client, overlapping):
    X, _, labels = overlapping
    xs, ls = sample_rows(X, labels, 100, seed=3)
    dxs, dls = sample_rows(
        da.from_array(X, chunks=(200, 3)), da.from_array(labels, chunks=200), 100, seed=3
    )
    assert isinstance(dxs, np.ndarray) and isinstance(dls, np.ndarray)
    np.testing.assert_array_equal(xs, dxs)
    np.testing.assert_array_equal(ls, dls)


def test_ari_is_permutation_invariant(overlapping):
    X, _, labels = overlapping
    permuted = (labels + 1) % 4
    m = cluster_metrics(X, permuted, 4, y_true=labels, silhouette_sample=200)
    assert m["adjusted_rand"] == pytest.approx(1.0)


def _label_pairs():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 5, 500)
    yield "random", y, rng.integers(0, 8, 500)
    yield "same partition, other names", y, (y + 3) % 5
    yield "mostly agree", y, np.where(rng.random(500) < 0.9, y, rng.integers(0, 5, 500))
    yield "one cluster", y, np.zeros(500, int)
    yield "both one cluster", np.zeros(40, int), np.zeros(40, np.int32)
    yield "all singletons", np.arange(60), rng.permutation(60)
    yield "singletons vs few", np.arange(60), rng.integers(0, 3, 60)
    yield "strings", rng.choice(["setosa", "virginica", "versicolor"], 300), rng.integers(0, 3, 300)
    yield "negative and large ids", rng.choice([-7, 3, 10**12], 300), rng.choice([-1, 5], 300)
    yield "floats", rng.integers(0, 4, 300).astype(float), rng.integers(0, 4, 300).astype(np.int32)
    yield "bools", rng.random(200) < 0.5, rng.integers(0, 2, 200).astype(np.uint8)
    yield "many labels both sides", rng.integers(0, 3000, 4000), rng.integers(0, 3000, 4000)
    yield "two rows", np.array([0, 1]), np.array([1, 1])
    yield "empty", np.array([], int), np.array([], int)


@pytest.mark.parametrize("case", list(_label_pairs()), ids=lambda c: c[0])
def test_adjusted_rand_equals_sklearn(case):
    _, y, labels = case
    assert adjusted_rand(y, labels) == adjusted_rand_score(y, labels)


def test_adjusted_rand_on_a_kmeans_labelling_equals_sklearn(overlapping):
    _, y, labels = overlapping
    value = cluster_metrics(overlapping[0], labels, 4, y_true=y, silhouette_sample=200)["adjusted_rand"]
    assert value == adjusted_rand_score(y, labels)
    assert 0.3 < value < 1.0  # overlapping blobs: neither chance nor perfect


def test_adjusted_rand_rejects_labels_of_different_lengths():
    with pytest.raises(ValueError, match="3 labels but labels_pred has 2"):
        adjusted_rand([0, 1, 1], [0, 1])


def test_objective_value_and_directions():
    assert set(METRIC_DIRECTIONS) >= {
        "silhouette",
        "davies_bouldin",
        "calinski_harabasz",
        "adjusted_rand",
    }
    assert METRIC_DIRECTIONS["davies_bouldin"] == "minimize"
    assert METRIC_DIRECTIONS["silhouette"] == "maximize"
    assert objective_value({"silhouette": 0.25}, "silhouette") == 0.25


# -- a data-parallel trial's metrics: labels from the centres, the sample taken once ----------------


def _fitted(X, k=4):
    km = KMeans(n_clusters=k, n_init=1, random_state=0).fit(X)
    return km.cluster_centers_.astype(np.float64), km.predict(X)


@pytest.mark.parametrize("blocks", [False, True])
def test_centre_statistics_equal_the_labelled_ones(client, overlapping, blocks):
    X, _, _ = overlapping
    centers, labels = _fitted(X)
    data = da.from_array(X.astype(np.float32), chunks=(250, 3)) if blocks else X.astype(np.float32)
    want = cluster_statistics(X.astype(np.float32), labels, 4)
    got = centre_statistics(data, centers)
    assert got["n_clusters_found"] == 4
    assert got["davies_bouldin"] == pytest.approx(want["davies_bouldin"], rel=1e-9)
    assert got["calinski_harabasz"] == pytest.approx(want["calinski_harabasz"], rel=1e-9)
    assert "davies_bouldin" not in centre_statistics(data, centers, davies_bouldin=False)


def test_trial_metrics_are_the_asked_ones_equal_to_cluster_metrics(client, overlapping):
    X, y, _ = overlapping
    centers, labels = _fitted(X)
    dX = da.from_array(X, chunks=(250, 3))
    full = cluster_metrics(dX, da.from_array(labels, chunks=250), 4, inertia=1.5, y_true=y, silhouette_sample=400,
                           seed=3)
    sample = MetricSample(dX, None, 400, 3)
    np.testing.assert_array_equal(sample.X, sample_rows(X, labels, 400, 3)[0])
    only = trial_metrics(dX, centers, ["silhouette"], sample, inertia=1.5)
    assert set(only) == {"silhouette", "inertia"}  # nothing but what the objective needs
    assert only["silhouette"] == pytest.approx(full["silhouette"], rel=1e-12)
    every = trial_metrics(dX, centers, METRIC_DIRECTIONS, sample, inertia=1.5, labels=labels, y_true=y)
    for name in ("silhouette", "davies_bouldin", "calinski_harabasz", "adjusted_rand", "n_clusters_found"):
        assert every[name] == pytest.approx(full[name], rel=1e-9), name
