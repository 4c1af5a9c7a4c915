"""The trial loop: ask, run on a runner, tell, and hand each result to the child-run writer.

:class:`TrialLoop` keeps the bookkeeping both strategies share (one row per trial, the child
runs queued to the one writer process, the progress bar, the best so far).  The Optuna loop
keeps each worker thread busy (:func:`in_flight_target`); the CV loop turns a finished
``GridSearchCV``/``RandomizedSearchCV`` into the same rows and child runs.
"""

from __future__ import annotations

import concurrent.futures
import math
import statistics
import time
from typing import Any

import numpy as np

from toolkit._compat import optuna_trial_id
from toolkit.config import ExperimentConfig, ModelConfig
from toolkit.console import progress
from toolkit.data import Dataset
from toolkit.errors import first_line, option_hint
from toolkit.redact import redact
from toolkit.search import record
from toolkit.search.objectives import objective_names, trial_values
from toolkit.search.resume import remember
from toolkit.search.space import model_for, suggest, trial_model
from toolkit.search.trials import INFRASTRUCTURE_ATTR, TrialResult, TrialRunner
from toolkit.tracking.runs import tracking_uri
from toolkit.tracking.writer import shared_writer

__all__ = ["TrialLoop", "cv_loop", "in_flight_target", "optuna_loop"]


def _trial_params(model: ModelConfig) -> dict[str, Any]:
    return model.model_dump()


class TrialLoop:
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
        # Trials fitted on all the data, by their parameters: the best one's fit is reused
        # instead of refitted (k x d centres each, so keeping them all costs little).
        self._fits: dict[tuple, TrialResult] = {}

    def start_from_best(self, value: float | None) -> None:
        """Start the best so far at ``value``: a resumed study's best before this run's trials, so
        the progress line shows the study's best, not the best of the trials run since."""
        if value is not None and self.better(value, self.best):
            self.best = value
            self.bar.set_postfix(best=f"{self.best:.4g}", refresh=False)

    def full_fit(self, params: dict[str, Any]) -> TrialResult | None:
        """The finished trial that fitted exactly ``params`` on all the data, if one did."""
        return self._fits.get(_params_key(params))

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

    def finish_trial(self, number: int, res: TrialResult, value: float | None, extra_tags: dict[str, str],
                     pruned: bool = False, history: dict[str, list[tuple[int, float]]] | None = None) -> None:
        """Record a finished trial: its row, and its child run queued to the writer.

        ``pruned``: stopped by the multi-fidelity pruner (not a failure): the run ends KILLED,
        tagged ``trial.state=PRUNED``.  ``history``: metrics per rung, logged with step = rung.
        """
        self.check_writes()
        # MLflow has no PRUNED status: KILLED (stopped on purpose, as a pruner does) keeps pruned
        # trials apart from completed and failed ones in the UI's status filter.
        status = "KILLED" if pruned else "FINISHED" if res.ok and value is not None else "FAILED"
        metrics = dict(res.metrics)
        if value is not None:
            metrics["objective"] = value
        tags = {**self.base_tags, "trial.worker": res.worker, **extra_tags,
                **({"trial.state": "PRUNED"} if pruned else {})}
        sched_s = self._schedule_s(res)
        row = {"number": number, "state": "PRUNED" if pruned else status, "run_id": None, "value": value,
               "duration_s": res.finished - res.started, "worker": res.worker, "error": res.error,
               "schedule_s": sched_s, "mlflow_write_s": None, "mlflow_write_cpu_s": None, "overhead_s": None,
               **{f"params_{k}": v for k, v in res.params.model_dump().items()},
               **{f"metric_{k}": v for k, v in res.metrics.items()}}
        self.rows.append(row)
        if status == "FINISHED" and res.full_data and res.centers is not None:
            self._fits[_params_key(res.params.model_dump())] = res

        def written(fut: concurrent.futures.Future) -> None:
            if fut.exception() is None:
                row["run_id"], row["mlflow_write_s"], row["mlflow_write_cpu_s"] = fut.result()
                row["overhead_s"] = sched_s + row["mlflow_write_s"]

        fut = self._writer.submit(
            record.log_trial_run, self.parent, self.study_name, number, _trial_params(res.params),
            metrics, tags, status, res.started, res.finished,
            # in the data's own coordinates (trials fit the data as loaded: centred if need be)
            None if res.centers is None else self.dataset.raw(res.centers), self.dataset.feature_names,
            error=res.error, history=history,
        )
        fut.add_done_callback(written)
        self._writes.append(fut)
        if value is not None and self.better(value, self.best):
            self.best = value
        self.bar.set_postfix(best=f"{self.best:.4g}" if self.best is not None else "-", refresh=False)
        self.bar.update(1)

    def close(self, raise_errors: bool = True) -> None:
        """Wait for every child run to be written; raise the first write error."""
        concurrent.futures.wait(self._writes)
        self.bar.close()
        errors = [f.exception() for f in self._writes if f.exception() is not None]
        if errors and raise_errors:
            raise _write_error(errors[0])


def _params_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def _write_error(exc: BaseException) -> BaseException:
    """A child-run write failure as the one-line error that stops the search."""
    from toolkit.errors import ToolkitError, disk_full
    from toolkit.tracking.retry import TrackingUnavailableError, is_transient, mark_down, unavailable

    if isinstance(exc, TrackingUnavailableError) or is_transient(exc):
        why = exc.problem if isinstance(exc, TrackingUnavailableError) else " ".join(str(exc).split())[:200]
        mark_down(tracking_uri(), why)  # this process stops trying too: fail fast, not per call
        return exc if isinstance(exc, TrackingUnavailableError) else unavailable(tracking_uri(), why)
    if isinstance(exc, ToolkitError):
        return exc
    full = disk_full(exc)
    if full is not None:
        return full
    line = first_line(exc)
    return ToolkitError(
        redact(f"cannot write a trial's run to the tracking store {tracking_uri()}: {type(exc).__name__}: {line}"),
        f"fix the store (permissions, disk space), then rerun with {option_hint('resume', 'true')}: the trials already "
        "computed are kept in the Optuna study and their runs are written then",
    )


#: ``auto`` prefetch covers this much hand-off with queued trials: a trial's result back to the
#: driver, tell/ask, and the next trial out (a few tens of milliseconds, whatever the trial's
#: length; figures in benchmarks/RESULTS.md).
_HANDOFF_S = 0.05
_AUTO_MAX_QUEUED = 3


def in_flight_target(runner: TrialRunner, prefetch: int | str, rows: list[dict[str, Any]],
                      left: int | None = None) -> int:
    """How many trials to keep submitted, with ``left`` trials still to ask for.

    Trial-parallel: every worker thread runs one trial and has ``prefetch`` more queued behind
    it, so it starts the next one without waiting for the driver's round trip.  ``auto``
    queues one, and more (up to 3) when recent trials are shorter than the ~50 ms hand-off.
    The price is that the sampler sees results a little later (TPE runs with its
    constant-liar option for trials in flight).  The last ``slots`` trials are never queued:
    each goes to the first thread that runs dry: queued behind a long trial, one of them would
    keep another worker idle for up to a whole trial at the end of a search (Dask's work
    stealing does not move it).
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


def optuna_loop(cfg: ExperimentConfig, study: Any, runner: TrialRunner, loop: TrialLoop, n_to_run: int) -> None:
    """Ask, run, tell until ``n_to_run`` trials have finished (completed, failed or pruned).

    With ``search.fidelity`` (:mod:`toolkit.search.fidelity`) a trial runs rung by rung, each
    rung a task of its own: the driver reports the rung's objective, asks the pruner, and
    either tells the trial PRUNED or submits its next rung; the last rung's objective is its
    value.  Without it, a trial is one fit on all the data (one rung).
    """
    from optuna.trial import TrialState

    from toolkit.search.fidelity import RUNG_ATTR, RUNG_TAG, optuna_step, rung_model, rung_rows

    fid = cfg.search.fidelity
    last = len(fid.fractions()) - 1 if fid.enabled else 0
    # Synchronous halving: a rung is decided once all its trials have reported (no trial left to
    # ask, none still fitting that rung or a lower one); until then they wait, rung by rung.
    synchronous = fid.pruner == "synchronous_halving"
    waiting: dict[int, list[TrialResult]] = {}
    n_samples = loop.dataset.n_samples
    names = objective_names(cfg.search)  # one, or several for a multi-objective study
    in_flight: dict[int, Any] = {}
    # Per trial in flight: its parameters as asked (a max_iter rung fits a cut copy), the rung
    # it is on (``running``: only while a fit of it is submitted), and the rungs it has done:
    # (rung, objective, rows).
    asked_params: dict[int, ModelConfig] = {}
    rung_of: dict[int, int] = {}
    running: dict[int, int] = {}
    history: dict[int, list[tuple[int, float, int]]] = {}
    asked = finished = 0
    told: list[tuple[TrialResult, float | None, Any, bool, int]] = []

    def submit(number: int, rung: int) -> None:
        rung_of[number] = running[number] = rung
        params = rung_model(fid, asked_params[number], rung) if fid.enabled else asked_params[number]
        rows = rung_rows(fid, n_samples, rung) if fid.enabled else n_samples
        runner.submit(number, params, (rows, cfg.search.seed) if rows < n_samples else None)

    def fill() -> None:
        nonlocal asked
        batch = []
        while asked < n_to_run and runner.pending() + len(batch) < in_flight_target(
                runner, cfg.search.prefetch, loop.rows, n_to_run - asked):
            trial = study.ask()
            params = trial_model(cfg.model, suggest(trial, cfg.search), trial.number, cfg.search.seed_policy)
            in_flight[trial.number] = trial
            asked_params[trial.number] = params
            batch.append(trial.number)
            asked += 1
        # Submitted back to back, after the (slow) asks: the scheduler sees the free slots
        # together and spreads the trials over the workers instead of reusing one idle worker.
        for number in batch:
            submit(number, 0)

    def conclude(res: TrialResult, values: list[float] | None, rung: int, pruned: bool) -> None:
        """Tell the study how the trial ended; its run is written after the next fill()."""
        trial = in_flight.pop(res.key)
        value = values[0] if values else None
        if fid.enabled:
            trial.set_user_attr(RUNG_ATTR, rung)
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
            value = None  # a rung's objective is not the trial's value
        elif value is None:
            if res.infra:  # lost with a worker, retries spent: a resume runs it again
                trial.set_user_attr(INFRASTRUCTURE_ATTR, True)
            study.tell(trial, state=TrialState.FAIL)
        else:
            remember(trial, res)
            study.tell(trial, values if len(values) > 1 else value)
        told.append((res, value, trial, pruned, rung))

    def decide(res: TrialResult, rung: int) -> None:
        """Ask the pruner about a trial that reported ``rung``: it climbs or is pruned."""
        if in_flight[res.key].should_prune():
            conclude(res, None, rung, pruned=True)
        else:
            submit(res.key, rung + 1)  # climbs: same trial, next rung

    def decide_complete_rungs() -> None:
        for rung in sorted(waiting):
            if asked < n_to_run or any(r <= rung for r in running.values()):
                return  # this rung (and every later one) still has trials to report
            for res in waiting.pop(rung):
                decide(res, rung)

    while finished < n_to_run:
        fill()
        told.clear()
        for res in runner.results():
            running.pop(res.key, None)
            trial = in_flight[res.key]
            rung = rung_of.get(res.key, 0)
            res.params = asked_params[res.key]  # the trial's own parameters, not a rung's cut copy
            values, why = trial_values(res, names) if res.ok else (None, None)
            if res.ok and values is None:
                res.error = why
            value = values[0] if values else None  # the first objective stands for the trial
            if fid.enabled and value is not None:
                history.setdefault(res.key, []).append((rung, value, rung_rows(fid, n_samples, rung)))
                if rung < last:
                    trial.report(value, step=optuna_step(fid, rung))
                    if synchronous:
                        waiting.setdefault(rung, []).append(res)
                    else:
                        decide(res, rung)
                    continue
            conclude(res, values, rung, pruned=False)
        if synchronous:
            decide_complete_rungs()
        fill()  # workers start the next trials while the driver writes MLflow runs
        for res, value, trial, pruned, rung in told:
            retried = {"trial.attempts": str(res.attempts)} if res.attempts > 1 else {}
            lost = {"trial.infrastructure_failure": "true"} if res.infra else {}
            tags = {"optuna.trial_id": str(optuna_trial_id(trial)), **retried, **lost}
            rungs = None
            if fid.enabled:
                tags.update({RUNG_TAG: str(rung), "search.rungs": str(last + 1)})
                done = history.pop(res.key, [])
                rungs = {"rung_objective": [(r, v) for r, v, _ in done],
                         "rung_rows": [(r, float(n)) for r, _, n in done],
                         "rung_fraction": [(r, fid.fractions()[r]) for r, _, _ in done]}
            asked_params.pop(res.key, None)
            rung_of.pop(res.key, None)
            loop.finish_trial(res.key, res, value, tags, pruned=pruned, history=rungs)
            finished += 1


def cv_loop(cfg: ExperimentConfig, X: np.ndarray, y: Any, client: Any, loop: TrialLoop) -> Any:
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


