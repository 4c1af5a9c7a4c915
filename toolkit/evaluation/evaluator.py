"""``mlflow.models.evaluate`` for k-means models: the ``clustering`` evaluator plugin.

Registered through MLflow's ``mlflow.model_evaluator`` entry point (see ``pyproject.toml``), so
that once the package is installed::

    import mlflow
    from toolkit.evaluation import verified_pyfunc

    result = mlflow.models.evaluate(
        verified_pyfunc("models:/blobs-kmeans-sklearn@champion"), X, targets=y,
        model_type="clustering", evaluators=["clustering"],
        evaluator_config={"clustering": {"baseline_model": "models:/blobs-kmeans-sklearn@challenger"}},
    )

``model_type="clustering"`` is accepted by ``mlflow.models.evaluate``: it checks only
``classifier``/``regressor`` (targets required) and ``None`` (extra metrics required), and hands
any other type to the evaluators whose ``can_evaluate`` accepts it.  A ``models:/...`` URI may be
passed instead of :func:`verified_pyfunc` for a native model (its pyfunc loader is the toolkit's
verified one); for a scikit-learn twin MLflow's own sklearn loader would read the skops file
before any checksum is checked, which MLflow 3 refuses by default
(``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``) and which should stay refused: use
:func:`verified_pyfunc`.

Whatever MLflow loaded, the evaluator scores the model **it** loads through the toolkit's
verified loader (:func:`toolkit.serving.load_predictor`: every file checked against the
store's sha256 manifest before one is read), found by the ``model_id`` of the LoggedModel; a
sample of rows must get the same labels from both, or the evaluation is refused.  The scores
are :func:`toolkit.stats.scores.score_clustering`'s, the computation promotion gates on.

Configuration (``evaluator_config``; all optional):

* ``baseline_model``: a model URI; adds ``churn``, the share of rows whose label differs.
* ``churn_on``: ``"data"`` (default: the evaluation rows) or ``"reference"`` (the baseline's
  stored reference sample: the figure ``promote`` gates on when the baseline is the champion).
* ``seed`` (0) and ``silhouette_sample`` (10,000): the silhouette's seeded sample.
* ``metric_prefix``: prepended to every metric name.
* ``log_figures`` (True): the cluster-size chart and the centroid plot.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.models import Model
from mlflow.models.evaluation import EvaluationResult, ModelEvaluator
from mlflow.models.evaluation.artifacts import CsvEvaluationArtifact, ImageEvaluationArtifact, JsonEvaluationArtifact
from mlflow.pyfunc import PyFuncModel
from mlflow.tracking.artifact_utils import get_artifact_uri

from toolkit._compat import mlflow_load_artifact_content, mlflow_pyfunc_impl
from toolkit.convert import centers_of, input_dtype, predict_labels, raw_dtype, to_numpy
from toolkit.errors import DataError, ModelError
from toolkit.evaluation import figures as figs
from toolkit.registry import stable
from toolkit.serving import load_predictor, resolve
from toolkit.stats.scores import ClusteringScores, distance_quantiles, score_clustering

__all__ = ["EVALUATOR_NAME", "MODEL_TYPE", "ClusteringEvaluator", "verified_pyfunc"]

#: The evaluator's name (``evaluators=["clustering"]``) and the model type it evaluates.
EVALUATOR_NAME = "clustering"
MODEL_TYPE = "clustering"

_CONFIG_KEYS = frozenset({"baseline_model", "churn_on", "seed", "silhouette_sample", "metric_prefix",
                          "log_figures", "col_mapping"})
# One metric per cluster size is readable up to this k; beyond it the sizes are in the artifacts.
_MAX_SIZE_METRICS = 100
# Rows on which the model MLflow loaded must agree with the verified one.
_CROSS_CHECK_ROWS = 1_000
_ARTIFACT_DIR = "clustering"


class _VerifiedPyFunc:
    """``mlflow.pyfunc`` face of a verified model: predicts like ``LocalPredictor`` (float32 rows)."""

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor

    def get_raw_model(self) -> Any:
        return self.predictor.model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        return self.predictor.predict(data)


def verified_pyfunc(uri: str) -> Any:
    """An ``mlflow.pyfunc.PyFuncModel`` of the toolkit model at ``uri``, loaded by the verified loader.

    Pass it to ``mlflow.models.evaluate`` (it carries the LoggedModel's ``model_id``, so MLflow
    attaches the metrics to that model) or use it anywhere a pyfunc model is expected.

    Raises:
        ModelError: the URI resolves to nothing, its files fail their integrity check, or it
            is a GPU model and this machine has no usable GPU.
    """
    src = resolve(uri)
    predictor = load_predictor(src)
    meta = Model.load(os.path.join(src.local_path, "MLmodel"))  # the checked copy's
    return PyFuncModel(model_meta=meta, model_impl=_VerifiedPyFunc(predictor), model_id=src.model_id)


def _model_id(model: Any, given: str | None) -> str:
    """The LoggedModel behind ``model``: MLflow's ``model_id`` and the pyfunc's must agree."""
    ids = {str(i) for i in (given, getattr(model, "model_id", None),
                            getattr(getattr(model, "metadata", None), "model_id", None)) if i}
    if len(ids) > 1:
        raise ModelError(f"the model to evaluate names several logged models ({', '.join(sorted(ids))})",
                         "pass the model's own URI and no other model_id (or active model)")
    if not ids:
        raise ModelError("the model to evaluate names no logged model (no model_id), so it cannot be "
                         "loaded through the registry's checksums",
                         "evaluate a model the toolkit logged: models:/name@alias or verified_pyfunc(uri)")
    return ids.pop()


def _features(dataset: Any, model: Any) -> np.ndarray:
    """The evaluation rows as the predictors see them: float32 values, in the model's float width."""
    data = dataset.features_data
    if isinstance(data, pd.DataFrame):
        bad = [str(c) for c, t in data.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
        if bad:
            raise DataError(f"the evaluation data has non-numeric column(s): {', '.join(bad)}",
                            "pass numeric feature columns only (feature_names=...)")
        data = data.to_numpy()
    X = np.asarray(data, dtype=raw_dtype(model))  # float64 for a model of centred data (toolkit.data)
    if X.ndim != 2 or X.shape[0] == 0:
        raise DataError(f"the evaluation data must be non-empty rows x features, got shape {X.shape}",
                        "pass a 2-D array or a DataFrame")
    d = np.asarray(centers_of(model)).shape[1]
    if X.shape[1] != d:
        raise DataError(f"the evaluation data has {X.shape[1]} feature column(s) but the model expects {d}",
                        "select the model's feature columns (feature_names=...)")
    return X.astype(input_dtype(model), copy=False)


def _cross_check(pyfunc: Any, dataset: Any, labels: np.ndarray, label: str) -> None:
    """Refuse when the model MLflow loaded labels a sample differently from the verified one."""
    if isinstance(mlflow_pyfunc_impl(pyfunc), _VerifiedPyFunc):
        return  # verified_pyfunc: it is the verified model
    n = min(_CROSS_CHECK_ROWS, len(labels))
    data = dataset.features_data
    sample = data.iloc[:n] if hasattr(data, "iloc") else np.asarray(data)[:n]
    schema = getattr(pyfunc, "metadata", None) and pyfunc.metadata.get_input_schema()
    names = schema.input_names() if schema is not None and schema.has_input_names() else None
    if isinstance(sample, np.ndarray) and names and len(names) == sample.shape[1]:
        # An array has no column names; the model's signature (x0, x1, ...) names them.
        sample = pd.DataFrame(sample, columns=names)
    with warnings.catch_warnings():
        # MLflow's sklearn wrapper hands the named frame to a KMeans fitted on an unnamed array.
        warnings.filterwarnings("ignore", message="X has feature names", category=UserWarning)
        got = np.asarray(to_numpy(pyfunc.predict(sample))).ravel()
    if got.shape != (n,) or not np.array_equal(got.astype(np.int64), labels[:n].astype(np.int64)):
        raise ModelError(f"the model MLflow loaded predicts other labels than {label} loaded through the "
                         "registry's checksums", "evaluate verified_pyfunc(uri) instead of the URI")


def _churn(uri: str, model: Any, X: np.ndarray, labels: np.ndarray, on: str) -> tuple[float, int]:
    """(churn, rows it was measured on) of ``model`` against the baseline model at ``uri``."""
    baseline, reference = stable.load_with_reference(uri)  # verified before any file is read
    if on == "reference":
        if reference is None:
            raise ModelError(f"baseline {uri!r} was registered without a reference sample",
                             "use churn_on='data' (the evaluation rows)")
        return stable.churn(baseline, model, reference), len(reference)
    base = predict_labels(baseline, X)  # names a twin's columns, casts to its centres' width
    return float(np.mean(base != labels)), len(X)


def _config(cfg: dict[str, Any] | None) -> dict[str, Any]:
    cfg = dict(cfg or {})
    unknown = set(cfg) - _CONFIG_KEYS
    if unknown:
        raise ModelError(f"unknown clustering evaluator setting(s): {', '.join(sorted(unknown))}",
                         f"use {', '.join(sorted(_CONFIG_KEYS - {'col_mapping'}))}")
    on = cfg.get("churn_on", "data")
    if on not in ("data", "reference"):
        raise ModelError(f"churn_on must be 'data' or 'reference', got {on!r}", "use churn_on='data'")
    return cfg


class ClusteringEvaluator(ModelEvaluator):
    """MLflow model evaluator for k-means models (``model_type="clustering"``).

    Metrics: ``inertia``, ``silhouette`` (seeded sample), ``davies_bouldin``,
    ``calinski_harabasz``, ``n_clusters_found``, ``n_rows``, ``cluster_size_<id>`` (k <= 100),
    with targets ``adjusted_rand`` and ``normalized_mutual_info``, with a baseline ``churn``.
    Artifacts (under ``clustering/`` of the run): ``cluster_sizes.png``, ``centroids.png``,
    ``distance_quantiles.csv`` and ``.json`` (per cluster: size, mean and quantiles of the
    row-to-centre distances).  Metrics are logged on the evaluation run, attached to the model's
    LoggedModel and to the evaluation dataset (MLflow logs the dataset as the run's input).
    """

    name = EVALUATOR_NAME

    @classmethod
    def can_evaluate(cls, *, model_type: str | None, evaluator_config: dict[str, Any] | None,
                     **kwargs: Any) -> bool:
        """True for ``model_type="clustering"`` only."""
        return model_type == MODEL_TYPE

    def evaluate(self, *, model_type: str | None, dataset: Any, run_id: str,
                 evaluator_config: dict[str, Any] | None, model: Any = None, extra_metrics: Any = None,
                 custom_artifacts: Any = None, predictions: Any = None, **kwargs: Any) -> EvaluationResult:
        """Score the verified model behind ``model`` on ``dataset`` and log it all to ``run_id``."""
        cfg = _config(evaluator_config)
        if model is None:
            raise ModelError("the clustering evaluator needs the model, not only its predictions",
                             "pass a model URI or verified_pyfunc(uri) as mlflow.models.evaluate's model")
        if extra_metrics or custom_artifacts:
            raise ModelError("the clustering evaluator takes no extra_metrics or custom_artifacts",
                             "compute them from result.metrics and the logged artifacts")
        model_id = _model_id(model, kwargs.get("model_id"))
        uri = f"models:/{model_id}"
        predictor = load_predictor(uri)  # checksums first; refuses a GPU model without a GPU
        verified = predictor.model
        X = _features(dataset, verified)
        y = np.asarray(dataset.labels_data).ravel() if dataset.has_targets else None
        seed = int(cfg.get("seed", 0))
        scores = score_clustering(verified, X, y, seed=seed,
                                  silhouette_sample=int(cfg.get("silhouette_sample", 10_000)),
                                  keep_distances=True)
        labels = np.asarray(to_numpy(scores.labels)).ravel()
        _cross_check(model, dataset, labels, f"logged model {model_id}")
        metrics = dict(scores.metrics)
        metrics["n_rows"] = float(len(X))
        if len(scores.sizes) <= _MAX_SIZE_METRICS:
            metrics.update({f"cluster_size_{i}": float(s) for i, s in enumerate(scores.sizes)})
        if cfg.get("baseline_model"):
            churn, rows = _churn(str(cfg["baseline_model"]), verified, X, labels, cfg.get("churn_on", "data"))
            metrics["churn"] = churn
            metrics["churn_rows"] = float(rows)
        prefix = str(cfg.get("metric_prefix", ""))
        metrics = {f"{prefix}{k}": float(v) for k, v in metrics.items()}
        artifacts = self._log_artifacts(run_id, scores, X, labels, seed, bool(cfg.get("log_figures", True)))
        self._log_metrics(run_id, metrics, model_id, dataset, attached_by_mlflow=kwargs.get("model_id") is not None)
        MlflowClient().set_tag(run_id, "evaluation.clustering.model_id", model_id)
        if cfg.get("baseline_model"):
            MlflowClient().set_tag(run_id, "evaluation.clustering.baseline_model", str(cfg["baseline_model"]))
        return EvaluationResult(metrics=metrics, artifacts=artifacts, run_id=run_id)

    @staticmethod
    def _log_metrics(run_id: str, metrics: dict[str, float], model_id: str, dataset: Any,
                     attached_by_mlflow: bool) -> None:
        """Log ``metrics`` on the run, linked to the LoggedModel and the evaluation dataset.

        When ``mlflow.models.evaluate`` knows the model's id (a ``models:/<id>`` or
        ``models:/name/version`` URI, or a pyfunc carrying it), it logs the returned metrics
        itself with ``model_id`` and ``dataset``; logging them here as well would record every
        metric twice.  For ``models:/name@alias`` it does not know the id, so they are logged here.
        """
        if attached_by_mlflow:
            return
        now = int(time.time() * 1000)
        MlflowClient().log_batch(run_id, metrics=[
            Metric(key, value, now, 0, model_id=model_id, dataset_name=dataset.name,
                   dataset_digest=dataset.digest, run_id=run_id)
            for key, value in metrics.items()
        ])

    @staticmethod
    def _log_artifacts(run_id: str, scores: ClusteringScores, X: np.ndarray, labels: np.ndarray, seed: int,
                       figures: bool) -> dict[str, Any]:
        client = MlflowClient()
        out: dict[str, Any] = {}
        table = distance_quantiles(labels, scores.distances, len(scores.centers))
        with tempfile.TemporaryDirectory(prefix="kmeans-eval-") as tmp:
            def log(key: str, filename: str, cls: Any, write: Any) -> None:
                path = os.path.join(tmp, filename)
                write(path)
                client.log_artifact(run_id, path, _ARTIFACT_DIR)
                uri = get_artifact_uri(run_id, f"{_ARTIFACT_DIR}/{filename}")
                artifact = cls(uri=uri)
                mlflow_load_artifact_content(artifact, path)  # read now: the temp folder goes away
                out[key] = artifact

            log("distance_quantiles", "distance_quantiles.csv", CsvEvaluationArtifact,
                lambda p: pd.DataFrame(table).to_csv(p, index=False))
            log("distance_quantiles_json", "distance_quantiles.json", JsonEvaluationArtifact,
                lambda p: _write_json(p, table))
            if figures:
                log("cluster_sizes", "cluster_sizes.png", ImageEvaluationArtifact,
                    lambda p: figs.cluster_size_chart(scores.sizes).savefig(p))
                log("centroids", "centroids.png", ImageEvaluationArtifact,
                    lambda p: figs.centroid_plot(scores.centers, X, labels, seed=seed).savefig(p))
        return out


def _write_json(path: str, rows: list[dict[str, float]]) -> None:
    # NaN (an empty cluster's quantiles) is written as null: strict JSON readers refuse NaN.
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    with open(path, "w") as fh:
        json.dump(clean, fh, indent=1)
