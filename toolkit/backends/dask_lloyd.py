"""``dask`` backend: the toolkit's own data-parallel Lloyd k-means on Dask; the fast CPU cluster path.

A thin adaptor, like :mod:`toolkit.backends.daskml`: the algorithm is the standalone package
:mod:`toolkit.kmeans_dask` (block kernels, engines, the Lloyd driver and the estimator
:class:`~toolkit.kmeans_dask.DaskKMeans`); this module places the data and maps a
:class:`~toolkit.config.ModelConfig` onto the estimator.  Its scikit-learn twin comes from
:func:`toolkit.convert.to_sklearn`, like every backend's.

``DaskKMeans`` and ``lloyd_fit`` stay importable from here: models pickled (opt-in) before the
package existed name ``toolkit.backends.dask_lloyd.DaskKMeans``, and older scripts import both.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from toolkit.backends.base import FitResult, KMeansBackend
from toolkit.backends.daskml import to_dask_array, warm_workers
from toolkit.config import ModelConfig
from toolkit.data import Dataset
from toolkit.kmeans_dask import DaskKMeans, lloyd_fit
from toolkit.kmeans_dask.kernels import aligned_f32

__all__ = ["DaskBackend", "DaskKMeans", "lloyd_fit"]


def _warm_dask_worker(n_features: int) -> None:
    """Compile (or load from Numba's disk cache) the Lloyd kernels in this worker process.

    A tiny in-process fit and predict on float32 rows of the data's width run the same
    compiled functions, with the same argument types, as the fit's tasks.
    """
    import sklearn.cluster  # noqa: F401 - k-means++ seeding imports it (~2 s on a cold process)

    rows = np.arange(8 * n_features, dtype=np.float32).reshape(8, n_features)
    DaskKMeans(n_clusters=2, n_init=1, max_iter=2, random_state=0).fit(rows).predict(rows)


class DaskBackend(KMeansBackend):
    """Our data-parallel Lloyd k-means on Dask (persisted float32 blocks on the workers)."""

    name: ClassVar[str] = "dask"
    requires = ("dask", "distributed")

    def prepare(self, dataset: Dataset) -> Any:
        """The data as a float32 Dask array, persisted on the workers unless ``persist=False``."""
        in_memory = isinstance(dataset.X, np.ndarray)
        # NumPy data is persisted by to_dask_array itself: scattered evenly, already aligned.
        X = to_dask_array(dataset, self.client, self.persist and in_memory, self.chunk_rows)
        if self.persist and not in_memory:
            # Blocks read by tasks can sit at odd addresses, which keeps NumPy and BLAS off
            # their fast paths every iteration: persist them aligned (and float32), in one
            # pass.  Already aligned float32 blocks are kept as they are, not copied.
            X = X.map_blocks(aligned_f32, dtype=np.float32)
            X = self.client.persist(X) if self.client is not None else X.persist()
        elif X.dtype != np.float32:  # Dataset promises float32
            X = X.astype(np.float32)
        return X

    def warm_up(self, X: Any) -> None:
        warm_workers(self.client, X, _warm_dask_worker, int(X.shape[1]))
        _warm_dask_worker(int(X.shape[1]))  # the driver runs kernels too (initialisation)

    def estimator(self, params: ModelConfig) -> DaskKMeans:
        """An unfitted :class:`DaskKMeans` for ``params``."""
        return DaskKMeans(
            n_clusters=params.n_clusters,
            init=params.init,
            max_iter=params.max_iter,
            tol=params.tol,
            n_init=params.n_init,
            oversampling_factor=params.oversampling_factor,
            random_state=params.random_state,
        )

    def _fit(self, X: Any, params: ModelConfig, init_centers: np.ndarray | None = None) -> FitResult:
        km = self.estimator(params)
        if init_centers is not None:  # DaskKMeans takes explicit centres as its init
            km.set_params(init=init_centers, n_init=1)
        km = km.fit(X, client=self.client)
        return FitResult(
            model=km,
            centers=np.asarray(km.cluster_centers_, dtype=np.float64),
            inertia=float(km.inertia_),
            n_iter=int(km.n_iter_),
            fit_seconds=0.0,
            labels=km.labels_,  # lazy Dask array for Dask input
            extra=dict(km.fit_info_),
        )
