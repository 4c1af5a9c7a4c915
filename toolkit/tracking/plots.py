"""Figures logged to MLflow: centroid scatter, search history, elbow.

Uses matplotlib's Agg backend (no display) and returns figures; callers save and close them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["centroid_plot", "elbow_plot", "history_plot", "importance_plot"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _project(points: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """2-D view: the data itself, or its first two principal components (fitted on points)."""
    if points.shape[1] <= 2:
        if points.shape[1] == 1:
            pad = np.zeros((len(points), 1))
            return np.hstack([points, pad]), np.hstack([centers, np.zeros((len(centers), 1))]), ""
        return points, centers, ""
    mean = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - mean, full_matrices=False)
    basis = vt[:2].T
    return (points - mean) @ basis, (centers - mean) @ basis, " (PCA projection)"


def centroid_plot(points: np.ndarray, labels: np.ndarray, centers: np.ndarray, title: str = ""):
    """Points coloured by cluster with centroids marked; PCA to 2-D when features > 2."""
    plt = _plt()
    pts, ctr, note = _project(np.asarray(points, float), np.asarray(centers, float))
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(pts[:, 0], pts[:, 1], c=np.asarray(labels), s=4, cmap="viridis", alpha=0.6)
    ax.scatter(ctr[:, 0], ctr[:, 1], c="red", marker="X", s=140, edgecolor="black", label="centroids")
    ax.set_title((title or f"k-means, k={len(centers)}") + note)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def history_plot(values: Sequence[float], direction: str, objective: str):
    """Objective per trial and best so far."""
    plt = _plt()
    vals = np.asarray(values, float)
    best = np.fmax.accumulate(vals) if direction == "maximize" else np.fmin.accumulate(vals)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(len(vals)), vals, "o", label="trial")
    ax.plot(range(len(vals)), best, "-", color="red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(f"Optimization history ({direction} {objective})")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def importance_plot(importances: dict[str, float]):
    """Horizontal bar chart of parameter importances."""
    plt = _plt()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title("Hyperparameter importance")
    fig.tight_layout()
    return fig


def elbow_plot(n_clusters: Sequence[int], objective: Sequence[float], inertia: Sequence[float], name: str):
    """Objective and inertia against n_clusters (best value per k)."""
    plt = _plt()
    ks = np.asarray(n_clusters)
    order = np.argsort(ks)
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(ks[order], np.asarray(objective)[order], "o-", color="tab:blue")
    ax1.set_xlabel("n_clusters")
    ax1.set_ylabel(name, color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(ks[order], np.asarray(inertia)[order], "s--", color="tab:orange")
    ax2.set_ylabel("inertia", color="tab:orange")
    ax1.set_title("Elbow: objective and inertia by n_clusters")
    fig.tight_layout()
    return fig
