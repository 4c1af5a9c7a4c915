"""The search: a parent MLflow run, trials on the cluster, the best model refitted and registered.

``search(cfg)`` is the main job of the project.  Its steps, each in its own module:

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

from toolkit.backends import FitResult, KMeansBackend, get_backend
from toolkit.cluster import client_info
from toolkit.config import ExperimentConfig
from toolkit.console import say
from toolkit.data import Dataset, load_dataset
from toolkit.errors import ConfigError
from toolkit.redact import redact
from toolkit.registry.register import warm_up
from toolkit.search import record
from toolkit.search import resume as repair
from toolkit.search.fidelity import check_rungs, log_budget
from toolkit.search.loop import TrialLoop, cv_loop, optuna_loop
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
from toolkit.tracking.writer import shared_writer
from toolkit.train import backend_session, fit_and_score, log_fit, log_registered_centroids, register_best, run_params

__all__ = ["BEST_FROM_TAG", "BEST_MODEL_TAG", "SearchOutcome", "search"]

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
    cls = get_backend(cfg.backend)
    cls.check_available()
    mode = _mode(cfg, cls)
    shared_writer().start()  # the child-run writer's imports overlap the cluster start and data loading
    # One direction per objective; the first objective's is the search's (best_value, plots).
    dirs = directions(cfg.search)
    direction = dirs[0]
    use_optuna = cfg.search.strategy == "optuna" or cfg.backend != "sklearn"

    study, resumed, lease, parent_to_resume, where = None, False, None, None, None
    if use_optuna:
        where = locate_study(cfg)
        study, resumed, lease = open_study(cfg, dirs if is_multi(cfg.search) else direction, where)
        study_name = study.study_name
    else:
        study_name = f"{cfg.name}-{cfg.backend}-{cfg.search.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    with _holding(lease):
        if resumed:
            parent_to_resume = repair.resume_target(study, study_name)
            repair.fold_launcher_run(parent_to_resume, study_name)
        tags = {"entry_point": "search", "search.study_name": study_name, "search.strategy": cfg.search.strategy,
                "search.objective": objective_names(cfg.search)[0], "search.direction": direction,
                **({"search.objectives": ",".join(objective_names(cfg.search)), "search.directions": ",".join(dirs)}
                   if is_multi(cfg.search) else {}),
                "search.parallelism": mode, "config": str(cfg.source_path),
                # Where the study lives, for a resume from any directory (a password masked).
                **({STORAGE_TAG: redact(journal_path(where.storage))} if where is not None else {})}
        with tracked_run(cfg.experiment_name, study_name, tags, resume_run_id=parent_to_resume,
                         system_metrics=cfg.tracking.system_metrics) as parent:
            if study is not None:
                study.set_user_attr(PARENT_ATTR, parent)
                study.set_user_attr(STORE_ATTR, redact(tracking_uri()))
            with backend_session(cfg, client, need_cluster=True, backend_cls=cls) as (backend, dclient):
                return _search_in_run(cfg, parent, study, study_name, resumed, mode, direction,
                                      backend, dclient, on_best, register)


def _search_in_run(cfg: ExperimentConfig, parent: str, study: Any, study_name: str, resumed: bool, mode: str,
                   direction: str, backend: KMeansBackend, dclient: Any,
                   on_best: Callable[..., None] | None, register: bool) -> SearchOutcome:
    """Steps 3-5 inside the parent run, on a started backend."""
    objective = objective_names(cfg.search)[0]
    log_tags(parent, tags_for(backend, client_info(dclient) if dclient else None))
    dataset = load_dataset(cfg.data)
    if not resumed:
        params = run_params(cfg, dataset)
        params.update({k: v for k, v in cfg.flat().items() if k.startswith("search.")})
        log_params(parent, params)
        log_dataset(parent, dataset)
    check_space(cfg.search, backend, dataset.n_samples, dataset.y is not None)
    check_rungs(cfg, dataset.n_samples)
    backend.validate(cfg.model, dataset.n_samples)
    X = backend.prepare(dataset)

    if study is not None:
        n_stale = repair.settle(cfg, study, parent, dataset.feature_names) if resumed else 0
        done, n_to_run = repair.trials_left(cfg, study)
        if resumed:
            say(f"resuming study {study_name}: {done} trials done ({n_stale} interrupted), {n_to_run} to run")
    else:
        n_to_run = cfg.search.n_trials
    loop = TrialLoop(cfg, parent, study_name, dataset, direction, n_to_run,
                     {"backend": cfg.backend, "search.parallelism": mode})
    if resumed and study is not None:
        loop.start_from_best(_study_best(study))
    cv = None
    t_loop = time.perf_counter()
    runner: TrialRunner | None = None
    try:
        if study is not None:
            runner = _runner(cfg, mode, backend, dclient, dataset, X)
            optuna_loop(cfg, study, runner, loop, n_to_run)
            X = runner.refit_data(X)
        else:
            cv = cv_loop(cfg, _host(dataset), dataset.y, dclient, loop)
    except BaseException:
        if runner is not None:
            runner.cancel()  # queued trials must not go on running on a shared cluster
        loop.close(raise_errors=False)  # keep the real error, still flush what finished
        raise
    loop.close()
    log_loop_timing(parent, loop, time.perf_counter() - t_loop)
    # The baseline (a 10-init fit on all rows, in compiled code that releases the GIL) runs on
    # a thread while this one writes the summary, the best model and its registration.
    baseline = _start_baseline(dataset, cfg.model.random_state, cfg.search.baseline_sample)
    counts, figures = summarise(cfg, loop, parent, study, cv)
    jobs = [figures]
    best_job = None  # the writer's job logging best_model/
    with _joined(jobs):
        if study is not None and cfg.search.fidelity.enabled:
            log_budget(cfg, study, parent, dataset.n_samples)
        if is_multi(cfg.search):
            best_params, best_value = _chosen_on_front(cfg, study, loop, parent)
        else:
            best_params, best_value = best_trial(study, loop, direction)
        if best_params is None:
            raise ConfigError(
                f"no trial of {study_name} finished ({counts['failed']} failed); see the child runs' error tags",
                "fix the cause shown there, or widen search.space",
            )
        log_params(parent, {f"best.{k}": v for k, v in best_params.items()})
        log_metrics(parent, {f"best_{objective}": best_value, "best_value": best_value})
        outcome = SearchOutcome(parent, study_name, _experiment_name(parent), objective, direction,
                                best_params, best_value, counts, resumed=resumed, trials=loop.rows,
                                loop_seconds=time.perf_counter() - t_loop)
        # A resume refits and registers only a strictly better model than the one this search
        # already registered: the same best again would be a second version of the same model.
        outcome.previous_best = _best_model_value(parent)
        improved = outcome.previous_best is None or loop.better(best_value, outcome.previous_best)
        if not improved:
            say(f"no better model than the one this search already registered ({objective} "
                f"{outcome.previous_best:.6g}); nothing new refitted or registered")
        if cfg.search.refit and improved:
            best_model = model_for(cfg.model, {k: v for k, v in best_params.items() if k != "random_state"},
                                   seed=best_params.get("random_state"))
            reused = _trial_fit(loop, best_params, backend, X, best_model)
            if reused is not None:
                fit, metrics = reused
                log_tags(parent, {BEST_FROM_TAG: f"trial {fit.extra['trial']} (its fit on all rows, not refitted)"})
            else:
                fit, metrics = fit_and_score(backend, X, best_model, search_metrics(cfg), dataset.y)
                log_tags(parent, {BEST_FROM_TAG: "refit of the best parameters on all rows"})
            # The centroids' CSV and plot are drawn by the writer process, like the figures.
            best_job = log_fit(parent, cfg, dataset, fit, metrics, X, backend, artifact_path="best_model",
                               writer=shared_writer())
            jobs.append(best_job)
            outcome.best_fit, outcome.best_metrics = fit, metrics
        if outcome.best_fit is not None and register:
            # Registration's one-time imports now, while the baseline's thread and the writer's
            # figure jobs run. On a thread during the loop they slowed the trials (the GIL);
            # on a thread beside this one they could meet its imports (an import deadlock).
            warm_up()
        if baseline is not None:
            outcome.baseline = baseline.result()
            log_metrics(parent, {"baseline_adjusted_rand": outcome.baseline})
            rows = min(cfg.search.baseline_sample, dataset.n_samples)
            on = ("all rows" if rows >= dataset.n_samples
                  else f"a seeded sample of {rows:,} of {dataset.n_samples:,} rows")
            log_tags(parent, {"baseline": f"sklearn KMeans(n_clusters={len(np.unique(dataset.y))}, "
                                          f"n_init=10, random_state={cfg.model.random_state}) on {on}"})
        if outcome.best_fit is not None:
            if register:
                outcome.registered = register_best(cfg, backend, outcome.best_fit, X, dataset, parent,
                                                   outcome.best_metrics, search_parent_run_id=parent)
                if outcome.registered.order is not None:
                    # Renumbered to the champion's IDs: best_model/ is written again in those IDs,
                    # after its first write (the same files) is done.
                    if best_job is not None:
                        best_job.result()
                    jobs.append(log_registered_centroids(parent, cfg, dataset, outcome.best_fit, X, backend,
                                                         outcome.registered, artifact_path="best_model",
                                                         writer=shared_writer()))
            if on_best is not None:
                on_best(outcome, backend, X, dataset)
            log_tags(parent, {BEST_MODEL_TAG: repr(best_value)})
        return outcome


def _study_best(study: Any) -> float | None:
    """The best value of a single-objective study's completed trials (None: none, or several
    objectives, which have no one best)."""
    from optuna.trial import TrialState

    if len(study.directions) != 1:
        return None
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return float(study.best_value) if done else None


def _start_baseline(dataset: Dataset, seed: int, sample: int) -> concurrent.futures.Future | None:
    """The labelled baseline's ARI, computing on a thread of its own (None: no labels, or
    ``search.baseline_sample=0``)."""
    if dataset.y is None or dataset.is_lazy or sample == 0:
        return None
    # Imported on this thread: the thread below then only computes, never importing while
    # this one imports too (Python can refuse such a pair of imports as a deadlock).
    import sklearn.cluster
    import sklearn.metrics  # noqa: F401
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="search-baseline")
    try:
        return pool.submit(baseline_ari, dataset, seed, sample)
    finally:
        pool.shutdown(wait=False)  # the thread ends with its one job


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


def _runner(cfg: ExperimentConfig, mode: str, backend: KMeansBackend, dclient: Any, dataset: Dataset,
            X: Any) -> TrialRunner:
    if mode == "trial":
        # Workers get host data and place it themselves (a GPU worker on its own GPU).
        return TrialParallelRunner(dclient, cfg.backend, _host(dataset), dataset.y, search_metrics(cfg))
    # With the dataset, it places the data again after a lost worker.
    return DataParallelRunner(backend, X, dataset.y, search_metrics(cfg), dataset=dataset)


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
