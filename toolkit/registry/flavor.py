"""A small MLflow flavor for native k-means models (cuML, dask-ml, the ``dask`` backend).

MLflow has no cuML flavor.  This one follows the contract of MLflow's flavor modules
(``FLAVOR_NAME``, ``save_model``, ``log_model``, ``load_model``, ``_load_pyfunc``): the model is
pickled with cloudpickle, and the MLmodel file records the library versions it was saved with
(cuML and CUDA for GPU models), the device it needs and the backend it came from.  Loading a GPU
model where no GPU exists fails with a one-line error instead of a CUDA traceback.
"""

from __future__ import annotations

import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from toolkit.errors import ModelError

__all__ = ["FLAVOR_NAME", "flavor_conf", "load_model", "log_model", "model_device", "save_model"]

FLAVOR_NAME = "kmeans_native"
_MODEL_FILE = "model.pkl"
# Distribution names whose versions are recorded when installed.
_LIBRARIES = ("numpy", "scikit-learn", "dask", "dask-ml", "cuml", "cuml-cu12", "cuml-cu13", "cupy")


def model_device(model: Any) -> str:
    """``"gpu"`` for cuML models (by class module, without importing cuML), else ``"cpu"``."""
    return "gpu" if type(model).__module__.split(".")[0] == "cuml" else "cpu"


def _versions(device: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            continue
    if device == "gpu":  # pragma: no cover - needs a GPU
        try:
            import cupy

            out["cuda_runtime"] = str(cupy.cuda.runtime.runtimeGetVersion())
            out["cuda_driver"] = str(cupy.cuda.runtime.driverGetVersion())
        except Exception:
            pass
    return out


def _requirements(device: str) -> list[str]:
    reqs = []
    for lib in ("numpy", "scikit-learn", "cloudpickle"):
        try:
            reqs.append(f"{lib}=={version(lib)}")
        except PackageNotFoundError:
            reqs.append(lib)
    if device == "gpu":
        reqs.append("cuml-cu12[dask]")
    return reqs


def save_model(
    model: Any,
    path: str,
    *,
    backend: str,
    signature: Any = None,
    input_example: Any = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Save ``model`` as an MLflow model directory at ``path`` (with a pyfunc flavor)."""
    import cloudpickle
    from mlflow.models import Model
    from mlflow.pyfunc import add_to_model

    device = model_device(model)
    os.makedirs(path, exist_ok=False)
    with open(os.path.join(path, _MODEL_FILE), "wb") as fh:
        cloudpickle.dump(model, fh)
    mlmodel = Model(signature=signature, metadata=metadata)
    if input_example is not None:
        from mlflow.models.utils import _save_example

        _save_example(mlmodel, input_example, path)
    add_to_model(mlmodel, loader_module="toolkit.registry.flavor", data=_MODEL_FILE, python_env=None)
    mlmodel.add_flavor(
        FLAVOR_NAME,
        pickled_model=_MODEL_FILE,
        model_class=f"{type(model).__module__}.{type(model).__qualname__}",
        device=device,
        backend=backend,
        n_clusters=int(getattr(model, "n_clusters", 0) or 0),
        versions=_versions(device),
    )
    mlmodel.save(os.path.join(path, "MLmodel"))
    with open(os.path.join(path, "requirements.txt"), "w") as fh:
        fh.write("\n".join(_requirements(device)) + "\n")


def log_model(model: Any, run_id: str, artifact_path: str = "native_model", **kwargs: Any) -> str:
    """Save ``model`` and upload it under ``artifact_path`` of ``run_id``; return its URI."""
    from toolkit.tracking.runs import client

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model")
        save_model(model, local, **kwargs)
        client().log_artifacts(run_id, local, artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


def flavor_conf(local_path: str) -> dict[str, Any]:
    """The ``kmeans_native`` section of a downloaded model's MLmodel file."""
    from mlflow.models import Model

    conf = Model.load(os.path.join(local_path, "MLmodel")).flavors.get(FLAVOR_NAME)
    if conf is None:
        raise ModelError(f"{local_path} is not a {FLAVOR_NAME} model", "load it with its own flavor")
    return conf


def _gpu_present() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _load_local(path: str, twin_hint: str | None = None) -> Any:
    import cloudpickle

    conf = flavor_conf(path)
    if conf.get("device") == "gpu" and not _gpu_present():
        hint = twin_hint or "its scikit-learn twin (registered model '<name>-sklearn')"
        raise ModelError(
            f"this native model is a cuML ({conf.get('model_class')}) model and needs a CUDA GPU, "
            "which this machine does not have",
            f"load {hint} instead",
        )
    with open(os.path.join(path, conf.get("pickled_model", _MODEL_FILE)), "rb") as fh:
        return cloudpickle.load(fh)


def load_model(model_uri: str, twin_hint: str | None = None) -> Any:
    """Load the native model at ``model_uri`` (``models:/...`` or ``runs:/...``)."""
    from mlflow.artifacts import download_artifacts

    return _load_local(download_artifacts(model_uri), twin_hint)


class _PyFuncWrapper:
    """``mlflow.pyfunc`` face of a native model: ``predict(DataFrame | ndarray) -> labels``."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def get_raw_model(self) -> Any:
        return self.model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        X = np.asarray(data.to_numpy() if hasattr(data, "to_numpy") else data, dtype=np.float32)
        labels = self.model.predict(X)
        from toolkit.convert import to_numpy

        return to_numpy(labels).astype(np.int32)


def _load_pyfunc(path: str, model_config: Any = None) -> _PyFuncWrapper:
    # MLflow passes the data file's path; the flavor config sits one level up for us.
    root = path if os.path.isdir(path) else os.path.dirname(path)
    return _PyFuncWrapper(_load_local(root))
