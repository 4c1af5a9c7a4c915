"""scikit-learn backend: one CPU, in-memory NumPy data; trial-parallel under search."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from toolkit.backends.base import FitResult, KMeansBackend
from toolkit.config import ModelConfig
from toolkit.data import Dataset

__all__ = ["SklearnBackend", "sklearn_estimator"]


def sklearn_estimator(params: ModelConfig, init_centers: np.ndarray | None = None) -> Any:
    """An unfitted ``sklearn.cluster.KMeans`` for ``params`` (from ``init_centers`` when given:
    one initialisation, as scikit-learn requires for an array)."""
    from sklearn.cluster import KMeans

    return KMeans(
        n_clusters=params.n_clusters,
        init=params.init if init_centers is None else init_centers,
        max_iter=params.max_iter,
        tol=params.tol,
        n_init=params.n_init if init_centers is None else 1,
        random_state=params.random_state,
    )


class SklearnBackend(KMeansBackend):
    """``sklearn.cluster.KMeans`` on in-memory NumPy data (facts: ``BACKEND_FACTS["sklearn"]``)."""

    name: ClassVar[str] = "sklearn"
    # Lloyd's loop (Cython, OpenMP) and the metric kernels (Numba, nogil) run without the GIL.
    releases_gil: ClassVar[bool] = True

    def prepare(self, dataset: Dataset) -> np.ndarray:
        X = dataset.X
        if not isinstance(X, np.ndarray):
            X = X.compute()
        return np.ascontiguousarray(X, dtype=np.float32)

    def warm_up(self, X: Any) -> None:
        """Import scikit-learn's k-means now: on a fresh process that took ~2.7 s, 50x a small fit."""
        import sklearn.cluster  # noqa: F401

    def _fit(self, X: np.ndarray, params: ModelConfig, init_centers: np.ndarray | None = None) -> FitResult:
        km = sklearn_estimator(params, init_centers).fit(X)
        return FitResult(
            model=km,
            centers=np.asarray(km.cluster_centers_, dtype=np.float64),
            inertia=float(km.inertia_),
            n_iter=int(km.n_iter_),
            fit_seconds=0.0,
            labels=np.asarray(km.labels_),
        )

    def to_sklearn(self, model: Any) -> Any:
        return model
