"""Clustering quality metrics over NumPy or Dask data.

Inertia, Davies-Bouldin and Calinski-Harabasz are computed exactly over *all* rows from
per-cluster statistics that reduce block by block (two passes, only ``k x d`` numbers leave a
block), so they work on data spread over a Dask cluster.  Silhouette is O(n^2) and uses a
seeded sample.  The adjusted Rand index needs every label and is computed on the driver.

Stability and prediction strength judge a *configuration* rather than one clustering: they
refit it on subsamples of a seeded sample (:func:`resampling_metrics`, given a function that
fits centres with the trial's own backend) and measure how much the fits agree.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Declared with the other metric names in the vocabulary module; re-exported here, where the
# search and the registry have always imported it from.
from toolkit.names import METRIC_DIRECTIONS

__all__ = [
    "METRIC_DIRECTIONS",
    "MetricSample",
    "adjusted_rand",
    "centre_statistics",
    "cluster_metrics",
    "cluster_statistics",
    "nearest_center",
    "objective_value",
    "prediction_strength",
    "resampling_metrics",
    "sample_rows",
    "silhouette",
    "stability",
    "trial_metrics",
]

def _block_arrays(X: Any, labels: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``X`` as a C-ordered float32/float64 array and ``labels`` as checked ``intp``."""
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    X = np.ascontiguousarray(X)
    labels = np.ascontiguousarray(np.asarray(labels), dtype=np.intp)
    if len(labels) != len(X):
        raise ValueError(f"{len(labels)} labels for {len(X)} rows")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in [0, {k}); got {labels.min()}..{labels.max()}")
    return X, labels


def _first_pass(X: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per cluster: [count, sum over rows of x (d), sum of ||x||^2] as one (k, d+2) array."""
    from toolkit._metric_kernels import cluster_moments

    X, labels = _block_arrays(X, labels, k)
    return cluster_moments(X, labels, k)


def _second_pass(X: np.ndarray, labels: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Per cluster: sum of Euclidean distances of its rows to its mean."""
    from toolkit._metric_kernels import distance_sums

    X, labels = _block_arrays(X, labels, len(means))
    return distance_sums(X, labels, np.ascontiguousarray(means, dtype=np.float64))


def _reduce_blocks(fn: Any, X: Any, labels: Any, *args: Any) -> np.ndarray:
    """Apply ``fn`` to aligned blocks of Dask ``X``/``labels`` and sum the results."""
    if isinstance(X, np.ndarray):  # before importing Dask: a NumPy train need not pay for it
        return fn(X, None if labels is _NO_LABELS else np.asarray(labels), *args)
    import dask
    import dask.array as da

    if X.chunks[1] != (X.shape[1],):
        X = X.rechunk({1: -1})
    if labels is _NO_LABELS:  # fn labels the rows itself: one task per block, nothing else read
        parts = [dask.delayed(fn)(x, None, *args) for x in X.to_delayed().ravel()]
        return dask.delayed(sum)(parts).compute()
    if not isinstance(labels, da.Array):
        labels = da.from_array(np.asarray(labels), chunks=(X.chunks[0],))
    elif labels.chunks[0] != X.chunks[0]:
        labels = labels.rechunk((X.chunks[0],))
    xb = X.to_delayed().ravel()
    lb = labels.to_delayed().ravel()
    parts = [dask.delayed(fn)(x, lab, *args) for x, lab in zip(xb, lb, strict=True)]
    return dask.delayed(sum)(parts).compute()


def cluster_statistics(X: Any, labels: Any, k: int) -> dict[str, Any]:
    """Exact inertia-about-means, Davies-Bouldin and Calinski-Harabasz from block reductions."""
    first = _reduce_blocks(_first_pass, X, labels, k)
    return _statistics(first, k, lambda means: _reduce_blocks(_second_pass, X, labels, means))


def _assigned_pass(X: np.ndarray, _labels: Any, centers: np.ndarray, means: np.ndarray) -> np.ndarray:
    """One block: its rows labelled by the nearest centre, then moments (and distance sums)."""
    from toolkit._metric_kernels import assigned_moments

    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    return assigned_moments(np.ascontiguousarray(X), centers, means)


def centre_statistics(X: Any, centers: Any, *, davies_bouldin: bool = True) -> dict[str, Any]:
    """:func:`cluster_statistics` of the clustering that ``centers`` make, every row labelled by
    its nearest centre inside the passes (a fit's own labels, without reading them).

    A data-parallel search scores its trials with this: the fit's labels are lazy (one more
    prediction pass each time they are read), the centres are at hand.  One pass gives the
    moments (Calinski-Harabasz, ``n_clusters_found``); Davies-Bouldin needs the cluster means
    first, so a second pass, only when ``davies_bouldin`` is true, adds the distance sums.
    """
    centers = np.ascontiguousarray(np.asarray(centers, dtype=np.float64))
    k, d = centers.shape
    none = np.zeros((0, d))
    first = _reduce_blocks(_assigned_pass, X, _NO_LABELS, centers, none)
    if not davies_bouldin:
        return _statistics(first[:, :-1], k, None)

    def second(means: np.ndarray) -> np.ndarray:
        means = np.ascontiguousarray(means)
        return _reduce_blocks(_assigned_pass, X, _NO_LABELS, centers, means)[:, -1]

    return _statistics(first[:, :-1], k, second)


#: ``labels`` of a block reduction whose function labels the rows itself.
_NO_LABELS = object()


def _statistics(first: np.ndarray, k: int, second: Any) -> dict[str, Any]:
    """Davies-Bouldin and Calinski-Harabasz from the per-cluster moments ``first``
    (``[count, sum of x, sum of ||x||^2]`` rows) and ``second(means)``, the per-cluster sums of
    distances to the means (None: Davies-Bouldin is not computed)."""
    counts = first[:, 0]
    sums = first[:, 1:-1]
    sq = first[:, -1]
    n = counts.sum()
    present = counts > 0
    means = np.zeros_like(sums)
    means[present] = sums[present] / counts[present, None]
    # Within-cluster SS about the cluster means: sum ||x||^2 - n_i ||mean_i||^2.
    ssw = float(np.sum(sq[present] - counts[present] * np.einsum("ij,ij->i", means, means)[present]))
    ssw = max(ssw, 0.0)
    overall = sums.sum(axis=0) / n
    ssb = float(np.sum(counts[present] * ((means[present] - overall) ** 2).sum(axis=1)))
    k_eff = int(present.sum())
    out: dict[str, Any] = {"n_clusters_found": k_eff, "means": means, "counts": counts}
    if k_eff < 2 or k_eff >= n:
        out["calinski_harabasz"] = math.nan
        out["davies_bouldin"] = math.nan
        return out
    out["calinski_harabasz"] = 1.0 if ssw == 0 else float(ssb * (n - k_eff) / (ssw * (k_eff - 1)))
    if second is None:
        return out
    dist_sums = second(means)
    scatter = np.zeros(k)
    scatter[present] = dist_sums[present] / counts[present]
    m = means[present]
    s = scatter[present]
    centroid_dist = np.sqrt(((m[:, None, :] - m[None, :, :]) ** 2).sum(axis=2))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (s[:, None] + s[None, :]) / centroid_dist
    ratio[~np.isfinite(ratio)] = 0.0
    np.fill_diagonal(ratio, 0.0)
    out["davies_bouldin"] = float(ratio.max(axis=1).mean())
    return out


def silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    """Exact mean silhouette coefficient (scikit-learn's definition).

    One compiled pass over the pairs of rows (:func:`toolkit._metric_kernels.pair_cluster_sums`)
    gives every row's summed distance to each cluster, each pair measured once; it needs
    O(n * k) memory, where ``sklearn.metrics.silhouette_score`` works through n-by-chunk
    distance blocks.  Callers pass a sample (``metrics.silhouette_sample`` rows): the work is
    quadratic in it.
    """
    from toolkit._metric_kernels import pair_cluster_sums

    X = np.ascontiguousarray(X, dtype=np.float64)
    _, inv, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    inv = inv.reshape(-1).astype(np.intp, copy=False)
    k = len(counts)
    if k < 2 or k >= len(X):
        return math.nan
    sums = pair_cluster_sums(X, inv, k)
    rows = np.arange(len(X))
    own_n = counts[inv]
    a = sums[rows, inv] / np.maximum(own_n - 1, 1)
    sums[rows, inv] = np.inf
    b = (sums / counts[None, :]).min(axis=1)
    s = (b - a) / np.maximum(a, b)
    s[own_n == 1] = 0.0  # scikit-learn: singleton clusters score 0
    return float(np.nan_to_num(s).mean())


def _codes(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes for ``labels`` and an upper bound ``m`` on them (codes lie in ``0..m-1``).

    Small non-negative integers (k-means labels, most class ids) are their own codes; anything
    else (strings, floats, negative or huge ids) is numbered through a sort."""
    if labels.dtype.kind in "biu" and labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo >= 0 and hi < max(1024, 4 * labels.size):
            return labels.astype(np.intp, copy=False), hi + 1
    _, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(-1)
    return inv, int(inv.max()) + 1 if inv.size else 0


def adjusted_rand(labels_true: Any, labels_pred: Any) -> float:
    """The adjusted Rand index, equal to ``sklearn.metrics.adjusted_rand_score``.

    Same pair counts and the same final formula (in Python integers), but the contingency
    table is one ``bincount`` instead of sorting every label, which matters on every trial of a
    search and on millions of rows.
    """
    t, kt = _codes(np.asarray(labels_true).reshape(-1))
    p, kp = _codes(np.asarray(labels_pred).reshape(-1))
    if len(t) != len(p):
        raise ValueError(f"labels_true has {len(t)} labels but labels_pred has {len(p)}")
    n = len(t)
    # Class and cluster sizes (codes that never occur count 0 and add nothing below).
    n_c = np.bincount(t, minlength=kt).astype(np.int64)
    n_k = np.bincount(p, minlength=kp).astype(np.int64)
    if kt * kp > 4 * n + 1024:
        # Many distinct labels on both sides: count only the pairs that occur.
        _, cells = np.unique(t.astype(np.int64) * kp + p, return_counts=True)
    else:
        cells = np.bincount(t * kp + p, minlength=kt * kp)
    cells = cells.astype(np.int64)
    sum_squares = int((cells * cells).sum())
    # Pairs together in both, in the truth only, in the prediction only, in neither.
    tp = sum_squares - n
    fp = int((n_k * n_k).sum()) - sum_squares
    fn = int((n_c * n_c).sum()) - sum_squares
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def _sample_indices(n: int, size: int, seed: int) -> np.ndarray:
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _take(arr: Any, idx: np.ndarray) -> np.ndarray:
    if isinstance(arr, np.ndarray):
        return arr[idx]
    return np.asarray(arr[idx].compute())


def sample_rows(X: Any, labels: Any, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded sample of rows of ``X`` and ``labels`` as NumPy (from NumPy or Dask arrays)."""
    idx = _sample_indices(int(X.shape[0]), size, seed)
    if isinstance(X, np.ndarray) or isinstance(labels, np.ndarray):
        return _take(X, idx), _take(labels, idx)
    import dask

    # One graph: the rows and their labels in one round trip, not two.
    xs, ls = dask.compute(X[idx], labels[idx])
    return np.asarray(xs), np.asarray(ls)


class MetricSample:
    """A seeded sample of a search's rows, taken once and kept on the driver for every trial.

    A data-parallel search scores each trial on the same rows (``metrics.silhouette_sample`` of
    them, seeded by ``metrics.seed``: the rows :func:`sample_rows` would take).  Taking them once
    saves every trial a gather of those rows from the cluster and a labelling pass over the
    fit's lazy labels: a trial's labels of the sample come from its fitted centres.

    Attributes:
        X: the sampled rows, ``(size, d)`` float64 NumPy.
        y: their ground-truth labels (None without).
        index: their row numbers in the data.
    """

    def __init__(self, X: Any, y: Any = None, size: int = 10_000, seed: int = 0) -> None:
        self.index = _sample_indices(int(X.shape[0]), size, seed)
        self.X = np.ascontiguousarray(_take(X, self.index), dtype=np.float64)
        self.y = None if y is None else np.asarray(_take(y, self.index))

    def labels(self, centers: Any) -> np.ndarray:
        """The sample's clusters under ``centers`` (nearest centre, as the fit labels rows)."""
        return nearest_center(self.X, centers)


def trial_metrics(
    X: Any,
    centers: Any,
    names: Any,
    sample: MetricSample,
    *,
    inertia: float | None = None,
    labels: Any = None,
    y_true: Any = None,
) -> dict[str, float]:
    """The metrics ``names`` of one search trial, and no other: what its objective needs.

    Args:
        X: the data the trial was fitted on (NumPy or Dask).
        centers: the fitted centres; rows are labelled by them where labels are needed.
        names: metric names (:data:`METRIC_DIRECTIONS`) to compute; others are skipped.
        sample: the search's :class:`MetricSample` (silhouette is computed on it).
        inertia: the fit's inertia (``inertia`` is always returned when given: it is free).
        labels: the fit's labels of every row, read only for ``adjusted_rand``.
        y_true: ground truth of every row, for ``adjusted_rand``.

    Returns:
        ``{metric: value}`` with the same values :func:`cluster_metrics` gives for the names
        asked (Davies-Bouldin and Calinski-Harabasz exact over all rows, silhouette on the
        sample), NaN where one is undefined.
    """
    names = set(names)
    out: dict[str, float] = {}
    if inertia is not None:
        out["inertia"] = float(inertia)
    if names & {"davies_bouldin", "calinski_harabasz", "n_clusters_found"}:
        stats = centre_statistics(X, centers, davies_bouldin="davies_bouldin" in names)
        out["n_clusters_found"] = float(stats["n_clusters_found"])
        out["calinski_harabasz"] = stats["calinski_harabasz"]
        if "davies_bouldin" in stats:
            out["davies_bouldin"] = stats["davies_bouldin"]
    if "silhouette" in names:
        ls = sample.labels(centers)
        n_lab = len(np.unique(ls))
        out["silhouette"] = silhouette(sample.X, ls) if 2 <= n_lab <= len(ls) - 1 else math.nan
    if "adjusted_rand" in names and y_true is not None:
        if labels is None:
            raise ValueError("adjusted_rand needs the fit's labels of every row")
        lab = labels if isinstance(labels, np.ndarray) else np.asarray(labels.compute())
        out["adjusted_rand"] = adjusted_rand(y_true, lab)
    return out


def nearest_center(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the closest centre for every row of ``X`` (k-means' own ``predict``)."""
    X = np.asarray(X, dtype=np.float64)
    C = np.asarray(centers, dtype=np.float64)
    # ||x - c||^2 without the ||x||^2 term, which is the same for every centre of a row.
    d = np.einsum("ij,ij->i", C, C)[None, :] - 2.0 * (X @ C.T)
    return np.argmin(d, axis=1).astype(np.intp)


def stability(label_sets: list[np.ndarray]) -> float:
    """Mean pairwise adjusted Rand index of several labellings of the same rows.

    1 when every fit partitions the evaluation rows identically (cluster ids may differ: ARI
    ignores them); about 0 when they agree no more than chance.  NaN with fewer than 2 sets.
    """
    pairs = [adjusted_rand(a, b) for i, a in enumerate(label_sets) for b in label_sets[i + 1:]]
    return float(np.mean(pairs)) if pairs else math.nan


def prediction_strength(test_labels: np.ndarray, predicted: np.ndarray) -> float:
    """Tibshirani & Walther's prediction strength of one split (JCGS 14(3), 2005).

    ``test_labels``: the test half clustered on its own; ``predicted``: the same rows assigned
    to the centres fitted on the *other* half.  For each test cluster, the share of its pairs
    of rows that the other half's centres also put together; the strength is the smallest
    share (the worst-predicted cluster), so one split cluster is enough to lower it.
    Clusters of one row have no pairs and are skipped.
    """
    t, kt = _codes(np.asarray(test_labels).reshape(-1))
    p, kp = _codes(np.asarray(predicted).reshape(-1))
    cells = np.bincount(t * kp + p, minlength=kt * kp).reshape(kt, kp).astype(np.int64)
    n_j = cells.sum(axis=1)
    ok = n_j >= 2
    if not ok.any():
        return math.nan
    together = (cells[ok] ** 2).sum(axis=1) - n_j[ok]  # ordered pairs i != i' kept together
    return float((together / (n_j[ok] * (n_j[ok] - 1))).min())


def resampling_metrics(
    X: Any,
    fit_centers: Any,
    *,
    resamples: int = 5,
    fraction: float = 0.8,
    sample: int = 2_000,
    seed: int = 0,
    model_seed: int = 0,
) -> dict[str, float]:
    """Stability and prediction strength of a k-means configuration, from refits on a sample.

    Args:
        X: ``(n, d)`` data, NumPy or Dask; a seeded sample of ``sample`` rows (the evaluation
            sample) is brought to the driver, so the cost does not grow with the data.
        fit_centers: ``fit_centers(rows, seed) -> (k, d) centres``: the configuration fitted on
            ``rows`` (NumPy) with random seed ``seed``; the caller fits with the trial's backend.
        resamples: fits for stability, and half-splits for prediction strength (2 fits each).
        fraction: share of the evaluation sample each stability fit sees (drawn without
            replacement); 1 varies only the seed.
        sample: rows in the evaluation sample.
        seed: seed of the sample and of the subsamples (``metrics.seed``).
        model_seed: the configuration's ``random_state``; each refit gets a seed derived from
            it, so the same configuration scores the same.

    Returns:
        ``stability``: mean pairwise ARI of the ``resamples`` fits' labels on the whole
        evaluation sample (every fit predicts the same rows, so no matching of rows is needed);
        ``prediction_strength``: Tibshirani & Walther's strength averaged over ``resamples``
        random half-splits.
    """
    idx = _sample_indices(int(X.shape[0]), sample, seed)
    xs = np.asarray(_take(X, idx), dtype=np.float64)
    n = len(xs)
    rng = np.random.default_rng([seed, 1])
    seeds = [int(s) % (2**31 - 1) for s in np.random.SeedSequence(model_seed).generate_state(3 * resamples)]
    size = max(2, min(n, round(fraction * n)))
    labels = []
    for r in range(resamples):
        rows = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
        labels.append(nearest_center(xs, fit_centers(xs[rows], seeds[r])))
    strengths = []
    for r in range(resamples):
        perm = rng.permutation(n)
        test, train = perm[: n // 2], perm[n // 2:]
        xt = xs[test]
        own = nearest_center(xt, fit_centers(xt, seeds[resamples + 2 * r]))
        other = nearest_center(xt, fit_centers(xs[train], seeds[resamples + 2 * r + 1]))
        strengths.append(prediction_strength(own, other))
    finite = [s for s in strengths if math.isfinite(s)]
    return {"stability": stability(labels),
            "prediction_strength": float(np.mean(finite)) if finite else math.nan}


def cluster_metrics(
    X: Any,
    labels: Any,
    n_clusters: int,
    *,
    inertia: float | None = None,
    y_true: np.ndarray | None = None,
    silhouette_sample: int = 10_000,
    seed: int = 0,
) -> dict[str, float]:
    """All quality metrics for a clustering.

    Args:
        X: ``(n, d)`` data, NumPy or Dask array.
        labels: cluster per row, NumPy or Dask array aligned with ``X``.
        n_clusters: number of clusters the model was asked for.
        inertia: the model's global inertia (logged as ``inertia`` when given).
        y_true: ground-truth labels, for the adjusted Rand index.
        silhouette_sample: rows used for the silhouette score (seeded sample).
        seed: sample seed.

    Returns:
        ``{metric: value}``; metrics that are undefined (one cluster) are NaN.
    """
    stats = cluster_statistics(X, labels, n_clusters)
    out: dict[str, float] = {
        "davies_bouldin": stats["davies_bouldin"],
        "calinski_harabasz": stats["calinski_harabasz"],
        "n_clusters_found": float(stats["n_clusters_found"]),
    }
    if inertia is not None:
        out["inertia"] = float(inertia)
    xs, ls = sample_rows(X, labels, silhouette_sample, seed)
    n_lab = len(np.unique(ls))
    out["silhouette"] = silhouette(xs, ls) if 2 <= n_lab <= len(ls) - 1 else math.nan
    if y_true is not None:
        lab = labels if isinstance(labels, np.ndarray) else np.asarray(labels.compute())
        out["adjusted_rand"] = adjusted_rand(y_true, lab)
    return out


def objective_value(metrics: dict[str, float], objective: str) -> float:
    """The metric an objective optimises (its direction is in :data:`METRIC_DIRECTIONS`)."""
    return float(metrics[objective])
