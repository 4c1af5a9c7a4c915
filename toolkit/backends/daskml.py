"""dask-ml backend: ``dask_ml.cluster.KMeans`` on persisted Dask arrays; data-parallel.

Kept as the reference distributed implementation; ``dask`` is the fast path.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from toolkit.backends.base import FitResult, KMeansBackend, init_seeds
from toolkit.cluster import block_rows, n_workers, scatter_rows
from toolkit.config import ModelConfig
from toolkit.data import Dataset

__all__ = ["DaskMLBackend", "to_dask_array", "warm_workers"]


def to_dask_array(dataset: Dataset, client: Any, persist: bool = True, chunk_rows: int = 250_000) -> Any:
    """The dataset as a float32 Dask array, persisted on the workers when ``persist``."""
    import dask.array as da

    X = dataset.X
    if isinstance(X, np.ndarray):
        if persist and client is not None:
            return scatter_rows(X, client, chunk_rows)  # blocks spread evenly over the workers
        # Split so every worker gets blocks even on small data.
        rows = block_rows(X.shape[0], n_workers(client), chunk_rows)
        X = da.from_array(X, chunks=(rows, X.shape[1]))
    if persist:
        X = client.persist(X) if client is not None else X.persist()
    return X


def warm_workers(client: Any, X: Any, worker_fn: Any, *args: Any) -> None:
    """Wait for ``X``'s placed blocks, then run ``worker_fn(*args)`` on every worker.

    Both belong before a fit's clock starts: ``client.persist`` returns before the blocks are
    on the workers, and a worker's first task pays for its imports (and JIT compilations).
    """
    if client is None:
        return
    from distributed import futures_of, wait

    futures = futures_of(X)
    if futures:
        wait(futures)
    client.run(worker_fn, *args)


def _warm_daskml_worker() -> None:
    """Import what a dask-ml fit runs on a worker."""
    import dask_ml.cluster  # noqa: F401
    import sklearn.cluster  # noqa: F401

    import toolkit.backends.daskml  # noqa: F401


def _kmeans_plusplus_on_sample(X: Any, k: int, seed: int, size: int = 10_000) -> np.ndarray:
    """k-means++ centers chosen from a seeded sample of at most ``size`` rows."""
    from sklearn.cluster import kmeans_plusplus

    n = int(X.shape[0])
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(size, n), replace=False))
    sample = np.asarray(X[idx].compute() if hasattr(X, "compute") else X[idx], dtype=np.float64)
    centers, _ = kmeans_plusplus(sample, k, random_state=seed)
    return centers


class DaskMLBackend(KMeansBackend):
    """``dask_ml.cluster.KMeans`` on persisted Dask arrays (facts: ``BACKEND_FACTS["dask-ml"]``)."""

    name: ClassVar[str] = "dask-ml"
    requires = ("dask_ml",)

    def prepare(self, dataset: Dataset) -> Any:
        return to_dask_array(dataset, self.client, self.persist, self.chunk_rows)

    def warm_up(self, X: Any) -> None:
        warm_workers(self.client, X, _warm_daskml_worker)

    def _tolerance(self, X: Any, tol: float) -> float:
        """scikit-learn's tolerance for ``X``: ``tol`` times the mean feature variance.

        dask-ml compares the squared centre shift with ``tol`` itself, so the same ``tol`` meant
        another thing at every scale (on data scaled by 1e-9 every fit stopped after one
        iteration); the toolkit's ``tol`` is scikit-learn's, relative.  One pass over ``X``,
        once per prepared array (keyed by its Dask name).
        """
        if tol == 0:
            return 0.0
        cache = self.__dict__.setdefault("_mean_var", {})
        key = getattr(X, "name", None) or id(X)
        if key not in cache:
            cache[key] = float(np.asarray(X.var(axis=0).mean().compute() if hasattr(X, "compute")
                                          else np.var(X, axis=0).mean()))
        return tol * cache[key]

    def _fit_once(self, X: Any, params: ModelConfig, seed: int, init_centers: np.ndarray | None = None) -> Any:
        from dask_ml.cluster import KMeans

        init: Any = params.init if init_centers is None else init_centers
        if init_centers is None and init == "k-means++":
            # dask-ml 2025.1 calls a private scikit-learn k-means++ helper whose signature
            # changed (sample_weight became required), so seed k-means++ ourselves on a sample.
            init = _kmeans_plusplus_on_sample(X, params.n_clusters, seed)
        km = KMeans(
            n_clusters=params.n_clusters,
            init=init,
            oversampling_factor=params.oversampling_factor,
            max_iter=params.max_iter,
            tol=self._tolerance(X, params.tol),
            random_state=seed,
        )
        return km.fit(X)

    def _fit(self, X: Any, params: ModelConfig, init_centers: np.ndarray | None = None) -> FitResult:
        # dask-ml runs one initialisation (its own n_init only reaches the k-means++ replaced
        # above), so n_init is honoured here, as scikit-learn does it: that many runs from
        # different seeds, keeping the lowest inertia.  Given centres are one run (n_init=1).
        km = None
        for seed in init_seeds(params.random_state, params.n_init if init_centers is None else 1):
            run = self._fit_once(X, params, seed, init_centers)
            if km is None or run.inertia_ < km.inertia_:
                km = run
        assert km is not None  # n_init >= 1 (ModelConfig)
        return FitResult(
            model=km,
            centers=np.asarray(km.cluster_centers_, dtype=np.float64),
            inertia=float(km.inertia_),
            n_iter=int(km.n_iter_),
            fit_seconds=0.0,
            labels=km.labels_,  # lazy Dask array
        )
