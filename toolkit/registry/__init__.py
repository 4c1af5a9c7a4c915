"""Model registry: the native model and its scikit-learn twin, linked, promoted by alias.

``flavor`` is the small MLflow flavor for native (cuML, dask-ml, dask) models and the verified
loader of every logged model; ``integrity`` records and checks the files' checksums; ``register``
logs both models as LoggedModels and registers them; ``promote`` moves the ``champion`` alias
when a challenger wins (and changes few labels); ``stable`` keeps a retrain's cluster IDs those
of the champion.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toolkit._lazy import export_lazily

if TYPE_CHECKING:
    from toolkit.registry.promote import PromotionPolicy, PromotionResult, promote
    from toolkit.registry.register import (
        CHALLENGER,
        CHAMPION,
        Registered,
        Registration,
        log_and_register,
        model_experiment,
    )

#: Names imported from their module on first use (PEP 562): ``keygen``/``migrate --help`` read a
#: constant of a submodule without paying for MLflow and NumPy.
_LAZY = {**dict.fromkeys(("PromotionPolicy", "PromotionResult", "promote"), "toolkit.registry.promote"),
         **dict.fromkeys(("CHALLENGER", "CHAMPION", "Registered", "Registration", "log_and_register",
                          "model_experiment"), "toolkit.registry.register")}


export_lazily(__name__, _LAZY)

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "PromotionPolicy",
    "PromotionResult",
    "Registered",
    "Registration",
    "log_and_register",
    "model_experiment",
    "promote",
    "register_fit",
]


def register_fit(cfg: Any, fitted: Any, run_id: str, search_parent_run_id: str | None = None) -> Registered:
    """Log and register ``fitted`` (a :class:`toolkit.train.FittedModel`: ``backend``, ``fit``,
    ``X``, ``dataset``, ``metrics``) under ``cfg``'s names.

    The fit's ``metrics`` are attached to both LoggedModels.  The training profile (cluster
    shares and distance-to-centre histogram of all of ``X``, for drift reports) is computed
    here, where the training data is, and stored with both models.
    """
    from toolkit.metrics import sample_rows
    from toolkit.registry.register import Registration, log_and_register
    from toolkit.stats.profile import build_profile

    backend, fit, dataset = fitted.backend, fitted.fit, fitted.dataset
    hX, hlabels = backend.host_view(fitted.X, fit.labels)
    sample, _ = sample_rows(hX, hlabels, 2_000, cfg.metrics.seed)
    # In the fit's own cluster order: log_and_register reorders it with the clusters.
    profile = None if hlabels is None else build_profile(hX, hlabels, fit.centers, sample=sample,
                                                          bins=cfg.monitoring.histogram_bins)
    native = backend.native_model(fit)
    twin = backend.to_sklearn(native)
    shift = getattr(dataset, "shift", None)
    if shift is not None:  # fitted on centred data (toolkit.data): registered to predict raw rows
        native, twin = _centred_pair(native, twin, shift, fit.inertia / max(len(hX), 1))
        sample = dataset.raw(sample)
    return log_and_register(native, twin, sample, Registration(
        run_id=run_id, backend=backend.name, native_name=cfg.native_model_name,
        sklearn_name=cfg.sklearn_model_name, feature_names=tuple(dataset.feature_names or ()),
        search_parent_run_id=search_parent_run_id, register=cfg.registry.register_best,
        metrics=fitted.metrics, stable_labels=cfg.registry.stable_labels), profile=profile)


#: A twin of centred data stays a plain ``KMeans`` (float64 centres in the raw coordinates) while
#: ``|shift| <= TWIN_RATIO * rms within-cluster distance``: scikit-learn predicts with
#: ``|c|^2 - 2 x.c`` in float64, whose error ``~3 * 2**-53 * |shift|**2`` is then below 6e-9 of a
#: squared within-cluster distance.  Farther data gets the centring step in front
#: (:func:`toolkit.convert.centered_model`).
TWIN_RATIO = 2.0**12


def _centred_pair(native: Any, twin: Any, shift: Any, within2: float) -> tuple[Any, Any]:
    """(native, twin) of models fitted on data centred on ``shift``, for raw rows.

    The native model always carries the shift (a centring step before it; the flavor stores it
    as ``shift.npy``).  The twin is a plain ``KMeans`` where float64 suffices, else centred too.
    """
    import numpy as np

    from toolkit.convert import centered_model, sklearn_from_centers

    shift = np.asarray(shift, dtype=np.float64)
    centres = np.asarray(twin.cluster_centers_, dtype=np.float64)
    facts = {"params": twin, "inertia": getattr(twin, "inertia_", None), "n_iter": getattr(twin, "n_iter_", None),
             "dtype": np.float64}
    if within2 > 0 and float(shift @ shift) <= TWIN_RATIO**2 * within2:
        new_twin = sklearn_from_centers(centres + shift, **facts)
    else:
        new_twin = centered_model(sklearn_from_centers(centres, **facts), shift)
    return centered_model(native, shift), new_twin
