"""A small MLflow flavor for native k-means models (cuML, dask-ml, the ``dask`` backend), and
the one verified loader of every model the toolkit logs.

MLflow has no cuML flavor.  This one follows the contract of MLflow's flavor modules
(``FLAVOR_NAME``, ``save_model``, ``log_model``, ``load_model``, ``_load_pyfunc``).  By default
a model is stored WITHOUT executable content (format ``kmeans-npy``)::

    MLmodel                      flavors, signature, model_id of its LoggedModel
    requirements.txt
    input_example.json, serving_input_example.json   (when an example is given)
    kmeans/centers.npy           cluster_centers_ (its dtype), read with allow_pickle=False
    kmeans/origin.npy            DaskKMeans only: the float32 point its kernels centre rows on
    kmeans/shift.npy             models of centred data only (toolkit.data.precision_shift): the
                                 float64 point subtracted from raw rows; centers.npy then holds
                                 the centres in the raw coordinates (float64), and the model is
                                 rebuilt as toolkit.convert.centered_model(k-means, shift)
    kmeans/model.json            model class key, hyperparameters, n_features, inertia, n_iter,
                                 library versions

and the estimator is rebuilt from these files (scikit-learn ``KMeans``, the project's
``DaskKMeans``, ``dask_ml.cluster.KMeans``, ``cuml.cluster.KMeans``).  Pickle
(``kmeans/model.pkl``, cloudpickle) is written only when the caller asks
(``serialization="pickle"``), and read back only when a trusted signature covers it and the
user opted in (``KMEANS_LIFECYCLE_ALLOW_PICKLE``).  Whatever the format, :func:`load_model` first
verifies the model's signature and every file (:mod:`toolkit.registry.integrity`), takes the
format and class from the signed statement, not from tags or the MLmodel file, and checks that
the result is a k-means estimator whose centres have the signed shape.  The scikit-learn twin (``mlflow.sklearn``
with skops) goes through the same checks and is read with ``skops.io.load`` and the project's
own trusted-type list, never by the ``serialization_format`` its MLmodel file claims.

Loading a GPU model where no GPU exists fails with a one-line error instead of a CUDA traceback.

The pyfunc face (:func:`_load_pyfunc`; ``mlflow.pyfunc.load_model``, ``mlflow models serve``)
serves native models and, since they carry their column names, the twins too: it loads through
the same checks, then refuses a request whose columns are not exactly the model's (recorded as
the flavor's ``feature_names``, or the twin's ``feature_names_in_``) with a one-line
``MlflowException`` (HTTP 400 from ``mlflow models serve``).  The logged signature therefore
names no input columns (:func:`output_signature`): MLflow would drop unknown columns before this
check could see them.  Models logged before keep their MLflow input schema and MLflow's loader
for the twin, and load as they did.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from toolkit import _compat, env
from toolkit.convert import (
    centered_model,
    centers_of,
    class_key,
    input_dtype,
    predict_labels,
    same_public_class,
    split_centered,
    to_numpy,
)
from toolkit.errors import ModelError, first_line
from toolkit.registry import integrity
from toolkit.registry.integrity import CLASS_TAG, FORMAT_TAG, SHAPE_TAG, LoggedRef, VerifiedModel

__all__ = [
    "FLAVOR_NAME",
    "KMEANS_CLASSES",
    "KMEANS_NPY",
    "LEGACY_CLASS_KEYS",
    "PICKLE",
    "SKOPS",
    "SKOPS_FILE",
    "TRUSTED_SKOPS_TYPES",
    "columns_in_order",
    "flavor_conf",
    "load_model",
    "load_verified",
    "log_model",
    "model_device",
    "output_signature",
    "pyfunc_rows",
    "save_model",
    "serve_with_toolkit",
    "trained_columns",
]

FLAVOR_NAME = "kmeans_native"
#: Serialization formats (the ``integrity.format`` tag).
KMEANS_NPY = "kmeans-npy"
PICKLE = "pickle"
SKOPS = "skops"

_DATA_DIR = "kmeans"
_STATE_FILE = "model.json"
_CENTERS_FILE = "centers.npy"
_ORIGIN_FILE = "origin.npy"
_SHIFT_FILE = "shift.npy"
_PICKLE_FILE = "model.pkl"
#: The file ``mlflow.sklearn.save_model(serialization_format="skops")`` writes.
SKOPS_FILE = "model.skops"
#: Types the twin's skops file may hold beyond skops' own defaults: the project's list, not the
#: one an MLmodel file carries.  A twin of centred data is a Pipeline of a StandardScaler (the
#: centring step) and the KMeans (:func:`toolkit.convert.centered_model`); a twin registered now
#: has a cast step in front, a FunctionTransformer of the ufunc ``numpy.positive`` (which skops
#: trusts by default) that gives rows the centres' float width (:func:`toolkit.convert.with_cast`);
#: its structure is checked after loading (:func:`toolkit.convert.split_centered`).
TRUSTED_SKOPS_TYPES: tuple[str, ...] = tuple(
    _compat.sklearn_type_path(name) for name in ("KMeans", "Pipeline", "StandardScaler", "FunctionTransformer"))

# Distribution names whose versions are recorded when installed.
_LIBRARIES = ("numpy", "scikit-learn", "dask", "dask-ml")
# Import names of the GPU stack: their distributions are named per CUDA version
# (cuml-cu12 / cuml-cu13, cupy-cuda12x / cupy-cuda13x), so they are found through the import name.
_GPU_MODULES = ("cuml", "cupy", "cudf", "dask_cudf", "dask_cuda", "rmm")

_SKLEARN = _compat.sklearn_type_path("KMeans")
_DASK_KMEANS = "toolkit.kmeans_dask.estimator.DaskKMeans"
_DASK_ML = "dask_ml.cluster.k_means.KMeans"
_CUML = "cuml.cluster.kmeans.KMeans"
_CUML_MG = "cuml.cluster.kmeans_mg.KMeansMG"
#: Estimators a loaded model may be.
KMEANS_CLASSES = (_SKLEARN, _DASK_KMEANS, _DASK_ML, _CUML)
#: Class keys recorded by earlier versions of the toolkit -> the class they name now.  The key a
#: model was registered under is part of its record (MLmodel, model.json, the store's tags), so
#: it is never rewritten: it is read through this table instead.
LEGACY_CLASS_KEYS: dict[str, str] = {
    # DaskKMeans lived in the `dask` backend's module until it became toolkit.kmeans_dask.
    "toolkit.backends.dask_lloyd.DaskKMeans": _DASK_KMEANS,
}


def _current_key(key: str | None) -> str | None:
    """The class key ``key`` names today (itself unless it is a legacy key)."""
    return LEGACY_CLASS_KEYS.get(key, key) if key is not None else None


def model_device(model: Any) -> str:
    """``"gpu"`` for cuML models (by class module, without importing cuML), else ``"cpu"``."""
    model = split_centered(model)[0]  # a centred model is the device of its k-means
    return "gpu" if type(model).__module__.split(".")[0] == "cuml" else "cpu"


def _versions(device: str) -> dict[str, str]:
    out = {"python": env.python_version(), **env.installed_versions(_LIBRARIES)}
    if device == "gpu":
        out.update(env.gpu_versions(_GPU_MODULES))
    return out


def _requirements(device: str, serialization: str) -> list[str]:
    libs = ("numpy", "scikit-learn", "cloudpickle") if serialization == PICKLE else ("numpy", "scikit-learn")
    reqs = env.pinned_requirements(libs, keep_missing=True)
    if device == "gpu":
        # The same cuML (and CUDA flavour) as the one that saved it; cupy comes with it.
        reqs += env.gpu_requirements(("cuml", "cupy"), extras={"cuml": "dask"}) or ["cuml-cu13[dask]"]
    return reqs


def _kind(model: Any) -> str:
    """The class key a model is stored (and rebuilt) as; moved private modules are matched.
    A centred model is stored as its k-means (plus ``shift.npy``)."""
    model = split_centered(model)[0]
    for cls in type(model).__mro__:
        key = class_key(cls)
        if key in KMEANS_CLASSES:
            return key
        if key == _CUML_MG or same_public_class(cls, _CUML_MG):
            return _CUML  # rebuilt as a free-standing single-GPU model
        for known in KMEANS_CLASSES:
            if same_public_class(cls, known):
                return known
    raise ModelError(f"cannot store a {class_key(model)} as a {FLAVOR_NAME} model",
                     f"pass a fitted k-means of a known type ({', '.join(KMEANS_CLASSES)})")


def _canonical(model: Any) -> str | None:
    """The class key of ``model``'s own class if it is a known k-means (no subclasses)."""
    key = class_key(model)
    if key in KMEANS_CLASSES:
        return key
    # cuML and dask-ml move classes between private modules of the same package.
    return next((k for k in KMEANS_CLASSES if same_public_class(type(model), k)), None)


def _json_scalar(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if v is None or isinstance(v, str):
        return v
    return _SKIP


_SKIP = object()


def _state(model: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON state, arrays) of a fitted k-means: what predict needs and the hyperparameters."""
    key = _kind(model)
    model, shift = split_centered(model)
    centers = np.ascontiguousarray(to_numpy(model.cluster_centers_))
    if centers.ndim != 2 or centers.dtype.kind != "f":
        raise ModelError(f"{class_key(model)} has cluster_centers_ of shape {centers.shape} and dtype "
                         f"{centers.dtype}", "pass a fitted k-means model")
    params = {}
    if hasattr(model, "get_params"):
        # Scalars only: an init array, a RandomState or a handle is no hyperparameter to keep.
        for k, v in model.get_params(deep=False).items():
            s = _json_scalar(v)
            if s is not _SKIP:
                params[k] = s
    state: dict[str, Any] = {
        "format_version": 1,
        "model_class": key,
        "params": params,
        "n_features": int(centers.shape[1]),
        "n_clusters": int(centers.shape[0]),
        "dtype": str(centers.dtype),
    }
    for attr, out in (("inertia_", "inertia"), ("n_iter_", "n_iter")):
        value = _json_scalar(getattr(model, attr, None))
        state[out] = None if value is _SKIP else value
    arrays = {_CENTERS_FILE: centers}
    if shift is not None:
        # The centres as a reader expects them, in the data's coordinates; the rebuild takes the
        # shift off again (in float64) and casts to "dtype", the width the k-means predicts in.
        arrays[_CENTERS_FILE] = centers.astype(np.float64) + shift
        arrays[_SHIFT_FILE] = np.ascontiguousarray(shift)
    if key == _DASK_KMEANS and getattr(model, "_origin", None) is not None:
        # DaskKMeans predicts on x - origin in float32: the same origin gives the same labels.
        arrays[_ORIGIN_FILE] = np.ascontiguousarray(np.asarray(model._origin))
    return state, arrays


def _write_data(model: Any, path: str, serialization: str) -> tuple[str, str, Any]:
    """Write ``model``'s files into ``path``'s data folder: (its class key, its device, its centres).

    Raises:
        ModelError: an unknown ``serialization``.
    """
    if serialization not in (KMEANS_NPY, PICKLE):
        raise ModelError(f"unknown serialization {serialization!r} for a {FLAVOR_NAME} model",
                         f"use {KMEANS_NPY!r} (default) or {PICKLE!r}")
    device = model_device(model)
    centers = centers_of(model)
    os.makedirs(os.path.join(path, _DATA_DIR), exist_ok=False)
    if serialization == PICKLE:
        import cloudpickle

        key = _kind(model)  # only a known k-means loads back, whatever the format
        with open(os.path.join(path, _DATA_DIR, _PICKLE_FILE), "wb") as fh:
            cloudpickle.dump(model, fh)
    else:
        state, arrays = _state(model)
        key = state["model_class"]
        state["versions"] = _versions(device)
        for name, arr in arrays.items():
            np.save(os.path.join(path, _DATA_DIR, name), arr, allow_pickle=False)
        with open(os.path.join(path, _DATA_DIR, _STATE_FILE), "w") as fh:
            json.dump(state, fh, indent=1, sort_keys=True)
    return key, device, centers


def save_model(
    model: Any,
    path: str,
    *,
    backend: str,
    signature: Any = None,
    input_example: Any = None,
    metadata: dict[str, Any] | None = None,
    serialization: str = KMEANS_NPY,
    mlflow_model: Any = None,
    feature_names: list[str] | None = None,
) -> dict[str, str]:
    """Save ``model`` as an MLflow model directory at ``path`` (with a pyfunc flavor).

    Args:
        model: a fitted k-means (scikit-learn, DaskKMeans, dask-ml, cuML).
        path: a folder that does not exist yet.
        backend: the backend the model came from (recorded).
        signature: MLflow signature.
        input_example: an input example (saved beside the model).
        metadata: MLmodel metadata.
        serialization: ``"kmeans-npy"`` (default: no executable content) or ``"pickle"``
            (cloudpickle, opt-in: the library's own object; unpickled only after its checksum
            matched the store's record).
        mlflow_model: the :class:`mlflow.models.Model` to fill (carries the LoggedModel id).
        feature_names: the input columns, in order (the flavor's ``feature_names``): the pyfunc
            face refuses a frame with other columns (:func:`pyfunc_rows`).

    Returns:
        The integrity tags describing it: format, model class, centres shape.
    """
    from mlflow.models import Model
    from mlflow.pyfunc import add_to_model

    key, device, centers = _write_data(model, path, serialization)
    mlmodel = mlflow_model if mlflow_model is not None else Model()
    mlmodel.signature = signature
    mlmodel.metadata = metadata
    if input_example is not None:
        from toolkit._compat import mlflow_save_example

        mlflow_save_example(mlmodel, input_example, path)
    add_to_model(mlmodel, loader_module="toolkit.registry.flavor", data=_DATA_DIR, python_env=None)
    mlmodel.add_flavor(
        FLAVOR_NAME,
        serialization=serialization,
        data=_DATA_DIR,
        model_class=key,
        device=device,
        backend=backend,
        n_clusters=int(np.asarray(centers).shape[0]),
        versions=_versions(device),
        **({"feature_names": [str(n) for n in feature_names]} if feature_names is not None else {}),
    )
    mlmodel.save(os.path.join(path, "MLmodel"))
    with open(os.path.join(path, "requirements.txt"), "w") as fh:
        fh.write("\n".join(_requirements(device, serialization)) + "\n")
    shape = np.asarray(centers).shape
    return {FORMAT_TAG: serialization, CLASS_TAG: key, SHAPE_TAG: f"{shape[0]}x{shape[1]}"}


def log_model(
    model: Any,
    run_id: str,
    name: str = "native_model",
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, str] | None = None,
    check_sample: np.ndarray | None = None,
    extra_files: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> LoggedRef:
    """Log ``model`` as a new LoggedModel of ``run_id`` (own storage, checksums recorded).

    Args:
        model: the fitted k-means.
        run_id: the run that made it.
        name: the LoggedModel's name.
        params: LoggedModel parameters (default: the model's scalar hyperparameters).
        metrics: metrics attached to the LoggedModel.
        tags: more LoggedModel tags.
        check_sample: rows on which the model rebuilt from the saved files must predict
            exactly ``model``'s labels before anything is uploaded.
        extra_files: called with the model folder after it is saved, to add files that belong
            to the model (written before the checksums are taken, so they are covered too).
        **kwargs: :func:`save_model` arguments (``backend`` is required).

    Raises:
        ModelError: the rebuilt model predicts other labels on ``check_sample``.
    """
    if params is None:
        params = {k: v for k, v in (model.get_params(deep=False) if hasattr(model, "get_params") else {}).items()
                  if _json_scalar(v) is not _SKIP}

    def save(local: str, mlmodel: Any) -> dict[str, str]:
        info = save_model(model, local, mlflow_model=mlmodel, **kwargs)
        if check_sample is not None:
            # The local files were just written by this process: read back to prove the round trip.
            from toolkit.convert import check_equivalent

            rebuilt = _read_native(local, info, None)
            agree = check_equivalent(model, rebuilt, check_sample)
            if agree < 1.0:
                raise ModelError(f"the {FLAVOR_NAME} model rebuilt from its files predicts other labels than "
                                 f"the fitted {class_key(model)} on {1 - agree:.2%} of the sample",
                                 "save it with serialization='pickle' or report this as a bug")
        if extra_files is not None:
            extra_files(local)
        return info

    return integrity.log_model_dir(run_id, name, save, model_type=FLAVOR_NAME, params=params,
                                   tags={"kind": "native", **(tags or {})}, metrics=metrics)


def flavor_conf(local_path: str) -> dict[str, Any]:
    """The ``kmeans_native`` section of a (verified, local) model's MLmodel file."""
    from mlflow.models import Model

    conf = Model.load(os.path.join(local_path, "MLmodel")).flavors.get(FLAVOR_NAME)
    if conf is None:
        raise ModelError(f"{local_path} is not a {FLAVOR_NAME} model", "load it with its own flavor")
    return conf


# -- rebuilding -------------------------------------------------------------------------------
def _rebuild_sklearn(state: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    from toolkit.convert import sklearn_from_centers

    params = state["params"]
    model = sklearn_from_centers(arrays[_CENTERS_FILE], params=params, inertia=state.get("inertia"),
                                n_iter=state.get("n_iter"), n_features_in=state["n_features"])
    extra = {k: v for k, v in params.items() if k in ("algorithm", "copy_x", "verbose")}
    if extra:
        model.set_params(**extra)
    return model


def _rebuild_fitted(cls: type, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    """A Dask estimator (``cls``) with its recorded hyperparameters and fitted attributes."""
    import inspect

    accepted = set(inspect.signature(cls).parameters)
    model = cls(**{k: v for k, v in state["params"].items() if k in accepted})
    model.cluster_centers_ = arrays[_CENTERS_FILE]
    model.n_features_in_ = int(state["n_features"])
    if _ORIGIN_FILE in arrays:  # DaskKMeans predicts relative to its data's origin
        model._origin = arrays[_ORIGIN_FILE]
    model.inertia_ = float("nan") if state.get("inertia") is None else float(state["inertia"])
    model.n_iter_ = int(state.get("n_iter") or 0)
    return model


def _rebuild_dask_kmeans(state: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    from toolkit.kmeans_dask import DaskKMeans

    return _rebuild_fitted(DaskKMeans, state, arrays)


def _rebuild_daskml(state: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    from dask_ml.cluster import KMeans

    return _rebuild_fitted(KMeans, state, arrays)


def _rebuild_cuml(state: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:  # pragma: no cover - GPU
    import cuml  # noqa: F401 - imported here only: the GPU branch

    from toolkit.convert import to_cuml

    return to_cuml(_rebuild_sklearn(state, arrays))


_REBUILD = {
    _SKLEARN: _rebuild_sklearn,
    _DASK_KMEANS: _rebuild_dask_kmeans,
    _DASK_ML: _rebuild_daskml,
    _CUML: _rebuild_cuml,
}


def _read_state(data: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with open(os.path.join(data, _STATE_FILE)) as fh:
        state = json.load(fh)
    arrays = {}
    for name in (_CENTERS_FILE, _ORIGIN_FILE, _SHIFT_FILE):
        file = os.path.join(data, name)
        if os.path.exists(file):
            arrays[name] = np.load(file, allow_pickle=False)
    if _CENTERS_FILE not in arrays or not isinstance(state.get("params"), dict):
        raise ModelError(f"{data} holds no k-means state ({_CENTERS_FILE}, {_STATE_FILE})",
                         "re-register the model")
    return state, arrays


def _check_kmeans(model: Any, integrity_tags: Mapping[str, str], label: str) -> Any:
    """Refuse anything but a k-means estimator of the recorded class and centres shape (alone, or
    behind the centring step of a model of centred data: :func:`toolkit.convert.split_centered`)."""
    outer = model
    model, shift = split_centered(model)
    width = np.shape(to_numpy(getattr(model, "cluster_centers_", np.empty((0, 0)))))[-1:]
    if shift is not None and shift.shape != width:
        raise ModelError(f"{label} centres rows on {shift.shape[0]} features, not the {width} of its k-means",
                         "re-register the model")
    key = _canonical(model)
    recorded = integrity_tags.get(CLASS_TAG)
    expected = _current_key(recorded)
    if key is None or key != expected:
        raise ModelError(f"{label} loaded as a {class_key(model)}, not the k-means estimator recorded "
                         f"({recorded})", "re-register the model")
    shape = getattr(model, "cluster_centers_", None)
    shape = "x".join(str(n) for n in to_numpy(shape).shape) if shape is not None else "none"
    if shape != integrity_tags.get(SHAPE_TAG):
        raise ModelError(f"{label} has cluster_centers_ of shape {shape}, not the recorded "
                         f"{integrity_tags.get(SHAPE_TAG)}", "re-register the model")
    return outer


def _gpu_refusal(conf: Mapping[str, Any], twin_hint: str | None) -> ModelError:
    hint = twin_hint or "its scikit-learn twin (registered model '<name>-sklearn')"
    return ModelError(
        f"this native model is a cuML ({conf.get('model_class')}) model and needs a CUDA GPU, "
        "which this machine does not have",
        f"load {hint} instead",
    )


def _read_native(path: str, integrity_tags: Mapping[str, str], twin_hint: str | None) -> Any:
    """Read a native model folder whose files were checked; the format comes from the store."""
    conf = flavor_conf(path)
    fmt = integrity_tags.get(FORMAT_TAG)
    if conf.get("serialization") != fmt:
        raise ModelError(f"the MLmodel of {path} says serialization {conf.get('serialization')!r} but the "
                         f"store recorded {fmt!r}", "re-register the model")
    if conf.get("device") == "gpu" and not env.gpu_available():
        raise _gpu_refusal(conf, twin_hint)
    data = os.path.join(path, _DATA_DIR)
    if fmt == PICKLE:
        import cloudpickle

        with open(os.path.join(data, _PICKLE_FILE), "rb") as fh:
            return cloudpickle.load(fh)
    if fmt != KMEANS_NPY:
        raise ModelError(f"{path} has format {fmt!r}, not a {FLAVOR_NAME} format", "re-register the model")
    state, arrays = _read_state(data)
    key = state.get("model_class")
    if key != integrity_tags.get(CLASS_TAG) or _current_key(key) not in _REBUILD:
        raise ModelError(f"{path} stores a {key} model, not the recorded {integrity_tags.get(CLASS_TAG)}",
                         "re-register the model")
    shift = arrays.pop(_SHIFT_FILE, None)
    if shift is None:
        return _REBUILD[_current_key(key)](state, arrays)
    shift = np.asarray(shift, dtype=np.float64)
    arrays[_CENTERS_FILE] = (np.asarray(arrays[_CENTERS_FILE], dtype=np.float64) - shift).astype(state["dtype"])
    return centered_model(_REBUILD[_current_key(key)](state, arrays), shift)


def _read_twin(path: str) -> Any:
    """The scikit-learn twin from its skops file, with the project's trusted types only."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return skops.io.load(os.path.join(path, SKOPS_FILE), trusted=list(TRUSTED_SKOPS_TYPES))
    except UntrustedTypesFoundException as exc:
        raise ModelError(f"the scikit-learn twin's {SKOPS_FILE} holds untrusted types "
                         f"({first_line(exc, 200)})", "re-register the model") from None
    except Exception as exc:
        raise ModelError(f"cannot read the scikit-learn twin's {SKOPS_FILE}: {first_line(exc, 200)}",
                         "re-register the model") from None


def _pickle_gate(verified: VerifiedModel, allow_pickle: bool | None) -> None:
    """Refuse pickle content unless it is signed, the user opted in, and the signed class is a
    known k-means -- all decided before a byte of the pickle is read."""
    from toolkit.registry import signing

    if not verified.signed:
        raise ModelError(f"{verified.label} is an unsigned pickle model; pickle content is loaded only when a "
                         "trusted signature covers it", "re-register the model (kmeans-npy, the default format)")
    if not signing.allow_pickle(allow_pickle):
        raise ModelError(f"{verified.label} is stored as a pickle (signed, but unpickling runs code), and loading "
                         "pickles is off", f"set {signing.ALLOW_PICKLE_ENV}=1 (or pass allow_pickle=True) if you "
                         "trust its signer, or re-register it in the kmeans-npy format")
    recorded = verified.integrity.get(CLASS_TAG)
    if _current_key(recorded) not in KMEANS_CLASSES:
        raise ModelError(f"{verified.label} is signed as a {recorded}, not a known k-means estimator; its pickle "
                         "is not read", "re-register the model")


def load_verified(verified: VerifiedModel, twin_hint: str | None = None, *, allow_pickle: bool | None = None) -> Any:
    """Load a model from a checked copy (see :func:`toolkit.registry.integrity.fetch_verified`).

    The files are checked again first; the reader is chosen by the signed format.  Pickle
    content is read only when it is signed, the signed class is a known k-means and the user
    opted in (``allow_pickle``, default ``KMEANS_LIFECYCLE_ALLOW_PICKLE``).

    Raises:
        ModelError: changed files, a refused pickle, a GPU model without a GPU, or not the
            recorded k-means.
    """
    verified.recheck()
    fmt = verified.integrity.get(FORMAT_TAG)
    if fmt == PICKLE:
        _pickle_gate(verified, allow_pickle)
    if fmt == SKOPS:
        model = _read_twin(verified.local_path)
    elif fmt in (KMEANS_NPY, PICKLE):
        model = _read_native(verified.local_path, verified.integrity, twin_hint)
    else:
        raise ModelError(f"{verified.label} has an unknown recorded format {fmt!r}", "re-register the model")
    return _check_kmeans(model, verified.integrity, verified.label)


def load_model(model_uri: str, twin_hint: str | None = None, *, allow_pickle: bool | None = None) -> Any:
    """Load the model at ``model_uri`` after verifying its signature and every file.

    Args:
        model_uri: ``models:/name@alias``, ``models:/name/version``, ``models:/<model_id>``,
            ``runs:/<run_id>/native_model`` (or ``sklearn_model``), or a local copy of a
            logged model.  Native models and scikit-learn twins both load.
        twin_hint: what to suggest when a GPU model cannot load here.
        allow_pickle: load a signed pickle model (default: ``KMEANS_LIFECYCLE_ALLOW_PICKLE``).

    Raises:
        ModelError: the model cannot be found, is unsigned or signed by an untrusted key, its
            files differ from the signed ones, or it is not the recorded k-means estimator.
    """
    with integrity.fetch_verified(model_uri) as verified:
        return load_verified(verified, twin_hint, allow_pickle=allow_pickle)


def output_signature() -> Any:
    """The signature logged models carry: int32 labels out, no MLflow input schema.

    MLflow (3.x, ``mlflow.models.utils._enforce_schema``) drops the columns a named input
    schema does not list, with a log line, BEFORE any model code runs: a request with extra
    columns would be scored in silence.  The columns are checked by the pyfunc face instead
    (:func:`pyfunc_rows`, from the flavor's ``feature_names`` or the twin's
    ``feature_names_in_``), which refuses extra and missing columns alike; the input example
    saved beside each model shows them.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(np.int32), (-1,))]))


def _refuse(message: str) -> Exception:
    # An MlflowException with INVALID_PARAMETER_VALUE: `mlflow models serve` answers it with a
    # 400 carrying this message (any other exception becomes a generic message and a traceback).
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value(message)


def trained_columns(model: Any, native_conf: Mapping[str, Any] | None = None) -> list[str] | None:
    """The columns ``model`` was trained on, in order, or None where it did not record them.

    A scikit-learn model (a twin) knows them (``feature_names_in_``); a native model carries
    them in its flavor's ``feature_names`` (``native_conf``, its MLmodel section).  Models
    registered before the names were recorded have neither.
    """
    names = getattr(model, "feature_names_in_", None)
    if names is None and native_conf is not None:
        names = native_conf.get("feature_names")
    return None if names is None else [str(n) for n in names]


def columns_in_order(columns: list[Any], feature_names: list[str] | None) -> list[str] | None:
    """A frame's ``columns`` in the order of ``feature_names``, or None to take them as they are.

    Only a frame whose columns are all named (strings) is compared, and only with a model that
    recorded its columns: it must have exactly ``feature_names``, in any order.  Every face of a
    model (the pyfunc, the local and distributed predictors, batch scoring) holds to this, so a
    frame with its columns renamed or reordered is refused or put in order, never scored by
    position in silence.

    Raises:
        ValueError: what is wrong (unexpected and missing columns), for the caller's own error.
    """
    if not feature_names or not columns or not all(isinstance(c, str) for c in columns):
        return None
    extra = [c for c in columns if c not in feature_names]
    missing = [c for c in feature_names if c not in columns]
    if extra or missing:
        raise ValueError("; ".join(part for part in (
            f"unexpected column(s) {', '.join(extra)}" if extra else "",
            f"missing column(s) {', '.join(missing)}" if missing else "",
        ) if part))  # fmt: skip
    return list(feature_names)


def pyfunc_rows(data: Any, feature_names: list[str] | None, n_features: int, dtype: Any) -> np.ndarray:
    """The rows of a pyfunc request as a ``(n, n_features)`` array of ``dtype``, or a refusal.

    A frame whose columns are all named (a pandas DataFrame, a ``dataframe_split`` request)
    must have exactly ``feature_names`` (any order: they are put in the model's order); unnamed
    rows (NumPy, lists, a frame with positional columns) are taken in order and must be
    ``n_features`` wide.  Without ``feature_names`` (models logged before they were recorded)
    every input is taken in order.

    Raises:
        MlflowException: (INVALID_PARAMETER_VALUE, a one-line message) unexpected or missing
            columns, another width, non-numeric values, or not 2-D.
    """
    import pandas as pd

    expected = ", ".join(feature_names) if feature_names else f"{n_features} unnamed"
    if isinstance(data, pd.Series):
        data = data.to_frame()
    if isinstance(data, pd.DataFrame):
        try:
            order = columns_in_order(list(data.columns), feature_names)
        except ValueError as said:
            raise _refuse(f"input has {said}; the model expects exactly the columns {expected}") from None
        if order is not None:
            data = data[order]
        bad = [str(c) for c, t in data.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
        if bad:
            raise _refuse(f"input column(s) {', '.join(bad)} are not numeric; the model expects "
                          f"numeric columns {expected}")
        data = data.to_numpy()
    try:
        X = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise _refuse(f"input is not numeric rows ({first_line(exc, 200)}); the model expects "
                      f"columns {expected}") from None
    if X.ndim != 2 or X.shape[1] != n_features:
        raise _refuse(f"input has shape {X.shape}; the model expects rows of {n_features} columns "
                      f"({expected})")
    return X


class _PyFuncWrapper:
    """``mlflow.pyfunc`` face of every toolkit model (native, and twins logged with their column
    names): ``predict(DataFrame | ndarray) -> int32 labels``, columns checked first."""

    def __init__(self, model: Any, feature_names: list[str] | None = None) -> None:
        self.model = model
        self.feature_names = list(feature_names) if feature_names is not None else None

    def get_raw_model(self) -> Any:
        return self.model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        n_features = int(np.asarray(centers_of(self.model)).shape[1])
        X = pyfunc_rows(data, self.feature_names, n_features, input_dtype(self.model))
        return predict_labels(self.model, X).astype(np.int32)


def _load_pyfunc(path: str, model_config: Any = None) -> _PyFuncWrapper:
    # MLflow passes the data folder (``kmeans``) or, for a twin, the model folder; the model
    # folder is the one with the MLmodel.
    root = path if os.path.exists(os.path.join(path, "MLmodel")) else os.path.dirname(path.rstrip(os.sep))
    # Checked against its LoggedModel (named by the MLmodel's model_id) like every other load;
    # the column names are read from the checked copy too.
    with integrity.fetch_verified(root) as verified:
        model = load_verified(verified)
        if verified.integrity.get(FORMAT_TAG) == SKOPS:
            names = trained_columns(model)
        else:
            names = trained_columns(None, flavor_conf(verified.local_path))
    return _PyFuncWrapper(model, names)


def serve_with_toolkit(mlmodel: Any, path: str) -> None:
    """Make the twin saved at ``path`` (by ``mlflow.sklearn``) serve through :func:`_load_pyfunc`.

    Its ``sklearn`` flavor is left as MLflow wrote it (``mlflow.sklearn.load_model`` works as
    before); its ``python_function`` flavor, what ``mlflow.pyfunc.load_model`` and ``mlflow
    models serve`` use, gets this module as loader: the files are checked against the store's
    checksums, the skops file is read with the project's trusted types, and requests with other
    columns than the twin's are refused (MLflow's own loader would drop extra columns).  The
    serving environment needs this package, as for native models.  Call it before the checksums
    are taken: it rewrites the MLmodel file.
    """
    from mlflow.pyfunc import FLAVOR_NAME as PYFUNC

    conf = mlmodel.flavors.get(PYFUNC)
    if conf is None:
        raise ModelError(f"{path} has no {PYFUNC} flavor to serve", "save it with mlflow.sklearn first")
    conf["loader_module"] = __name__
    mlmodel.save(os.path.join(path, "MLmodel"))
