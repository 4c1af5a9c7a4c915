"""The toolkit's vocabularies, each declared once: backends, inits, hyperparameters, metrics.

This module sits at the very bottom of ``toolkit/`` and imports nothing from it, so that
:mod:`toolkit.config` (which validates names), :mod:`toolkit.metrics` and the backends package
(which builds each backend class from its facts here) can all read it without an import cycle.

* :data:`BACKEND_FACTS` -- the backend registry: for every backend name, where its class lives
  (``"module:Class"``, imported only when chosen) and its static facts: device, parallelism, the
  ``init`` values it accepts and the hyperparameters it honours.  Registering a backend is
  adding one entry here; the config accepts it, ``toolkit.backends.get_backend`` finds it and
  ``tests/test_backend_contract.py`` tests it.
* :data:`INITS`, :data:`HYPERPARAMETERS`, :data:`INIT_SPECIFIC` -- the ``model`` vocabulary.
* :data:`METRIC_DIRECTIONS`, :data:`OBJECTIVES`, :data:`EVAL_METRICS` -- metric names.
* :data:`PRUNERS`, :data:`FIDELITY_RESOURCES` -- multi-fidelity search (``search.fidelity``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

__all__ = [
    "BACKENDS",
    "BACKEND_FACTS",
    "BACKEND_NAMES",
    "EVAL_METRICS",
    "FIDELITY_RESOURCES",
    "HYPERPARAMETERS",
    "INITS",
    "INIT_SPECIFIC",
    "INTERNAL_METRICS",
    "LABEL_METRICS",
    "METRIC_DIRECTIONS",
    "MIGRATE_TRUST_LEVELS",
    "MULTI_OBJECTIVES",
    "OBJECTIVES",
    "PRUNERS",
    "RESAMPLING_METRICS",
    "SIGNING_ALGORITHMS",
    "TRADE_OFFS",
    "BackendFacts",
    "Device",
    "Parallelism",
    "honouring",
    "ignored_because",
]

# -- model vocabulary -------------------------------------------------------------------------

#: ``init`` values, in the toolkit's (scikit-learn's) vocabulary; backends translate
#: ('k-means||' is scalable k-means++, cuML's 'scalable-k-means++').
INITS: tuple[str, ...] = ("k-means++", "k-means||", "random")

#: Every k-means hyperparameter of the ``model`` section, in its order.
HYPERPARAMETERS: tuple[str, ...] = (
    "n_clusters", "init", "max_iter", "tol", "n_init", "oversampling_factor", "random_state",
)  # fmt: skip

#: Hyperparameters that act only with some inits, on every backend that honours them:
#: only k-means|| oversamples (cuML runs its 'k-means++' as k-means|| with oversampling 0).
INIT_SPECIFIC: Mapping[str, tuple[str, ...]] = MappingProxyType({"oversampling_factor": ("k-means||",)})

# -- backends ---------------------------------------------------------------------------------

Device = Literal["cpu", "gpu"]
#: trial-parallel backends fit one model per worker; data-parallel ones spread one fit.
Parallelism = Literal["trial", "data"]


@dataclass(frozen=True)
class BackendFacts:
    """What is true of a backend whatever the data: read by the config and by its class.

    Attributes:
        target: ``"module:Class"`` of the implementation, imported only when chosen.
        device: where it computes.
        parallelism: ``"trial"`` (one model per worker under search) or ``"data"``.
        inits: the ``init`` values (:data:`INITS` vocabulary) it accepts.
        honours: the :data:`HYPERPARAMETERS` its fit uses; setting any other one to something
            but its default is refused by the config, since the backend would ignore it.
    """

    target: str
    device: Device
    parallelism: Parallelism
    inits: tuple[str, ...]
    honours: tuple[str, ...]

    def __post_init__(self) -> None:
        # Checked at import: a typo here would otherwise surface as a confusing refusal.
        unknown = {*self.inits} - {*INITS} | {*self.honours} - {*HYPERPARAMETERS}
        if unknown or ":" not in self.target:
            raise ValueError(f"bad backend facts {self!r}: unknown names {sorted(unknown)}")


_ALL = HYPERPARAMETERS
_ALL_INITS = ("k-means||", "k-means++", "random")

#: The backend registry: name -> facts, in the order names are listed to users.  Read each
#: backend's ``_fit`` before changing ``honours``: it must name exactly what reaches the fit.
BACKEND_FACTS: Mapping[str, BackendFacts] = MappingProxyType({
    # sklearn.cluster.KMeans has no k-means|| and no oversampling.
    "sklearn": BackendFacts(
        target="toolkit.backends.scikit:SklearnBackend", device="cpu", parallelism="trial",
        inits=("k-means++", "random"),
        honours=tuple(p for p in _ALL if p != "oversampling_factor"),
    ),
    # dask_ml.cluster.KMeans runs one initialisation; the adaptor runs n_init of them and keeps
    # the lowest inertia (dask-ml's own n_init only reaches its k-means++, which we replace).
    "dask-ml": BackendFacts(
        target="toolkit.backends.daskml:DaskMLBackend", device="cpu", parallelism="data",
        inits=_ALL_INITS, honours=_ALL,
    ),
    "dask": BackendFacts(
        target="toolkit.backends.dask_lloyd:DaskBackend", device="cpu", parallelism="data",
        inits=_ALL_INITS, honours=_ALL,
    ),
    "cuml": BackendFacts(
        target="toolkit.backends.cuml_single:CumlBackend", device="gpu", parallelism="trial",
        inits=_ALL_INITS, honours=_ALL,
    ),
    # Multi-GPU cuML (cuVS kmeans_mg fit) runs one initialisation (its own n_init reaches no
    # loop: the adaptor runs n_init fits and keeps the best) and has no exact k-means++:
    # "k-means++" is fitted as k-means|| (scalable k-means++, the same seeding spread over the
    # GPUs), so every shipped experiment runs on it unchanged.
    "cuml-dask": BackendFacts(
        target="toolkit.backends.cuml_dask:CumlDaskBackend", device="gpu", parallelism="data",
        inits=_ALL_INITS, honours=_ALL,
    ),
})  # fmt: skip

#: Names accepted for ``backend``, in the registry's order.
BACKEND_NAMES: tuple[str, ...] = tuple(BACKEND_FACTS)

#: name -> ``"module:Class"``, what :func:`toolkit.backends.get_backend` imports.  Derived from
#: :data:`BACKEND_FACTS`; a mutable dict so that tests can stand a class in for a name.
BACKENDS: dict[str, str] = {name: facts.target for name, facts in BACKEND_FACTS.items()}


def honouring(param: str) -> tuple[str, ...]:
    """The backends whose fit uses hyperparameter ``param`` (for the fix in a refusal)."""
    return tuple(name for name, facts in BACKEND_FACTS.items() if param in facts.honours)


def ignored_because(backend: str, param: str, inits: Collection[str] | None = None) -> str | None:
    """Why ``backend`` would ignore hyperparameter ``param``, or ``None`` when its fit uses it.

    Args:
        backend: a registered backend name.
        param: one of :data:`HYPERPARAMETERS`.
        inits: the ``init`` values the fits will use; ``None`` when not known (then only the
            backend's own facts are asked, not :data:`INIT_SPECIFIC`).
    """
    if param not in BACKEND_FACTS[backend].honours:
        return f"backend {backend!r} does not use {param}"
    acting = INIT_SPECIFIC.get(param)
    if acting is not None and inits is not None and not set(inits) & set(acting):
        used = " or ".join(repr(i) for i in sorted(set(inits)))
        return (f"backend {backend!r} uses {param} only with init "
                f"{' or '.join(repr(a) for a in acting)}, and the fits use {used}")
    return None


# -- metrics ----------------------------------------------------------------------------------

#: Every metric an objective or a promotion may use, with the direction that is better.
METRIC_DIRECTIONS: dict[str, str] = {
    "silhouette": "maximize",
    "davies_bouldin": "minimize",
    "calinski_harabasz": "maximize",
    "adjusted_rand": "maximize",
    "inertia": "minimize",
    # Agreement of refits of the same configuration (toolkit.metrics.resampling_metrics).
    "stability": "maximize",
    "prediction_strength": "maximize",
}

#: Metrics of the clustering alone; undefined below 2 clusters.
INTERNAL_METRICS: tuple[str, ...] = ("silhouette", "davies_bouldin", "calinski_harabasz")
#: Metrics that compare with ground-truth labels.
LABEL_METRICS: tuple[str, ...] = ("adjusted_rand",)
#: Metrics of a configuration, from several refits on subsamples of a sample: they need the
#: fitting backend, so a search computes them only when an objective asks for them.
RESAMPLING_METRICS: tuple[str, ...] = ("stability", "prediction_strength")
#: What a search may optimise (not inertia: it always falls as n_clusters grows).
OBJECTIVES: tuple[str, ...] = (*INTERNAL_METRICS, *LABEL_METRICS, *RESAMPLING_METRICS)
#: What ``registry.eval_metric`` may compare models on: a registered model alone can be scored
#: on new data, but not refitted, so not the resampling metrics.
EVAL_METRICS: tuple[str, ...] = tuple(m for m in METRIC_DIRECTIONS if m not in RESAMPLING_METRICS)
#: What a multi-objective search (``search.objectives``) may trade a quality objective against,
#: with the direction that is better: more clusters (a finer model), a shorter fit.
TRADE_OFFS: Mapping[str, str] = MappingProxyType({"n_clusters": "maximize", "fit_seconds": "minimize"})
#: Names accepted in ``search.objectives``.
MULTI_OBJECTIVES: tuple[str, ...] = (*OBJECTIVES, *TRADE_OFFS)

if set(OBJECTIVES) - set(METRIC_DIRECTIONS):  # pragma: no cover - a declaration slip
    raise ValueError("every objective needs a direction in METRIC_DIRECTIONS")


# -- multi-fidelity search ----------------------------------------------------------------------

#: ``search.fidelity.pruner``: the Optuna pruner that decides which trials go on to the next
#: rung (``none``: every trial fits the full data once, the search without fidelity).
#: ``synchronous_halving`` decides a rung once all its trials have reported
#: (:mod:`toolkit.search.pruners`); the others decide as each trial reports.
PRUNERS: tuple[str, ...] = ("none", "successive_halving", "synchronous_halving", "hyperband", "median")

#: ``search.fidelity.resource``: what grows from rung to rung -- the share of the rows a trial
#: fits on (a nested, seeded subsample), or its ``max_iter`` (on all rows).
FIDELITY_RESOURCES: tuple[str, ...] = ("data_fraction", "max_iter")


#: Key algorithms ``toolkit.registry.signing.generate_key`` makes (here, so that ``keygen --help``
#: lists them without importing the registry, MLflow and NumPy).
SIGNING_ALGORITHMS = ("ecdsa-p256", "ed25519")
#: What ``migrate`` accepts to read old model versions, each level accepting what the ones before
#: it accept (``toolkit.registry.migrate.TRUST_LEVELS``; here for ``migrate --help``).
MIGRATE_TRUST_LEVELS = ("unsigned", "pickle")
