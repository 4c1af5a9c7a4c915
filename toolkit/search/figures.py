"""The search parent's figures, drawn off the driver's critical path.

Drawing them (matplotlib's import, Optuna's importance evaluator, three PNGs) is about two
seconds of single-threaded Python.  The driver hands them, as plain data, to the writer
process that wrote the child runs (idle once the loop has ended), and goes on to the best
model and its registration meanwhile; the search joins the job before its parent run ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["draw_summary_figures", "importances"]


def importances(study: Any) -> dict[str, float]:
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


def draw_summary_figures(
    run_id: str,
    objective: str,
    direction: str,
    history: Sequence[float],
    elbow: tuple[list[int], list[float], list[float]] | None,
    trials: Sequence[Any] | None = None,
    directions: Sequence[str] | None = None,
) -> None:
    """Log the parent's figures: optimisation history, elbow (best value and inertia per k, NaN
    where unknown) and, given the study's completed ``trials`` (Optuna ``FrozenTrial``s, two or
    more) and ``directions``, the parameter importances (figure
    and ``importance.<param>`` metrics; a ``search.importance`` tag says why when Optuna cannot
    rank them).  Runs in the writer process: everything arrives as picklable data."""
    from toolkit.errors import first_line
    from toolkit.search import record
    from toolkit.tracking import log_metrics, log_tags
    from toolkit.tracking.plots import elbow_plot, history_plot, importance_plot

    if trials:
        try:
            import optuna

            # This process's own Optuna logger: "A new study created in memory" is not news.
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.create_study(directions=list(directions or [direction]))
            study.add_trials(trials)
            imp = importances(study)
            if imp:
                record.log_figure(run_id, importance_plot(imp), "param_importance.png")
                log_metrics(run_id, {f"importance.{k}": v for k, v in imp.items()})
        except Exception as exc:  # one varied parameter, constant values...: Optuna cannot rank
            log_tags(run_id, {"search.importance": f"not computed: {first_line(exc, 200)}"})
    if history:
        record.log_figure(run_id, history_plot(list(history), direction, objective), "optimization_history.png")
    if elbow is not None and elbow[0]:
        ks, values, inertia = elbow
        record.log_figure(run_id, elbow_plot(ks, values, inertia, objective), "elbow.png")
