"""Figures of a clustering evaluation: cluster sizes and a 2-D view of the centroids.

Pure plotting (matplotlib's non-interactive Agg canvas, no pyplot state), so evaluations in
threads or on headless machines never touch a display.  Each function returns a
:class:`matplotlib.figure.Figure`; the evaluator saves and logs it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["centroid_plot", "cluster_size_chart", "project_2d"]

# Points drawn behind the centroids: enough to show the clusters' shapes, cheap to render.
_MAX_POINTS = 5_000


def _figure(width: float = 6.4, height: float = 4.8) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def cluster_size_chart(sizes: np.ndarray, title: str = "Rows per cluster") -> Any:
    """A bar chart of ``sizes[i]`` (rows in cluster ``i``)."""
    sizes = np.asarray(sizes)
    fig = _figure(max(6.4, 0.25 * len(sizes)), 4.8)
    ax = fig.add_subplot()
    ax.bar(np.arange(len(sizes)), sizes, color="tab:blue")
    ax.set_xlabel("cluster")
    ax.set_ylabel("rows")
    ax.set_title(title)
    if len(sizes) <= 40:
        ax.set_xticks(np.arange(len(sizes)))
    fig.tight_layout()
    return fig


def project_2d(centers: np.ndarray, points: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Centres (and points) in two dimensions: as they are when ``d <= 2``, else on the first
    two principal axes of the points (of the centres when no points are given).

    Returns:
        ``(centres_2d, points_2d or None, axis label prefix)``.
    """
    centers = np.asarray(centers, dtype=np.float64)
    pts = None if points is None else np.asarray(points, dtype=np.float64)
    d = centers.shape[1]
    if d <= 2:
        pad = (lambda a: np.hstack([a, np.zeros((len(a), 2 - d))])) if d < 2 else (lambda a: a)
        return pad(centers), None if pts is None else pad(pts), "x"
    basis_rows = pts if pts is not None and len(pts) > 2 else centers
    mean = basis_rows.mean(axis=0)
    # Principal axes from an SVD of the centred rows: no scikit-learn estimator state needed.
    _, _, vt = np.linalg.svd(basis_rows - mean, full_matrices=False)
    axes = vt[:2].T
    return (centers - mean) @ axes, None if pts is None else (pts - mean) @ axes, "PC"


def centroid_plot(centers: np.ndarray, points: np.ndarray | None = None, labels: np.ndarray | None = None,
                  seed: int = 0, title: str = "Centroids (2-D projection)") -> Any:
    """Centroids, numbered by cluster id, over a seeded sample of the evaluation rows."""
    if points is not None and len(points) > _MAX_POINTS:
        idx = np.sort(np.random.default_rng(seed).choice(len(points), _MAX_POINTS, replace=False))
        points = np.asarray(points)[idx]
        labels = None if labels is None else np.asarray(labels)[idx]
    c2, p2, axis = project_2d(centers, points)
    fig = _figure()
    ax = fig.add_subplot()
    if p2 is not None:
        ax.scatter(p2[:, 0], p2[:, 1], c=labels, s=3, alpha=0.3, cmap="tab20", linewidths=0)
    ax.scatter(c2[:, 0], c2[:, 1], marker="X", s=120, c="black", edgecolors="white")
    for i, (cx, cy) in enumerate(c2):
        ax.annotate(str(i), (cx, cy), xytext=(4, 4), textcoords="offset points", fontsize=8)
    ax.set_xlabel(f"{axis}1" if axis == "PC" else "x0")
    ax.set_ylabel(f"{axis}2" if axis == "PC" else "x1")
    ax.set_title(title)
    fig.tight_layout()
    return fig
