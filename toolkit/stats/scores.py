"""The clustering scores of a fitted model on evaluation data: one computation, two callers.

:func:`score_clustering` is what the ``clustering`` MLflow evaluator
(:class:`toolkit.evaluation.ClusteringEvaluator`) reports and what
:func:`toolkit.registry.promote.promote` gates on, so a promotion decision can be reproduced
by hand with ``mlflow.models.evaluate``.  This module is pure: it imports NumPy, scikit-learn,
:mod:`toolkit.metrics` and :mod:`toolkit.convert` only (never MLflow, the registry or the
loaders), so the registry can import it without an import cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.convert import centers_of, input_dtype, predict_labels
from toolkit.metrics import cluster_metrics

__all__ = ["DISTANCE_QUANTILES", "ClusteringScores", "distance_quantiles", "score_clustering"]

#: The quantiles of each cluster's point-to-centre distances that the evaluator reports.
DISTANCE_QUANTILES: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)


@dataclass
class ClusteringScores:
    """What :func:`score_clustering` computed.

    Attributes:
        metrics: ``{name: value}``: ``inertia`` (squared distances to the model's centres),
            ``silhouette`` (seeded sample), ``davies_bouldin``, ``calinski_harabasz``,
            ``n_clusters_found`` and, with ground truth, ``adjusted_rand`` and
            ``normalized_mutual_info``.  Undefined metrics (one cluster) are NaN.
        labels: the model's cluster per row.
        centers: the model's centres (float64).
        sizes: rows per cluster id ``0..k-1`` (clusters without rows count 0).
        distances: Euclidean distance of each row to its centre (only when asked for).
    """

    metrics: dict[str, float]
    labels: np.ndarray
    centers: np.ndarray
    sizes: np.ndarray
    distances: np.ndarray | None = field(default=None, repr=False)


def score_clustering(
    model: Any,
    X: np.ndarray,
    y: np.ndarray | None = None,
    *,
    seed: int = 0,
    silhouette_sample: int = 10_000,
    keep_distances: bool = False,
) -> ClusteringScores:
    """Predict ``X`` with ``model`` and compute every clustering metric of the result.

    Args:
        model: a fitted k-means with ``predict`` and ``cluster_centers_`` on the host
            (scikit-learn, the ``dask`` backend's model, dask-ml).
        X: ``(n, d)`` evaluation rows (NumPy); they are predicted and scored in the float width
            of the model's centres (float32 rows of a float64 model are widened, exactly).
        y: ground-truth labels aligned with ``X`` (adds ``adjusted_rand`` and
            ``normalized_mutual_info``), or None.
        seed: seed of the silhouette sample.
        silhouette_sample: rows the silhouette is computed on.
        keep_distances: also return each row's distance to its centre (one more pass).

    Returns:
        The metrics, labels, centres and cluster sizes (see :class:`ClusteringScores`).
    """
    # scikit-learn's predict refuses rows of another float width than its centres (a `dask`
    # backend twin has float64 centres, data is read as float32): cast as every predictor does.
    # Rows already in the centres' width (every case that predicted before) are used as given.
    X = np.asarray(X)
    X = X.astype(input_dtype(model, X.dtype), copy=False)
    labels = predict_labels(model, X)  # a twin that knows its columns' names gets them
    centers = np.asarray(centers_of(model), dtype=np.float64)  # in the rows' coordinates
    # Kept as one array so inertia is summed exactly as promotion always summed it.
    squared = (X - centers[labels]) ** 2
    inertia = float(squared.sum())
    distances = np.sqrt(squared.sum(axis=1)) if keep_distances else None
    del squared
    metrics = cluster_metrics(X, labels, len(centers), inertia=inertia, y_true=y, seed=seed,
                              silhouette_sample=silhouette_sample)
    if y is not None:
        metrics["normalized_mutual_info"] = normalized_mutual_info(y, labels)
    sizes = np.bincount(np.asarray(labels, dtype=np.intp).ravel(), minlength=len(centers))
    return ClusteringScores(metrics, labels, centers, sizes, distances)


def normalized_mutual_info(labels_true: Any, labels_pred: Any) -> float:
    """Normalised mutual information (arithmetic mean), scikit-learn's definition."""
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(labels_true).ravel(), np.asarray(labels_pred).ravel()))


def distance_quantiles(labels: np.ndarray, distances: np.ndarray, k: int,
                       quantiles: tuple[float, ...] = DISTANCE_QUANTILES) -> list[dict[str, float]]:
    """Per cluster id ``0..k-1``: its size, mean distance and the distance ``quantiles``.

    One stable sort of the labels groups the rows, so this is O(n log n) however many
    clusters there are (not one pass over the data per cluster).
    """
    labels = np.asarray(labels, dtype=np.intp).ravel()
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    rows: list[dict[str, float]] = []
    for c in range(k):
        d = distances[order[bounds[c]:bounds[c + 1]]]
        row: dict[str, float] = {"cluster": c, "size": len(d),
                                 "mean": float(d.mean()) if len(d) else math.nan}
        values = np.quantile(d, quantiles) if len(d) else [math.nan] * len(quantiles)
        row.update({f"q{round(q * 100):02d}": float(v) for q, v in zip(quantiles, values, strict=True)})
        rows.append(row)
    return rows
