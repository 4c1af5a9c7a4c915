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
from toolkit.convert import to_numpy, to_sklearn
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
    "check_init_centers",
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
        fit_seconds: wall time of the fit alone (a distributed backend's first fit warms its
            workers first; that time is ``extra["warmup_seconds"]``).
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


def _n_cols(X: Any) -> int | None:
    """Feature count of an array or a (Dask) DataFrame, None when it cannot be told cheaply."""
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) == 2 and isinstance(shape[1], (int, np.integer)):
        return int(shape[1])
    columns = getattr(X, "columns", None)
    return len(columns) if columns is not None else None


def check_init_centers(centers: Any, k: int, d: int | None) -> np.ndarray:
    """``centers`` as a finite ``(k, d)`` float64 NumPy array (CuPy is copied to the host).

    Raises:
        ConfigError: wrong shape (k or d differ from the model's and the data's) or NaN/inf.
    """
    arr = np.array(to_numpy(centers), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != k or (d is not None and arr.shape[1] != d):
        want = f"({k}, {d if d is not None else 'd'})"
        raise ConfigError(f"initial centres have shape {arr.shape}, expected {want}",
                          "start from centres with model.n_clusters rows and one column per feature")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("initial centres contain NaN or infinite values", "start from finite centres")
    return arr


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
    #: Its fit and metrics run in compiled code that releases the GIL, so trials can share one
    #: process as threads (``cluster.processes=auto``) without waiting on each other.
    releases_gil: ClassVar[bool] = False
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
        #: Set around a train run's fit (and a search's refit, never a trial's) by
        #: :func:`toolkit.train.fit_progress`: called with a dict after every pass over the data of
        #: the next fit (the ``dask`` backend's, which then clears it: the metrics' resampled fits
        #: are not reported); other backends ignore it.
        self.on_pass: Any = None

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
    def _fit(self, X: Any, params: ModelConfig, init_centers: np.ndarray | None = None) -> FitResult:
        """Fit on prepared data; ``fit_seconds`` may be left 0 (``fit`` times it).

        ``init_centers`` (checked ``(k, d)`` float64, only ever passed when given) replaces
        ``params.init``: one run from those centres (``params.n_init`` is then 1).
        """

    def fit(self, X: Any, params: ModelConfig, init_centers: Any = None) -> FitResult:
        """Fit k-means with ``params`` on data returned by :meth:`prepare`.

        ``init_centers``: start from these ``(n_clusters, n_features)`` centres (e.g. the
        champion's, for a refresh) instead of ``params.init``; one initialisation is run.

        Raises:
            ConfigError: ``init_centers`` has the wrong shape or non-finite values.
        """
        self.validate(params, _n_rows(X))
        # Warm-up (worker imports, JIT kernels, data still landing) is timed on its own: on a
        # fresh cluster it took 6-8 s before a 0.1-0.4 s fit, and fit_seconds is the fit alone.
        warmup = self._warm_once(X)
        start = time.perf_counter()
        if init_centers is None:
            # Called without the keyword: backends written before array inits keep working.
            result = self._fit(X, params)
        else:
            centers = check_init_centers(init_centers, params.n_clusters, _n_cols(X))
            result = self._fit(X, params.model_copy(update={"n_init": 1}), init_centers=centers)
        result.fit_seconds = time.perf_counter() - start
        if warmup is not None:
            result.extra["warmup_seconds"] = warmup
        return result

    def warm_up(self, X: Any) -> None:
        """Get the workers ready to fit ``X``: nothing for in-process backends.

        Distributed backends override it to wait for the placed data and to run, on every
        worker, the imports and compilations their first task would otherwise pay for.
        Called once per backend instance, before :meth:`fit` starts its clock.
        """
        return None  # in-process backends: nothing to warm (not abstract: most need nothing)

    def _warm_once(self, X: Any) -> float | None:
        """Seconds :meth:`warm_up` took the first time it ran on this instance (else ``None``)."""
        if getattr(self, "_warmed", False):
            return None
        self._warmed = True
        if type(self).warm_up is KMeansBackend.warm_up:
            return None  # nothing to warm: no warm-up metric either
        start = time.perf_counter()
        self.warm_up(X)
        return time.perf_counter() - start

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
