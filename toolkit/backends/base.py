"""The one interface every k-means backend implements.

Search, tracking, registry and serving only talk to :class:`KMeansBackend`; a backend's own
libraries (dask-ml, cuML, ...) are imported inside its module, which the registry in
``toolkit.backends`` imports only when that backend is chosen.
"""

from __future__ import annotations

import abc
import copy
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from toolkit import env
from toolkit.config import ModelConfig
from toolkit.convert import to_sklearn
from toolkit.data import Dataset
from toolkit.errors import ConfigError

# Re-exported: the search imports it from here; it lives in the bottom layer so that the Dask
# k-means package can use it without importing the backends.
from toolkit.faults import is_infrastructure_error

# Parallelism is re-exported too (toolkit.backends lists it): declared with the backend facts.
from toolkit.names import BACKEND_FACTS, HYPERPARAMETERS, BackendFacts, Device, Parallelism

__all__ = [
    "FitResult",
    "KMeansBackend",
    "Parallelism",
    "init_seeds",
    "is_infrastructure_error",
]

#: The class attributes a registered backend takes from its entry in ``BACKEND_FACTS``.
_FACTS = ("device", "parallelism", "inits", "honours")


@dataclass
class FitResult:
    """What one fit produced, in host (NumPy / Dask-on-CPU) terms where it matters.

    Attributes:
        model: the backend's fitted estimator (cuML, dask-ml, scikit-learn, ...).
        centers: ``(k, d)`` float64 NumPy centroids.
        inertia: global sum of squared distances to the closest centroid, over all data.
        n_iter: Lloyd iterations run.
        fit_seconds: wall time of ``fit``.
        labels: cluster of every row; NumPy or a lazy Dask array aligned with the data.
    """

    model: Any
    centers: np.ndarray
    inertia: float
    n_iter: int
    fit_seconds: float
    labels: Any
    extra: dict[str, Any] = field(default_factory=dict)


def _n_rows(X: Any) -> int:
    """Row count of an array (NumPy, Dask, CuPy) or a (Dask) DataFrame."""
    shape = getattr(X, "shape", None)
    if shape is not None and isinstance(shape[0], (int, np.integer)):
        return int(shape[0])
    return len(X)


def init_seeds(random_state: int, n_init: int) -> list[int]:
    """One seed per initialisation, for backends whose library runs one initialisation per fit
    (the adaptor runs ``n_init`` fits and keeps the lowest inertia, as scikit-learn does):
    ``random_state`` first, so ``n_init=1`` is the plain fit, then seeds drawn from it."""
    extra = np.random.SeedSequence(random_state).generate_state(max(n_init - 1, 0))
    return [random_state, *(int(s) for s in extra)]


class KMeansBackend(abc.ABC):
    """A k-means implementation on one kind of hardware and data placement.

    Subclasses set ``name`` (and ``requires``) and implement :meth:`prepare` and :meth:`_fit`.
    A class whose ``name`` is registered in :data:`toolkit.names.BACKEND_FACTS` takes its
    ``device``, ``parallelism``, ``inits`` and ``honours`` from there (declaring them again in
    the class is a ``TypeError``): the config validates against the same facts without
    importing any backend.  ``__init__`` only stores the Dask client (``None`` for backends
    that need none) and the data placement options (``data.persist``, ``data.chunk_rows``).
    """

    name: ClassVar[str]
    #: This backend's entry in ``BACKEND_FACTS`` (``None`` for an unregistered class).
    facts: ClassVar[BackendFacts | None] = None
    device: ClassVar[Device] = "cpu"
    #: trial-parallel backends fit one model per worker; data-parallel ones spread one fit.
    parallelism: ClassVar[Parallelism] = "trial"
    #: ``init`` values (toolkit vocabulary) this backend accepts.
    inits: ClassVar[tuple[str, ...]] = ("k-means++", "random")
    #: hyperparameters (``ModelConfig`` fields) its fit uses.
    honours: ClassVar[tuple[str, ...]] = HYPERPARAMETERS
    #: Python packages the backend imports; named in the error when one is missing.
    requires: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only a class that names itself: a subclass standing in for a registered backend
        # (tests/flaky_backend.py) inherits its parent's facts unchanged.
        name = cls.__dict__.get("name")
        facts = BACKEND_FACTS.get(name) if isinstance(name, str) else None
        if facts is None:
            return
        again = [attr for attr in _FACTS if attr in cls.__dict__]
        if again:
            raise TypeError(
                f"{cls.__qualname__} declares {', '.join(again)}: backend {name!r} takes them "
                f"from toolkit.names.BACKEND_FACTS, the one place they are declared"
            )
        cls.facts = facts
        for attr in _FACTS:
            setattr(cls, attr, getattr(facts, attr))

    def __init__(self, client: Any = None, *, persist: bool = True, chunk_rows: int = 250_000) -> None:
        self.client = client
        self.persist = persist
        self.chunk_rows = chunk_rows

    # -- availability ---------------------------------------------------------------------
    @classmethod
    def check_available(cls) -> None:
        """Raise :class:`BackendUnavailableError` naming the missing package or device."""
        # Looked up on the module at call time (not imported by name): tests replace it there.
        env.require_packages(cls.name, cls.requires)

    # -- validation -----------------------------------------------------------------------
    def validate(self, params: ModelConfig, n_samples: int) -> None:
        """Check hyperparameters against this backend and the data, before any work."""
        if params.init not in self.inits:
            raise ConfigError(
                f"backend {self.name!r} does not support init {params.init!r}",
                f"use one of {', '.join(self.inits)}",
            )
        if params.n_clusters > n_samples:
            raise ConfigError(
                f"n_clusters={params.n_clusters} is larger than the {n_samples} samples",
                f"use n_clusters <= {n_samples} or more data",
            )

    # -- data and fitting -----------------------------------------------------------------
    @abc.abstractmethod
    def prepare(self, dataset: Dataset) -> Any:
        """Place the data where this backend computes (NumPy, Dask array, CuPy, dask_cudf)."""

    @abc.abstractmethod
    def _fit(self, X: Any, params: ModelConfig) -> FitResult:
        """Fit on prepared data; ``fit_seconds`` may be left 0 (``fit`` times it)."""

    def fit(self, X: Any, params: ModelConfig) -> FitResult:
        """Fit k-means with ``params`` on data returned by :meth:`prepare`."""
        self.validate(params, _n_rows(X))
        start = time.perf_counter()
        result = self._fit(X, params)
        result.fit_seconds = time.perf_counter() - start
        return result

    def predict(self, model: Any, X: Any) -> Any:
        """Labels for prepared data ``X`` (NumPy or lazy Dask array)."""
        return model.predict(X)

    def host_view(self, X: Any, labels: Any) -> tuple[Any, Any]:
        """Data and labels as NumPy or Dask-of-NumPy arrays, for the metrics."""
        return X, labels

    # -- models ---------------------------------------------------------------------------
    def native_model(self, result: FitResult) -> Any:
        """The model to register in the backend's own format, safe to pickle.

        Lazy ``labels_`` (a Dask array over the cluster's data) are dropped from a copy: they
        point at live cluster memory and would make the file depend on a running cluster.
        """
        model = result.model
        labels = getattr(model, "labels_", None)
        if labels is not None and not isinstance(labels, np.ndarray):
            model = copy.copy(model)
            model.labels_ = None
        return model

    def to_sklearn(self, model: Any) -> Any:
        """The scikit-learn ``KMeans`` that predicts like ``model`` (:func:`toolkit.convert.to_sklearn`)."""
        return to_sklearn(model)

    def library_versions(self) -> dict[str, str]:
        """``{distribution: version}`` of the libraries this backend computes with (import names
        in ``requires`` are looked up by the distribution that provides them: ``dask_ml`` is
        recorded as ``dask-ml``, once)."""
        return {**env.installed_versions(("numpy", "scikit-learn")), **env.distribution_versions(self.requires)}
