"""What a search optimises: one objective or several, and which trial a multi-objective search keeps.

A single objective (``search.objective``) is a metric of :data:`toolkit.names.OBJECTIVES`; the
best trial is the one with the best value.  With ``search.objectives`` (strategy ``optuna``
only) the study is an Optuna multi-objective study: every trial is told one value per
objective, ``study.best_trials`` is the Pareto front, and :func:`choose` picks the one point
of it that the search refits and registers (:data:`CHOSEN_TAG` on the parent says which, and
why).  Objectives may trade a quality metric against :data:`toolkit.names.TRADE_OFFS`: the
trial's ``n_clusters`` (a finer model) or its ``fit_seconds``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from toolkit.config import ExperimentConfig, MetricsConfig, SearchConfig
from toolkit.names import EVAL_METRICS, METRIC_DIRECTIONS, RESAMPLING_METRICS, TRADE_OFFS

__all__ = [
    "CHOSEN_TAG",
    "choose",
    "directions",
    "is_multi",
    "knee_point",
    "objective_names",
    "pareto_figure",
    "search_metrics",
    "trial_values",
]

#: Parent-run tag of a multi-objective search: ``"<trial number>: <why it was chosen>"``.
CHOSEN_TAG = "search.chosen_trial"


def objective_names(search: SearchConfig) -> list[str]:
    """The objectives in order: ``search.objectives``, or ``[search.objective]``."""
    return list(search.objectives) if search.objectives else [search.objective]


def is_multi(search: SearchConfig) -> bool:
    """Whether the search is multi-objective."""
    return len(objective_names(search)) > 1


def directions(search: SearchConfig) -> list[str]:
    """``"maximize"``/``"minimize"`` for each objective, in order."""
    return [METRIC_DIRECTIONS.get(name) or TRADE_OFFS[name] for name in objective_names(search)]


def search_metrics(cfg: ExperimentConfig) -> MetricsConfig:
    """The metrics settings trials are scored with: ``cfg.metrics``, with the resampling metrics
    (stability, prediction strength) turned on when an objective needs them and the objectives'
    metrics added to ``trial_metrics`` (what a data-parallel trial computes).  Decided here, not
    at config load, so that every fit of the search (trials, refit) agrees whatever the caller
    changed on the config since."""
    names = objective_names(cfg.search)
    update: dict[str, Any] = {}
    if not cfg.metrics.stability and set(names) & set(RESAMPLING_METRICS):
        update["stability"] = True
    extra = cfg.metrics.trial_metrics
    # metrics.trial_metrics as a data-parallel trial reads it: the objectives' metrics added.
    update["trial_metrics"] = (list(EVAL_METRICS) if extra == "all"
                               else sorted({*extra, *(n for n in names if n in EVAL_METRICS)}))
    return cfg.metrics.model_copy(update=update)


def trial_values(res: Any, names: list[str]) -> tuple[list[float] | None, str | None]:
    """A finished trial's value for each objective, or ``(None, why)`` when one is missing or NaN.

    ``n_clusters`` is the trial's parameter; every other name is one of its metrics.
    """
    values: list[float] = []
    for name in names:
        raw = res.params.n_clusters if name == "n_clusters" else res.metrics.get(name)
        if raw is None:
            return None, f"objective {name} was not computed for this trial"
        value = float(raw)
        if not math.isfinite(value):
            return None, f"objective {name} is undefined (NaN) for this clustering"
        values.append(value)
    return values, None


def knee_point(points: np.ndarray, dirs: list[str]) -> int:
    """Index of the compromise point of a Pareto front: the one closest to the ideal point.

    Each objective is scaled to 0..1 over the front (1 = the front's best value of it), so no
    objective dominates by its units; the ideal point has 1 everywhere, and the chosen point is
    the one at the smallest Euclidean distance from it (for two objectives, the knee of the
    curve).  Ties go to the better first objective.  An objective that is the same on the
    whole front counts for nothing.
    """
    pts = np.asarray(points, dtype=np.float64)
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in dirs])
    oriented = pts * sign  # larger is better in every column
    lo, hi = oriented.min(axis=0), oriented.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = np.where(hi > lo, (oriented - lo) / span, 1.0)
    dist = np.sqrt(((1.0 - scaled) ** 2).sum(axis=1))
    order = np.lexsort((-oriented[:, 0], np.round(dist, 12)))
    return int(order[0])


def choose(study: Any, names: list[str], dirs: list[str]) -> tuple[Any | None, str, list[Any]]:
    """The trial of the Pareto front a multi-objective search keeps, why, and the front.

    Returns ``(trial, reason, front)``; ``trial`` is ``None`` when no trial completed.
    """
    front = sorted(study.best_trials, key=lambda t: t.number)
    if not front:
        return None, "no trial completed", []
    if len(front) == 1:
        return front[0], f"the only trial on the Pareto front of {', '.join(names)}", front
    i = knee_point(np.array([t.values for t in front]), dirs)
    reason = (f"knee point of the Pareto front of {', '.join(names)} ({len(front)} trials): closest to "
              "the ideal point with each objective scaled 0..1 over the front")
    return front[i], reason, front


def pareto_figure(study: Any, names: list[str], dirs: list[str], front: list[Any], chosen: Any) -> Any:
    """A matplotlib figure: every completed trial on the first two objectives, the Pareto front
    joined up, and the chosen trial marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs = [t.values[0] for t in done]
    ys = [t.values[1] for t in done]
    ax.scatter(xs, ys, s=18, c="0.7", label="trials")
    pts = sorted((t.values[0], t.values[1]) for t in front)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", c="tab:blue", ms=5, label="Pareto front")
    if chosen is not None:
        ax.scatter([chosen.values[0]], [chosen.values[1]], marker="*", s=260, c="tab:red", zorder=5,
                   label=f"chosen: trial {chosen.number}")
    ax.set_xlabel(f"{names[0]} ({dirs[0]})")
    ax.set_ylabel(f"{names[1]} ({dirs[1]})")
    more = f" (of {len(names)} objectives)" if len(names) > 2 else ""
    ax.set_title(f"Pareto front{more}")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig
