"""The search: a parent MLflow run, trials on the cluster, the best model refitted and registered.

``search(cfg)`` is the main job of the project: :class:`Search`, whose methods are its steps
(``prepare``, ``run_trials``, ``summarise``, ``pick_best``, ``refit_best``, ``register``).  What
each step calls, module by module:

1. the Optuna study, new or resumed (:mod:`~toolkit.search.study`, one driver per study:
   :mod:`~toolkit.search.lease`), and on resume, the repair of what a dead driver or store
   left behind (:mod:`~toolkit.search.resume`);
2. the parent MLflow run (reused on resume; under ``mlflow run``, the run it created);
3. the data, loaded once and placed for the backend; trial- or data-parallel runners
   (:mod:`~toolkit.search.trials`);
4. the loop (:mod:`~toolkit.search.loop`): every finished trial becomes a child run written by
   this driver's one writer; with ``search.fidelity``, trials climb rungs of growing budget and
   an Optuna pruner stops the poor ones (:mod:`~toolkit.search.fidelity`);
5. the summary on the parent (:mod:`~toolkit.search.summary`), the best parameters refitted on
   all data, and, with ``register=True``, the model registered by the same call as ``train``'s.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit import _speedups
from toolkit.backends import FitResult, KMeansBackend, get_backend
from toolkit.cluster import client_info
from toolkit.config import ExperimentConfig, MetricsConfig
from toolkit.console import say
from toolkit.data import Dataset, load_dataset
from toolkit.errors import ConfigError
from toolkit.redact import redact
from toolkit.registry.register import warm_up
from toolkit.search import record
from toolkit.search import resume as repair
from toolkit.search.fidelity import check_rungs, log_budget
from toolkit.search.loop import LoopTarget, OptunaLoop, TrialLoop, cv_loop
from toolkit.search.objectives import (
    CHOSEN_TAG,
    choose,
    directions,
    is_multi,
    objective_names,
    pareto_figure,
    search_metrics,
)
from toolkit.search.space import check_space, model_for, trial_model
from toolkit.search.study import PARENT_ATTR, STORAGE_TAG, STORE_ATTR, journal_path, locate_study, open_study
from toolkit.search.summary import baseline_ari, best_trial, log_loop_timing, summarise
from toolkit.search.trials import DataParallelRunner, TrialParallelRunner, TrialRunner
from toolkit.tracking import log_dataset, log_metrics, log_params, log_tags, tags_for, tracked_run
from toolkit.tracking.runs import client, tracking_uri
from toolkit.tracking.writer import shared_writer, writer_for, writer_mode
from toolkit.train import (
    FittedModel,
    backend_session,
    fit_and_score,
    fit_progress,
    log_fit,
    log_registered_centroids,
    register_best,
    run_params,
)

__all__ = ["BEST_FROM_TAG", "BEST_MODEL_TAG", "Search", "SearchOutcome", "search"]

#: Parent-run tag: the objective of the model refitted (and registered) for this search.
BEST_MODEL_TAG = "search.best_model_value"
#: Parent-run tag: where the best model came from (a trial's own fit, or a refit).
BEST_FROM_TAG = "search.best_model_from"


@dataclass
class SearchOutcome:
    """What a search leaves for the caller (and the registry step)."""

    parent_run_id: str
    study_name: str
    experiment: str
    objective: str
    direction: str
    best_params: dict[str, Any]
    best_value: float
    counts: dict[str, int]
    best_fit: FitResult | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    resumed: bool = False
    baseline: float | None = None
    loop_seconds: float = 0.0
    trials: list[dict[str, Any]] = field(default_factory=list)
    #: On a resume: the objective of the model registered before (None: none was).
    previous_best: float | None = None
    #: What ``register=True`` registered (a :class:`toolkit.registry.Registered`), else None.
    registered: Any = None


def _mode(cfg: ExperimentConfig, cls: type[KMeansBackend]) -> str:
    mode = cls.parallelism if cfg.search.parallelism == "auto" else cfg.search.parallelism
    if mode == "trial" and cls.parallelism == "data":
        raise ConfigError(
            f"backend {cls.name!r} is data-parallel (one fit spans the cluster); it cannot run trial-parallel",
            "set search.parallelism=data or auto, or use a single-device backend (sklearn, cuml)",
        )
    return mode


def search(
    cfg: ExperimentConfig,
    client: Any = None,
    on_best: Callable[[SearchOutcome, KMeansBackend, Any, Dataset], None] | None = None,
    register: bool = False,
) -> SearchOutcome:
    """Run the configured hyperparameter search and return where its record is.

    Args:
        cfg: experiment config (``search`` section: strategy, space, objective, resume...).
        client: an existing Dask client to reuse; by default a cluster is started and closed.
        on_best: called with the outcome, backend, placed data and dataset after the best
            model is refitted, inside the parent run.
        register: log and register the refitted best model (native model and scikit-learn
            twin) under the config's registry names, as ``train(cfg, register=True)`` does.
            A resume registers only a model strictly better than the one it registered before.
    """
    return Search(cfg, client, on_best, register).run()


class Search:
    """One search, step by step: each step a method, its state the attributes below.

    :meth:`run` opens the study and the parent run, starts the backend, then calls in turn
    :meth:`prepare` (the data, checked and placed), :meth:`run_trials` (the loop),
    :meth:`summarise` (the parent's summary), :meth:`pick_best`, :meth:`refit_best` and
    :meth:`register`.  The speed tricks (:mod:`toolkit._speedups`) are asked for a head start
    where one helps; switched off, the same steps write the same record.
    """

    def __init__(self, cfg: ExperimentConfig, client: Any = None,
                 on_best: Callable[[SearchOutcome, KMeansBackend, Any, Dataset], None] | None = None,
                 register: bool = False) -> None:
        self.cfg, self.client, self.on_best, self.registering = cfg, client, on_best, register
        self.cls = get_backend(cfg.backend)
        self.cls.check_available()
        self.mode = _mode(cfg, self.cls)
        # One direction per objective; the first objective's is the search's (best_value, plots).
        self.directions = directions(cfg.search)
        self.direction = self.directions[0]
        self.objective = objective_names(cfg.search)[0]
        # Optuna runs every search but scikit-learn's own grid and random searches.
        self.use_optuna = cfg.search.strategy == "optuna" or cfg.backend != "sklearn"
        # Set by run():
        self.study: Any = None  # the Optuna study (None: a scikit-learn CV search)
        self.study_name = ""
        self.resumed = False
        self.parent = ""  # the parent MLflow run
        self.backend: KMeansBackend | None = None
        self.dclient: Any = None
        # Set by prepare() and run_trials():
        self.dataset: Dataset | None = None
        self.X: Any = None  # the data as placed for the backend
        self.loop: TrialLoop | None = None
        self.cv: Any = None  # the fitted scikit-learn CV search
        self.t_loop = 0.0

    def run(self) -> SearchOutcome:
        """The whole search: study, parent run, backend, then the steps inside the parent run."""
        cfg = self.cfg
        # Read first: a KMEANS_LIFECYCLE_WRITER that names no kind fails before any run exists.
        # A process asked for by name has its imports overlap the cluster start and the data
        # loading; otherwise run_trials chooses the writer once it knows the trials and the data.
        if writer_mode() == "process":
            _speedups.warm(shared_writer().start)
        lease, where, parent_to_resume = None, None, None
        if self.use_optuna:
            where = locate_study(cfg)
            self.study, self.resumed, lease = open_study(
                cfg, self.directions if is_multi(cfg.search) else self.direction, where)
            self.study_name = self.study.study_name
        else:
            self.study_name = f"{cfg.name}-{cfg.backend}-{cfg.search.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
        with _holding(lease):
            if self.resumed:
                parent_to_resume = repair.resume_target(self.study, self.study_name)
                repair.fold_launcher_run(parent_to_resume, self.study_name)
            with tracked_run(cfg.experiment_name, self.study_name, self._parent_tags(where),
                             resume_run_id=parent_to_resume, system_metrics=cfg.tracking.system_metrics) as parent:
                self.parent = parent
                if self.study is not None:
                    self.study.set_user_attr(PARENT_ATTR, parent)
                    self.study.set_user_attr(STORE_ATTR, redact(tracking_uri()))
                with backend_session(cfg, self.client, need_cluster=True, backend_cls=self.cls) as (backend, dclient):
                    self.backend, self.dclient = backend, dclient
                    self.run_trials(self.prepare())
                    return self.conclude()

    def _parent_tags(self, where: Any) -> dict[str, str]:
        search_cfg = self.cfg.search
        names = objective_names(search_cfg)
        return {"entry_point": "search", "search.study_name": self.study_name,
                "search.strategy": search_cfg.strategy, "search.objective": names[0],
                "search.direction": self.direction,
                **({"search.objectives": ",".join(names), "search.directions": ",".join(self.directions)}
                   if is_multi(search_cfg) else {}),
                "search.parallelism": self.mode, "config": str(self.cfg.source_path),
                # Where the study lives, for a resume from any directory (a password masked).
                **({STORAGE_TAG: redact(journal_path(where.storage))} if where is not None else {})}

    def prepare(self) -> int:
        """The data, loaded, recorded on the parent, checked and placed; on a resume, what a dead
        driver left settled.  Returns how many trials are left to run."""
        cfg, parent, backend = self.cfg, self.parent, self.backend
        log_tags(parent, tags_for(backend, client_info(self.dclient) if self.dclient else None))
        dataset = self.dataset = load_dataset(cfg.data)
        if not self.resumed:
            params = run_params(cfg, dataset)
            params.update({k: v for k, v in cfg.flat().items() if k.startswith("search.")})
            log_params(parent, params)
            log_dataset(parent, dataset)
        check_space(cfg.search, backend, dataset.n_samples, dataset.y is not None)
        check_rungs(cfg, dataset.n_samples)
        backend.validate(cfg.model, dataset.n_samples)
        self.X = backend.prepare(dataset)
        if self.study is None:
            return cfg.search.n_trials
        n_stale = repair.settle(cfg, self.study, parent, dataset.feature_names) if self.resumed else 0
        done, n_to_run = repair.trials_left(cfg, self.study)
        if self.resumed:
            say(f"resuming study {self.study_name}: {done} trials done ({n_stale} interrupted), {n_to_run} to run")
        return n_to_run

    def run_trials(self, n_to_run: int) -> None:
        """The trial loop: ``n_to_run`` trials, each a child run of the parent."""
        cfg, dataset = self.cfg, self.dataset
        # A process or a thread writes the child runs, by the trials' count and the data's size.
        writer = writer_for(n_to_run, dataset.n_samples * dataset.n_features)
        _speedups.warm(writer.start)
        self.loop = TrialLoop(LoopTarget(self.parent, self.study_name, dataset, self.direction,
                                         {"backend": cfg.backend, "search.parallelism": self.mode},
                                         cfg.model, cfg.search.seed_policy), n_to_run)
        if self.resumed and self.study is not None:
            self.loop.start_from_best(_study_best(self.study))
        self.t_loop = time.perf_counter()
        runner: TrialRunner | None = None
        try:
            if self.study is not None:
                runner = _runner(self.mode, self.backend, self.dclient, dataset, self.X, search_metrics(cfg))
                OptunaLoop(self.study, runner, self.loop, cfg.search, cfg.model).run(n_to_run)
                self.X = runner.refit_data(self.X)
            else:
                self.cv = cv_loop(cfg, _host(dataset), dataset.y, self.dclient, self.loop)
        except BaseException:
            if runner is not None:
                runner.cancel()  # queued trials must not go on running on a shared cluster
            self.loop.close(raise_errors=False)  # keep the real error, still flush what finished
            raise
        self.loop.close()
        log_loop_timing(self.parent, self.loop, time.perf_counter() - self.t_loop)

    def conclude(self) -> SearchOutcome:
        """After the loop: the summary, the best trial, its model refitted and registered."""
        search_cfg = self.cfg.search
        # The baseline (a 10-init fit on all rows, in compiled code that releases the GIL) may
        # run beside the summary, the best model and its registration.
        baseline = _start_baseline(self.dataset, self.cfg.model.random_state, search_cfg.baseline_sample)
        jobs: list[concurrent.futures.Future | None] = []  # the writer's, joined before the parent run ends
        with _joined(jobs):
            counts, figures = self.summarise()
            jobs.append(figures)
            outcome = self.pick_best(counts)
            # A resume refits and registers only a strictly better model than the one this search
            # already registered: the same best again would be a second version of the same model.
            outcome.previous_best = _best_model_value(self.parent)
            improved = outcome.previous_best is None or self.loop.better(outcome.best_value, outcome.previous_best)
            if not improved:
                say(f"no better model than the one this search already registered ({self.objective} "
                    f"{outcome.previous_best:.6g}); nothing new refitted or registered")
            best_job = self.refit_best(outcome) if search_cfg.refit and improved else None
            jobs.append(best_job)
            if outcome.best_fit is not None and self.registering:
                _speedups.warm(warm_up)  # registration's one-time imports while the baseline runs
            if baseline is not None:
                self._log_baseline(outcome, baseline.result())
            if outcome.best_fit is not None:
                jobs.append(self.register(outcome, best_job))
        return outcome

    def summarise(self) -> tuple[dict[str, int], concurrent.futures.Future | None]:
        """The parent's summary (counts, tables, figures); the figures' writer job."""
        counts, figures = summarise(self.cfg, self.loop, self.parent, self.study, self.cv)
        if self.study is not None and self.cfg.search.fidelity.enabled:
            log_budget(self.cfg, self.study, self.parent, self.dataset.n_samples)
        return counts, figures

    def pick_best(self, counts: dict[str, int]) -> SearchOutcome:
        """The best trial's parameters and value, logged on the parent, as the outcome.

        Raises:
            ConfigError: no trial finished.
        """
        if is_multi(self.cfg.search):
            best_params, best_value = _chosen_on_front(self.cfg, self.study, self.loop, self.parent)
        else:
            best_params, best_value = best_trial(self.study, self.loop, self.direction)
        if best_params is None:
            raise ConfigError(
                f"no trial of {self.study_name} finished ({counts['failed']} failed); see the child runs' error tags",
                "fix the cause shown there, or widen search.space",
            )
        log_params(self.parent, {f"best.{k}": v for k, v in best_params.items()})
        log_metrics(self.parent, {f"best_{self.objective}": best_value, "best_value": best_value})
        return SearchOutcome(self.parent, self.study_name, _experiment_name(self.parent), self.objective,
                             self.direction, best_params, best_value, counts, resumed=self.resumed,
                             trials=self.loop.rows, loop_seconds=time.perf_counter() - self.t_loop)

    def refit_best(self, outcome: SearchOutcome) -> concurrent.futures.Future | None:
        """The best model (the best trial's own fit where a refit would repeat it, else a refit
        on all rows), logged as the parent's ``best_model/``; the writer's job that draws it."""
        cfg, backend, params = self.cfg, self.backend, outcome.best_params
        best_model = model_for(cfg.model, {k: v for k, v in params.items() if k != "random_state"},
                               seed=params.get("random_state"))
        reused = _trial_fit(self.loop, params, backend, self.X, best_model)
        if reused is not None:
            fit, metrics = reused
            log_tags(self.parent, {BEST_FROM_TAG: f"trial {fit.extra['trial']} (its fit on all rows, not refitted)"})
        else:
            with fit_progress(backend, self.parent, f"refit {cfg.backend}"):
                fit, metrics = fit_and_score(backend, self.X, best_model, search_metrics(cfg), self.dataset.y)
            log_tags(self.parent, {BEST_FROM_TAG: "refit of the best parameters on all rows"})
        outcome.best_fit, outcome.best_metrics = fit, metrics
        # The centroids' CSV and plot are drawn by the writer process, like the figures.
        return log_fit(self.parent, cfg, self._fitted(outcome), artifact_path="best_model", writer=shared_writer())

    def register(self, outcome: SearchOutcome,
                 best_job: concurrent.futures.Future | None) -> concurrent.futures.Future | None:
        """With ``register=True``, the best model registered (and ``best_model/`` written again in
        the registered cluster IDs, after ``best_job``); then ``on_best`` and the parent's tag
        of the best model's value.  Returns the writer's job, if any."""
        job = None
        if self.registering:
            fitted = self._fitted(outcome)
            outcome.registered = register_best(self.cfg, fitted, self.parent, search_parent_run_id=self.parent)
            if outcome.registered.order is not None:
                # Renumbered to the champion's IDs: best_model/ is written again in those IDs,
                # after its first write (the same files) is done.
                if best_job is not None:
                    best_job.result()
                job = log_registered_centroids(self.parent, self.cfg, fitted, outcome.registered,
                                               artifact_path="best_model", writer=shared_writer())
        if self.on_best is not None:
            self.on_best(outcome, self.backend, self.X, self.dataset)
        log_tags(self.parent, {BEST_MODEL_TAG: repr(outcome.best_value)})
        return job

    def _fitted(self, outcome: SearchOutcome) -> FittedModel:
        return FittedModel(self.backend, outcome.best_fit, outcome.best_metrics, self.X, self.dataset)

    def _log_baseline(self, outcome: SearchOutcome, value: float) -> None:
        """The labelled baseline's ARI on the parent, and what it was fitted on."""
        dataset, sample = self.dataset, self.cfg.search.baseline_sample
        outcome.baseline = value
        log_metrics(self.parent, {"baseline_adjusted_rand": value})
        rows = min(sample, dataset.n_samples)
        on = "all rows" if rows >= dataset.n_samples else f"a seeded sample of {rows:,} of {dataset.n_samples:,} rows"
        log_tags(self.parent, {"baseline": f"sklearn KMeans(n_clusters={len(np.unique(dataset.y))}, "
                                           f"n_init=10, random_state={self.cfg.model.random_state}) on {on}"})


def _study_best(study: Any) -> float | None:
    """The best value of a single-objective study's completed trials (None: none, or several
    objectives, which have no one best)."""
    from optuna.trial import TrialState

    if len(study.directions) != 1:
        return None
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return float(study.best_value) if done else None


def _start_baseline(dataset: Dataset, seed: int, sample: int) -> concurrent.futures.Future | None:
    """The labelled baseline's ARI, as a future (None: no labels, or ``search.baseline_sample=0``)."""
    if dataset.y is None or dataset.is_lazy or sample == 0:
        return None
    return _speedups.background(baseline_ari, dataset, seed, sample, imports=("sklearn.cluster", "sklearn.metrics"),
                                name="search-baseline")


def _trial_fit(loop: TrialLoop, best_params: dict[str, Any], backend: KMeansBackend, X: Any,
               model: Any) -> tuple[FitResult, dict[str, float]] | None:
    """The best trial's own fit as the best model, when refitting would only repeat it.

    Only for ``sklearn`` (its native model is a scikit-learn KMeans, rebuilt exactly from the
    trial's centres) and a trial fitted on every row with these parameters (seed included):
    scikit-learn's fit is deterministic for a given seed, so a refit gives the same centres (up
    to float rounding: the thread count changes the order of Lloyd's sums), and its labels are
    those centres' predictions (its last step assigns every row again).
    None otherwise: the caller refits.
    """
    res = loop.full_fit(best_params)
    if backend.name != "sklearn" or res is None or res.centers is None or not isinstance(X, np.ndarray):
        return None
    from toolkit.convert import sklearn_from_centers

    metrics = dict(res.metrics)
    n_iter = int(metrics.get("n_iter", 0))
    native = sklearn_from_centers(res.centers, params=model, inertia=metrics.get("inertia"),
                                  n_iter=n_iter or None, dtype=X.dtype, n_features_in=X.shape[1])
    labels = native.predict(X).astype(np.int32, copy=False)
    native.labels_ = labels
    fit = FitResult(model=native, centers=np.asarray(res.centers, dtype=np.float64),
                    inertia=float(metrics.get("inertia", np.nan)), n_iter=n_iter,
                    fit_seconds=float(metrics.get("fit_seconds", np.nan)), labels=labels,
                    extra={"trial": res.key})
    return fit, metrics


def _runner(mode: str, backend: KMeansBackend, dclient: Any, dataset: Dataset, X: Any,
            metrics_cfg: MetricsConfig) -> TrialRunner:
    if mode == "trial":
        # Workers get host data and place it themselves (a GPU worker on its own GPU).
        return TrialParallelRunner(dclient, backend.name, _host(dataset), dataset.y, metrics_cfg)
    # With the dataset, it places the data again after a lost worker.
    return DataParallelRunner(backend, X, dataset.y, metrics_cfg, dataset=dataset)


def _chosen_on_front(cfg: ExperimentConfig, study: Any, loop: TrialLoop,
                     parent: str) -> tuple[dict[str, Any] | None, float]:
    """Multi-objective: the trial of the Pareto front to refit and register (its full params
    and first objective), with the front plotted and the choice tagged on the parent."""
    names, dirs = objective_names(cfg.search), directions(cfg.search)
    chosen, reason, front = choose(study, names, dirs)
    if chosen is None:
        return None, float("nan")
    record.log_figure(parent, pareto_figure(study, names, dirs, front, chosen), "pareto_front.png")
    log_tags(parent, {CHOSEN_TAG: f"{chosen.number}: {reason}"})
    log_metrics(parent, {"pareto_front_size": float(len(front)),
                         **{f"chosen_{n}": float(v) for n, v in zip(names, chosen.values, strict=True)}})
    row = next((r for r in loop.rows if r["number"] == chosen.number and r["value"] is not None), None)
    if row is not None:
        params = {k[len("params_"):]: v for k, v in row.items() if k.startswith("params_")}
    else:
        params = trial_model(cfg.model, chosen.params, chosen.number, cfg.search.seed_policy).model_dump()
    return params, float(chosen.values[0])


def _best_model_value(parent: str) -> float | None:
    raw = client().get_run(parent).data.tags.get(BEST_MODEL_TAG)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _experiment_name(run_id: str) -> str:
    """The experiment a run really went to (under ``mlflow run`` not necessarily the config's)."""
    c = client()
    return c.get_experiment(c.get_run(run_id).info.experiment_id).name


@contextlib.contextmanager
def _joined(jobs: list[concurrent.futures.Future | None]) -> Iterator[None]:
    """Wait for the writer's jobs (the block may add some) before the parent run ends: the first
    error (a failed write) when the block succeeded, none when the block's own is on its way."""
    try:
        yield
    except BaseException:
        concurrent.futures.wait([j for j in jobs if j is not None])
        raise
    for job in jobs:
        if job is not None:
            job.result()


@contextlib.contextmanager
def _holding(lease: Any) -> Iterator[None]:
    """Release the study's driver lease however the search ends."""
    try:
        yield
    finally:
        if lease is not None:
            lease.release()


def _host(dataset: Dataset) -> np.ndarray:
    """The dataset's features as one in-memory NumPy array."""
    return np.asarray(dataset.X.compute() if dataset.is_lazy else dataset.X)
