"""One training run: data -> cluster -> backend.fit -> metrics -> MLflow.

``fit_and_score`` is the unit of work shared with the search (it runs on the driver for
data-parallel backends and on a Dask worker for trial-parallel ones); ``train`` wraps it in an
MLflow run that ends FINISHED or FAILED with the reason.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.backends import FitResult, KMeansBackend, get_backend
from toolkit.cluster import client_info, dask_client
from toolkit.config import ExperimentConfig, MetricsConfig, ModelConfig
from toolkit.data import Dataset, load_dataset
from toolkit.metrics import cluster_metrics, resampling_metrics, sample_rows
from toolkit.tracking import (
    log_centroids,
    log_dataset,
    log_metrics,
    log_params,
    log_tags,
    tags_for,
    tracked_run,
)

__all__ = ["WARMUP_METRIC", "FittedModel", "TrainOutcome", "backend_session", "fit_and_score", "fit_progress",
           "log_fit", "log_registered_centroids", "register_best", "train", "with_host_labels"]


@dataclass
class TrainOutcome:
    run_id: str
    result: FitResult
    metrics: dict[str, float]
    backend: str
    #: The :class:`toolkit.registry.Registered` record when ``register=True``.
    registered: Any = None


#: Seconds a distributed backend spent getting its workers ready before the first fit (MLflow
#: shows ``system/`` metrics in their own group).
WARMUP_METRIC = "system/warmup_s"


def with_host_labels(result: FitResult) -> FitResult:
    """``result`` with NumPy labels (computed now) in place of lazy Dask ones, on the model too.

    The model is a shallow copy when its ``labels_`` change: the fitted estimator the backend
    returned is left as it was.
    """
    import copy

    from toolkit.convert import to_numpy

    if not hasattr(result.labels, "__dask_graph__"):
        return result
    labels = to_numpy(result.labels).astype(np.int32, copy=False)
    model = result.model
    if hasattr(getattr(model, "labels_", None), "__dask_graph__"):
        model = copy.copy(model)
        model.labels_ = labels
    return dataclasses.replace(result, model=model, labels=labels)


#: Seconds between writes of a fit's per-pass metrics to the run: a long fit shows its progress
#: in the UI while it runs, a fast one costs one write at the end, not one per iteration.
_PASS_FLUSH_S = 10.0


@contextlib.contextmanager
def fit_progress(backend: KMeansBackend, run_id: str, desc: str) -> Iterator[None]:
    """Report every pass of the fits inside the block: console lines
    (:class:`toolkit.console.PassLines`: every pass or 10 s, whichever is later) and, per Lloyd
    iteration, ``fit/inertia`` and ``fit/shift`` on run ``run_id`` with ``step`` = the
    iteration (k-means|| rounds: ``fit/init_cost`` with ``step`` = the pass).  For a train run's
    fit and a search's refit; trials are not reported (their loop cost stays as it is).
    """
    import time

    from toolkit.console import PassLines

    lines = PassLines(desc)
    pending: list[tuple[dict[str, float], int]] = []
    last = [time.monotonic()]

    def flush() -> None:
        while pending:
            values, step = pending.pop(0)
            log_metrics(run_id, values, step=step)
        last[0] = time.monotonic()

    def on_pass(info: dict[str, Any]) -> None:
        lines(info)
        if info.get("phase") == "lloyd":
            pending.append(({"fit/inertia": info["inertia"], "fit/shift": info["shift"]}, int(info["iteration"])))
        elif str(info.get("phase", "")).startswith("init") and info.get("inertia") is not None:
            pending.append(({"fit/init_cost": info["inertia"]}, int(info["pass"])))
        if time.monotonic() - last[0] >= _PASS_FLUSH_S:
            flush()

    backend.on_pass = on_pass
    try:
        yield
        flush()
    finally:
        backend.on_pass = None
        lines.close()


def fit_and_score(
    backend: KMeansBackend,
    X: Any,
    params: ModelConfig,
    metrics_cfg: MetricsConfig,
    y_true: np.ndarray | None = None,
    init_centers: np.ndarray | None = None,
) -> tuple[FitResult, dict[str, float]]:
    """Fit ``params`` on prepared ``X`` and compute every metric (global, not per worker).

    ``init_centers`` starts the fit from those centres (a refresh from the champion's).
    """
    result = backend.fit(X, params) if init_centers is None else backend.fit(X, params, init_centers=init_centers)
    hX, hlabels = backend.host_view(X, result.labels)
    metrics = cluster_metrics(
        hX,
        hlabels,
        params.n_clusters,
        inertia=result.inertia,
        y_true=y_true,
        silhouette_sample=metrics_cfg.silhouette_sample,
        seed=metrics_cfg.seed,
    )
    metrics["fit_seconds"] = result.fit_seconds
    metrics["n_iter"] = float(result.n_iter)
    if metrics_cfg.stability:
        metrics.update(resampling_metrics(
            hX, _centers_fitter(backend, params), resamples=metrics_cfg.stability_resamples,
            fraction=metrics_cfg.stability_fraction, sample=metrics_cfg.stability_sample,
            seed=metrics_cfg.seed, model_seed=params.random_state,
        ))
    return result, metrics


def _centers_fitter(backend: KMeansBackend, params: ModelConfig) -> Any:
    """``fit(rows, seed) -> centres``: ``params`` refitted with another seed on a small NumPy
    sample, by the same backend adaptor (placed by its own ``prepare``), for the resampling
    metrics."""

    def fit(rows: np.ndarray, seed: int) -> np.ndarray:
        placed = backend.prepare(Dataset("resample", np.ascontiguousarray(rows, dtype=np.float32), None, [], "sample"))
        return backend.fit(placed, params.model_copy(update={"random_state": seed})).centers

    return fit


@contextlib.contextmanager
def backend_session(
    cfg: ExperimentConfig, client: Any = None, need_cluster: bool | None = None,
    backend_cls: type[KMeansBackend] | None = None,
) -> Iterator[tuple[KMeansBackend, Any]]:
    """Yield ``(backend, dask_client)`` for ``cfg``; start (and close) a cluster if needed.

    ``client`` reuses an existing Dask client.  Without one, a cluster is started when the
    backend is data-parallel or ``need_cluster`` is true (a trial-parallel search).
    ``backend_cls`` is the backend class when the caller has already looked it up and checked it.
    """
    cls = backend_cls
    if cls is None:
        cls = get_backend(cfg.backend)
        cls.check_available()
    want = need_cluster if need_cluster is not None else cls.parallelism == "data"
    options = {"persist": cfg.data.persist, "chunk_rows": cfg.data.chunk_rows}
    if client is not None or not want:
        yield cls(client=client, **options), client
        return
    threads_suit = _threads_suit(cfg, cls, need_cluster)
    with dask_client(cfg.cluster, gpu=cls.device == "gpu", threads_suit=threads_suit) as c:
        yield cls(client=c, **options), c


def _threads_suit(cfg: ExperimentConfig, cls: type[KMeansBackend], need_cluster: bool | None) -> bool:
    """Whether a local cluster for ``cls`` on ``cfg``'s data suits threaded workers
    (``cluster.processes=auto``, :func:`toolkit.cluster.use_processes`).

    Fits that release the GIL run on threads of this process: the trials of a trial-parallel
    search on small data, and a data-parallel fit of data this process holds anyway (worker
    processes would each import NumPy and Numba and hold a second copy of it).
    """
    return cls.releases_gil and (
        (bool(need_cluster) and cls.parallelism == "trial" and _small_data(cfg))
        or (cls.parallelism == "data" and _in_memory_data(cfg))
    )


def _small_data(cfg: ExperimentConfig) -> bool:
    """Whether the configured data is known, before loading it, to be small enough for threaded
    workers (:data:`toolkit.cluster.THREAD_WORKERS_MAX_VALUES`): generated blobs by their size,
    scikit-learn's bundled datasets always (the largest has a few thousand rows), files never."""
    from toolkit.cluster import THREAD_WORKERS_MAX_VALUES

    if cfg.data.source == "sklearn":
        return True
    if cfg.data.source == "blobs":
        return cfg.data.n_samples * cfg.data.n_features <= THREAD_WORKERS_MAX_VALUES
    return False


def _in_memory_data(cfg: ExperimentConfig) -> bool:
    """Whether the configured data is made in this process (generated blobs, a bundled dataset)
    and small enough for a data-parallel fit on threaded workers
    (:data:`toolkit.cluster.DATA_THREADS_MAX_VALUES`); files are read by the workers."""
    from toolkit.cluster import DATA_THREADS_MAX_VALUES

    if cfg.data.source == "sklearn":
        return True
    if cfg.data.source == "blobs":
        return cfg.data.n_samples * cfg.data.n_features <= DATA_THREADS_MAX_VALUES
    return False


@dataclass
class FittedModel:
    """One fit and what it was fitted on: what logging and registering it need."""

    backend: KMeansBackend
    fit: FitResult
    metrics: dict[str, float]
    #: The data as placed for the backend (its host view draws the plot; the registry samples it).
    X: Any
    dataset: Dataset


def log_fit(run_id: str, cfg: ExperimentConfig, fitted: FittedModel, artifact_path: str = "centroids",
            writer: Any = None) -> concurrent.futures.Future | None:
    """Metrics, centroids (CSV + .npy) and, if enabled, the centroid plot for one fit.

    ``writer`` (a :class:`toolkit.tracking.writer.ChildWriter`): the centroids and their plot
    are written by it, and the job's future is returned for the caller to join.
    """
    log_metrics(run_id, fitted.metrics)
    if fitted.fit.extra.get("init_fitted"):  # e.g. k-means++ fitted as k-means|| on multi-GPU cuML
        log_tags(run_id, {"model.init_fitted": fitted.fit.extra["init_fitted"]})
    return _log_fit_centroids(run_id, cfg, fitted, artifact_path, writer)


def _log_fit_centroids(run_id: str, cfg: ExperimentConfig, fitted: FittedModel, artifact_path: str, writer: Any,
                       registered: Any = None) -> concurrent.futures.Future | None:
    """The centroids (CSV + .npy) and their plot, in the fit's numbering or, given the
    ``registered`` record, in the registered models' (:meth:`toolkit.registry.Registered.relabel`)."""
    relabel = registered.relabel if registered is not None else (lambda a: a)
    dataset, result = fitted.dataset, fitted.fit
    plot_data = None
    if cfg.tracking.log_plot and fitted.X is not None:
        hX, hlabels = fitted.backend.host_view(fitted.X, result.labels)
        plot_data = sample_rows(hX, hlabels, cfg.tracking.plot_sample, cfg.metrics.seed)
        plot_data = (dataset.raw(plot_data[0]), None if plot_data[1] is None else relabel(plot_data[1]))
    # Fits run on the data as loaded (centred when toolkit.data had to): the record is in the
    # data's own coordinates.
    args = (run_id, relabel(np.asarray(dataset.raw(result.centers))), dataset.feature_names, plot_data)
    options = {"artifact_path": artifact_path, "title": f"{cfg.name}: {cfg.backend}, k={len(result.centers)}"}
    if writer is not None:
        return writer.submit(log_centroids, *args, **options)
    log_centroids(*args, **options)
    return None


def log_registered_centroids(run_id: str, cfg: ExperimentConfig, fitted: FittedModel, registered: Any,
                             artifact_path: str = "centroids", writer: Any = None) -> concurrent.futures.Future | None:
    """Log the fit's centroids (and plot) again, in the numbering of the models registered
    from it, when registration renumbered the clusters to keep the champion's IDs
    (:mod:`toolkit.registry.stable`): the run's centroids, the registered model, its twin and
    the plot then name each cluster alike.  Nothing is logged when the numbering is the fit's.

    The run's ``stable.mapping`` tag records the renumbering (``{fitted id: registered id}``),
    as the registered versions' tag of that name does.  Call it after the first write of the
    same ``artifact_path`` has finished (the files are replaced).
    """
    if registered is None or getattr(registered, "order", None) is None:
        return None
    import json

    applied = {str(int(raw)): new_id for new_id, raw in enumerate(registered.order)}
    log_tags(run_id, {"stable.mapping": json.dumps(dict(sorted(applied.items(), key=lambda kv: int(kv[0])))),
                      f"{artifact_path}.numbering": f"renumbered to the cluster IDs of {registered.native_name} "
                                                    f"v{registered.native_version} (stable.mapping: fitted -> "
                                                    "registered)"})
    return _log_fit_centroids(run_id, cfg, fitted, artifact_path, writer, registered)


def run_params(cfg: ExperimentConfig, dataset: Dataset) -> dict[str, Any]:
    """Every effective setting plus the data's shape, as MLflow params."""
    # Top-level keys get a prefix: `mlflow run` already logs its -P values ("backend", ...)
    # as params, and MLflow refuses to change a logged param.
    params = {
        (k if "." in k else f"experiment.{k}"): v
        for k, v in cfg.flat().items()
        if not k.startswith("search.")
    }
    params.update(
        {"data.rows": dataset.n_samples, "data.features": dataset.n_features, "data.name": dataset.name,
         # Whether the fit ran on the data centred on its float64 mean (toolkit.data.precision_shift).
         "data.centred": getattr(dataset, "shift", None) is not None}
    )
    return params


def train(
    cfg: ExperimentConfig, client: Any = None, run_name: str | None = None, register: bool = False
) -> TrainOutcome:
    """Fit ``cfg.model`` on ``cfg.data`` with ``cfg.backend`` inside one MLflow run.

    With ``register``, the native model and its scikit-learn twin are logged and registered
    under the config's registry names (see :mod:`toolkit.registry`).

    The run is started first, so that any later failure (bad data, missing GPU, ...) ends it
    FAILED with the reason in its ``error`` tag.

    Labels: when ``train`` starts the Dask cluster itself (data-parallel backend, no
    ``client``), ``outcome.result.labels`` (and the model's ``labels_``) are NumPy, computed
    before that cluster closes: one int32 per row on the host, small next to the float32
    rows the metrics already read.  With a ``client``, they stay a lazy Dask array on the
    caller's cluster (compute them while it runs).

    On a distributed backend the first fit warms the workers first (imports, compiled
    kernels, data placement); that time is logged as ``system/warmup_s``, not in
    ``fit_seconds``.
    """
    name = run_name or f"train-{cfg.backend}-k{cfg.model.n_clusters}"
    with tracked_run(cfg.experiment_name, name, {"entry_point": "train", "config": str(cfg.source_path)},
                     system_metrics=cfg.tracking.system_metrics) as run_id:
        with backend_session(cfg, client) as (backend, dclient):
            log_tags(run_id, tags_for(backend, client_info(dclient) if dclient else None))
            dataset = load_dataset(cfg.data)
            log_params(run_id, run_params(cfg, dataset))
            log_dataset(run_id, dataset)
            backend.validate(cfg.model, dataset.n_samples)
            X = backend.prepare(dataset)
            with fit_progress(backend, run_id, f"fit {cfg.backend}"):
                result, metrics = fit_and_score(backend, X, cfg.model, cfg.metrics, dataset.y)
            fitted = FittedModel(backend, result, metrics, X, dataset)
            log_fit(run_id, cfg, fitted)
            if "warmup_seconds" in result.extra:  # its own metric: fit_seconds is the fit alone
                log_metrics(run_id, {WARMUP_METRIC: float(result.extra["warmup_seconds"])})
            registered = register_best(cfg, fitted, run_id) if register else None
            # Renumbered to the champion's IDs on registration: the run's centroids follow.
            log_registered_centroids(run_id, cfg, fitted, registered)
            if client is None and dclient is not None:
                # The cluster started here closes with this block: lazy labels would point at it.
                result = with_host_labels(result)
        return TrainOutcome(run_id=run_id, result=result, metrics=metrics, backend=cfg.backend,
                            registered=registered)


def register_best(cfg: ExperimentConfig, fitted: FittedModel, run_id: str,
                  search_parent_run_id: str | None = None) -> Any:
    """Log and register ``fitted`` (native model and scikit-learn twin) under ``cfg``'s registry
    names, and say what was registered: the one registration call of ``train`` and ``search``.

    Returns the :class:`toolkit.registry.Registered` record.
    """
    from toolkit.console import say
    from toolkit.registry import register_fit

    reg = register_fit(cfg, fitted, run_id, search_parent_run_id=search_parent_run_id)
    say(f"registered {reg.native_name} v{reg.native_version}"
        + (f" and {reg.sklearn_name} v{reg.sklearn_version}" if reg.sklearn_version else "")
        + f" (twin agreement {reg.agreement:.0%})")
    return reg
