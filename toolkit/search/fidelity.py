"""Multi-fidelity search: rungs of growing budget, and an Optuna pruner deciding who climbs.

With ``search.fidelity.pruner`` set, a trial is not one fit but a climb: rung ``i`` fits the
trial's parameters on a share of the resource (:meth:`~toolkit.config.FidelityConfig.fractions`,
e.g. 1/9, 1/3, then all of it), the driver reports the rung's objective to the study
(``trial.report``) and asks the pruner (``trial.should_prune``) whether the trial goes on.
Only the last rung fits the full resource, and its objective is the trial's value: the best
trial, refitted and registered, is always a full-fidelity one.

Every rung is a task of its own, submitted by the driver through the ordinary
:class:`~toolkit.search.trials.TrialRunner` (the study lives with the driver: workers never
talk to the Optuna storage), so the trial-parallel and data-parallel runners and every backend
share this one path.  With ``resource: data_fraction`` a rung fits the first ``n`` rows of one
fixed, seeded permutation (:func:`subset_rows`): rungs are nested (a later rung has every row
of an earlier one), the same on every worker and on a resume.  With ``resource: max_iter`` a
rung fits all rows with a share of ``model.max_iter``.

Budget: every finished trial keeps the last rung it reached (:data:`RUNG_ATTR`); from those,
:func:`log_budget` writes the fits and rows spent per rung on the parent (resume-proof: it is
read from the study, not counted by one driver).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from toolkit.config import ExperimentConfig, FidelityConfig, MetricsConfig, ModelConfig

__all__ = [
    "RUNG_ATTR",
    "RUNG_TAG",
    "check_rungs",
    "log_budget",
    "make_pruner",
    "optuna_step",
    "rung_metrics",
    "rung_model",
    "rung_rows",
    "subset_rows",
    "take_rows",
]

#: Optuna trial user attr: the last rung (0-based) a finished trial reached.
RUNG_ATTR = "fidelity_rung"
#: Child-run tag: the last rung (0-based) the trial reached.
RUNG_TAG = "search.rung"


def make_pruner(fidelity: FidelityConfig) -> Any:
    """The Optuna pruner for ``search.fidelity.pruner`` (``NopPruner`` for ``none``).

    Rung ``i`` is reported at Optuna step ``reduction_factor**i`` (:func:`optuna_step`): the
    step is then the resource in units of the first rung, which is what successive halving and
    Hyperband promote on (rung ``k`` at ``min_resource * reduction_factor**k``).
    """
    import optuna

    eta = fidelity.reduction_factor
    if fidelity.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=eta,
                                                      min_early_stopping_rate=0)
    if fidelity.pruner == "synchronous_halving":
        from toolkit.search.pruners import SynchronousHalvingPruner

        return SynchronousHalvingPruner(reduction_factor=eta)
    if fidelity.pruner == "hyperband":
        # max_resource: the last (full) rung, never reported; its bracket is never pruned.
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=eta ** (len(fidelity.fractions()) - 1),
                                              reduction_factor=eta)
    if fidelity.pruner == "median":
        return optuna.pruners.MedianPruner()
    return optuna.pruners.NopPruner()


def optuna_step(fidelity: FidelityConfig, rung: int) -> int:
    """The Optuna step rung ``rung`` is reported at (see :func:`make_pruner`)."""
    return int(fidelity.reduction_factor ** rung)


def rung_rows(fidelity: FidelityConfig, n_samples: int, rung: int) -> int:
    """Rows a rung fits on: all of them unless the resource is ``data_fraction``."""
    fraction = fidelity.fractions()[rung]
    if fidelity.resource != "data_fraction" or fraction >= 1.0:
        return n_samples
    return max(1, min(n_samples, math.ceil(fraction * n_samples)))


def rung_model(fidelity: FidelityConfig, params: ModelConfig, rung: int) -> ModelConfig:
    """The trial's parameters at ``rung``: its ``max_iter`` cut when the resource is ``max_iter``."""
    fraction = fidelity.fractions()[rung]
    if fidelity.resource != "max_iter" or fraction >= 1.0:
        return params
    return params.model_copy(update={"max_iter": max(1, math.ceil(fraction * params.max_iter))})


@functools.lru_cache(maxsize=16)
def _permutation(n_total: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n_total)


@functools.lru_cache(maxsize=32)
def subset_rows(n_total: int, n_rows: int, seed: int) -> np.ndarray:
    """The rows of a rung: the first ``n_rows`` of one seeded permutation of ``n_total``, sorted.

    Nested by construction (a larger rung holds every row of a smaller one); sorted so that a
    Dask array gathers them block by block; cached, as every rung of every trial asks again.
    """
    rows = np.sort(_permutation(n_total, seed)[:n_rows])
    rows.flags.writeable = False  # shared by the cache
    return rows


def take_rows(X: Any, y: np.ndarray | None, subset: tuple[int, int] | None) -> tuple[Any, np.ndarray | None]:
    """``X`` and ``y`` restricted to ``subset = (n_rows, seed)`` (unchanged for ``None`` or all rows).

    Works on anything indexable by an integer array along its rows (NumPy, Dask arrays), so
    every backend receives its rung through its own ``prepare``.
    """
    n_total = int(X.shape[0])
    if subset is None or subset[0] >= n_total:
        return X, y
    rows = subset_rows(n_total, subset[0], subset[1])
    return X[rows], (None if y is None else np.asarray(y)[rows])


#: A rung's silhouette sample never shrinks below this many rows (or the configured sample).
RUNG_MIN_SILHOUETTE_SAMPLE = 1_000


def rung_metrics(metrics: MetricsConfig, rows: int, n_total: int) -> MetricsConfig:
    """The metrics settings of a rung fitting ``rows`` of ``n_total`` rows.

    The silhouette's sample shrinks with the rung's share of the rows (not below
    :data:`RUNG_MIN_SILHOUETTE_SAMPLE`): on a small rung a fixed 5,000-row sample (25 million
    pairs) cost more than the fit it scored, and a rung's value only ranks the trials of that
    rung, which all get the same sample size.  The last rung (all rows) keeps the configured
    sample: the trial's value is always scored as configured.
    """
    if rows >= n_total:
        return metrics
    floor = min(metrics.silhouette_sample, RUNG_MIN_SILHOUETTE_SAMPLE)
    sample = max(floor, math.ceil(metrics.silhouette_sample * rows / n_total))
    if sample >= metrics.silhouette_sample:
        return metrics
    return metrics.model_copy(update={"silhouette_sample": sample})


def check_rungs(cfg: ExperimentConfig, n_samples: int) -> None:
    """Refuse, before any trial, a first rung with no more rows than the largest ``n_clusters``
    searched: every trial drawing such a k would fail there.

    Raises:
        ConfigError: one line, with the smallest ``min_fraction`` that works.
    """
    from toolkit.errors import ConfigError

    fid = cfg.search.fidelity
    if not fid.enabled:
        return
    rows, k = rung_rows(fid, n_samples, 0), cfg.search.space.n_clusters.high
    if rows <= k:
        raise ConfigError(
            f"search.fidelity: the first rung fits {rows} of the {n_samples} rows, not more than "
            f"search.space.n_clusters.high={k}",
            f"set search.fidelity.min_fraction above {(k + 1) / n_samples:.3g}, or lower search.space.n_clusters.high",
        )


def log_budget(cfg: ExperimentConfig, study: Any, parent: str, n_samples: int) -> dict[str, float]:
    """The budget spent per rung, on the parent: metrics and a ``search/rungs.csv`` table.

    Read from the study (every finished trial's :data:`RUNG_ATTR`), so a resumed search counts
    the trials of every driver.  Metrics: ``budget/rung_<i>_fits`` and ``budget/rung_<i>_rows``
    (fits started at rung ``i`` and the rows they fitted), ``budget/total_fits``,
    ``budget/total_rows`` and ``budget/full_fit_equivalents`` (the budget in full-resource fits;
    a search without fidelity spends one per trial).
    """
    from optuna.trial import TrialState

    from toolkit.search import record
    from toolkit.tracking import log_metrics, log_tags

    fid = cfg.search.fidelity
    fractions = fid.fractions()
    reached = [0] * len(fractions)
    ended = {state: [0] * len(fractions) for state in ("COMPLETE", "PRUNED", "FAIL")}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        last = t.user_attrs.get(RUNG_ATTR)
        if last is None:  # interrupted or told before fidelity: no rung was recorded
            continue
        last = min(int(last), len(fractions) - 1)
        for i in range(last + 1):
            reached[i] += 1
        ended[t.state.name][last] += 1
    rows, metrics = [], {}
    for i, fraction in enumerate(fractions):
        n = rung_rows(fid, n_samples, i)
        metrics[f"budget/rung_{i}_fits"] = float(reached[i])
        metrics[f"budget/rung_{i}_rows"] = float(reached[i] * n)
        rows.append({"rung": i, "fraction": fraction, "rows": n,
                     "max_iter": rung_model(fid, cfg.model, i).max_iter, "optuna_step": optuna_step(fid, i),
                     "trials_reached": reached[i], "pruned_here": ended["PRUNED"][i],
                     "failed_here": ended["FAIL"][i], "completed_here": ended["COMPLETE"][i],
                     "rows_fitted": reached[i] * n})
    metrics["budget/total_fits"] = float(sum(reached))
    metrics["budget/total_rows"] = float(sum(r["rows_fitted"] for r in rows))
    metrics["budget/full_fit_equivalents"] = float(sum(reached[i] * f for i, f in enumerate(fractions)))
    log_metrics(parent, metrics)
    record.log_table(parent, rows, "rungs.csv")
    log_tags(parent, {"search.fidelity": f"{fid.pruner} over {fid.resource}: rungs "
                                         + ", ".join(f"{f:.4g}" for f in fractions)})
    return metrics
