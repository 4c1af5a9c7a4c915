"""cuML multi-node multi-GPU backend: ``cuml.dask.cluster.KMeans`` on dask_cudf; data-parallel.

The Dask client comes from ``toolkit.cluster.dask_client(cfg, gpu=True)`` (a LocalCUDACluster or
a scheduler with ``dask cuda worker``s).  RAPIDS is imported inside functions only.

What the fitted Dask wrapper holds (cuML 26.x, ``python/cuml/cuml/dask/cluster/kmeans.py``):

* ``inertia_`` -- the global inertia, summed over every worker. Logged.
* ``labels_`` -- lazy and distributed, in the input's row order (26.10 gathers the label parts
  per input partition), so the metrics use them as they are.
* ``get_combined_model()`` -- a local ``KMeansMG`` with worker 0's ``labels_``/``inertia_`` and a
  comms ``handle`` it cannot be cloned without; :func:`toolkit.convert.to_cuml` turns the
  wrapper into a plain ``cuml.KMeans`` with the global inertia and no labels, which is what gets
  registered.

Multi-GPU cuML has no exact k-means++: ``init: k-means++`` is fitted as ``k-means||``
(scalable k-means++, cuML's own default), and the run records that it was.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from toolkit import env
from toolkit.backends.base import FitResult, KMeansBackend, init_seeds
from toolkit.backends.cuml_single import check_gpu, cuml_kwargs, gpu_library_versions
from toolkit.cluster import block_count, n_workers
from toolkit.config import ModelConfig
from toolkit.convert import combined_to_single, to_cuml, to_numpy
from toolkit.data import Dataset
from toolkit.errors import BackendUnavailableError, ConfigError, ToolkitError

__all__ = ["MULTI_GPU_INIT", "CumlDaskBackend", "distributed_from_single", "host_dask"]

#: Inits multi-GPU cuML does not have, and what they are fitted as.
MULTI_GPU_INIT = {"k-means++": "k-means||"}


def distributed_from_single(local_model: Any, client: Any, datatype: str = "cudf") -> Any:
    """A ``cuml.dask.cluster.KMeans`` that predicts with ``local_model`` on every worker.

    For serving a registered single-GPU model over distributed data, partition by partition.

    Args:
        local_model: a fitted ``cuml.KMeans`` (a ``KMeansMG`` is first made a plain one).
            Its ``output_type`` is set to ``datatype``: each partition's predict must return
            that type for the output collection to build.
        client: the Dask client of the GPU cluster.
        datatype: ``"cudf"`` to predict dask_cudf DataFrames, ``"cupy"`` for Dask arrays of
            CuPy chunks.

    Returns:
        The distributed wrapper; ``predict(X)`` gives a lazy dask_cudf Series (or Dask array).
    """
    if datatype not in ("cudf", "cupy"):
        raise ConfigError(f"datatype {datatype!r} is not supported", "use 'cudf' or 'cupy'")
    from cuml.dask.cluster import KMeans as DaskKMeans

    if type(local_model).__name__ == "KMeansMG":
        local_model = combined_to_single(local_model)
    wrapper = DaskKMeans(client=client, n_clusters=int(local_model.n_clusters))
    # Private cuML API, all of it here (checked on cuML 26.10; cuML's own Dask UMAP does the
    # same): the wrapper predicts with whatever _set_internal_model holds, and needs `datatype`
    # (normally set by fit) to build its output collection.
    from toolkit._compat import cuml_set_internal_model

    cuml_set_internal_model(wrapper, local_model)
    wrapper.datatype = datatype
    local_model.output_type = datatype
    return wrapper


def host_dask(obj: Any) -> Any:
    """A GPU Dask collection as a Dask array of NumPy chunks with known chunk sizes.

    dask_cudf frames/series go through the pandas backend; Dask arrays of CuPy chunks are
    copied chunk by chunk.  Anything else is returned unchanged.
    """
    if hasattr(obj, "to_backend") and hasattr(obj, "to_dask_array"):
        return obj.to_backend("pandas").to_dask_array(lengths=True)
    if hasattr(obj, "map_blocks") and hasattr(obj, "chunks"):
        meta = np.empty((0,) * obj.ndim, dtype=obj.dtype)
        arr = obj.map_blocks(to_numpy, dtype=obj.dtype, meta=meta)
        # cuML's predict on Dask arrays leaves the row chunks unknown (NaN).
        return arr.compute_chunk_sizes() if np.isnan(sum(arr.chunks[0])) else arr
    return obj


class CumlDaskBackend(KMeansBackend):
    """One ``cuml.dask.cluster.KMeans`` fit spread over every GPU worker of the Dask cluster."""

    name: ClassVar[str] = "cuml-dask"
    requires = ("cuml", "cupy", "dask_cudf", "dask_cuda")

    @classmethod
    def check_available(cls) -> None:
        """Raise :class:`BackendUnavailableError` naming the missing package, or the GPU."""
        super().check_available()
        # Since cuML 25.12 the Dask layer is the [dask] extra: without raft_dask,
        # `import cuml.dask` fails even though `cuml` is installed.
        if not env.importable("raft_dask"):
            raise BackendUnavailableError(
                f"backend {cls.name!r} needs the Python package 'raft_dask', "
                "which is not installed (cuML's [dask] extra)",
                'install cuml-cu13[dask] or cuml-cu12[dask] (pip install ".[gpu-cu13]" on CUDA 13, '
                '".[gpu]" on CUDA 12) or choose a CPU backend (sklearn, dask, dask-ml)',
            )
        check_gpu(cls.name)

    def _client(self) -> Any:
        if self.client is None:
            raise ToolkitError(
                "backend 'cuml-dask' needs a Dask client with GPU workers",
                "open one with toolkit.cluster.dask_client(cfg, gpu=True) and pass it",
            )
        return self.client

    def prepare(self, dataset: Dataset) -> Any:
        """The data as a float32 dask_cudf DataFrame, persisted on the GPU workers.

        Files are read by dask_cudf on the workers; in-memory data is split into at least two
        partitions per worker and moved to cuDF.  The client needs a GPU too: cuDF builds its
        metadata there (``to_backend("cudf")``), and cuML's ``fit`` runs parts of its work there.
        """
        import dask_cudf
        from distributed import wait

        client = self._client()
        if dataset.files:
            # Feature columns only: the label column was dropped from feature_names.
            cols = list(dataset.columns or dataset.feature_names)
            if dataset.file_format == "parquet":
                ddf = dask_cudf.read_parquet(dataset.files, columns=cols)
            else:
                ddf = dask_cudf.read_csv(dataset.files, usecols=cols)
            if dataset.shift is None:
                ddf = ddf[cols].astype(np.float32)
            else:  # centred in float64 before the cast, as toolkit.data centres dataset.X
                ddf = ddf[cols].astype(np.float64)
                ddf = ddf.assign(**{c: ddf[c] - s for c, s in zip(cols, dataset.shift.tolist(), strict=True)})
                ddf = ddf[cols].astype(np.float32)
        else:
            import dask.dataframe as dd
            import pandas as pd

            X = dataset.X if isinstance(dataset.X, np.ndarray) else dataset.X.compute()
            n_parts = block_count(X.shape[0], n_workers(client), self.chunk_rows)
            pdf = pd.DataFrame(np.asarray(X, dtype=np.float32), columns=dataset.feature_names)
            ddf = dd.from_pandas(pdf, npartitions=n_parts).to_backend("cudf")
        if self.persist:
            ddf = client.persist(ddf)
            wait(ddf)
        return ddf

    def _fit(self, X: Any, params: ModelConfig, init_centers: np.ndarray | None = None) -> FitResult:
        from cuml.dask.cluster import KMeans

        fitted = params.model_copy(update={"init": MULTI_GPU_INIT.get(params.init, params.init)})
        if init_centers is not None:  # one run from the given centres (cuML's init=ndarray)
            fitted = fitted.model_copy(update={"n_init": 1})
        # cuML's multi-GPU fit runs one initialisation: n_init fits, the lowest global inertia kept.
        km = None
        for seed in init_seeds(fitted.random_state, fitted.n_init):
            kwargs = {**cuml_kwargs(fitted, init_centers), "n_init": 1, "random_state": seed}
            run = KMeans(client=self._client(), **kwargs)
            run.fit(X)
            if km is None or float(run.inertia_) < float(km.inertia_):
                km = run
        assert km is not None  # n_init >= 1 (ModelConfig)
        extra = {"init_fitted": fitted.init} if fitted.init != params.init and init_centers is None else {}
        return FitResult(
            model=km,
            centers=np.asarray(to_numpy(km.cluster_centers_), dtype=np.float64),
            inertia=float(km.inertia_),  # global, from the wrapper
            n_iter=int(km.n_iter_),
            fit_seconds=0.0,
            labels=km.labels_,  # lazy, in input row order
            extra=extra,
        )

    def host_view(self, X: Any, labels: Any) -> tuple[Any, Any]:
        """Data and labels as Dask arrays of NumPy chunks, chunk-aligned row for row."""
        if hasattr(labels, "to_backend"):
            # Persist the small host labels once: computing chunk lengths would otherwise
            # run the predictions a second time.
            labels = self._client().persist(labels.to_backend("pandas"))
        return host_dask(X), host_dask(labels)

    def native_model(self, result: FitResult) -> Any:
        """A plain single-GPU ``cuml.KMeans`` with the global inertia (:func:`toolkit.convert.to_cuml`)."""
        return to_cuml(result.model)

    def library_versions(self) -> dict[str, str]:
        """NumPy, scikit-learn, the RAPIDS wheels, dask-cuda and the CUDA runtime version."""
        return gpu_library_versions(self.requires)
