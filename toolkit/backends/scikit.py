"""scikit-learn backend: one CPU, in-memory NumPy data; trial-parallel under search."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from toolkit.backends.base import FitResult, KMeansBackend
from toolkit.config import ModelConfig
from toolkit.data import Dataset

__all__ = ["SklearnBackend", "kmeans_plusplus_centers", "sklearn_estimator"]


def kmeans_plusplus_centers(X: np.ndarray, k: int, random_state: Any = None) -> np.ndarray:
    """k-means++ centres of ``X``: scikit-learn's greedy k-means++ (unit weights, ``2 + log k``
    local trials, the same draws from ``random_state``) run by a Numba kernel that releases the
    GIL, so trial threads seed side by side (scikit-learn's own held it: two threads took turns).

    On float64 data the rows chosen are scikit-learn's; on float32 data scikit-learn sums the
    distances in float32 through BLAS, so a draw within rounding of a boundary may pick another
    row than ``sklearn.cluster.kmeans_plusplus`` with the same seed (the same distribution).
    """
    from sklearn.utils import check_random_state

    from toolkit.kmeans_dask._numba import kmeans_plusplus

    rs = check_random_state(random_state)
    n = X.shape[0]
    weights = np.ones(n, dtype=X.dtype)
    first = int(rs.choice(n, p=weights / weights.sum()))  # scikit-learn's first draw, exactly
    draws = rs.uniform(size=(k - 1, 2 + int(np.log(k))))
    return X[kmeans_plusplus(np.ascontiguousarray(X), first, draws)]


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
        seeded = init_centers is None and params.init == "k-means++" and params.n_init == 1
        if seeded:
            # scikit-learn's k-means++ holds the GIL (two trial threads took turns): the same
            # algorithm and draws, run without it; Lloyd's loop is scikit-learn's.
            init_centers = kmeans_plusplus_centers(X, params.n_clusters, params.random_state)
        km = sklearn_estimator(params, init_centers).fit(X)
        if seeded:  # the model states what was asked, as scikit-learn's own k-means++ fit would
            km.set_params(init=params.init, n_init=params.n_init)
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
