"""The parent run's summary: trial counts, plots, tables, the best trial and a baseline."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from toolkit.config import ExperimentConfig
from toolkit.data import Dataset
from toolkit.errors import first_line
from toolkit.search import record
from toolkit.search.loop import TrialLoop
from toolkit.search.space import trial_model
from toolkit.tracking import log_metrics, log_tags

__all__ = ["SYSTEM_PREFIX", "baseline_ari", "best_trial", "log_loop_timing", "summarise"]


def summarise(cfg: ExperimentConfig, loop: TrialLoop, parent: str, study: Any | None, cv: Any | None) -> dict[str, int]:
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
        # t.values[0]: the first objective (a multi-objective trial has no single t.value).
        values = [t.values[0] for t in sorted(trials, key=lambda t: t.number) if t.state == TrialState.COMPLETE]
        table = pd.DataFrame(
            [{"number": t.number, "state": t.state.name, "value": t.values[0] if t.values else None,
              **{f"params_{k}": v for k, v in t.params.items()}}
             for t in sorted(trials, key=lambda t: t.number)]
        )
        try:
            if counts["complete"] >= 2:
                imp = _importances(study)
                if imp:
                    record.log_figure(parent, importance_plot(imp), "param_importance.png")
                    log_metrics(parent, {f"importance.{k}": v for k, v in imp.items()})
        except Exception as exc:  # one varied parameter, constant values...: Optuna cannot rank
            log_tags(parent, {"search.importance": f"not computed: {first_line(exc, 200)}"})
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
    # By trial number, as the study numbers them (``loop.rows`` is in the order trials ended).
    record.log_table(parent, sorted(rows, key=lambda r: r["number"]), "trials.csv")
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


def _importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances; of a multi-objective study, for its first objective."""
    import warnings

    import optuna

    if len(study.directions) == 1:
        return optuna.importance.get_param_importances(study)
    # Optuna's default evaluator ranks what makes the target *low*, and warns whenever a target
    # is given: the first objective, negated when it is maximised, and the warning is expected.
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*computes the importances of params to achieve low")
        return optuna.importance.get_param_importances(study, target=lambda t: sign * t.values[0])


def baseline_ari(dataset: Dataset, seed: int) -> float:
    """Adjusted Rand index of plain scikit-learn KMeans with k = number of true classes."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    k = len(np.unique(dataset.y))
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(dataset.X)
    return float(adjusted_rand_score(dataset.y, labels))


def best_trial(study: Any, loop: TrialLoop, direction: str) -> tuple[dict[str, Any] | None, float]:
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
            model = trial_model(loop.cfg.model, best.params, best.number, loop.cfg.search.seed_policy)
            return model.model_dump(), float(best.value)
    else:
        if not rows:
            return None, math.nan
        pick = max if direction == "maximize" else min
        row = pick(rows, key=lambda r: r["value"])
    params = {k[len("params_"):]: v for k, v in row.items() if k.startswith("params_")}
    return params, float(row["value"])



#: Prefix of the toolkit's own timing figures on a search's parent run.  The MLflow UI puts
#: ``system/`` metrics in a section of their own (beside the CPU and memory samples of
#: :mod:`toolkit.tracking.system`), away from the objective and the model's metrics.
SYSTEM_PREFIX = "system/"


def log_loop_timing(parent: str, loop: TrialLoop, loop_seconds: float) -> None:
    """The loop's wall time and the median per-trial overhead (scheduling + child-run write)."""
    overheads = [r["overhead_s"] for r in loop.rows if r.get("overhead_s") is not None]
    schedule = [r["schedule_s"] for r in loop.rows if r.get("schedule_s") is not None]
    figures = {"search_seconds": loop_seconds}
    if overheads:
        figures["trial_overhead_median_s"] = float(np.median(overheads))
        figures["trial_schedule_median_s"] = float(np.median(schedule))
    log_metrics(parent, {SYSTEM_PREFIX + k: v for k, v in figures.items()})
