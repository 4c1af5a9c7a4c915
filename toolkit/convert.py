"""Model conversion as a table: ``(source class, target) -> function``.

Every fitted k-means the toolkit produces (scikit-learn, dask-ml, the ``dask`` backend's
``DaskKMeans``, cuML single-GPU, cuML multi-GPU) can be turned into a scikit-learn ``KMeans``
that predicts the same labels, and scikit-learn models can be turned into cuML ones.  Models
are matched by their fully-qualified class name (``"cuml.cluster.kmeans.KMeans"``), so
dispatching never imports a GPU library; the library a conversion needs is imported inside that
conversion only.

This module owns every conversion and imports nothing of :mod:`toolkit.backends` nor of
:mod:`toolkit.kmeans_dask`: it sits below them, and backends call it (``to_sklearn``,
``to_cuml``), never the other way round.  The alternative -- each backend registering its own
converters into a table here -- needs the backend modules imported before any conversion can
run, which for a model read back from the registry (a cuML model on a CPU-only serving host, a
``DaskKMeans`` rebuilt from its files) means importing the backends from here again, the cycle
this layout removes; and it would keep two builders of scikit-learn models.  Converting needs
only the fitted attributes, which every library names the same way, so one table keyed by class
name is the simpler design: :func:`sklearn_from_centers` is the one place a scikit-learn model
is built by hand.

Class names checked against the cuML source (rapidsai/cuml, 26.10): ``cuml.KMeans`` lives in
``python/cuml/cuml/cluster/kmeans.pyx`` (module ``cuml.cluster.kmeans``); ``KMeansMG`` (what
``cuml.dask.cluster.KMeans.get_combined_model()`` returns) in ``cluster/kmeans_mg.py`` (a ``.pyx``
before 26.x, same module name); the Dask wrapper in ``python/cuml/cuml/dask/cluster/kmeans.py``.
``as_sklearn``/``from_sklearn`` come from ``cuml/internals/interop.py`` (cuML >= 25.02).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from toolkit import _compat
from toolkit.errors import ModelError

__all__ = [
    "CONVERSIONS",
    "Converter",
    "assert_equivalent",
    "cast_dtype",
    "centered_model",
    "centers_of",
    "check_equivalent",
    "class_key",
    "combined_to_single",
    "convert",
    "input_dtype",
    "predict_labels",
    "raw_dtype",
    "register_conversion",
    "same_public_class",
    "sklearn_from_centers",
    "split_centered",
    "to_cuml",
    "to_numpy",
    "to_sklearn",
    "with_cast",
    "with_feature_names",
    "without_training_labels",
]

Converter = Callable[[Any], Any]

# Source keys: "<module>.<qualname>" of the classes as defined (not as re-exported).
_SKLEARN = _compat.sklearn_type_path("KMeans")
_DASK_ML = "dask_ml.cluster.k_means.KMeans"
_DASK_KMEANS = "toolkit.kmeans_dask.estimator.DaskKMeans"
_CUML = "cuml.cluster.kmeans.KMeans"
_CUML_MG = "cuml.cluster.kmeans_mg.KMeansMG"
_CUML_DASK = "cuml.dask.cluster.kmeans.KMeans"
_PIPELINE = "sklearn.pipeline.Pipeline"
_SCALER = _compat.sklearn_type_path("StandardScaler")
_FUNCTION_TRANSFORMER = _compat.sklearn_type_path("FunctionTransformer")
#: The step names of a centred model (:func:`centered_model`) and of a twin's cast (:func:`with_cast`).
CENTRE_STEP, KMEANS_STEP, CAST_STEP = "centre", "kmeans", "cast"

# Hyperparameters shared by scikit-learn and cuML KMeans (oversampling_factor is cuML/dask-ml only).
_COMMON_PARAMS = ("n_clusters", "init", "n_init", "max_iter", "tol", "random_state")


# -- helpers ----------------------------------------------------------------------------------
def to_numpy(a: Any) -> np.ndarray:
    """``a`` as a host NumPy array: NumPy, Dask, pandas, CuPy, cuDF and CumlArray all work."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "__dask_graph__"):
        a = a.compute()
    if hasattr(a, "to_numpy"):  # pandas / cuDF
        return np.asarray(a.to_numpy())
    if hasattr(a, "__cuda_array_interface__") and hasattr(a, "get"):  # CuPy
        return a.get()
    if hasattr(a, "to_output"):  # CumlArray
        return np.asarray(a.to_output("numpy"))
    return np.asarray(a)


def class_key(obj: Any) -> str:
    """``"module.QualName"`` of ``obj`` (a class, or an instance's class)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


# -- models of centred data -------------------------------------------------------------------
def centered_model(model: Any, shift: Any) -> Any:
    """``Pipeline([("centre", StandardScaler(with_std=False)), ("kmeans", model)])`` that
    subtracts ``shift`` (float64) from raw rows before ``model`` (fitted on centred data) sees them.

    Only scikit-learn types: the twin stays loadable by ``mlflow.sklearn`` without the toolkit.
    Fed float64 rows, the subtraction is exact to float64's rounding of the raw values, which is
    all that a centred float32 fit needs (see :mod:`toolkit.data`).
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    shift = np.array(shift, dtype=np.float64).ravel()
    centre = StandardScaler(with_std=False)
    # The fitted state StandardScaler.fit leaves with with_std=False.
    centre.mean_ = shift
    centre.var_ = None
    centre.scale_ = None
    centre.n_features_in_ = int(shift.shape[0])
    centre.n_samples_seen_ = 0
    return Pipeline([(CENTRE_STEP, centre), (KMEANS_STEP, model)])


def _split_cast(model: Any) -> tuple[Any, np.dtype | None]:
    """``(the rest, cast dtype)`` of a twin behind its cast step (:func:`with_cast`): the rest is
    the k-means alone or a :func:`centered_model`; ``(model, None)`` when there is no cast step.

    The step is checked exactly (``np.positive`` with a float32/float64 ``dtype`` and nothing
    else): skops lets any numpy ufunc through a FunctionTransformer, this lets one identity.

    Raises:
        ModelError: the first step is named ``cast`` but is not that cast.
    """
    steps = list(getattr(model, "steps", [])) if class_key(model) == _PIPELINE else []
    if not steps or steps[0][0] != CAST_STEP:
        return model, None
    cast = steps[0][1]
    kw = getattr(cast, "kw_args", None)
    ok = (
        class_key(cast) == _FUNCTION_TRANSFORMER
        and len(steps) in (2, 3)
        and getattr(cast, "func", None) is np.positive
        and isinstance(kw, dict) and list(kw) == ["dtype"] and kw["dtype"] in ("float32", "float64")
        and all(getattr(cast, a, None) is None for a in ("inverse_func", "inv_kw_args", "feature_names_out"))
        and getattr(cast, "validate", None) is True
        and getattr(cast, "accept_sparse", None) is False
    )
    if not ok:
        raise ModelError("a Pipeline whose cast step is not the twin's float cast",
                         "register models through the toolkit")
    rest = steps[1][1] if len(steps) == 2 else model[1:]
    return rest, np.dtype(kw["dtype"])


def cast_dtype(model: Any) -> np.dtype | None:
    """The float width a twin's cast step (:func:`with_cast`) gives its rows, or None without one."""
    return _split_cast(model)[1]


def split_centered(model: Any) -> tuple[Any, np.ndarray | None]:
    """``(k-means, float64 shift)`` of a :func:`centered_model`; ``(model, None)`` for any other.

    A twin's cast step (:func:`with_cast`) is looked through: ``(its k-means, shift or None)``.

    Raises:
        ModelError: ``model`` is a Pipeline but not one :func:`centered_model` or
            :func:`with_cast` makes, or its cast is not to the float width its k-means predicts.
    """
    rest, cast = _split_cast(model)
    if cast is not None:
        inner, shift = split_centered(rest)
        if class_key(inner) == _PIPELINE:  # a cast in front of a cast
            raise ModelError("a Pipeline of two cast steps", "register models through the toolkit")
        want = np.dtype(np.float64) if shift is not None else _centres_dtype(inner)
        if cast != want:
            raise ModelError(f"a twin that casts rows to {cast} for a k-means that predicts {want}",
                             "register models through the toolkit")
        return inner, shift
    if class_key(model) != _PIPELINE:
        return model, None
    steps = list(getattr(model, "steps", []))
    centre = steps[0][1] if len(steps) == 2 else None
    ok = (
        centre is not None
        and [name for name, _ in steps] == [CENTRE_STEP, KMEANS_STEP]
        and class_key(centre) == _SCALER
        and getattr(centre, "with_mean", False) is True
        and getattr(centre, "with_std", True) is False
        and getattr(centre, "mean_", None) is not None
    )
    shift = np.asarray(centre.mean_, dtype=np.float64) if ok else None
    if shift is None or shift.ndim != 1 or not np.all(np.isfinite(shift)):
        raise ModelError("a Pipeline that is not a centring step followed by a k-means",
                         "register models through the toolkit")
    return steps[1][1], shift


def _centres_dtype(model: Any) -> np.dtype | None:
    dtype = getattr(getattr(model, "cluster_centers_", None), "dtype", None)
    return np.dtype(dtype) if dtype is not None and np.dtype(dtype) in (np.float32, np.float64) else None


def with_cast(model: Any) -> Any:
    """``Pipeline([("cast", FunctionTransformer(np.positive, kw_args={"dtype": ...})), *steps])``:
    a scikit-learn twin that predicts float32 and float64 rows alike, loaded by stock MLflow.

    scikit-learn's ``KMeans.predict`` keeps the rows' float width (it validates with
    ``dtype=[np.float64, np.float32]``) and its Cython kernel then needs the centres' width:
    rows of the other width fail with ``Buffer dtype mismatch``.  The cast step gives every row
    the width the k-means predicts in (float64 for a :func:`centered_model`: its raw rows are
    centred in float64), so the fitted centres keep their dtype.  Only types skops trusts by
    default: a FunctionTransformer whose function is the numpy ufunc ``positive`` (the identity)
    with a ``dtype`` given as text; :func:`split_centered` checks exactly that when it reads one.
    The input columns' names move to the cast step (the first one sees the caller's frame).
    ``model`` is a k-means or a :func:`centered_model` (with or without a cast already).
    """
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    inner, shift = split_centered(model)
    rest = _split_cast(model)[0]
    names = getattr(rest, "feature_names_in_", None)
    dtype = np.dtype(np.float64) if shift is not None else (_centres_dtype(inner) or np.dtype(np.float32))
    if shift is None:
        steps = [(KMEANS_STEP, _without_names(inner))]
    else:
        steps = [(CENTRE_STEP, _without_names(rest.steps[0][1])), (KMEANS_STEP, _without_names(inner))]
    cast = FunctionTransformer(np.positive, kw_args={"dtype": dtype.name}, validate=True)
    cast.n_features_in_ = int(np.asarray(centers_of(model)).shape[1])
    if names is not None:
        cast.feature_names_in_ = np.asarray(names, dtype=object)
    return Pipeline([(CAST_STEP, cast), *steps])


def _without_names(estimator: Any) -> Any:
    """A shallow copy of ``estimator`` without ``feature_names_in_`` (it sees the cast's arrays)."""
    if "feature_names_in_" not in vars(estimator):
        return estimator
    out = copy.copy(estimator)
    del out.feature_names_in_
    return out


def centers_of(model: Any) -> np.ndarray:
    """``model``'s centroids in the coordinates of the data it predicts (a centred model's
    inner centres plus its shift, in float64; anyone else's ``cluster_centers_`` as stored)."""
    inner, shift = split_centered(model)
    centers = to_numpy(inner.cluster_centers_)
    return centers if shift is None else np.asarray(centers, dtype=np.float64) + shift


def raw_dtype(model: Any) -> np.dtype:
    """The float width predictors read rows in for ``model``: float64 for a centred model
    (its raw rows may be far from 0: float32 would lose them), float32 otherwise (as always)."""
    return np.dtype(np.float64 if split_centered(model)[1] is not None else np.float32)


def _centered_to_sklearn(model: Any) -> Any:
    inner, shift = split_centered(model)
    twin = to_sklearn(inner)
    # float64 centres: the centred rows are float64 (see centered_model).
    twin = sklearn_from_centers(twin.cluster_centers_, params=twin, inertia=getattr(twin, "inertia_", None),
                                n_iter=getattr(twin, "n_iter_", None), dtype=np.float64)
    return centered_model(twin, shift)


def _params_dict(source: Any) -> dict[str, Any]:
    """Hyperparameters from a mapping, a pydantic model or an estimator's ``get_params``."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return dict(source)
    if hasattr(source, "model_dump"):
        return dict(source.model_dump())
    if hasattr(source, "get_params"):
        return dict(source.get_params())
    return {}


def _sklearn_init(init: Any, shape: tuple[int, int]) -> Any:
    """An ``init`` value scikit-learn accepts for ``shape`` centers, from any backend's vocabulary."""
    if init is None:
        return "k-means++"
    if isinstance(init, str):
        # 'k-means||' / cuML's 'scalable-k-means++' are k-means++ variants sklearn lacks.
        return "random" if init == "random" else "k-means++"
    if callable(init):
        return init
    arr = to_numpy(init)
    return arr if arr.shape == shape else "k-means++"  # a stale array would fail set_params checks


def sklearn_from_centers(
    centers: Any,
    *,
    params: Any = None,
    inertia: float | None = None,
    n_iter: int | None = None,
    labels: Any = None,
    n_features_in: int | None = None,
    dtype: Any = None,
    feature_names: Any = None,
) -> Any:
    """A fitted ``sklearn.cluster.KMeans`` that predicts with ``centers``; nothing is refit.

    The one place models are hand-built; every path that cannot use a library's own converter
    (dask-ml, the ``dask`` backend, old cuML, a model rebuilt from the registry's files) comes
    here.

    Args:
        centers: ``(k, d)`` centroids (NumPy, CuPy, Dask, pandas...).
        params: hyperparameters: a mapping, a pydantic model or an estimator (``get_params``);
            unknown keys are ignored, ``init`` values scikit-learn lacks (``"k-means||"``,
            cuML's ``"scalable-k-means++"``) become ``"k-means++"``.
        inertia: training inertia (``inertia_``; left unset when None).
        n_iter: iterations run (``n_iter_``; left unset when None).
        labels: training labels, if cheaply available on the host (``labels_``).
        n_features_in: ``n_features_in_`` (default: the centers' width).
        dtype: dtype of ``cluster_centers_``; default: the centers' own float dtype (float64
            for other dtypes).  scikit-learn's ``predict`` needs rows of the same dtype as the
            centers (its Cython kernels take one dtype).
        feature_names: the training columns' names (``feature_names_in_``), or None: the
            model then predicts unnamed rows only, as one fitted on a NumPy array.

    Raises:
        ValueError: ``centers`` is not 2-D, ``params`` name another ``n_clusters``, or
            ``feature_names`` has another length than the centers' width.
    """
    from sklearn.cluster import KMeans

    centers = to_numpy(centers)
    if dtype is None:
        dtype = centers.dtype if centers.dtype in (np.float32, np.float64) else np.float64
    centers = np.array(centers, dtype=dtype, order="C")  # a copy: never shares the source's memory
    if centers.ndim != 2:
        raise ValueError(f"centers must be 2-D (k, d), got shape {centers.shape}")
    k, d = centers.shape
    given = _params_dict(params)
    if given.get("n_clusters") is not None and int(given["n_clusters"]) != k:
        raise ValueError(f"params say n_clusters={given['n_clusters']} but centers has {k} rows")
    kwargs = {key: given[key] for key in _COMMON_PARAMS if key in given and given[key] is not None}
    kwargs["n_clusters"] = k
    kwargs["init"] = _sklearn_init(given.get("init"), (k, d))
    if not isinstance(kwargs.get("n_init", "auto"), (int, np.integer)):
        kwargs["n_init"] = "auto"
    if not isinstance(kwargs.get("random_state"), (int, np.integer, type(None))):
        kwargs.pop("random_state")  # e.g. a RandomState / cuML seed object
    model = KMeans(**kwargs)
    model.cluster_centers_ = centers
    model.n_features_in_ = int(n_features_in if n_features_in is not None else d)
    if inertia is not None:
        model.inertia_ = float(inertia)
    if n_iter is not None:
        model.n_iter_ = int(n_iter)
    if labels is not None:
        model.labels_ = to_numpy(labels)
    # predict and get_feature_names_out read private attributes that only fit sets.
    _compat.sklearn_set_fit_privates(model, k)
    return with_feature_names(model, feature_names) if feature_names is not None else model


def with_feature_names(model: Any, feature_names: Any) -> Any:
    """A shallow copy of a scikit-learn ``model`` that knows its input columns' names.

    ``feature_names_in_`` is what ``fit`` sets on a model fitted on a DataFrame: with it,
    predicting a DataFrame checks the columns by name (and stays silent) instead of warning
    ``X has feature names, but KMeans was fitted without feature names``; rows without names
    then need :func:`predict_labels`, which names them.  Twins are built from centres, never
    fitted on a frame, so the names are set here.

    Raises:
        ValueError: the names are not as many as the centres' columns.
    """
    names = np.asarray([str(n) for n in feature_names], dtype=object)
    width = int(np.asarray(centers_of(model)).shape[1])
    if names.ndim != 1 or len(names) != width:
        raise ValueError(f"{len(names)} feature names for a model of {width} features")
    if cast_dtype(model) is not None:  # the names go to the cast step, the first one
        return with_cast(with_feature_names(_split_cast(model)[0], names))
    inner, shift = split_centered(model)
    if shift is not None:  # the centring step checks the names; the k-means sees its output
        out = centered_model(inner, shift)
        centre = out.steps[0][1]
        centre.feature_names_in_ = names
        return out
    model = copy.copy(model)
    model.feature_names_in_ = names
    model.n_features_in_ = width
    return model


def _cuml_from_centers(
    centers: Any, *, params: Any = None, inertia: Any = None, n_iter: Any = None
) -> Any:
    """A fitted ``cuml.KMeans`` from centroids, for cuML < 25.02 (no ``from_sklearn``).

    Fits on the centroids themselves with ``init=centroids``: each centroid is its own cluster,
    so one Lloyd step returns them unchanged; the hyperparameters are restored afterwards.
    """
    import cuml

    centers = np.ascontiguousarray(to_numpy(centers))
    given = _params_dict(params)
    model = cuml.KMeans(
        n_clusters=int(centers.shape[0]), init=centers, n_init=1, max_iter=1, output_type="numpy"
    )
    model.fit(centers)
    restore = {k: given[k] for k in ("n_init", "max_iter", "tol", "random_state") if k in given}
    init = given.get("init", "scalable-k-means++")
    restore["init"] = init if isinstance(init, str) else centers
    model.set_params(**restore)
    if inertia is not None:
        model.inertia_ = float(inertia)
    if n_iter is not None:
        model.n_iter_ = int(n_iter)
    return model


# -- conversions ------------------------------------------------------------------------------
def _identity(model: Any) -> Any:
    return model


def _daskml_to_sklearn(model: Any) -> Any:
    # labels_ is a lazy Dask array as long as the data: dropped, not computed.
    return sklearn_from_centers(
        model.cluster_centers_,
        params=model,
        inertia=model.inertia_,
        n_iter=model.n_iter_,
        n_features_in=getattr(model, "n_features_in_", None),
    )


def _dask_kmeans_to_sklearn(model: Any) -> Any:
    # Attributes only: the model's package (and Dask) need not be imported to convert it.
    labels = getattr(model, "labels_", None)
    return sklearn_from_centers(
        model.cluster_centers_,
        params=model,
        inertia=getattr(model, "inertia_", None),
        n_iter=getattr(model, "n_iter_", None),
        # NumPy labels (NumPy input) are kept; lazy Dask ones refer to data on the cluster.
        labels=labels if isinstance(labels, np.ndarray) else None,
        n_features_in=getattr(model, "n_features_in_", None),
    )


def _cuml_to_sklearn(model: Any) -> Any:
    if hasattr(model, "as_sklearn"):
        return model.as_sklearn()
    # cuML < 25.02 has no interop API: hand-build from what predict needs.
    return sklearn_from_centers(
        model.cluster_centers_,
        params=model,
        inertia=getattr(model, "inertia_", None),
        n_iter=getattr(model, "n_iter_", None),
        labels=getattr(model, "labels_", None),
        n_features_in=getattr(model, "n_features_in_", None),
    )


def _cuml_mg_to_sklearn(model: Any) -> Any:
    sk = _cuml_to_sklearn(model)
    # A KMeansMG holds worker 0's labels only; a scikit-learn labels_ must cover all rows.
    if hasattr(sk, "labels_"):
        del sk.labels_
    return sk


def _cuml_dask_to_sklearn(model: Any) -> Any:
    sk = _cuml_mg_to_sklearn(model.get_combined_model())
    sk.inertia_ = float(model.inertia_)  # the wrapper's inertia_ is the global one
    return sk


def _sklearn_to_cuml(model: Any) -> Any:
    import cuml

    if not hasattr(cuml.KMeans, "from_sklearn"):  # cuML < 25.02
        return _cuml_from_centers(
            model.cluster_centers_,
            params=model,
            inertia=getattr(model, "inertia_", None),
            n_iter=getattr(model, "n_iter_", None),
        )
    if not all(hasattr(model, a) for a in ("labels_", "inertia_", "n_iter_")):
        # from_sklearn copies these; converted models (dask-ml, multi-GPU) may lack them.
        model = copy.copy(model)
        model.labels_ = getattr(model, "labels_", np.empty(0, dtype=np.int32))
        model.inertia_ = getattr(model, "inertia_", float("nan"))
        model.n_iter_ = getattr(model, "n_iter_", 0)
    return cuml.KMeans.from_sklearn(model)


def without_training_labels(model: Any) -> Any:
    """A shallow copy of ``model`` without ``labels_``.

    A registered model predicts from its centres; the labels of the rows it was trained on
    are not part of it (a scikit-learn twin carried 4 bytes per training row, 4 MB at 1M
    rows, and a multi-GPU model's combined copy held worker 0's rows only).
    """
    if cast_dtype(model) is not None:
        rest = _split_cast(model)[0]
        stripped = without_training_labels(rest)
        return model if stripped is rest else with_cast(stripped)
    inner, shift = split_centered(model)
    if shift is not None:
        stripped = without_training_labels(inner)
        if stripped is inner:
            return model
        out = copy.copy(model)
        out.steps = [model.steps[0], (KMEANS_STEP, stripped)]
        return out
    if not hasattr(model, "labels_"):
        return model
    model = copy.copy(model)
    with contextlib.suppress(AttributeError):
        del model.labels_
    return model


def combined_to_single(kmeans_mg: Any) -> Any:
    """A plain single-GPU ``cuml.KMeans`` equal to a multi-GPU ``KMeansMG``.

    ``KMeansMG.__init__`` needs a comms ``handle``, so it can be neither cloned nor used apart
    from its cluster; ``cuml.KMeans.from_sklearn(mg.as_sklearn())`` gives a free-standing model.
    Its ``labels_`` is empty (the ``KMeansMG`` holds worker 0's rows only) and its
    ``inertia_`` is worker 0's; :func:`_cuml_dask_to_cuml` sets the global inertia.
    """
    import cuml

    if hasattr(kmeans_mg, "as_sklearn") and hasattr(cuml.KMeans, "from_sklearn"):
        sk = kmeans_mg.as_sklearn()
        # Worker 0's labels must not pass for the model's: from_sklearn needs the attribute,
        # so it gets an empty one.
        sk.labels_ = np.empty(0, dtype=np.int32)
        return cuml.KMeans.from_sklearn(sk)
    # cuML < 25.02
    return _cuml_from_centers(
        kmeans_mg.cluster_centers_,
        params=kmeans_mg,
        inertia=getattr(kmeans_mg, "inertia_", None),
        n_iter=getattr(kmeans_mg, "n_iter_", None),
    )


def _cuml_dask_to_cuml(wrapper: Any) -> Any:
    """A plain single-GPU ``cuml.KMeans`` equal to a fitted ``cuml.dask.cluster.KMeans``.

    Built from ``wrapper.get_combined_model()`` by :func:`combined_to_single`; ``inertia_`` is
    set to the wrapper's global value, ``labels_`` is empty.
    """
    local = combined_to_single(wrapper.get_combined_model())
    local.inertia_ = float(wrapper.inertia_)
    return local


#: ``(source class key, target) -> converter``; targets are "sklearn" and "cuml".
CONVERSIONS: dict[tuple[str, str], Converter] = {
    (_SKLEARN, "sklearn"): _identity,
    (_DASK_ML, "sklearn"): _daskml_to_sklearn,
    (_DASK_KMEANS, "sklearn"): _dask_kmeans_to_sklearn,
    (_CUML, "sklearn"): _cuml_to_sklearn,
    (_CUML_MG, "sklearn"): _cuml_mg_to_sklearn,
    (_CUML_DASK, "sklearn"): _cuml_dask_to_sklearn,
    (_SKLEARN, "cuml"): _sklearn_to_cuml,
    (_CUML, "cuml"): _identity,
    (_CUML_MG, "cuml"): combined_to_single,
    (_CUML_DASK, "cuml"): _cuml_dask_to_cuml,
    (_PIPELINE, "sklearn"): _centered_to_sklearn,
}


def register_conversion(source_key: str, target: str, fn: Converter) -> None:
    """Add or replace an entry of :data:`CONVERSIONS`.

    Args:
        source_key: the source class as ``"module.ClassName"`` (see :func:`class_key`).
        target: ``"sklearn"`` or ``"cuml"`` (or a new target name).
        fn: takes a fitted source model, returns the converted model; import what it needs
            inside, so that registering never imports a GPU library.
    """
    if "." not in source_key:
        raise ModelError(
            f"conversion source {source_key!r} is not a fully-qualified class name",
            "pass 'package.module.ClassName'",
        )
    CONVERSIONS[(source_key, target)] = fn


def same_public_class(cls: type, key: str) -> bool:
    """``cls`` is ``key``'s class moved to another private module of the same package."""
    module, _, name = key.rpartition(".")
    package = module.rpartition(".")[0] or module
    return cls.__name__ == name and (
        cls.__module__ == package or cls.__module__.startswith(package + ".")
    )


def _find(model: Any, target: str) -> Converter | None:
    mro = type(model).__mro__
    for cls in mro:
        fn = CONVERSIONS.get((class_key(cls), target))
        if fn is not None:
            return fn
    # Libraries move classes between private modules; match on name and package too.
    for cls in mro:
        for (key, tgt), fn in CONVERSIONS.items():
            if tgt == target and same_public_class(cls, key):
                return fn
    return None


def _unsupported(model: Any, target: str) -> ModelError:
    known = sorted({key for key, tgt in CONVERSIONS if tgt == "sklearn" or tgt == target})
    return ModelError(
        f"no conversion from {class_key(model)} to {target}",
        f"pass a fitted model of a known type: {', '.join(known)}",
    )


def convert(model: Any, target: str) -> Any:
    """Convert ``model`` to ``target`` ("sklearn" or "cuml") through :data:`CONVERSIONS`.

    Raises:
        ModelError: no conversion is registered for the model's class.
    """
    fn = _find(model, target)
    if fn is None:
        raise _unsupported(model, target)
    return fn(model)


def to_sklearn(model: Any) -> Any:
    """The ``sklearn.cluster.KMeans`` that predicts like ``model`` (no refit).

    Raises:
        ModelError: the model's type has no conversion.
    """
    return convert(model, "sklearn")


def to_cuml(model: Any) -> Any:
    """A single-GPU ``cuml.KMeans`` that predicts like ``model``.

    Models with no direct entry (dask-ml, the ``dask`` backend) go through scikit-learn.

    Raises:
        ModelError: the model's type has no conversion.
    """
    fn = _find(model, "cuml")
    if fn is not None:
        return fn(model)
    if _find(model, "sklearn") is None:
        raise _unsupported(model, "cuml")
    return _sklearn_to_cuml(to_sklearn(model))


# -- equivalence ------------------------------------------------------------------------------
def input_dtype(model: Any, default: Any = np.float32) -> np.dtype:
    """The float dtype ``model`` predicts: its centers' (float32 or float64), else ``default``.

    scikit-learn's ``predict`` refuses rows of another float width than ``cluster_centers_``
    (the ``dask`` backend's twin has float64 centers, models fitted on our data float32).
    """
    model, shift = split_centered(model)  # a twin's cast step predicts what its k-means does
    if shift is not None:
        return np.dtype(np.float64)  # raw rows, subtracted in float64 (see centered_model)
    dtype = getattr(getattr(model, "cluster_centers_", None), "dtype", None)
    if dtype is not None and np.dtype(dtype) in (np.float32, np.float64):
        return np.dtype(dtype)
    return np.dtype(default)


def predict_labels(model: Any, X: Any) -> np.ndarray:
    """``model``'s labels for host rows ``X`` (NumPy-like, unnamed columns), as NumPy.

    Rows are cast to the float width of the model's centres.  A scikit-learn model that knows
    its columns' names (a registered twin) gets them as a DataFrame under those names, so it
    neither warns ``X does not have valid feature names`` nor checks anything else than it
    would for an array.
    """
    X = to_numpy(X)
    inner, shift = split_centered(model)
    if shift is not None:
        # Centred in float64 here (not by the Pipeline: it keeps float32 rows float32), then in
        # the width of the inner model's centres.
        X = np.asarray(X, dtype=np.float64) - shift
        model = inner
    X = np.ascontiguousarray(X, dtype=input_dtype(model, X.dtype if X.dtype.kind == "f" else np.float32))
    names = getattr(model, "feature_names_in_", None)
    if names is not None and X.ndim == 2 and X.shape[1] == len(names) and class_key(model).startswith("sklearn."):
        import pandas as pd

        X = pd.DataFrame(X, columns=list(names), copy=False)
    return to_numpy(model.predict(X)).ravel()


def _predict_labels(model: Any, X: np.ndarray) -> np.ndarray:
    return predict_labels(model, X)


def check_equivalent(a: Any, b: Any, X_sample: Any) -> float:
    """Fraction of rows of ``X_sample`` on which ``a`` and ``b`` predict the same label.

    Args:
        a: a fitted model that predicts on host data (scikit-learn, dask-ml, the ``dask``
            backend's model, single-GPU cuML).
        b: another such model.
        X_sample: ``(n, d)`` rows (NumPy, pandas, Dask or CuPy); each model gets them in the
            float dtype of its own centers.

    Returns:
        The fraction in ``[0, 1]``; label ids must match exactly, so a permutation of the
        clusters counts as a mismatch.

    Raises:
        ModelError: the sample is empty or not 2-D, or the models return different lengths.
    """
    X = to_numpy(X_sample)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ModelError(
            f"equivalence sample must be a non-empty 2-D array, got shape {X.shape}",
            "pass some rows of the training data",
        )
    la = _predict_labels(a, X)
    lb = _predict_labels(b, X)
    if la.shape != lb.shape:
        raise ModelError(
            f"{class_key(a)} predicted {la.shape[0]} labels but {class_key(b)} {lb.shape[0]}",
            "pass both models the same sample",
        )
    return float(np.mean(la == lb))


def assert_equivalent(a: Any, b: Any, X_sample: Any) -> None:
    """Raise :class:`ModelError` unless ``a`` and ``b`` agree on every row of ``X_sample``."""
    agree = check_equivalent(a, b, X_sample)
    if agree < 1.0:
        raise ModelError(
            f"{class_key(a)} and {class_key(b)} predict different labels on "
            f"{1.0 - agree:.2%} of {len(to_numpy(X_sample))} sample rows",
            "convert with toolkit.convert.to_sklearn/to_cuml instead of refitting",
        )
