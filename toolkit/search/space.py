"""The search space: checked against the backend up front, sampled by Optuna or enumerated.

A trial's parameters are the ``model`` section with the space's entries replaced; the result
is always a full :class:`~toolkit.config.ModelConfig`, so a trial is an ordinary fit.
"""

from __future__ import annotations

from typing import Any

from toolkit.config import FloatRange, ModelConfig, SearchConfig, check_space_settings
from toolkit.errors import ConfigError
from toolkit.names import HYPERPARAMETERS, INTERNAL_METRICS, LABEL_METRICS, RESAMPLING_METRICS

__all__ = ["check_space", "grid_values", "model_for", "suggest", "trial_model"]

# Every hyperparameter but the seed, which each trial derives (trial_model).
_SPACE_KEYS = tuple(key for key in HYPERPARAMETERS if key != "random_state")


def check_space(search: SearchConfig, backend: Any, n_samples: int, has_labels: bool) -> None:
    """Reject what the backend or the data cannot do, before any trial runs.

    Entries the backend would ignore were already refused by the config's validation (which
    knows ``model.init`` too); checked again here, from the same rule, for callers that build
    a search by hand.
    """
    space = search.space
    bad = [i for i in (space.init or []) if i not in backend.inits]
    if bad:
        raise ConfigError(
            f"search.space.init has {bad}, which backend {backend.name!r} does not support",
            f"use only {', '.join(backend.inits)}",
        )
    check_space_settings(backend.name, space)
    if space.n_clusters.high > n_samples:
        raise ConfigError(
            f"search.space.n_clusters.high={space.n_clusters.high} exceeds the {n_samples} samples",
            f"set search.space.n_clusters.high <= {n_samples}",
        )
    # Every objective of a multi-objective search too (search.objectives).
    for objective in search.objectives or [search.objective]:
        # Stability is trivially 1 with one cluster: it needs 2 like the internal metrics.
        if space.n_clusters.low < 2 and objective in (*INTERNAL_METRICS, *RESAMPLING_METRICS):
            raise ConfigError(
                f"objective {objective} needs at least 2 clusters but search.space.n_clusters.low=1",
                "set search.space.n_clusters.low >= 2",
            )
        if objective in LABEL_METRICS and not has_labels:
            raise ConfigError(
                f"objective {objective} needs ground-truth labels, which this data has none of",
                f"use {', '.join(INTERNAL_METRICS[:-1])} or {INTERNAL_METRICS[-1]}, or set data.label_column",
            )


def _float_choice(trial: Any, name: str, spec: Any) -> float:
    if isinstance(spec, FloatRange):
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    return trial.suggest_categorical(name, list(spec))


def suggest(trial: Any, search: SearchConfig) -> dict[str, Any]:
    """Ask an Optuna trial for every parameter the space varies."""
    space = search.space
    out: dict[str, Any] = {
        "n_clusters": trial.suggest_int(
            "n_clusters", space.n_clusters.low, space.n_clusters.high, step=space.n_clusters.step
        )
    }
    if space.init:
        out["init"] = trial.suggest_categorical("init", list(space.init))
    if space.max_iter:
        out["max_iter"] = trial.suggest_categorical("max_iter", list(space.max_iter))
    if space.n_init:
        out["n_init"] = trial.suggest_categorical("n_init", list(space.n_init))
    if space.tol is not None:
        out["tol"] = _float_choice(trial, "tol", space.tol)
    if space.oversampling_factor is not None:
        out["oversampling_factor"] = _float_choice(trial, "oversampling_factor", space.oversampling_factor)
    return out


def grid_values(search: SearchConfig, n_points: int = 4) -> dict[str, list[Any]]:
    """The space as lists (ranges become ``n_points`` evenly spaced values), for grid search."""
    import numpy as np

    space = search.space
    grid: dict[str, list[Any]] = {"n_clusters": space.n_clusters.values()}
    for key in ("init", "max_iter", "n_init"):
        value = getattr(space, key)
        if value:
            grid[key] = list(value)
    for key in ("tol", "oversampling_factor"):
        spec = getattr(space, key)
        if isinstance(spec, FloatRange):
            pts = (
                np.geomspace(spec.low, spec.high, n_points)
                if spec.log
                else np.linspace(spec.low, spec.high, n_points)
            )
            grid[key] = [float(v) for v in pts]
        elif spec:
            grid[key] = [float(v) for v in spec]
    return grid


def model_for(base: ModelConfig, params: dict[str, Any], seed: int | None = None) -> ModelConfig:
    """``base`` with ``params`` applied (and a per-trial seed, so trials differ)."""
    unknown = set(params) - set(_SPACE_KEYS)
    if unknown:
        raise ConfigError(f"unknown search parameter(s) {sorted(unknown)}", f"use {', '.join(_SPACE_KEYS)}")
    update = dict(params)
    if seed is not None:
        update["random_state"] = seed
    return ModelConfig.model_validate({**base.model_dump(), **update})


def trial_model(base: ModelConfig, params: dict[str, Any], number: int,
                seed_policy: str = "fixed") -> ModelConfig:
    """The model of trial ``number``: ``params`` on ``base``, seeded by ``search.seed_policy``.

    ``fixed``: ``base.random_state`` for every trial, so two trials differ only in their
    parameters and the winner is not the luckiest seed (the same parameters give the same
    value).  ``per_trial``: ``base.random_state + number``.
    The one place the per-trial seed is decided: the loop, the resume's backfill and the refit
    of a best trial found before a resume must agree on it.
    """
    offset = number if seed_policy == "per_trial" else 0
    return model_for(base, {k: v for k, v in params.items() if k != "random_state"},
                     seed=base.random_state + offset)
