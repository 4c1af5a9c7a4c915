"""Resuming a study: the parent run to continue, and what a dead driver or store left behind.

A resume must leave every finished trial with exactly one complete child run, re-run the
trials that were interrupted or lost with a worker, and never count them as done.  The study
keeps each trial's metrics (and small centroids) beside its value, so a child run that could
not be written (the driver died, the tracking store was down) is written whole on resume.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from toolkit._compat import optuna_set_trial_user_attr
from toolkit.config import ExperimentConfig
from toolkit.errors import ConfigError, option_hint
from toolkit.redact import redact
from toolkit.search import record
from toolkit.search.space import trial_model
from toolkit.search.study import PARENT_ATTR, STORE_ATTR, stale_trials
from toolkit.search.trials import INFRASTRUCTURE_ATTR, TrialResult
from toolkit.tracking import log_tags, mark_failed
from toolkit.tracking.runs import client, tracking_uri

__all__ = [
    "INTERRUPTED_ATTR",
    "RESULT_ATTR",
    "fold_launcher_run",
    "remember",
    "resume_target",
    "settle",
    "trials_left",
]

#: Trial user attr: interrupted by a dead driver (re-run, not counted as done).
INTERRUPTED_ATTR = "interrupted"

#: Trial user attr: the trial's metrics (and small centroids), so that a resume can write the
#: complete child run of a trial whose run could not be written (tracking store down).
RESULT_ATTR = "result"
_MAX_KEPT_CENTERS = 4096


def remember(trial: Any, res: TrialResult) -> None:
    kept: dict[str, Any] = {"metrics": {k: float(v) for k, v in res.metrics.items()
                                        if v is not None and math.isfinite(float(v))}}
    if res.centers is not None and np.size(res.centers) <= _MAX_KEPT_CENTERS:
        kept["centers"] = np.asarray(res.centers, dtype=np.float64).tolist()
    kept["started"], kept["finished"], kept["worker"] = res.started, res.finished, res.worker
    trial.set_user_attr(RESULT_ATTR, kept)


def settle(cfg: ExperimentConfig, study: Any, parent_run_id: str, feature_names: list[str]) -> int:
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
            elif t is not None and t.state == TrialState.PRUNED:
                # Pruned trials keep no result to rewrite from; the backfill writes the run again.
                record.discard_run(run.info.run_id, "half-written (the driver or the store stopped); rewritten")
                numbered[number] = [r for r in numbered[number] if r is not run]
                if not numbered[number]:
                    del numbered[number]
            elif t is not None and t.state == TrialState.FAIL:
                mark_failed(run.info.run_id, "the trial failed; the search driver stopped while writing its run")
            else:
                mark_failed(run.info.run_id, "interrupted: the search driver stopped before this trial finished")
    stale = stale_trials(study)
    for t in stale:
        # Remembered so that a resume re-runs it (an interrupted trial is not a finished one).
        optuna_set_trial_user_attr(study, t, INTERRUPTED_ATTR, True)
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

    from toolkit.search.fidelity import RUNG_ATTR, RUNG_TAG

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
        if t.number in logged:
            continue
        ok = t.state == TrialState.COMPLETE
        pruned = t.state == TrialState.PRUNED
        rung = {RUNG_TAG: str(t.user_attrs[RUNG_ATTR])} if RUNG_ATTR in t.user_attrs else {}
        kept = t.user_attrs.get(RESULT_ATTR) or {}
        started = kept.get("started") or (t.datetime_start.timestamp() if t.datetime_start else time.time())
        finished = kept.get("finished") or _end_of(t)
        metrics = {**kept.get("metrics", {}), **({"objective": t.value} if ok else {})}
        centers = np.asarray(kept["centers"]) if kept.get("centers") is not None else None
        params = trial_model(cfg.model, t.params, t.number, cfg.search.seed_policy).model_dump()
        record.log_trial_run(
            parent_run_id, study.study_name, t.number, params, metrics,
            {"backend": cfg.backend, "trial.backfilled": "true", "trial.worker": kept.get("worker", ""), **rung,
             **({"trial.state": "PRUNED"} if pruned else {})},
            "KILLED" if pruned else "FINISHED" if ok else "FAILED", started, finished, centers, feature_names,
            error=None if ok or pruned else "the trial failed; its run was written after a resume",
            # A pruned trial's objective per rung, from what it reported to the pruner.
            history={"rung_objective": sorted(enumerate(v for _, v in sorted(t.intermediate_values.items())))}
            if pruned else None,
        )


def resume_target(study: Any, study_name: str) -> str | None:
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
            f"resume against that store, or start a new search ({option_hint('resume', 'false')})",
        )
    return parent


def fold_launcher_run(parent: str | None, study_name: str) -> None:
    """Under ``mlflow run``, a resume continues in the search's own parent run; the run
    ``mlflow run`` created for the resume is folded under that parent as the record of the
    resume (its ``-P`` values, when it ran), not left as an empty top-level run.

    It cannot be deleted: ``mlflow run`` ends that run itself after the entry point exits, and
    MLflow refuses to end a deleted run.
    """
    outer = os.environ.get("MLFLOW_RUN_ID")
    if not parent or not outer or outer == parent:
        return
    c = client()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    log_tags(outer, {"mlflow.parentRunId": parent, "search.resume_of": parent, "search.study_name": study_name,
                     "mlflow.runName": f"{study_name}-resume {stamp}"})
    log_tags(parent, {"search.last_resume_run_id": outer})
    c.set_terminated(outer, "FINISHED")


def trials_left(cfg: ExperimentConfig, study: Any) -> tuple[int, int]:
    """``(done, to run)``: trials interrupted by a dead driver or lost with a worker are not done."""
    from optuna.samplers import GridSampler
    from optuna.trial import TrialState

    from toolkit.search.space import grid_values

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))
    done = sum(not (t.user_attrs.get(INTERRUPTED_ATTR) or t.user_attrs.get(INFRASTRUCTURE_ATTR)) for t in finished)
    n_to_run = max(0, cfg.search.n_trials - done)
    if isinstance(study.sampler, GridSampler):  # every grid point once, no repeats
        n_to_run = min(n_to_run, max(0, math.prod(map(len, grid_values(cfg.search).values())) - len(finished)))
    return done, n_to_run
