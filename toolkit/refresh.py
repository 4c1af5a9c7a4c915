"""Refresh from the champion: fit new data starting from the champion's centres.

A refresh is a retrain that keeps continuity on purpose: the fit starts from the centres of the
model holding the ``champion`` alias (one initialisation, ``init=`` those centres, on whichever
backend the config names), so clusters that did not move stay where they were and keep their
IDs.  The result is registered like any training result (:func:`toolkit.train.register_best`):
label-stable (its clusters matched to the champion's, :mod:`toolkit.registry.stable`), with the
``challenger`` alias; the champion is not touched -- ``promote`` decides.

How far each centre moved is measured on the matched clusters (the distance
:func:`toolkit.registry.stable.match_centers` reports per champion ID) and logged as
``refresh.center_shift_max``, ``refresh.center_shift_mean`` and
``refresh.center_shift.cluster_<id>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.backends import FitResult
from toolkit.config import ExperimentConfig
from toolkit.errors import ModelError

__all__ = ["RefreshOutcome", "center_shifts", "champion_centers", "refresh", "refresh_config"]


@dataclass
class RefreshOutcome:
    """What a refresh fitted, measured and registered."""

    run_id: str
    model_name: str
    champion_version: str
    result: FitResult
    metrics: dict[str, float]
    #: Distance each champion cluster's centre moved, by champion ID (NaN: no match).
    shifts: np.ndarray
    #: The :class:`toolkit.registry.Registered` record of the challenger.
    registered: Any = None

    @property
    def shift_max(self) -> float:
        return float(np.nanmax(self.shifts)) if np.isfinite(self.shifts).any() else float("nan")

    @property
    def shift_mean(self) -> float:
        return float(np.nanmean(self.shifts)) if np.isfinite(self.shifts).any() else float("nan")


def _native_and_twin(model_name: str) -> tuple[Any, str, str | None]:
    """(champion version of the native name, native name, twin name) for ``model_name``.

    A twin's name is accepted too: the refresh registers under the native name, like train.
    """
    from toolkit.registry.promote import champion_of

    champion = champion_of(model_name)
    if champion is None:
        raise ModelError(f"registered model {model_name!r} has no champion to refresh from",
                         "train and register a model first (mlflow run . -e train -P register=true)")
    tags = champion.tags or {}
    if tags.get("kind") == "sklearn_twin" and tags.get("twin.name"):
        native = champion_of(tags["twin.name"])
        if native is not None:
            return native, tags["twin.name"], model_name
    return champion, model_name, tags.get("twin.name") or None


def _champion_model(champion: Any) -> Any:
    """Version ``champion``'s model, read from its verified files.

    Through its scikit-learn twin when it has one: same centres, it knows its columns, and it
    loads on any machine (a cuML champion needs a GPU to be read natively).
    """
    from toolkit.registry import flavor

    tags = champion.tags or {}
    uri = (f"models:/{tags['twin.name']}/{tags['twin.version']}"
           if tags.get("kind") != "sklearn_twin" and tags.get("twin.name") and tags.get("twin.version")
           else f"models:/{champion.name}/{champion.version}")
    return flavor.load_model(uri)


def champion_centers(champion: Any) -> np.ndarray:
    """The ``(k, d)`` float64 centres of version ``champion``, read from its verified files."""
    from toolkit.convert import centers_of

    return np.asarray(centers_of(_champion_model(champion)), dtype=np.float64)  # raw coordinates


def _check_columns(champion: Any, start: np.ndarray, old: list[str] | None, dataset: Any, native_name: str) -> None:
    """Refuse data whose features are not the champion's (its centres ``start``, its columns
    ``old``): the centres start the fit coordinate by coordinate, so the columns must be the
    same ones, in the same order, where both are known.

    Raises:
        ConfigError: another number of features, or other names or another order.
    """
    from toolkit.errors import ConfigError

    fix = "refresh on data with the champion's columns, in its order (data.columns)"
    if dataset.n_features != start.shape[1]:
        raise ConfigError(f"the data has {dataset.n_features} feature(s), champion v{champion.version} "
                          f"of {native_name!r} was trained on {start.shape[1]}", fix)
    names = [str(n) for n in dataset.feature_names or ()]
    if names and old is not None and old != names:
        raise ConfigError(f"the data's columns ({', '.join(names)}) are not those champion "
                          f"v{champion.version} of {native_name!r} was trained on ({', '.join(old)})", fix)


def center_shifts(new_centers: np.ndarray, old_centers: np.ndarray) -> np.ndarray:
    """Distance each old centre moved to its matched new centre, by old ID (NaN: vanished).

    The matching is the registry's (:func:`toolkit.registry.stable.match_centers`), so the IDs
    are the ones the challenger is registered with.
    """
    from toolkit.registry.stable import match_centers

    m = match_centers(new_centers, old_centers)
    out = np.full(len(old_centers), np.nan)
    for new_id, old_id in m.mapping.items():
        if old_id is not None:
            out[old_id] = m.distances[new_id]
    return out


def refresh_config(cfg: ExperimentConfig, native_name: str, sklearn_name: str | None, k: int) -> ExperimentConfig:
    """``cfg`` made a refresh of ``k`` clusters registered under the champion's names (a copy)."""
    out = cfg.model_copy(deep=True)
    out.model.n_clusters = k
    out.model.n_init = 1  # one run, from the given centres
    out.registry.native_name = native_name
    if sklearn_name:
        out.registry.sklearn_name = sklearn_name
    # A refresh exists to register a challenger whose IDs are the champion's.
    out.registry.register_best = True
    out.registry.stable_labels = True
    out.source_path = cfg.source_path
    return out


def refresh(cfg: ExperimentConfig, model_name: str, client: Any = None, run_name: str | None = None) -> RefreshOutcome:
    """Fit ``cfg.data`` from the centres of ``model_name@champion`` and register a challenger.

    ``cfg`` gives the data, backend, cluster and tracking settings; ``model.n_clusters`` and
    ``model.n_init`` are set from the champion (its ``k``, one initialisation) and the registry
    names are the champion's.  Runs inside one MLflow run (FAILED with the reason on error).

    Raises:
        ModelError: no champion, or its files fail their integrity check.
        ConfigError: the data's features differ from the champion's.
    """
    from toolkit.cluster import client_info
    from toolkit.convert import centers_of
    from toolkit.data import load_dataset
    from toolkit.registry import flavor
    from toolkit.tracking import log_dataset, log_params, log_tags, tags_for, tracked_run
    from toolkit.train import (
        FittedModel,
        backend_session,
        fit_and_score,
        log_fit,
        log_registered_centroids,
        register_best,
        run_params,
    )

    champion, native_name, twin_name = _native_and_twin(model_name)
    champion_model = _champion_model(champion)
    start = np.asarray(centers_of(champion_model), dtype=np.float64)  # raw coordinates, a centred model's too
    cfg = refresh_config(cfg, native_name, twin_name, len(start))
    name = run_name or f"refresh-{native_name}-from-v{champion.version}"
    tags = {"entry_point": "refresh", "config": str(cfg.source_path), "refresh.model_name": native_name,
            "refresh.champion_version": str(champion.version),
            "refresh.champion_uri": f"models:/{native_name}/{champion.version}"}
    with tracked_run(cfg.experiment_name, name, tags) as run_id:
        with backend_session(cfg, client) as (backend, dclient):
            log_tags(run_id, tags_for(backend, client_info(dclient) if dclient else None))
            dataset = load_dataset(cfg.data)
            _check_columns(champion, start, flavor.trained_columns(champion_model), dataset, native_name)
            log_params(run_id, run_params(cfg, dataset))
            log_dataset(run_id, dataset)
            backend.validate(cfg.model, dataset.n_samples)
            X = backend.prepare(dataset)
            # The fit runs on the data as loaded (centred if need be, toolkit.data): so does its start.
            init = start if dataset.shift is None else start - dataset.shift
            result, metrics = fit_and_score(backend, X, cfg.model, cfg.metrics, dataset.y, init_centers=init)
            shifts = center_shifts(dataset.raw(result.centers), start)
            finite = shifts[np.isfinite(shifts)]
            metrics["refresh.center_shift_max"] = float(finite.max()) if len(finite) else float("nan")
            metrics["refresh.center_shift_mean"] = float(finite.mean()) if len(finite) else float("nan")
            metrics.update({f"refresh.center_shift.cluster_{i}": float(v) for i, v in enumerate(shifts)})
            fitted = FittedModel(backend, result, metrics, X, dataset)
            log_fit(run_id, cfg, fitted)
            registered = register_best(cfg, fitted, run_id)
            log_registered_centroids(run_id, cfg, fitted, registered)
        _tag_versions(registered, champion.version)
    return RefreshOutcome(run_id, native_name, str(champion.version), result, metrics, shifts, registered)


def _tag_versions(reg: Any, champion_version: str) -> None:
    """Say on the new versions which champion they were refreshed from."""
    from toolkit.tracking.runs import client

    c = client()
    for name, version in ((reg.native_name, reg.native_version), (reg.sklearn_name, reg.sklearn_version)):
        if name and version:
            c.set_model_version_tag(name, version, "refresh.from_champion_version", str(champion_version))
