"""The parent run's summary: trial counts, plots, tables, the best trial and a baseline."""

from __future__ import annotations

import concurrent.futures
import math
from typing import Any

import numpy as np

from toolkit.config import ExperimentConfig
from toolkit.data import Dataset
from toolkit.search import record
from toolkit.search.loop import TrialLoop
from toolkit.search.space import trial_model
from toolkit.tracking import log_metrics
from toolkit.tracking.writer import shared_writer

__all__ = ["SYSTEM_PREFIX", "baseline_ari", "best_trial", "log_loop_timing", "summarise"]


def summarise(cfg: ExperimentConfig, loop: TrialLoop, parent: str, study: Any | None,
              cv: Any | None) -> tuple[dict[str, int], concurrent.futures.Future]:
    """Counts, tables and metrics on the parent now; its figures handed to the writer process.

    Returns the trial counts and the figures' job (:func:`toolkit.search.figures.draw_summary_figures`),
    which the caller joins before the parent run ends.
    """
    import pandas as pd

    from toolkit.search.figures import draw_summary_figures

    rows = loop.rows
    trials_for_importance, directions = None, None
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
        if counts["complete"] >= 2:
            trials_for_importance = [t for t in trials if t.state == TrialState.COMPLETE]
            directions = [d.name.lower() for d in study.directions]
    else:
        counts = {
            "complete": sum(r["state"] == "FINISHED" for r in rows),
            "failed": sum(r["state"] == "FAILED" for r in rows),
            "pruned": 0,
        }
        values = [r["value"] for r in rows if r["value"] is not None]
        table = pd.DataFrame(cv.cv_results_).drop(columns=["params"])
        record.log_table(parent, table, "cv_results.csv")
    # Elbow: the best objective and its inertia for each n_clusters tried.
    by_k: dict[int, tuple[float, float]] = {}
    for r in rows:
        if r["value"] is None:
            continue
        k = int(r["params_n_clusters"])
        inertia = r.get("metric_inertia", math.nan)
        if loop.better(r["value"], by_k[k][0] if k in by_k else None):
            by_k[k] = (r["value"], inertia if inertia is not None else math.nan)
    ks = sorted(by_k)
    elbow = ([int(k) for k in ks], [float(by_k[k][0]) for k in ks], [float(by_k[k][1]) for k in ks]) if ks else None
    figures = shared_writer().submit(draw_summary_figures, parent, cfg.search.objective, loop.direction,
                                     [float(v) for v in values], elbow, trials_for_importance, directions)
    # By trial number, as the study numbers them (``loop.rows`` is in the order trials ended).
    record.log_table(parent, sorted(rows, key=lambda r: r["number"]), "trials.csv")
    if study is not None:
        record.log_table(parent, table, "study_trials.csv")
    log_metrics(parent, {f"trials_{k}": v for k, v in counts.items()})
    return counts, figures


def baseline_ari(dataset: Dataset, seed: int, sample: int) -> float:
    """Adjusted Rand index of plain scikit-learn KMeans with k = number of true classes.

    Fitted and scored on ``sample`` rows drawn with ``seed`` (all rows when there are fewer):
    a reference figure whose cost must not grow with the data (on a million rows ten inits
    took longer than a whole multi-fidelity search).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    from toolkit.metrics import sample_rows

    X, y = sample_rows(dataset.X, np.asarray(dataset.y), sample, seed)
    k = len(np.unique(y))
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(X)
    return float(adjusted_rand_score(y, labels))


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
            model = trial_model(loop.model, best.params, best.number, loop.seed_policy)
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
