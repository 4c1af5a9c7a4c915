"""cuML single-GPU backend: ``cuml.KMeans`` on CuPy arrays; trial-parallel under search.

cuML, CuPy and cuDF are imported inside functions only: this module imports on a machine
without them, so the registry can read its class attributes and report what is missing.
There is no CPU mode for cuML's KMeans (``cuml.common.device_selection`` went in 25.08), so
:meth:`CumlBackend.check_available` looks for a usable GPU by trying one
(:func:`toolkit.env.gpu_problem`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from toolkit import env
from toolkit.backends.base import FitResult, KMeansBackend
from toolkit.config import ModelConfig
from toolkit.convert import to_numpy
from toolkit.data import Dataset
from toolkit.errors import BackendUnavailableError

__all__ = ["CUML_INIT", "CumlBackend", "check_gpu", "cuml_kwargs", "gpu_library_versions"]

#: toolkit ``init`` -> cuML's name for it ('k-means||' is cuML's 'scalable-k-means++').
CUML_INIT: dict[str, str] = {
    "k-means||": "scalable-k-means++",
    "k-means++": "k-means++",
    "random": "random",
}


def cuml_kwargs(params: ModelConfig, init_centers: np.ndarray | None = None) -> dict[str, Any]:
    """cuML KMeans keyword arguments for ``params`` (shared by the single- and multi-GPU fits).

    ``init_centers`` become cuML's ``init=ndarray`` (float32 host array: cuML copies it to the
    device, and a host array pickles to Dask workers) with one initialisation.
    """
    return {
        "n_clusters": params.n_clusters,
        "init": CUML_INIT[params.init] if init_centers is None else np.ascontiguousarray(init_centers, np.float32),
        "max_iter": params.max_iter,
        "tol": params.tol,
        "n_init": params.n_init if init_centers is None else 1,
        "oversampling_factor": params.oversampling_factor,
        "random_state": params.random_state,
    }


def check_gpu(backend: str) -> None:
    """Raise :class:`BackendUnavailableError` when no usable CUDA GPU is present."""
    problem = env.gpu_problem()
    if problem is not None:
        raise BackendUnavailableError(
            f"backend {backend!r} needs an NVIDIA GPU with a working driver, but {problem}",
            "run it on a machine with a CUDA GPU, or choose a CPU backend (sklearn, dask, dask-ml)",
        )


def gpu_library_versions(modules: tuple[str, ...]) -> dict[str, str]:
    """NumPy and scikit-learn, the distributions behind the import names ``modules`` (RAPIDS
    wheels are named per CUDA version: ``cuml-cu13``, ``cupy-cuda13x``), and the CUDA runtime
    and driver as ``"13.0"``-style text; one key per distribution."""
    return {**env.installed_versions(("numpy", "scikit-learn")), **env.gpu_versions(modules)}


def _read_files(dataset: Dataset) -> Any:
    """The dataset's files read straight into GPU memory, as a float32 CuPy array."""
    import cudf

    # Feature columns only: the label column was dropped from feature_names by the loader.
    cols = list(dataset.columns or dataset.feature_names)
    if dataset.file_format == "parquet":
        df = cudf.read_parquet(dataset.files, columns=cols)
    else:
        df = cudf.concat([cudf.read_csv(f, usecols=cols) for f in dataset.files], ignore_index=True)
    if dataset.shift is None:
        return df[cols].to_cupy(dtype=np.float32)
    # Centred in float64 before the cast, as toolkit.data centres dataset.X.
    import cupy as cp

    X = df[cols].to_cupy(dtype=np.float64)
    X -= cp.asarray(dataset.shift)
    return X.astype(np.float32)


class CumlBackend(KMeansBackend):
    """``cuml.KMeans`` on one GPU; under search, one trial per GPU worker."""

    name: ClassVar[str] = "cuml"
    requires = ("cuml", "cupy")

    @classmethod
    def check_available(cls) -> None:
        """Raise :class:`BackendUnavailableError` naming the missing package, or the GPU."""
        super().check_available()
        check_gpu(cls.name)

    def prepare(self, dataset: Dataset) -> Any:
        """The data as a float32 CuPy array (files are read by cuDF, on the GPU)."""
        import cupy as cp

        if dataset.files:
            return _read_files(dataset)
        X = dataset.X if isinstance(dataset.X, np.ndarray) else dataset.X.compute()
        return cp.asarray(np.ascontiguousarray(X, dtype=np.float32))

    def _fit(self, X: Any, params: ModelConfig, init_centers: np.ndarray | None = None) -> FitResult:
        import cuml

        km = cuml.KMeans(**cuml_kwargs(params, init_centers), output_type="numpy")
        km.fit(X)
        return FitResult(
            model=km,
            centers=np.asarray(to_numpy(km.cluster_centers_), dtype=np.float64),
            inertia=float(km.inertia_),
            n_iter=int(km.n_iter_),
            fit_seconds=0.0,
            labels=to_numpy(km.labels_),
        )

    def predict(self, model: Any, X: Any) -> np.ndarray:
        """Labels for CuPy (or NumPy) ``X``, as NumPy."""
        return to_numpy(model.predict(X))

    def host_view(self, X: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        """Copy the data (and labels) back to host NumPy for the metrics."""
        return to_numpy(X), to_numpy(labels)

    def library_versions(self) -> dict[str, str]:
        """NumPy, scikit-learn, the cuML/CuPy wheels and the CUDA runtime version."""
        return gpu_library_versions(self.requires)
