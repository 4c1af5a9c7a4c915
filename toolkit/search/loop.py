"""The trial loop: ask, run on a runner, tell, and hand each result to the child-run writer.

:class:`TrialLoop` keeps the bookkeeping both strategies share (one row per trial, the child
runs queued to the one writer process, the progress bar, the best so far).  The Optuna loop
(:class:`OptunaLoop`, its state per trial in flight as attributes) keeps each worker thread
busy (:func:`in_flight_target`); the CV loop turns a finished
``GridSearchCV``/``RandomizedSearchCV`` into the same rows and child runs.
"""

from __future__ import annotations

import concurrent.futures
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit._compat import optuna_trial_id
from toolkit.config import ExperimentConfig, ModelConfig, SearchConfig
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

__all__ = ["LoopTarget", "OptunaLoop", "TrialLoop", "cv_loop", "in_flight_target", "optuna_loop"]


def _trial_params(model: ModelConfig) -> dict[str, Any]:
    return model.model_dump()


@dataclass(frozen=True)
class LoopTarget:
    """Where a loop's trials are recorded, and how they are ranked."""

    #: The parent MLflow run of the child runs.
    parent: str
    study_name: str
    #: The data the trials fit (its ``raw`` puts centroids back in its own coordinates).
    dataset: Dataset
    #: ``maximize`` or ``minimize``: the first objective's.
    direction: str
    #: Tags every child run carries (backend, parallelism).
    base_tags: dict[str, str]
    #: The model settings trials start from, and how their seeds are chosen (to rebuild a trial's parameters).
    model: ModelConfig
    seed_policy: str = "fixed"


class TrialLoop:
    """Shared bookkeeping for both strategies: child runs, progress, best-so-far."""

    def __init__(self, target: LoopTarget, total: int) -> None:
        self.target = target
        self.parent = target.parent
        self.study_name = target.study_name
        self.dataset = target.dataset
        self.direction = target.direction
        self.base_tags = target.base_tags
        self.model, self.seed_policy = target.model, target.seed_policy
        self.rows: list[dict[str, Any]] = []
        self.best: float | None = None
        self.bar = progress(total, f"search {target.study_name}")
        self.t0 = time.time()
        # The one MLflow writer for child runs (a thread or a process, chosen and started by
        # ``search``): it writes one run at a time, in the order trials end, while this thread
        # goes straight back to the workers.
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
        sched_s = self._schedule_s(res)
        row = _row(number, res, value, "PRUNED" if pruned else status, sched_s)
        self.rows.append(row)
        if status == "FINISHED" and res.full_data and res.centers is not None:
            self._fits[_params_key(res.params.model_dump())] = res

        def written(fut: concurrent.futures.Future) -> None:
            if fut.exception() is None:
                row["run_id"], row["mlflow_write_s"], row["mlflow_write_cpu_s"] = fut.result()
                row["overhead_s"] = sched_s + row["mlflow_write_s"]

        metrics = {**res.metrics, **({"objective": value} if value is not None else {})}
        tags = {**self.base_tags, "trial.worker": res.worker, **extra_tags,
                **({"trial.state": "PRUNED"} if pruned else {})}
        fut = self._writer.submit(record.write_trial_run, record.TrialRecord(
            self.parent, self.study_name, number, _trial_params(res.params), metrics, tags, status,
            res.started, res.finished,
            # in the data's own coordinates (trials fit the data as loaded: centred if need be)
            centers=None if res.centers is None else self.dataset.raw(res.centers),
            feature_names=self.dataset.feature_names, error=res.error, history=history,
        ))
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


def _row(number: int, res: TrialResult, value: float | None, state: str, sched_s: float) -> dict[str, Any]:
    """One trial's row of the search's table (its run id and write times filled in once written)."""
    return {"number": number, "state": state, "run_id": None, "value": value,
            "duration_s": res.finished - res.started, "worker": res.worker, "error": res.error,
            "schedule_s": sched_s, "mlflow_write_s": None, "mlflow_write_cpu_s": None, "overhead_s": None,
            **{f"params_{k}": v for k, v in res.params.model_dump().items()},
            **{f"metric_{k}": v for k, v in res.metrics.items()}}


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
    """Ask, run, tell until ``n_to_run`` trials have finished: :class:`OptunaLoop` with ``cfg``'s settings."""
    OptunaLoop(study, runner, loop, cfg.search, cfg.model).run(n_to_run)


class OptunaLoop:
    """Ask, run, tell until a number of trials have finished (completed, failed or pruned).

    With ``search.fidelity`` (:mod:`toolkit.search.fidelity`) a trial runs rung by rung, each
    rung a task of its own: the driver reports the rung's objective, asks the pruner, and
    either tells the trial PRUNED or submits its next rung; the last rung's objective is its
    value.  Without it, a trial is one fit on all the data (one rung).

    One thread drives it (:meth:`run`).  Its state, per trial in flight, keyed by trial number:

    * ``in_flight``: the Optuna trial, from ask to tell;
    * ``asked_params``: its parameters as asked (a ``max_iter`` rung fits a cut copy);
    * ``rung_of``: the rung it is on; ``running``: the same, only while a fit of it is submitted;
    * ``history``: the rungs it has done, ``(rung, objective, rows)``;
    * ``waiting``: synchronous halving's trials that reported a rung, by rung, until all have;
    * ``told``: trials told this round, whose runs are written after the next :meth:`_fill`.
    """

    def __init__(self, study: Any, runner: TrialRunner, loop: TrialLoop, search: SearchConfig,
                 model: ModelConfig) -> None:
        self.study, self.runner, self.loop = study, runner, loop
        self.search, self.model = search, model
        self.fid = search.fidelity
        self.last = len(self.fid.fractions()) - 1 if self.fid.enabled else 0
        # Synchronous halving: a rung is decided once all its trials have reported (no trial left to
        # ask, none still fitting that rung or a lower one); until then they wait, rung by rung.
        self.synchronous = self.fid.pruner == "synchronous_halving"
        self.n_samples = loop.dataset.n_samples
        self.names = objective_names(search)  # one, or several for a multi-objective study
        self.in_flight: dict[int, Any] = {}
        self.asked_params: dict[int, ModelConfig] = {}
        self.rung_of: dict[int, int] = {}
        self.running: dict[int, int] = {}
        self.history: dict[int, list[tuple[int, float, int]]] = {}
        self.waiting: dict[int, list[TrialResult]] = {}
        self.told: list[tuple[TrialResult, float | None, Any, bool, int]] = []
        self.n_to_run = self.asked = self.finished = 0

    def run(self, n_to_run: int) -> None:
        """Run trials until ``n_to_run`` have finished; each finished one goes to the :class:`TrialLoop`."""
        self.n_to_run = n_to_run
        while self.finished < n_to_run:
            self._fill()
            self.told.clear()
            for res in self.runner.results():
                self._collect(res)
            if self.synchronous:
                self._decide_complete_rungs()
            self._fill()  # workers start the next trials while the driver writes MLflow runs
            for told in self.told:
                self._record(*told)

    def _submit(self, number: int, rung: int) -> None:
        from toolkit.search.fidelity import rung_model, rung_rows

        self.rung_of[number] = self.running[number] = rung
        params = self.asked_params[number]
        params = rung_model(self.fid, params, rung) if self.fid.enabled else params
        rows = rung_rows(self.fid, self.n_samples, rung) if self.fid.enabled else self.n_samples
        self.runner.submit(number, params, (rows, self.search.seed) if rows < self.n_samples else None)

    def _fill(self) -> None:
        """Ask for trials until the runner has as many in flight as it should."""
        batch = []
        while self.asked < self.n_to_run and self.runner.pending() + len(batch) < in_flight_target(
                self.runner, self.search.prefetch, self.loop.rows, self.n_to_run - self.asked):
            trial = self.study.ask()
            self.in_flight[trial.number] = trial
            self.asked_params[trial.number] = trial_model(self.model, suggest(trial, self.search), trial.number,
                                                          self.search.seed_policy)
            batch.append(trial.number)
            self.asked += 1
        # Submitted back to back, after the (slow) asks: the scheduler sees the free slots
        # together and spreads the trials over the workers instead of reusing one idle worker.
        for number in batch:
            self._submit(number, 0)

    def _collect(self, res: TrialResult) -> None:
        """A result back from the runner: a rung to report (and decide), or the trial's end."""
        from toolkit.search.fidelity import optuna_step, rung_rows

        self.running.pop(res.key, None)
        rung = self.rung_of.get(res.key, 0)
        res.params = self.asked_params[res.key]  # the trial's own parameters, not a rung's cut copy
        values, why = trial_values(res, self.names) if res.ok else (None, None)
        if res.ok and values is None:
            res.error = why
        value = values[0] if values else None  # the first objective stands for the trial
        if self.fid.enabled and value is not None:
            self.history.setdefault(res.key, []).append((rung, value, rung_rows(self.fid, self.n_samples, rung)))
            if rung < self.last:
                self.in_flight[res.key].report(value, step=optuna_step(self.fid, rung))
                if self.synchronous:
                    self.waiting.setdefault(rung, []).append(res)
                else:
                    self._decide(res, rung)
                return
        self._conclude(res, values, rung, pruned=False)

    def _conclude(self, res: TrialResult, values: list[float] | None, rung: int, pruned: bool) -> None:
        """Tell the study how the trial ended; its run is written after the next fill."""
        from optuna.trial import TrialState

        from toolkit.search.fidelity import RUNG_ATTR

        trial = self.in_flight.pop(res.key)
        value = values[0] if values else None
        if self.fid.enabled:
            trial.set_user_attr(RUNG_ATTR, rung)
        if pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
            value = None  # a rung's objective is not the trial's value
        elif value is None:
            if res.infra:  # lost with a worker, retries spent: a resume runs it again
                trial.set_user_attr(INFRASTRUCTURE_ATTR, True)
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            remember(trial, res)
            self.study.tell(trial, values if len(values) > 1 else value)
        self.told.append((res, value, trial, pruned, rung))

    def _decide(self, res: TrialResult, rung: int) -> None:
        """Ask the pruner about a trial that reported ``rung``: it climbs or is pruned."""
        if self.in_flight[res.key].should_prune():
            self._conclude(res, None, rung, pruned=True)
        else:
            self._submit(res.key, rung + 1)  # climbs: same trial, next rung

    def _decide_complete_rungs(self) -> None:
        for rung in sorted(self.waiting):
            if self.asked < self.n_to_run or any(r <= rung for r in self.running.values()):
                return  # this rung (and every later one) still has trials to report
            for res in self.waiting.pop(rung):
                self._decide(res, rung)

    def _record(self, res: TrialResult, value: float | None, trial: Any, pruned: bool, rung: int) -> None:
        """Hand a told trial to the :class:`TrialLoop` (its row and child run)."""
        from toolkit.search.fidelity import RUNG_TAG

        retried = {"trial.attempts": str(res.attempts)} if res.attempts > 1 else {}
        lost = {"trial.infrastructure_failure": "true"} if res.infra else {}
        tags = {"optuna.trial_id": str(optuna_trial_id(trial)), **retried, **lost}
        rungs = None
        if self.fid.enabled:
            tags.update({RUNG_TAG: str(rung), "search.rungs": str(self.last + 1)})
            done = self.history.pop(res.key, [])
            rungs = {"rung_objective": [(r, v) for r, v, _ in done],
                     "rung_rows": [(r, float(n)) for r, _, n in done],
                     "rung_fraction": [(r, self.fid.fractions()[r]) for r, _, _ in done]}
        self.asked_params.pop(res.key, None)
        self.rung_of.pop(res.key, None)
        self.loop.finish_trial(res.key, res, value, tags, pruned=pruned, history=rungs)
        self.finished += 1


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


