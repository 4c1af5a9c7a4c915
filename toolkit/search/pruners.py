"""An Optuna pruner for synchronous successive halving (imported only when it is chosen).

Optuna's :class:`~optuna.pruners.SuccessiveHalvingPruner` is asynchronous (ASHA): it decides a
trial's promotion as soon as that trial reports, against the trials that reported at that rung
before it.  The first trials of a rung therefore climb with few rivals, and on a 40-trial
search several of them fit the full data.  Synchronous halving decides a rung once it is
complete: every trial that reached it is ranked and exactly its best ``1/reduction_factor``
(at least one) goes on.  Fewer full fits, at the price of workers waiting at each rung's end.

The pruner itself is stateless: it ranks the intermediate values the study holds at the
trial's last step.  The waiting is the trial loop's part
(:func:`toolkit.search.loop.optuna_loop` asks :meth:`should_prune` only once every trial of
the rung has reported), so the pruner never sees half a rung.
"""

from __future__ import annotations

import math

import optuna
from optuna.study import StudyDirection

__all__ = ["SynchronousHalvingPruner"]


class SynchronousHalvingPruner(optuna.pruners.BasePruner):
    """Keep the best ``max(1, n // reduction_factor)`` of the ``n`` trials that reported at a step.

    Ties are broken by trial number (the earlier trial goes on), so a rung keeps exactly its
    quota even when duplicate configurations report equal values.  Call
    :meth:`~optuna.trial.Trial.should_prune` only once every trial of the rung has reported.
    """

    def __init__(self, reduction_factor: int) -> None:
        if reduction_factor < 2:
            raise ValueError(f"reduction_factor must be at least 2, not {reduction_factor}")
        self.reduction_factor = reduction_factor

    def prune(self, study: optuna.study.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
        rivals = sorted(
            (sign * t.intermediate_values[step], t.number)
            for t in study.get_trials(deepcopy=False)
            if step in t.intermediate_values and not math.isnan(t.intermediate_values[step])
        )
        keep = max(1, len(rivals) // self.reduction_factor)
        return (sign * value, trial.number) not in rivals[:keep]
