"""The search: a parent MLflow run, trials on the cluster, the best model refitted.

``search(cfg)`` is the main job of the project.  Flow:

1. open (or resume) the Optuna study and the MLflow parent run (reused on resume; under
   ``mlflow run`` the run ``mlflow run`` created is the parent);
2. load the data once, place it for the backend, and pick trial- or data-parallel execution;
3. ask/tell loop (Optuna) or ``GridSearchCV``/``RandomizedSearchCV`` on joblib-dask;
   every finished trial becomes a child run written by this driver alone;
4. summary on the parent: best params/value, trial counts, plots, tables; the best
   parameters refitted on the full data and logged as the parent's model.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.backends import FitResult, KMeansBackend, get_backend
from toolkit.cluster import client_info
from toolkit.config import ExperimentConfig, ModelConfig
from toolkit.console import progress, say
from toolkit.data import Dataset, load_dataset
from toolkit.errors import ConfigError
from toolkit.metrics import METRIC_DIRECTIONS
from toolkit.redact import redact
from toolkit.search import record
from toolkit.search.space import check_space, model_for, suggest
from toolkit.search.study import PARENT_ATTR, STORE_ATTR, open_study, stale_trials
from toolkit.search.trials import DataParallelRunner, TrialParallelRunner, TrialResult
from toolkit.tracking import (
    log_dataset,
    log_metrics,
    log_params,
    log_tags,
    mark_failed,
    tags_for,
    tracked_run,
)
from toolkit.tracking.runs import client, tracking_uri
from toolkit.tracking.writer import shared_writer
from toolkit.train import backend_session, fit_and_score, log_fit, run_params

__all__ = ["SearchOutcome", "search"]


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


def _mode(cfg: ExperimentConfig, cls: type[KMeansBackend]) -> str:
    mode = cls.parallelism if cfg.search.parallelism == "auto" else cfg.search.parallelism
    if mode == "trial" and cls.parallelism == "data":
        raise ConfigError(
            f"backend {cls.name!r} is data-parallel (one fit spans the cluster); it cannot run trial-parallel",
            "set search.parallelism=data or auto, or use a single-device backend (sklearn, cuml)",
        )
    return mode


def _trial_params(model: ModelConfig) -> dict[str, Any]:
    return model.model_dump()


INTERRUPTED_ATTR = "interrupted"


def _fail_stale(cfg: ExperimentConfig, study: Any, parent_run_id: str, feature_names: list[str]) -> int:
    """Settle what a dead driver left behind, so every finished trial has exactly one child run.

    * a child run left RUNNING (its writer was killed mid-write, or the store went down) is
      rewritten whole from the result the study kept, or finished if Optuna holds its trial as
      COMPLETE without one, else failed as interrupted;
    * trials left RUNNING in Optuna are failed (and re-run: they do not use up ``n_trials``),
      with a FAILED child unless they already have one;
    * finished trials whose child was never started are written now (backfilled).
    """
    from optuna.trial import TrialState

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    numbered: dict[int, list[Any]] = {}
    for run in record.child_runs(parent_run_id):
        if "optuna.trial_number" in run.data.tags:
            numbered.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    for number, runs in list(numbered.items()):
        for run in runs:
            if run.info.status != "RUNNING":
                continue
            t = trials.get(number)
            if t is not None and t.state == TrialState.COMPLETE and t.user_attrs.get(RESULT_ATTR):
                # The study kept the whole result: replace the half-written run by a complete one.
                record.discard_run(run.info.run_id, "half-written (the driver or the store stopped); rewritten")
                numbered[number] = [r for r in numbered[number] if r is not run]
                if not numbered[number]:
                    del numbered[number]
            elif t is not None and t.state == TrialState.COMPLETE:
                record.finish_interrupted_run(run.info.run_id, t.value, _end_of(t))
            elif t is not None and t.state == TrialState.FAIL:
                mark_failed(run.info.run_id, "the trial failed; the search driver stopped while writing its run")
            else:
                mark_failed(run.info.run_id, "interrupted: the search driver stopped before this trial finished")
    stale = stale_trials(study)
    for t in stale:
        # Remembered so that a resume re-runs it (an interrupted trial is not a finished one).
        study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED_ATTR, True)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        if t.number in numbered:
            continue
        started = t.datetime_start.timestamp() if t.datetime_start else time.time()
        record.log_trial_run(
            parent_run_id, study.study_name, t.number,
            dict(t.params), {}, {"backend": cfg.backend}, "FAILED",
            started, time.time(), None, feature_names,
            error="interrupted: the search driver stopped before this trial finished",
        )
    _backfill_children(cfg, study, parent_run_id, logged=set(numbered) | {t.number for t in stale},
                       feature_names=feature_names)
    return len(stale)


def _end_of(trial: Any) -> float:
    return trial.datetime_complete.timestamp() if trial.datetime_complete else time.time()


def _backfill_children(cfg: ExperimentConfig, study: Any, parent_run_id: str, logged: set[int],
                       feature_names: list[str] | None = None) -> None:
    """Write the child run of any trial Optuna recorded but whose run was never written (the
    driver died, or the tracking store was down): with the metrics and centroids the trial
    kept in the study when there are any."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if t.number in logged:
            continue
        ok = t.state == TrialState.COMPLETE
        kept = t.user_attrs.get(RESULT_ATTR) or {}
        started = kept.get("started") or (t.datetime_start.timestamp() if t.datetime_start else time.time())
        finished = kept.get("finished") or _end_of(t)
        metrics = {**kept.get("metrics", {}), **({"objective": t.value} if ok else {})}
        centers = np.asarray(kept["centers"]) if kept.get("centers") is not None else None
        params = {**cfg.model.model_dump(), **t.params, "random_state": cfg.model.random_state + t.number}
        record.log_trial_run(
            parent_run_id, study.study_name, t.number, params, metrics,
            {"backend": cfg.backend, "trial.backfilled": "true", "trial.worker": kept.get("worker", "")},
            "FINISHED" if ok else "FAILED", started, finished, centers, feature_names,
            error=None if ok else "the trial failed; its run was written after a resume",
        )


class _Loop:
    """Shared bookkeeping for both strategies: child runs, progress, best-so-far."""

    def __init__(self, cfg: ExperimentConfig, parent_run_id: str, study_name: str, dataset: Dataset,
                 direction: str, total: int, base_tags: dict[str, str]) -> None:
        self.cfg = cfg
        self.parent = parent_run_id
        self.study_name = study_name
        self.dataset = dataset
        self.direction = direction
        self.base_tags = base_tags
        self.rows: list[dict[str, Any]] = []
        self.best: float | None = None
        self.bar = progress(total, f"search {study_name}")
        self.t0 = time.time()
        # The one MLflow writer for child runs (started early by ``search``): a separate process
        # writing one run at a time, in the order trials end, while this thread goes straight
        # back to the workers.
        self._writer = shared_writer()
        self._writes: list[concurrent.futures.Future] = []
        self._slot_end: dict[str, float] = {}

    def better(self, value: float, than: float | None) -> bool:
        if than is None:
            return True
        return value > than if self.direction == "maximize" else value < than

    def _schedule_s(self, res: TrialResult) -> float:
        """Scheduling overhead of a trial: how long its thread sat idle before starting it.

        Measured on the worker's own clock from the end of the thread's previous trial in this
        search: the hand-off back, the driver's tell/ask/submit and the hand-off out, or ~0 when
        the trial was already queued there (``search.prefetch``).  A thread's first trial has no
        previous end; it counts its round trip instead (submitted to received, minus compute).
        Added to the child run's write time, it is the per-trial overhead the benchmark reports.
        """
        if not res.received:
            return 0.0
        prev_end = self._slot_end.get(res.slot) if res.slot else None
        if res.slot:
            self._slot_end[res.slot] = res.finished
        if prev_end is not None:
            return max(0.0, res.started - prev_end)
        return max(0.0, (res.received - res.submitted) - (res.finished - res.started))

    def check_writes(self) -> None:
        """Stop the search as soon as a child run could not be written.

        Trials would go on and their runs could not be written either; the trials already told
        are kept in the study, and a resume writes their runs once the store is fixed.
        """
        failed = next((f for f in self._writes if f.done() and f.exception() is not None), None)
        if failed is None:
            self._writes = [f for f in self._writes if not f.done()]
            return
        raise _write_error(failed.exception())

    def finish_trial(self, number: int, res: TrialResult, value: float | None, extra_tags: dict[str, str]) -> None:
        self.check_writes()
        status = "FINISHED" if res.ok and value is not None else "FAILED"
        metrics = dict(res.metrics)
        if value is not None:
            metrics["objective"] = value
        tags = {**self.base_tags, "trial.worker": res.worker, **extra_tags}
        sched_s = self._schedule_s(res)
        row = {"number": number, "state": status, "run_id": None, "value": value,
               "duration_s": res.finished - res.started, "worker": res.worker, "error": res.error,
               "schedule_s": sched_s, "mlflow_write_s": None, "mlflow_write_cpu_s": None, "overhead_s": None,
               **{f"params_{k}": v for k, v in res.params.model_dump().items()},
               **{f"metric_{k}": v for k, v in res.metrics.items()}}
        self.rows.append(row)

        def written(fut: concurrent.futures.Future) -> None:
            if fut.exception() is None:
                row["run_id"], row["mlflow_write_s"], row["mlflow_write_cpu_s"] = fut.result()
                row["overhead_s"] = sched_s + row["mlflow_write_s"]

        fut = self._writer.submit(
            record.log_trial_run, self.parent, self.study_name, number, _trial_params(res.params),
            metrics, tags, status, res.started, res.finished, res.centers, self.dataset.feature_names,
            error=res.error,
        )
        fut.add_done_callback(written)
        self._writes.append(fut)
        if value is not None and self.better(value, self.best):
            self.best = value
        self.bar.update(1)
        self.bar.set_postfix(best=f"{self.best:.4g}" if self.best is not None else "-", refresh=False)

    def close(self, raise_errors: bool = True) -> None:
        """Wait for every child run to be written; raise the first write error."""
        concurrent.futures.wait(self._writes)
        self.bar.close()
        errors = [f.exception() for f in self._writes if f.exception() is not None]
        if errors and raise_errors:
            raise _write_error(errors[0])


def _write_error(exc: BaseException) -> BaseException:
    """A child-run write failure as the one-line error that stops the search."""
    from toolkit.errors import ToolkitError
    from toolkit.tracking.retry import TrackingUnavailableError, is_transient, mark_down, unavailable

    if isinstance(exc, TrackingUnavailableError) or is_transient(exc):
        why = exc.problem if isinstance(exc, TrackingUnavailableError) else " ".join(str(exc).split())[:200]
        mark_down(tracking_uri(), why)  # this process stops trying too: fail fast, not per call
        return exc if isinstance(exc, TrackingUnavailableError) else unavailable(tracking_uri(), why)
    if isinstance(exc, ToolkitError):
        return exc
    line = str(exc).splitlines()[0] if str(exc) else ""
    return ToolkitError(
        redact(f"cannot write a trial's run to the tracking store {tracking_uri()}: {type(exc).__name__}: {line}"),
        "fix the store (permissions, disk space), then rerun with resume=true: the trials already "
        "computed are kept in the Optuna study and their runs are written then",
    )


#: ``auto`` prefetch covers this much hand-off with queued trials: a trial's result back to the
#: driver, tell/ask, and the next trial out (25-35 ms measured on a busy 2-core machine, for
#: trials of any length).
_HANDOFF_S = 0.05
_AUTO_MAX_QUEUED = 3


def _in_flight_target(runner: Any, prefetch: int | str, rows: list[dict[str, Any]],
                      left: int | None = None) -> int:
    """How many trials to keep submitted, with ``left`` trials still to ask for.

    Trial-parallel: every worker thread runs one trial and has ``prefetch`` more queued behind
    it, so it starts the next one without waiting for the driver's round trip.  ``auto``
    queues one, and more (up to 3) when recent trials are shorter than the ~50 ms hand-off.
    The price is that the sampler sees results a little later (TPE runs with its
    constant-liar option for trials in flight).  The last ``slots`` trials are never queued:
    each goes to the first thread that runs dry.  Queued behind a long trial, one of them kept
    the other worker idle for up to a whole trial at the end of a search (0.25-0.45 s of a
    3.8 s, 16-trial search measured; Dask's work stealing did not move it).
    Data-parallel: one fit at a time.
    """
    slots = runner.slots
    if runner.mode != "trial" or (left is not None and left <= slots):
        return slots
    if prefetch == "auto":
        recent = [r["duration_s"] for r in rows[-4 * slots:] if r.get("duration_s") is not None]
        typical = statistics.median(recent) if recent else math.inf
        queued = min(_AUTO_MAX_QUEUED, max(1, math.ceil(_HANDOFF_S / max(typical, 1e-3))))
    else:
        queued = int(prefetch)
    return slots * (1 + queued)


def _optuna_loop(cfg: ExperimentConfig, study: Any, runner: Any, loop: _Loop, n_to_run: int) -> None:
    from optuna.trial import TrialState

    from toolkit.search.trials import INFRASTRUCTURE_ATTR

    objective = cfg.search.objective
    in_flight: dict[int, Any] = {}
    asked = finished = 0

    def fill() -> None:
        nonlocal asked
        batch = []
        while asked < n_to_run and runner.pending() + len(batch) < _in_flight_target(
                runner, cfg.search.prefetch, loop.rows, n_to_run - asked):
            trial = study.ask()
            params = model_for(cfg.model, suggest(trial, cfg.search), seed=cfg.model.random_state + trial.number)
            in_flight[trial.number] = trial
            batch.append((trial.number, params))
            asked += 1
        # Submitted back to back, after the (slow) asks: the scheduler sees the free slots
        # together and spreads the trials over the workers instead of reusing one idle worker.
        for number, params in batch:
            runner.submit(number, params)

    while finished < n_to_run:
        fill()
        told = []
        for res in runner.results():
            trial = in_flight.pop(res.key)
            value = res.metrics.get(objective) if res.ok else None
            if value is not None and not math.isfinite(value):
                res.error = res.error or f"objective {objective} is undefined (NaN) for this clustering"
                value = None
            if value is None:
                if res.infra:  # lost with a worker, retries spent: a resume runs it again
                    trial.set_user_attr(INFRASTRUCTURE_ATTR, True)
                study.tell(trial, state=TrialState.FAIL)
            else:
                _remember(trial, res)
                study.tell(trial, value)
            told.append((res, value, trial))
        fill()  # workers start the next trials while the driver writes MLflow runs
        for res, value, trial in told:
            retried = {"trial.attempts": str(res.attempts)} if res.attempts > 1 else {}
            lost = {"trial.infrastructure_failure": "true"} if res.infra else {}
            loop.finish_trial(res.key, res, value, {"optuna.trial_id": str(trial._trial_id), **retried, **lost})
            finished += 1


#: Trial user attr: the trial's metrics (and small centroids), so that a resume can write the
#: complete child run of a trial whose run could not be written (tracking store down).
RESULT_ATTR = "result"
_MAX_KEPT_CENTERS = 4096


def _remember(trial: Any, res: TrialResult) -> None:
    kept: dict[str, Any] = {"metrics": {k: float(v) for k, v in res.metrics.items()
                                        if v is not None and math.isfinite(float(v))}}
    if res.centers is not None and np.size(res.centers) <= _MAX_KEPT_CENTERS:
        kept["centers"] = np.asarray(res.centers, dtype=np.float64).tolist()
    kept["started"], kept["finished"], kept["worker"] = res.started, res.finished, res.worker
    trial.set_user_attr(RESULT_ATTR, kept)


def _cv_loop(cfg: ExperimentConfig, X: np.ndarray, y: Any, client: Any, loop: _Loop) -> Any:
    from toolkit.search.sklearn_cv import run_cv_search

    cv = run_cv_search(cfg, X, y, client)
    res_table = cv.cv_results_
    n = len(res_table["params"])
    loop.bar.reset(total=n)
    now = time.time()
    for i in range(n):
        score = res_table["mean_test_score"][i]
        value = None if not np.isfinite(score) else cv.scorer_natural(score)
        params = model_for(cfg.model, dict(res_table["params"][i]))
        fit_s = float(res_table["mean_fit_time"][i])
        tr = TrialResult(i, params, metrics={
            f"cv_{cfg.search.objective}": value if value is not None else math.nan,
            "cv_std": float(res_table["std_test_score"][i]),
            "mean_fit_time": fit_s,
            "mean_score_time": float(res_table["mean_score_time"][i]),
        }, started=now, finished=now + fit_s * cfg.search.cv, worker="dask-joblib",
            error=None if value is not None else "every CV fold failed or scored NaN")
        loop.finish_trial(i, tr, value, {"cv.rank": str(res_table["rank_test_score"][i])})
    return cv


def _summarise(cfg: ExperimentConfig, loop: _Loop, parent: str, study: Any | None, cv: Any | None) -> dict[str, int]:
    import pandas as pd

    from toolkit.tracking.plots import elbow_plot, history_plot, importance_plot

    rows = loop.rows
    if study is not None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials),
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        }
        values = [t.value for t in sorted(trials, key=lambda t: t.number) if t.state == TrialState.COMPLETE]
        table = pd.DataFrame(
            [{"number": t.number, "state": t.state.name, "value": t.value,
              **{f"params_{k}": v for k, v in t.params.items()}} for t in trials]
        )
        try:
            import optuna

            if counts["complete"] >= 2:
                imp = optuna.importance.get_param_importances(study)
                if imp:
                    record.log_figure(parent, importance_plot(imp), "param_importance.png")
                    log_metrics(parent, {f"importance.{k}": v for k, v in imp.items()})
        except Exception as exc:  # one varied parameter, constant values...: Optuna cannot rank
            log_tags(parent, {"search.importance": f"not computed: {str(exc).splitlines()[0][:200]}"})
    else:
        counts = {
            "complete": sum(r["state"] == "FINISHED" for r in rows),
            "failed": sum(r["state"] == "FAILED" for r in rows),
            "pruned": 0,
        }
        values = [r["value"] for r in rows if r["value"] is not None]
        table = pd.DataFrame(cv.cv_results_).drop(columns=["params"])
        record.log_table(parent, table, "cv_results.csv")
    if values:
        record.log_figure(parent, history_plot(values, loop.direction, cfg.search.objective),
                          "optimization_history.png")
    record.log_table(parent, rows, "trials.csv")
    if study is not None:
        record.log_table(parent, table, "study_trials.csv")
    # Elbow: the best objective and its inertia for each n_clusters tried.
    by_k: dict[int, tuple[float, float]] = {}
    for r in rows:
        if r["value"] is None:
            continue
        k = int(r["params_n_clusters"])
        inertia = r.get("metric_inertia", math.nan)
        if loop.better(r["value"], by_k[k][0] if k in by_k else None):
            by_k[k] = (r["value"], inertia if inertia is not None else math.nan)
    if by_k:
        ks = sorted(by_k)
        record.log_figure(parent, elbow_plot(ks, [by_k[k][0] for k in ks], [by_k[k][1] for k in ks],
                                             cfg.search.objective), "elbow.png")
    log_metrics(parent, {f"trials_{k}": v for k, v in counts.items()})
    return counts


def search(
    cfg: ExperimentConfig,
    client: Any = None,
    on_best: Callable[[SearchOutcome, KMeansBackend, Any, Dataset], None] | None = None,
) -> SearchOutcome:
    """Run the configured hyperparameter search and return where its record is.

    Args:
        cfg: experiment config (``search`` section: strategy, space, objective, resume...).
        client: an existing Dask client to reuse; by default a cluster is started and closed.
        on_best: called with the outcome, backend, prepared data and dataset after the best
            model is refitted, inside the parent run (the registry step hooks in here).
    """
    cls = get_backend(cfg.backend)
    cls.check_available()
    mode = _mode(cfg, cls)
    shared_writer().start()  # the child-run writer's imports overlap the cluster start and data loading
    objective = cfg.search.objective
    direction = METRIC_DIRECTIONS[objective]
    use_optuna = cfg.search.strategy == "optuna" or cfg.backend != "sklearn"

    study = None
    resumed = False
    parent_to_resume = None
    lease = None
    if use_optuna:
        study, resumed, lease = open_study(cfg, direction)
        study_name = study.study_name
    else:
        study_name = f"{cfg.name}-{cfg.backend}-{cfg.search.strategy}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        if resumed:
            parent_to_resume = _resume_target(study, study_name)
            _retire_placeholder(parent_to_resume, study_name)
    except BaseException:
        lease.release()
        raise
    tags = {"entry_point": "search", "search.study_name": study_name, "search.strategy": cfg.search.strategy,
            "search.objective": objective, "search.direction": direction, "search.parallelism": mode,
            "config": str(cfg.source_path)}
    with _holding(lease), tracked_run(cfg.experiment_name, study_name, tags, resume_run_id=parent_to_resume) as parent:
        if study is not None:
            study.set_user_attr(PARENT_ATTR, parent)
            study.set_user_attr(STORE_ATTR, redact(tracking_uri()))
        with backend_session(cfg, client, need_cluster=True) as (backend, dclient):
            log_tags(parent, tags_for(backend, client_info(dclient) if dclient else None))
            dataset = load_dataset(cfg.data)
            params = run_params(cfg, dataset)
            params.update({k: v for k, v in cfg.flat().items() if k.startswith("search.")})
            if not resumed:
                log_params(parent, params)
                log_dataset(parent, dataset)
            check_space(cfg.search, backend, dataset.n_samples, dataset.y is not None)
            backend.validate(cfg.model, dataset.n_samples)
            X = backend.prepare(dataset)
            base_tags = {"backend": cfg.backend, "search.parallelism": mode}

            n_stale = _fail_stale(cfg, study, parent, dataset.feature_names) if (study and resumed) else 0
            if use_optuna:
                from optuna.samplers import GridSampler
                from optuna.trial import TrialState

                from toolkit.search.space import grid_values
                from toolkit.search.trials import INFRASTRUCTURE_ATTR

                finished_trials = study.get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
                )
                # Trials a killed driver left behind were failed above; they do not use up n_trials.
                # So do trials the cluster lost (a dead worker) after their last retry.
                done = sum(not (t.user_attrs.get(INTERRUPTED_ATTR) or t.user_attrs.get(INFRASTRUCTURE_ATTR))
                           for t in finished_trials)
                n_to_run = max(0, cfg.search.n_trials - done)
                if isinstance(study.sampler, GridSampler):  # every grid point once, no repeats
                    n_to_run = min(n_to_run, max(0, math.prod(map(len, grid_values(cfg.search).values()))
                                                 - len(finished_trials)))
                if resumed:
                    say(f"resuming study {study_name}: {done} trials done ({n_stale} interrupted), {n_to_run} to run")
            else:
                n_to_run = cfg.search.n_trials
            loop = _Loop(cfg, parent, study_name, dataset, direction, n_to_run, base_tags)
            cv = None
            t_loop = time.perf_counter()
            runner: Any = None
            try:
                if use_optuna:
                    if mode == "trial":
                        # Workers get host data and place it themselves (a GPU worker on its own GPU).
                        runner = TrialParallelRunner(dclient, cfg.backend, _host(dataset), dataset.y, cfg.metrics)
                    else:
                        # With the dataset, it places the data again after a lost worker.
                        runner = DataParallelRunner(backend, X, dataset.y, cfg.metrics, dataset=dataset)
                    _optuna_loop(cfg, study, runner, loop, n_to_run)
                    if isinstance(runner, DataParallelRunner):
                        X = runner.X  # placed again if a worker was lost: the refit needs the live copy
                else:
                    cv = _cv_loop(cfg, _host(dataset), dataset.y, dclient, loop)
            except BaseException:
                if isinstance(runner, TrialParallelRunner):
                    runner.cancel()  # queued trials must not go on running on a shared cluster
                loop.close(raise_errors=False)  # keep the real error, still flush what finished
                raise
            loop.close()
            loop_seconds = time.perf_counter() - t_loop
            overheads = [r["overhead_s"] for r in loop.rows if r.get("overhead_s") is not None]
            schedule = [r["schedule_s"] for r in loop.rows if r.get("schedule_s") is not None]
            log_metrics(parent, {"search_seconds": loop_seconds,
                                 **({"trial_overhead_median_s": float(np.median(overheads)),
                                     "trial_schedule_median_s": float(np.median(schedule))} if overheads else {})})
            counts = _summarise(cfg, loop, parent, study, cv)
            best_params, best_value = _best(study, loop, direction)
            if best_params is None:
                raise ConfigError(
                    f"no trial of {study_name} finished ({counts['failed']} failed); see the child runs' error tags",
                    "fix the cause shown there, or widen search.space",
                )
            log_params(parent, {f"best.{k}": v for k, v in best_params.items()})
            log_metrics(parent, {f"best_{objective}": best_value, "best_value": best_value})
            outcome = SearchOutcome(parent, study_name, _experiment_name(parent), objective, direction,
                                    best_params, best_value, counts, resumed=resumed, trials=loop.rows,
                                    loop_seconds=loop_seconds)
            # A resume registers only a strictly better model than the one this search already
            # refitted (and registered): the same best again would be a second version of it.
            before = _best_model_value(parent)
            improved = before is None or loop.better(best_value, before)
            outcome.previous_best = before
            if not improved:
                say(f"no better model than the one this search already registered ({objective} {before:.6g}); "
                    "nothing new refitted or registered")
            if cfg.search.refit and improved:
                best_model = model_for(cfg.model, {k: v for k, v in best_params.items() if k != "random_state"},
                                       seed=best_params.get("random_state"))
                fit, metrics = fit_and_score(backend, X, best_model, cfg.metrics, dataset.y)
                log_fit(parent, cfg, dataset, fit, metrics, X, backend, artifact_path="best_model")
                outcome.best_fit, outcome.best_metrics = fit, metrics
            if dataset.y is not None and not dataset.is_lazy:
                outcome.baseline = _baseline_ari(dataset, cfg.model.random_state)
                log_metrics(parent, {"baseline_adjusted_rand": outcome.baseline})
                log_tags(parent, {"baseline": f"sklearn KMeans(n_clusters={len(np.unique(dataset.y))}, "
                                              f"n_init=10, random_state={cfg.model.random_state})"})
            if on_best is not None and outcome.best_fit is not None:
                on_best(outcome, backend, X, dataset)
            if outcome.best_fit is not None:
                log_tags(parent, {BEST_MODEL_TAG: repr(best_value)})
    return outcome


#: Parent-run tag: the objective of the model refitted (and registered) for this search.
BEST_MODEL_TAG = "search.best_model_value"


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
def _holding(lease: Any) -> Iterator[None]:
    """Release the study's driver lease however the search ends."""
    try:
        yield
    finally:
        if lease is not None:
            lease.release()


def _resume_target(study: Any, study_name: str) -> str | None:
    """The parent run of the study to resume, checked to be in the current tracking store."""
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent is None:
        return None
    try:
        run = client().get_run(parent)
    except Exception:
        run = None
    if run is None or run.info.lifecycle_stage == "deleted":
        where = study.user_attrs.get(STORE_ATTR, "another tracking store")
        raise ConfigError(
            f"study {study_name!r} belongs to parent run {parent}, which is not in the tracking store "
            f"{redact(tracking_uri())} (the study was made against {where})",
            "resume against that store, or start a new search (resume=false)",
        )
    return parent


def _retire_placeholder(parent: str | None, study_name: str) -> None:
    """Under ``mlflow run``, a resume reuses the search's parent run: the new run ``mlflow run``
    created for it is ended and deleted (it keeps a pointer to the parent), so no empty run is
    left in the experiment."""
    outer = os.environ.get("MLFLOW_RUN_ID")
    if not parent or not outer or outer == parent:
        return
    c = client()
    log_tags(outer, {"search.resumed_parent_run_id": parent, "search.study_name": study_name})
    log_tags(parent, {"search.last_resume_launcher_run_id": outer})
    c.set_terminated(outer, "FINISHED")
    c.delete_run(outer)


def _host(dataset: Dataset) -> np.ndarray:
    """The dataset's features as one in-memory NumPy array."""
    return np.asarray(dataset.X.compute() if dataset.is_lazy else dataset.X)


def _baseline_ari(dataset: Dataset, seed: int) -> float:
    """Adjusted Rand index of plain scikit-learn KMeans with k = number of true classes."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    k = len(np.unique(dataset.y))
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(dataset.X)
    return float(adjusted_rand_score(dataset.y, labels))


def _best(study: Any, loop: _Loop, direction: str) -> tuple[dict[str, Any] | None, float]:
    """Best trial's full model params and value (from the study when there is one)."""
    rows = [r for r in loop.rows if r["value"] is not None]
    if study is not None:
        from optuna.trial import TrialState

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return None, math.nan
        best = study.best_trial
        match = [r for r in rows if r["number"] == best.number]
        if match:
            row = match[0]
        else:  # best trial ran before a resume: rebuild its params from the study
            params = {**loop.cfg.model.model_dump(), **best.params,
                      "random_state": loop.cfg.model.random_state + best.number}
            return params, float(best.value)
    else:
        if not rows:
            return None, math.nan
        pick = max if direction == "maximize" else min
        row = pick(rows, key=lambda r: r["value"])
    params = {k[len("params_"):]: v for k, v in row.items() if k.startswith("params_")}
    return params, float(row["value"])

