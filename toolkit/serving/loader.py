"""Serving: from a model URI to a local or a distributed predictor.

``load_predictor("models:/blobs-kmeans-sklearn@champion")`` gives a local predictor
(scikit-learn on CPU; cuML where the model is native cuML and a GPU is present).
``load_predictor(uri, client=client)`` gives a distributed one: for CPU models the model is
installed on every worker once (a worker plugin) and each partition is predicted where it lives;
for a registered single-GPU cuML model a ``cuml.dask.cluster.KMeans`` is rebuilt around it.

Every URI is resolved to a LoggedModel whose files are copied into a private folder; its
signature is verified with the trusted keys and every file checked against the signed manifest
before any of them is read (:func:`toolkit.registry.integrity.fetch_verified`); models are
then read by :func:`toolkit.registry.flavor.load_verified` (the native flavor rebuilt from plain
files, the twin through skops with the project's trusted types), never by MLflow's loaders.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from toolkit._compat import dask_meta
from toolkit.cluster import block_rows, n_workers
from toolkit.convert import predict_labels, raw_dtype, split_centered
from toolkit.errors import DataError, ModelError, option_hint
from toolkit.registry.integrity import VerifiedModel

__all__ = [
    "CumlDistributedPredictor",
    "DistributedPredictor",
    "LocalPredictor",
    "ModelSource",
    "aligned_labels",
    "feature_names_of",
    "load_predictor",
    "require_device",
    "resolve",
]


@dataclass
class ModelSource:
    """A resolved model URI: a private copy of its files, checked against the registry.

    ``local_path`` is that copy (deleted when the ModelSource is garbage-collected);
    ``flavors`` are read from its (checked) MLmodel file.
    """

    uri: str
    local_path: str
    flavors: dict[str, Any]
    name: str | None = None
    version: str | None = None
    tags: dict[str, str] | None = None
    model_id: str | None = None
    verified: VerifiedModel | None = field(default=None, repr=False)

    @property
    def is_native(self) -> bool:
        return "kmeans_native" in self.flavors

    @property
    def device(self) -> str:
        return self.flavors.get("kmeans_native", {}).get("device", "cpu")

    def twin_hint(self) -> str | None:
        tags = self.tags or {}
        if tags.get("twin.name") and tags.get("twin.version"):
            return f"its scikit-learn twin models:/{tags['twin.name']}/{tags['twin.version']}"
        if self.name:
            return f"its scikit-learn twin (registered model '{self.name}-sklearn' or the run's sklearn_model)"
        return None


def resolve(uri: str) -> ModelSource:
    """Download ``uri`` (models:/, runs:/, or a local copy), check its files, read its flavors.

    Raises:
        ModelError: the URI resolves to nothing, to a model without recorded checksums (e.g.
            one registered by an older kmeans-lifecycle), or its files differ from the record.
    """
    from mlflow.models import Model

    from toolkit.registry.integrity import fetch_verified

    verified = fetch_verified(uri)
    try:
        flavors = Model.load(os.path.join(verified.local_path, "MLmodel")).flavors
    except Exception:
        verified.cleanup()
        raise
    src = ModelSource(uri, verified.local_path, flavors, verified.name, verified.version,
                      verified.version_tags, verified.model_id, verified)
    weakref.finalize(src, verified.cleanup)
    return src


def _load_model(src: ModelSource, allow_pickle: bool | None = None) -> Any:
    """The model of ``src``: its files are checked again, then read by the signed format."""
    from toolkit.registry.flavor import load_verified

    if src.verified is None:
        raise ModelError(f"{src.uri!r} was not resolved through the registry's checksums",
                         "resolve it with toolkit.serving.resolve")
    return load_verified(src.verified, src.twin_hint(), allow_pickle=allow_pickle)


def _check_features(model: Any, n_features: int, where: str) -> None:
    expected = getattr(model, "n_features_in_", None)
    if expected is None and getattr(model, "cluster_centers_", None) is not None:
        expected = np.asarray(model.cluster_centers_).shape[1]
    if expected is not None and int(expected) != int(n_features):
        raise DataError(f"{where} has {n_features} feature column(s) but the model expects {expected}",
                        f"select the model's feature columns (data.columns / {option_hint('columns')})")


def feature_names_of(model: Any, source: ModelSource | None = None) -> list[str] | None:
    """The columns ``model`` was trained on, in order, or None where it did not record them
    (:func:`toolkit.registry.flavor.trained_columns`, with ``source``'s native flavor)."""
    from toolkit.registry.flavor import FLAVOR_NAME, trained_columns

    return trained_columns(model, source.flavors.get(FLAVOR_NAME) if source is not None else None)


def _in_model_order(frame: Any, names: list[str] | None) -> Any:
    """A frame (pandas or Dask) with named columns, put in the model's order; others as they are.

    Raises:
        DataError: the frame's columns are named and are not exactly the model's (any order).
    """
    from toolkit.registry.flavor import columns_in_order

    columns = list(frame.columns)
    try:
        order = columns_in_order(columns, names)
    except ValueError as said:
        raise DataError(f"input has {said}; the model was trained on the columns {', '.join(names or ())}",
                        f"rename the columns, or pick the features in the model's order ({option_hint('columns')})"
                        ) from None
    return frame[order] if order is not None and order != columns else frame


def _numeric_frame(frame: Any, where: str) -> None:
    import pandas as pd

    bad = [str(c) for c, t in frame.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if bad:
        raise DataError(f"{where} has non-numeric column(s): {', '.join(bad)}",
                        f"select numeric feature columns ({option_hint('columns')})")


class LocalPredictor:
    """Predicts in this process (scikit-learn, or cuML on a GPU)."""

    def __init__(self, model: Any, source: ModelSource | None = None) -> None:
        self.model = model
        self.source = source
        #: The columns the model was trained on (a named frame is put in this order), or None.
        self.feature_names = feature_names_of(model, source)

    def predict(self, data: Any) -> np.ndarray:
        if hasattr(data, "dtypes"):
            data = _in_model_order(data, self.feature_names)
            _numeric_frame(data, "input")
            data = data.to_numpy()
        # The values every predictor sees, whatever the model: float32, or float64 for a model of
        # centred data (raw rows far from 0, which float32 would collapse; see toolkit.data).
        X = np.asarray(data, dtype=raw_dtype(self.model))
        if X.ndim != 2:
            raise DataError(f"input must be 2-D (rows x features), got shape {X.shape}", "reshape it")
        _check_features(self.model, X.shape[1], "input")
        # predict_labels names the rows for a twin that knows its columns (no sklearn warning).
        return predict_labels(self.model, X).astype(np.int32)


class _ModelOnWorkers(WorkerPlugin):
    """Worker plugin holding the model: the scheduler sends it to each worker once.

    Not ``client.scatter(model, broadcast=True)``: the Active Memory Manager (on by default)
    drops the extra replicas of a broadcast key within seconds, so later predictions fetched
    the model from another worker again (dask/dask#11148).  A plugin stays on its worker, also
    reaches workers that join later, and tasks carry only its name.
    """

    def __init__(self, name: str, model: Any) -> None:
        self.name = name
        self.model = model
        self.worker_address: str | None = None

    def setup(self, worker: Any) -> None:
        self.worker_address = worker.address


def _worker_model(plugin_name: str) -> Any:
    from distributed import get_worker

    try:
        return get_worker().plugins[plugin_name].model
    except (KeyError, ValueError):
        raise ModelError(f"the model ({plugin_name}) is not installed on this worker",
                         "compute the predictions while the DistributedPredictor is open") from None


def _predict_block(block: np.ndarray, plugin_name: str) -> np.ndarray:
    model = _worker_model(plugin_name)
    X = np.asarray(block, dtype=raw_dtype(model))
    return predict_labels(model, X).astype(np.int32)


def _predict_frame(frame: Any, plugin_name: str) -> Any:
    import pandas as pd

    if len(frame):
        model = _worker_model(plugin_name)
        labels = predict_labels(model, frame.to_numpy(dtype=raw_dtype(model)))
    else:
        labels = np.empty(0, np.int32)
    return pd.Series(np.asarray(labels, dtype=np.int32), index=frame.index, name="label")


class DistributedPredictor:
    """Predicts partition by partition on a Dask cluster; the model is on every worker once."""

    def __init__(self, model: Any, client: Any, source: ModelSource | None = None) -> None:
        import uuid

        self.client = client
        self.model = model
        self.source = source
        #: The columns the model was trained on (a named frame is put in this order), or None.
        self.feature_names = feature_names_of(model, source)
        self.plugin_name: str | None = f"kmeans-model-{uuid.uuid4().hex}"
        client.register_plugin(_ModelOnWorkers(self.plugin_name, model), name=self.plugin_name)

    def close(self) -> None:
        """Remove the model from the workers (lazy results can no longer be computed)."""
        if self.plugin_name is not None and self.client.status == "running":
            self.client.unregister_worker_plugin(self.plugin_name)
        self.plugin_name = None

    def __enter__(self) -> DistributedPredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def predict(self, data: Any) -> Any:
        """Lazy labels: a Dask array for a Dask array, a Dask Series (same index) for a DataFrame."""
        import dask.array as da
        import dask.dataframe as dd

        if self.plugin_name is None:
            raise ModelError("this DistributedPredictor is closed", "load a new one with load_predictor")
        if isinstance(data, dd.DataFrame):
            data = _in_model_order(data, self.feature_names)
            _numeric_frame(dask_meta(data), "input")
            _check_features(self.model, len(data.columns), "input")
            import pandas as pd

            meta = pd.Series(np.empty(0, np.int32), name="label")
            return data.map_partitions(_predict_frame, self.plugin_name, meta=meta)
        if isinstance(data, np.ndarray):
            rows = block_rows(len(data), n_workers(self.client), len(data))
            data = da.from_array(data, chunks=(rows, data.shape[1]))
        if not isinstance(data, da.Array) or data.ndim != 2:
            raise DataError("distributed input must be a 2-D Dask array or a Dask DataFrame",
                            "wrap it with dask.array.from_array or dask.dataframe.from_pandas")
        _check_features(self.model, data.shape[1], "input")
        if data.chunks[1] != (data.shape[1],):
            data = data.rechunk({1: -1})
        return data.map_blocks(_predict_block, self.plugin_name, dtype=np.int32, drop_axis=1)


def _is_cudf(meta: Any) -> bool:
    """Whether a Dask collection's meta is a cuDF object (without importing cuDF)."""
    return type(meta).__module__.split(".")[0] == "cudf"


def _labels_on(part: Any, labels: Any) -> Any:
    import pandas as pd

    values = labels.to_numpy() if hasattr(labels, "to_numpy") else np.asarray(labels)
    return pd.Series(np.asarray(values, dtype=np.int32), index=part.index, name="label")


def aligned_labels(frame: Any, labels: Any) -> Any:
    """``labels`` (one Series partition per partition of ``frame``, any index) as a pandas-backed
    Dask Series on ``frame``'s own index, so ``frame.assign(label=...)`` lines up row for row.

    cuML's distributed ``predict`` returns each partition's labels with an index of its own; a
    caller's frame keeps whatever index it was read with.
    """
    import dask.dataframe as dd
    import pandas as pd

    if frame.npartitions != labels.npartitions:
        raise DataError(f"{labels.npartitions} partitions of labels for {frame.npartitions} of data",
                        "predict on the frame as it is partitioned")
    meta = pd.Series(np.empty(0, np.int32), name="label", index=dask_meta(frame).index)
    return dd.map_partitions(_labels_on, frame, labels, meta=meta, align_dataframes=False)


class CumlDistributedPredictor:
    """A registered single-GPU cuML model served on a Dask-CUDA cluster: rebuilt as a
    ``cuml.dask.cluster.KMeans`` that predicts partition by partition on every GPU worker.

    Takes what batch scoring reads (a pandas-backed Dask DataFrame: moved to the GPUs with
    ``to_backend("cudf")``, labels brought back on the input's own index) or a dask_cudf
    DataFrame (labels stay a dask_cudf Series).  cuML's distributed predict reads ``X.dtype``
    on anything but a dask_cudf frame, so a pandas-backed one must not reach it.
    """

    def __init__(self, model: Any, client: Any, source: ModelSource | None = None) -> None:
        from toolkit.backends.cuml_dask import distributed_from_single

        self.model = model
        self.source = source
        self.client = client
        #: The columns the model was trained on (a named frame is put in this order), or None.
        self.feature_names = feature_names_of(model, source)
        self.dist = distributed_from_single(model, client, datatype="cudf")

    def close(self) -> None:
        """Nothing is installed on the workers beyond the predictions' own tasks."""

    def __enter__(self) -> CumlDistributedPredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def predict(self, data: Any) -> Any:
        import dask.dataframe as dd

        if not isinstance(data, dd.DataFrame):
            raise DataError("a GPU model predicts Dask DataFrames (pandas- or cuDF-backed)",
                            "wrap arrays with dask.dataframe.from_dask_array or dask_cudf")
        data = _in_model_order(data, self.feature_names)
        _check_features(self.model, len(data.columns), "input")
        if _is_cudf(dask_meta(data)):
            return self.dist.predict(data)
        _numeric_frame(dask_meta(data), "input")
        on_gpu = data.astype(np.float32).to_backend("cudf")  # pragma: no cover - needs a GPU
        return aligned_labels(data, self.dist.predict(on_gpu).to_backend("pandas"))  # pragma: no cover


def load_predictor(uri: str | ModelSource, client: Any = None, scheduler_address: str | None = None, *,
                   allow_pickle: bool | None = None) -> Any:
    """A predictor for ``uri``: local by default, distributed given a client or scheduler address.

    The model's signature is verified with the trusted keys before any file is read; a signed
    pickle model loads only with ``allow_pickle`` (default ``KMEANS_LIFECYCLE_ALLOW_PICKLE``).

    ``uri`` may also be the :class:`ModelSource` :func:`resolve` returned (the files are then
    not fetched again).  A GPU model on a machine without a usable GPU is refused in one line,
    naming its scikit-learn twin, before anything else is started.
    """
    src = uri if isinstance(uri, ModelSource) else resolve(uri)
    require_device(src)
    model = _load_model(src, allow_pickle)
    if client is None and scheduler_address:
        from distributed import Client

        from toolkit.workers import check_workers

        client = Client(scheduler_address, timeout="10s")
        # The workers run the predictor's code: the same check as every cluster the toolkit joins.
        check_workers(client, gpu=src.device == "gpu")
    if client is None:
        return LocalPredictor(model, src)
    if src.device == "gpu" and split_centered(model)[1] is None:  # pragma: no cover - needs a GPU
        return CumlDistributedPredictor(model, client, src)
    # A model of centred data (a GPU one too) centres each partition's float64 rows first, on the
    # workers, through predict_labels.
    return DistributedPredictor(model, client, src)


def require_device(src: ModelSource) -> None:
    """Raise :class:`ModelError` when ``src`` is a GPU model and no usable GPU (with cuML) is here."""
    if src.device != "gpu":
        return
    from toolkit import env

    problem = env.gpu_problem(("cuml", "cupy"))
    if problem is not None:
        hint = src.twin_hint() or "its scikit-learn twin"
        raise ModelError(f"{src.uri!r} is a cuML model and needs a CUDA GPU, but {problem}", f"serve {hint} instead")
