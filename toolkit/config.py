"""Experiment configuration: YAML files in ``experiments/`` validated into typed objects.

``load_experiment(path, overrides)`` reads a YAML file, applies ``dotted.key=value`` overrides
(every field can be overridden) and validates the result, including against the chosen
backend's facts (:data:`toolkit.names.BACKEND_FACTS`): an ``init`` it does not have, or a
hyperparameter it would ignore set to anything but its default, is refused before any cluster
starts.  Any problem is raised as a one-line :class:`~toolkit.errors.ConfigError` naming the
file and the dotted key.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from toolkit.errors import ConfigError, option_hint
from toolkit.names import (
    BACKEND_FACTS,
    BACKEND_NAMES,
    EVAL_METRICS,
    FIDELITY_RESOURCES,
    HYPERPARAMETERS,
    INIT_SPECIFIC,
    INITS,
    MULTI_OBJECTIVES,
    OBJECTIVES,
    PRUNERS,
    honouring,
    ignored_because,
)

__all__ = [
    "BACKEND_NAMES",
    "ClusterConfig",
    "DataConfig",
    "ExperimentConfig",
    "FidelityConfig",
    "MetricsConfig",
    "ModelConfig",
    "MonitoringConfig",
    "RegistryConfig",
    "SearchConfig",
    "SearchSpace",
    "TrackingConfig",
    "check_backend_settings",
    "check_space_settings",
    "env_flag",
    "load_experiment",
    "parse_flag",
    "parse_overrides",
]

# The vocabularies (backend, init and metric names; what each backend honours) live in
# toolkit.names; the Literal types below are built from them (Literal[NAMES] lists the tuple's
# members, so pydantic's messages name every accepted value as before).  BACKEND_NAMES is
# re-exported here for older imports.

_ON, _OFF = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _flag_value(value: object) -> bool | None:
    """True/False for 1/true/yes/on and 0/false/no/off (any case), None for anything else."""
    if isinstance(value, bool):
        return value
    text = str(value if value is not None else "").strip().lower()
    return True if text in _ON else False if text in _OFF else None


def env_flag(name: str, default: bool) -> bool:
    """An on/off environment switch (``KMEANS_LIFECYCLE_*``): 1/true/yes/on or 0/false/no/off in
    any case; unset or any other value gives ``default``."""
    value = _flag_value(os.environ.get(name, ""))
    return default if value is None else value


def parse_flag(value: object, name: str, default: bool = False) -> bool:
    """A yes/no command-line value (``-P register=true``), read like :func:`env_flag`; empty
    gives ``default``.

    Raises:
        ConfigError: anything else (``maybe`` must not quietly mean no).
    """
    if value is None or str(value).strip() == "":
        return default
    parsed = _flag_value(value)
    if parsed is None:
        raise ConfigError(f"{name}={value!r} is not a yes/no value",
                          f"pass {option_hint(name, 'true')} or {option_hint(name, 'false')}")
    return parsed


#: Trials queued per worker thread at most (``search.prefetch``).
_MAX_PREFETCH = 8


class _Strict(BaseModel):
    # allow_inf_nan=False: no setting is meaningful as NaN or infinity, and pydantic would
    # otherwise turn "inf"/"nan" (YAML .inf, or an override word) into a float that only
    # fails later, as a traceback, inside scikit-learn or Dask.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Strict):
    """Where the data comes from and how it is placed on the cluster."""

    source: Literal["blobs", "sklearn", "file"] = "blobs"
    # blobs
    n_samples: int = Field(100_000, gt=0)
    n_features: int = Field(2, gt=0)
    centers: int = Field(6, gt=0)
    cluster_std: float = Field(0.1, gt=0)
    random_state: int = 0
    # sklearn bundled datasets
    dataset: Literal["digits", "iris", "wine", "breast_cancer"] | None = None
    # files
    path: str | None = None
    format: Literal["auto", "csv", "parquet"] = "auto"
    columns: list[str] | None = None
    label_column: str | None = None
    # placement
    chunk_rows: int = Field(250_000, gt=0, description="rows per Dask block / partition")
    persist: bool = True

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        if self.source == "sklearn" and self.dataset is None:
            raise ValueError("source 'sklearn' needs data.dataset (digits, iris, wine, breast_cancer)")
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs data.path (a CSV/Parquet file or a glob)")
        if self.label_column and self.label_column in (self.columns or ()):
            # Ground truth is never a feature: it would be left out in silence.
            raise ValueError(f"data.columns names the label column {self.label_column!r} (data.label_column); "
                             "leave it out of data.columns")
        return self


class ModelConfig(_Strict):
    """K-means hyperparameters, in scikit-learn's vocabulary (backends translate)."""

    n_clusters: int = Field(8, gt=0)
    init: Literal[INITS] = "k-means++"
    max_iter: int = Field(300, gt=0)
    tol: float = Field(1e-4, ge=0)
    n_init: int = Field(1, gt=0)
    oversampling_factor: float = Field(2.0, gt=0)
    random_state: int = 0


class ClusterConfig(_Strict):
    """The Dask cluster: a local one by default, or an existing scheduler by address."""

    scheduler_address: str | None = Field(
        None, description="tcp://host:8786; DASK_SCHEDULER_ADDRESS is used when unset"
    )
    n_workers: int = Field(2, gt=0)
    threads_per_worker: int = Field(1, gt=0)
    memory_limit: str = Field(
        "auto",
        description="each worker process's memory limit, e.g. 2GiB ('auto': Dask's share of the "
        "machine's memory, '0': none); a limit of your own runs local workers as processes "
        "(processes=false with one is refused: a threaded worker counts the whole driver against it)",
    )
    processes: bool | Literal["auto"] = Field(
        "auto",
        description="true: workers as separate processes; false: threads of the driver; 'auto': "
        "threads for a trial-parallel scikit-learn search on small data (generated blobs of at most "
        "4 million values, or a bundled scikit-learn dataset: no worker processes to start, no data "
        "to copy, results handed over in memory) and for a 'dask' fit of generated or bundled data "
        "(at most 512 million values: the data held once, no worker imports), processes otherwise "
        "(on bigger data the GIL held by scikit-learn's k-means++ initialisation would serialise "
        "the threads; files are read by the workers)",
    )
    dashboard_address: str = Field(
        "127.0.0.1:0",
        description="where clusters the toolkit starts serve the Dask dashboard, host:port "
        "('127.0.0.1:0': this machine only, a free port); ':8787' or '0.0.0.0:0' exposes it on "
        "every network interface. The scheduler and workers of a local cluster listen on "
        "127.0.0.1 whatever this says",
    )
    diagnostics: Literal["lean", "full"] = Field(
        "lean",
        description="clusters the toolkit starts: 'lean' turns the workers' statistical profiler "
        "off (the dashboard's Profile page) and ticks the event-loop check every 200 ms and the "
        "system monitor every 2 s; 'full' keeps Dask's defaults",
    )
    ship_package: bool = Field(
        False,
        description="when a worker's toolkit differs from the driver's (checked on connect), upload "
        "the driver's toolkit sources to every worker (Dask UploadDirectory) and restart the workers "
        "so that they import it; needs workers with a nanny, and does not change their libraries",
    )
    # LocalCUDACluster only
    device_memory_limit: str | None = None
    rmm_pool_size: str | None = None

    @field_validator("processes", mode="before")
    @classmethod
    def _processes_word(cls, v: Any) -> Any:
        # One message naming the three choices, not pydantic's two (one per union member).
        words = ("auto", "true", "false", "yes", "no", "on", "off", "1", "0")
        if isinstance(v, str) and v.strip().lower() not in words:
            raise ValueError("choose true (processes), false (threads) or auto")
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("dashboard_address", mode="before")
    @classmethod
    def _host_port(cls, value: Any) -> Any:
        # Checked here so a typo is a ConfigError, not a traceback from the cluster's start.
        # (No null: Dask would then serve its HTTP endpoints on every interface, port 8787.)
        _, sep, port = str(value).strip().rpartition(":")
        if not isinstance(value, str) or not sep or not port.isdigit() or int(port) > 65535:
            raise ValueError("must be host:port or :port, e.g. 127.0.0.1:0, :8787 or 0.0.0.0:0")
        return value.strip()

    @property
    def limits_each_worker(self) -> bool:
        """Whether ``memory_limit`` is a limit of the user's own ('auto' and '0' are Dask's
        default and no limit)."""
        return str(self.memory_limit).strip().lower() not in ("auto", "0", "none", "")

    @model_validator(mode="after")
    def _limit_needs_processes(self) -> ClusterConfig:
        # A threaded worker's memory monitor measures the whole driver process: under a limit of
        # the user's it pauses as soon as the driver holds that much, and the work waits for good.
        if self.processes is False and self.limits_each_worker:
            raise ValueError(
                f"memory_limit={self.memory_limit} limits each worker process, but processes=false runs "
                "the workers as threads of the driver, whose whole memory would count against it (they "
                "pause and the work never ends): set cluster.processes=true or auto, or "
                "cluster.memory_limit=auto")
        return self


class MetricsConfig(_Strict):
    silhouette_sample: int = Field(10_000, gt=1)
    seed: int = 0
    stability: bool = Field(
        False,
        description="also compute stability and prediction strength for every fit (extra fits of "
        "the same configuration on a sample); a search whose objective needs them computes them "
        "whatever this says",
    )
    stability_resamples: int = Field(
        5, ge=2, description="fits compared for stability, and half-splits for prediction strength"
    )
    stability_fraction: float = Field(
        0.8, gt=0, le=1, description="share of the stability sample each refit sees (1: only the seed varies)"
    )
    stability_sample: int = Field(
        2_000, ge=20, description="rows (a seeded sample) the refits are fitted on and compared on"
    )
    trial_metrics: list[Literal[EVAL_METRICS]] | Literal["all"] = Field(
        default_factory=list,
        description="what a data-parallel search (backend dask, dask-ml, cuml-dask) computes for every "
        "trial besides its objective(s), e.g. [davies_bouldin, calinski_harabasz], or all; by default "
        "only the objective (and the free inertia, n_iter, fit_seconds), since each other metric costs "
        "passes over all rows per trial. Trial-parallel searches, train and the refit of a search's best "
        "model compute every metric whatever this says",
    )


class TrackingConfig(_Strict):
    experiment: str | None = Field(None, description="MLflow experiment; defaults to the config name")
    log_plot: bool = True
    plot_sample: int = Field(5_000, gt=0)
    system_metrics: bool = Field(
        True,
        description="log MLflow's system metrics (CPU, memory, GPU where pynvml finds one) on train "
        "runs and a search's parent run, every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (5)",
    )


class IntRange(_Strict):
    low: int = Field(gt=0)
    high: int = Field(gt=0)
    step: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


class FloatRange(_Strict):
    low: float = Field(gt=0)
    high: float = Field(gt=0)
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self


class SearchSpace(_Strict):
    """What the search may vary; unset entries stay at the ``model`` section's value."""

    n_clusters: IntRange = IntRange(low=2, high=12)
    init: list[Literal[INITS]] | None = None
    max_iter: list[int] | None = None
    tol: FloatRange | list[float] | None = None
    n_init: list[int] | None = None
    oversampling_factor: FloatRange | list[float] | None = None


class FidelityConfig(_Strict):
    """Multi-fidelity search: trials climb rungs of growing budget and a pruner stops the poor ones.

    Rungs are anchored at the full resource, as in Hyperband: the last rung fits all of it (its
    objective is the trial's value), each rung before it ``1/reduction_factor`` of the next, down
    to the smallest share not below ``min_fraction``.  ``pruner: none`` (the default) is the
    search without fidelity.
    """

    pruner: Literal[PRUNERS] = Field(
        "none",
        description="Optuna pruner deciding which trials go on to the next rung: successive_halving "
        "(asynchronous, as each trial reports), synchronous_halving (once the whole rung has reported, "
        "keeping exactly its best 1/reduction_factor: fewest full fits), hyperband, median; "
        "'none': every trial fits the full data once (no rungs)",
    )
    resource: Literal[FIDELITY_RESOURCES] = Field(
        "data_fraction",
        description="what grows from rung to rung: the share of rows (a seeded, nested subsample) "
        "or model.max_iter (on all rows)",
    )
    min_fraction: float = Field(0.05, gt=0.0, lt=1.0,
                                description="floor of the first rung's share of the resource (rungs are "
                                "1, 1/reduction_factor, 1/reduction_factor^2, ... down to it)")
    reduction_factor: int = Field(3, ge=2, le=10,
                                  description="growth of the resource from one rung to the next; "
                                  "successive halving keeps about 1/reduction_factor of the trials per rung")

    @property
    def enabled(self) -> bool:
        return self.pruner != "none"

    def fractions(self) -> list[float]:
        """The share of the resource at each rung, smallest first, the last 1: ``factor**-k``
        for ``k`` from the largest with ``factor**-k >= min_fraction`` down to 0."""
        k = 0
        while self.reduction_factor ** -(k + 1) >= self.min_fraction * (1 - 1e-9):
            k += 1
        return [float(self.reduction_factor ** -i) for i in range(k, -1, -1)]


class SearchConfig(_Strict):
    strategy: Literal["optuna", "grid", "random"] = "optuna"
    n_trials: int = Field(20, gt=0)
    sampler: Literal["tpe", "random", "grid", "cmaes", "qmc"] = "tpe"
    seed: int = 0
    objective: Literal[OBJECTIVES] = "silhouette"
    objectives: list[Literal[MULTI_OBJECTIVES]] | None = Field(
        None,
        description="a multi-objective search (strategy optuna): e.g. [silhouette, n_clusters] or "
        "[silhouette, fit_seconds]; the Pareto front is plotted and its knee point is refitted "
        "and registered. Replaces search.objective",
    )
    seed_policy: Literal["fixed", "per_trial"] = Field(
        "fixed",
        description="'fixed': every trial fits with model.random_state, so trials differ only in "
        "their parameters and a lucky seed cannot win; 'per_trial': trial N uses "
        "model.random_state + N",
    )
    parallelism: Literal["auto", "trial", "data"] = "auto"
    prefetch: Literal["auto"] | int = Field(
        "auto",
        description="trial-parallel searches: trials queued per worker thread behind the running "
        "one, so a thread starts its next trial without waiting for the driver's round trip "
        "(~30-50 ms). 'auto' queues 1, up to 3 while trials are shorter than ~50 ms; 0 asks only "
        "when a thread is free (the sampler then sees every earlier result)",
    )
    storage: str | None = Field(
        None,
        description="Optuna storage: a journal file path (default: <store>.optuna.log beside the "
        "tracking store, e.g. mlflow.optuna.log next to mlflow.db) or a SQLAlchemy "
        "URL such as sqlite:///optuna.db",
    )
    study_name: str | None = None
    resume: bool | Literal["auto"] = Field(
        False,
        description="true: continue the study this search's parent run recorded (an error when there is "
        "none); auto: continue it when there is one, else start a new search; false: a new search",
    )
    cv: int = Field(3, ge=2, description="folds for grid/random search")
    refit: bool = True
    baseline_sample: int = Field(
        100_000, ge=0,
        description="data with labels: the parent records baseline_adjusted_rand, the ARI of plain "
        "KMeans(k = number of classes, n_init=10) fitted and scored on this many rows (a seeded "
        "sample; all rows when there are fewer); 0: no baseline",
    )
    space: SearchSpace = SearchSpace()
    fidelity: FidelityConfig = FidelityConfig()

    @field_validator("prefetch", mode="before")
    @classmethod
    def _prefetch(cls, value: Any) -> Any:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit() and int(text) <= _MAX_PREFETCH and not isinstance(value, (bool, float)):
            return int(text)
        raise ValueError(f"must be 'auto' or a whole number 0..{_MAX_PREFETCH}")

    @model_validator(mode="after")
    def _fidelity(self) -> SearchConfig:
        # A ValueError: one line naming search.fidelity and the fix (see _multi_objective).
        pruner = self.fidelity.pruner
        if pruner == "none":
            return self
        if self.strategy != "optuna":
            raise ValueError(f"search.fidelity.pruner={pruner} needs search.strategy=optuna (rungs are "
                             f"reported to an Optuna pruner), not {self.strategy!r}; or set "
                             "search.fidelity.pruner=none")
        if len(self.fidelity.fractions()) < 2:
            raise ValueError(f"search.fidelity.min_fraction={self.fidelity.min_fraction} leaves one rung (the full "
                             f"data) with reduction_factor={self.fidelity.reduction_factor}: nothing to prune; "
                             f"set min_fraction <= 1/{self.fidelity.reduction_factor}")
        if self.objectives is not None:
            raise ValueError(f"search.fidelity.pruner={pruner} cannot prune a multi-objective search "
                             "(search.objectives): Optuna prunes single-objective studies only")
        return self

    @model_validator(mode="after")
    def _multi_objective(self) -> SearchConfig:
        # A ValueError: pydantic adds the key (search) and load_experiment the file, one line.
        if self.objectives is None:
            return self
        shown = "[" + ", ".join(self.objectives) + "]"
        if len(self.objectives) < 2 or len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"search.objectives={shown} needs two or more different names "
                             "(for one objective set search.objective)")
        if self.strategy != "optuna":
            raise ValueError(f"search.objectives={shown} needs search.strategy=optuna (an Optuna "
                             f"multi-objective study), not {self.strategy!r}")
        if self.sampler == "cmaes":  # Optuna's CMA-ES raises inside study.ask() on such a study
            raise ValueError(f"search.sampler=cmaes cannot run search.objectives={shown}; use tpe, "
                             "random, grid or qmc")
        if self.resume:
            raise ValueError(f"search.resume=true is not supported with search.objectives={shown}; "
                             "start a new search (resume=false)")
        return self


class RegistryConfig(_Strict):
    native_name: str | None = Field(None, description="defaults to '<name>-kmeans'")
    sklearn_name: str | None = Field(None, description="defaults to '<name>-kmeans-sklearn'")
    register_best: bool = True
    eval_metric: Literal[EVAL_METRICS] = "silhouette"
    stable_labels: bool = Field(True, description="match a new version's cluster IDs to the champion's")
    max_churn: float = Field(1.0, ge=0.0, le=1.0,
                             description="promote only if at most this share of the champion's reference "
                                         "sample changes label (1 = no gate)")


class MonitoringConfig(_Strict):
    """Drift reports of batch scoring (``-e predict``) against the model's training profile."""

    drift: bool = Field(True, description="compute cluster shares and distance quantiles while scoring")
    psi_moderate: float = Field(0.1, gt=0, description="population stability index from which drift is moderate")
    psi_major: float = Field(0.25, gt=0, description="PSI from which drift is major")
    distance_moderate: float = Field(
        1.25, gt=1, description="median or p95 distance-to-centre ratio (scoring/training, or its "
                                "inverse) from which drift is moderate")
    distance_major: float = Field(1.5, gt=1, description="distance ratio from which drift is major")
    histogram_bins: int = Field(360, ge=10, le=5_000, description="log-spaced distance bins of the profile")

    @model_validator(mode="after")
    def _ordered(self) -> MonitoringConfig:
        if self.psi_moderate > self.psi_major or self.distance_moderate > self.distance_major:
            raise ValueError("moderate thresholds must not exceed the major ones")
        return self


class ExperimentConfig(_Strict):
    """One experiment: data, model, cluster, search, tracking and registry settings."""

    name: str = Field(min_length=1)
    description: str = ""
    backend: Literal[BACKEND_NAMES] = "sklearn"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    cluster: ClusterConfig = ClusterConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracking: TrackingConfig = TrackingConfig()
    search: SearchConfig = SearchConfig()
    registry: RegistryConfig = RegistryConfig()
    monitoring: MonitoringConfig = MonitoringConfig()

    # Where the file came from, for messages and relative data paths (not a config key).
    source_path: str | None = Field(None, exclude=True)

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def native_model_name(self) -> str:
        return self.registry.native_name or f"{self.name}-kmeans"

    @property
    def sklearn_model_name(self) -> str:
        return self.registry.sklearn_name or f"{self.name}-kmeans-sklearn"

    def resolved_data_path(self) -> str | None:
        """``data.path`` as given, or relative to the current directory."""
        return os.path.expanduser(self.data.path) if self.data.path else None

    def flat(self) -> dict[str, Any]:
        """All effective settings as ``section.key -> value`` (for MLflow params)."""
        return _flatten(self.model_dump(mode="json"))

    @model_validator(mode="after")
    def _backend_can_use_settings(self) -> ExperimentConfig:
        # Checked here rather than by the backend: every entry point validates its config
        # before any cluster starts, so the refusal comes at once, as one line.  A ConfigError
        # (not a ValueError) passes through pydantic with its own key and fix;
        # load_experiment puts the file name in front.
        check_backend_settings(self)
        return self


def _default(param: str) -> Any:
    """The ``model`` default of ``param``: what a backend that ignores it does anyway (it runs
    one initialisation, and oversamples at no particular factor)."""
    return ModelConfig.model_fields[param].default


def _only_default(spec: Any, default: Any) -> bool:
    """Whether a search-space entry can only ever give ``default``."""
    if isinstance(spec, FloatRange):
        return spec.low == spec.high == default
    return all(value == default for value in spec)


def _shown(spec: Any) -> str:
    if isinstance(spec, FloatRange):
        return f"{spec.low:g}..{spec.high:g}"
    return "[" + ", ".join(str(v) for v in spec) + "]"


def _ignored_fix(param: str, backend: str, keep: str) -> str:
    """The fix for a ``param`` that ``backend`` would ignore: ``keep`` (drop it), or the way out."""
    acting = INIT_SPECIFIC.get(param, ())
    if param in BACKEND_FACTS[backend].honours and acting:
        return f"{keep}, or let the fits use init {' or '.join(acting)}"
    users = ", ".join(honouring(param)) or "none"
    return f"{keep}, or choose a backend that uses {param} ({users})"


def check_backend_settings(cfg: ExperimentConfig) -> None:
    """Refuse ``model`` and ``search.space`` settings that ``cfg.backend`` cannot use.

    * ``model.init`` must be an init the backend accepts.
    * A hyperparameter the backend would ignore (see :data:`toolkit.names.BACKEND_FACTS`,
      ``honours``, and :data:`toolkit.names.INIT_SPECIFIC`) may only be left at its default,
      which is what the backend does anyway: ``model.n_init=1`` is fine everywhere,
      ``model.n_init=3`` is refused where the fit runs one initialisation.
    * A ``search.space`` entry for such a hyperparameter is refused unless it can only give
      the default.  (Which ``search.space.init`` values the backend accepts is checked by the
      search itself, :func:`toolkit.search.space.check_space`.)

    Raises:
        ConfigError: one line naming the key, its value, the backend and the fix.
    """
    backend, model, space = cfg.backend, cfg.model, cfg.search.space
    facts = BACKEND_FACTS[backend]
    if model.init not in facts.inits:
        having = ", ".join(name for name, f in BACKEND_FACTS.items() if model.init in f.inits)
        raise ConfigError(
            f"model.init={model.init!r} is not supported by backend {backend!r}",
            f"set model.init to {' or '.join(facts.inits)}, or choose a backend that has "
            f"{model.init!r} ({having})",
        )
    # The inits the fits may use: the model's, and the search's when it varies init.
    fit_inits = {model.init, *(space.init or ())}
    for param in HYPERPARAMETERS:
        value, default = getattr(model, param), _default(param)
        why = None if value == default else ignored_because(backend, param, fit_inits)
        if why:
            key = f"model.{param}"
            raise ConfigError(
                f"{key}={value!r} would be ignored: {why}",
                _ignored_fix(param, backend, f"remove {key} (its default {default!r} is what the fit "
                                             "does anyway)"),
            )
    check_space_settings(backend, space, model.init)


def check_space_settings(backend: str, space: SearchSpace, model_init: str | None = None) -> None:
    """Refuse ``search.space`` entries that ``backend`` would ignore in every trial.

    An entry is refused unless it can only give the default.  ``model_init`` is the init of
    trials when the space does not vary it (``None``: not known, so only the backend's own
    facts are asked).

    Raises:
        ConfigError: one line naming the key, its values, the backend and the fix.
    """
    if backend not in BACKEND_FACTS:  # an unregistered class in a test: nothing declared
        return
    inits = set(space.init) if space.init else {model_init} if model_init else None
    for param in HYPERPARAMETERS:
        # n_clusters and init are honoured everywhere (and which inits a backend accepts is
        # a question of its own); the seed is not part of the space.
        spec = getattr(space, param, None) if param not in ("n_clusters", "init") else None
        if spec is None or _only_default(spec, _default(param)):
            continue
        why = ignored_because(backend, param, inits)
        if why:
            key = f"search.space.{param}"
            raise ConfigError(
                f"{key}={_shown(spec)} would be ignored: {why}",
                _ignored_fix(param, backend, f"remove {key}"),
            )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def parse_overrides(items: Sequence[str] | str | None) -> dict[str, Any]:
    """Parse ``key=value`` overrides (a list, or one whitespace/comma separated string).

    Values are parsed as YAML scalars, so ``5`` is an int, ``1e-3`` a float, ``true`` a bool,
    ``null`` is None and ``[a, b]`` a list.  A string is split the way a shell splits words, so a
    value with a space is quoted: ``data.path='a b/c.csv'``.
    """
    if items is None:
        return {}
    if isinstance(items, str):
        items = _split_words(items)
    out: dict[str, Any] = {}
    for item in items:
        item = item.strip().strip(",")
        if not item:
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} is not of the form key=value",
                "write dotted keys, e.g. model.n_clusters=6",
            )
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        # YAML reads "1e-3" as a string; make it the number the user meant (but leave words
        # such as "nan", "inf" or "infinity", which float() would also accept, as strings).
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                value = number if math.isfinite(number) else value
        out[key.strip()] = value
    return out


def _split_words(text: str) -> list[str]:
    """``text`` split into ``key=value`` words as a shell would (quotes group, and are removed)."""
    import shlex

    try:
        return shlex.split(text)
    except ValueError as exc:  # "No closing quotation"
        raise ConfigError(f"overrides {text!r} cannot be read: {exc}",
                          "close every quote, e.g. data.path='a b/c.csv'") from None


# Short names accepted on the command line for the most used keys.
_ALIASES = {
    "n_clusters": "model.n_clusters",
    "n_trials": "search.n_trials",
    "strategy": "search.strategy",
    "objective": "search.objective",
    "resume": "search.resume",
    "n_workers": "cluster.n_workers",
    "scheduler_address": "cluster.scheduler_address",
    "n_samples": "data.n_samples",
}


def _apply(tree: dict[str, Any], dotted: str, value: Any, known: Mapping[str, Any]) -> None:
    dotted = _ALIASES.get(dotted, dotted)
    parts = dotted.split(".")
    node: dict[str, Any] = tree
    schema: Any = known
    for i, part in enumerate(parts):
        if not isinstance(schema, Mapping) or part not in schema:
            keys = sorted(_flatten(known))
            close = difflib.get_close_matches(dotted, keys, n=3, cutoff=0.5)
            hint = f"did you mean {' or '.join(close)}?" if close else "see experiments/blobs.yaml for the keys"
            raise ConfigError(f"unknown config key {dotted!r}", hint)
        schema = schema[part]
        if i == len(parts) - 1:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child


def _schema_tree() -> dict[str, Any]:
    """Every settable key, nested like the YAML (search.space included)."""
    tree = ExperimentConfig(name="x").model_dump(mode="json")
    tree.pop("source_path", None)
    # Optional sub-sections that default to None still accept nested keys.
    space = tree["search"]["space"]
    for key in ("tol", "oversampling_factor"):
        space[key] = {"low": None, "high": None, "log": None}
    return tree


def _is_tag(part: Any) -> bool:
    # pydantic names the member of a union it tried inside ``loc`` ("list[float]",
    # "function-after[_ordered(), FloatRange]"); config keys are snake_case and indices ints.
    if not isinstance(part, str):
        return False
    return not part.replace("_", "a").isalnum() or part[:1].isupper()


def _tag_at(error: Mapping[str, Any]) -> int | None:
    loc = error["loc"]
    if error.get("type") == "extra_forbidden":
        loc = loc[:-1]  # the last part is the user's unknown key, whatever its spelling
    return next((i for i, part in enumerate(loc) if _is_tag(part)), None)


def _format_validation(err: ValidationError, where: str) -> str:
    errors = err.errors()
    first, others = errors[0], errors[1:]
    at = _tag_at(first)
    if at is not None:
        # A value for a union (search.space.tol: a range or a list) fails every member; the
        # member that got furthest into the value is what the user meant, the others are noise.
        prefix = first["loc"][:at]
        union = [i for i, e in enumerate(errors) if _tag_at(e) == at and e["loc"][:at] == prefix]
        pick = max(union, key=lambda i: len(errors[i]["loc"]))  # the first of the deepest
        first, branch = errors[pick], errors[pick]["loc"][at]
        others = [
            e for i, e in enumerate(errors)
            if i != pick and (i not in union or e["loc"][at] == branch)
        ]  # fmt: skip
    loc = ""
    for i, part in enumerate(first["loc"]):
        if at is not None and i == at:
            continue
        loc += f"[{part}]" if isinstance(part, int) else f".{part}" if loc else str(part)
    more = len(others)
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    # Say what was given (e.g. backend 'tensorflow'), for wrong scalar values.
    given = first.get("input")
    got = ""
    if first.get("type") != "extra_forbidden" and isinstance(given, str | int | float | bool):
        got = f" (got {given!r})"
    msg = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own validators
    return f"{where}: {loc or '<top>'}: {msg}{got}{suffix}"


def load_experiment(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | str | None = None,
) -> ExperimentConfig:
    """Read, override and validate an experiment config.

    Args:
        path: YAML file; ``None`` gives the built-in defaults (``name: default``).
        overrides: ``{"model.n_clusters": 6}``, or ``["model.n_clusters=6"]``, or a string.

    Raises:
        ConfigError: missing file, bad YAML, unknown key, wrong type or value out of range;
            the message names the file and the dotted key.
    """
    where = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {"name": "default"}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            inside = sorted(str(f) for f in (*p.glob("*.yaml"), *p.glob("*.yml")))[:3]
            raise ConfigError(
                f"config path {where} is a directory, not a file",
                f"pass a YAML file in it, e.g. {' or '.join(inside)}"
                if inside
                else f"pass a YAML file, e.g. {option_hint('config', 'experiments/blobs.yaml')}",
            )
        if not p.is_file():
            raise ConfigError(
                f"config file {where} does not exist",
                f"pass an existing file, e.g. {option_hint('config', 'experiments/blobs.yaml')}",
            )
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            at = f" at line {line + 1}" if line is not None else ""
            raise ConfigError(f"{where}: invalid YAML{at}", "fix the YAML syntax") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"cannot read config file {where}: {exc}", "pass a readable UTF-8 YAML file"
            ) from None
        if loaded is None:
            # An empty file would otherwise train the built-in defaults without a word.
            raise ConfigError(
                f"config file {where} is empty (no settings, only comments or blank lines)",
                "write the experiment's settings in it, e.g. start from experiments/blobs.yaml",
            )
        if not isinstance(loaded, dict):
            raise ConfigError(f"{where}: top level must be a mapping", "write key: value pairs")
        raw = loaded
        raw.setdefault("name", p.stem)
    if overrides:
        if not isinstance(overrides, Mapping):
            overrides = parse_overrides(overrides)
        known = _schema_tree()
        for key, value in overrides.items():
            _apply(raw, key, value, known)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            _format_validation(exc, where), "correct that key (see experiments/*.yaml)"
        ) from None
    except ConfigError as exc:  # check_backend_settings: the key is already in the message
        raise ConfigError(f"{where}: {exc.problem}", exc.fix) from None
    cfg.source_path = str(path) if path else None
    return cfg
