"""The one interface every k-means backend implements.

Search, tracking, registry and serving only talk to :class:`KMeansBackend`; a backend's own
libraries (dask-ml, cuML, ...) are imported inside its module, which the registry in
``toolkit.backends`` imports only when that backend is chosen.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import copy
import re
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from toolkit.config import ModelConfig
from toolkit.data import Dataset
from toolkit.errors import ConfigError, ToolkitError

__all__ = ["FitResult", "KMeansBackend", "Parallelism", "is_infrastructure_error"]

Parallelism = Literal["trial", "data"]

#: Dask's words for data the cluster no longer has: "cancelled for reason: lost dependencies",
#: "already forgotten", "Worker holding Actor was lost", "scattered data ... lost".
_LOST = re.compile(
    r"\blost dependenc|\bforgotten\b"
    r"|\b(?:key|keys|data|worker|workers|future|futures|task|actor|dependency)\b[^.]{0,60}\blost\b"
    r"|\blost\b[^.]{0,30}\b(?:key|keys|data|worker|workers|future|futures)\b",
    re.IGNORECASE,
)
#: An OSError raised by Dask's comms (the other end died or never answered), as opposed to one
#: about a file, a disk or a permission, which another attempt would only meet again.
_COMM = re.compile(
    r"\bcomm\b|connect|stream|actor|worker|scheduler|timed out|broken pipe|reset by peer",
    re.IGNORECASE,
)
#: Distributed's exceptions that mean "a worker or its data went away", by class name: looked
#: up by name so this module does not import distributed (CommClosedError is an OSError).
_INFRA_TYPES = frozenset({"KilledWorker", "CommClosedError", "FatalCommClosedError",
                          "NoValidWorkerError", "FutureCancelledError", "FuturesCancelledError"})


def _infra_one(exc: BaseException) -> bool:
    """:func:`is_infrastructure_error` for one exception, without its causes."""
    if isinstance(exc, (concurrent.futures.CancelledError, asyncio.CancelledError)):
        return True
    if any(t.__name__ in _INFRA_TYPES and t.__module__.startswith("distributed")
           for t in type(exc).__mro__):
        return True
    if isinstance(exc, OSError):
        if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError,
                            IsADirectoryError, NotADirectoryError)):
            return False
        return isinstance(exc, (ConnectionError, TimeoutError)) or bool(_COMM.search(str(exc)))
    return bool(_LOST.search(str(exc)))


def is_infrastructure_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the cluster lost a worker or data, not that the fit itself failed.

    True for Dask's cancelled and lost futures (``FuturesCancelledError``, any
    ``concurrent.futures``/``asyncio`` ``CancelledError``), ``KilledWorker``,
    ``CommClosedError``, ``NoValidWorkerError``; connection and time-out ``OSError`` s and
    other ``OSError`` s whose message names a comm, stream, worker, actor or connection
    (not missing files, permissions or a full disk); and any error whose message says a
    key, worker or data was lost or forgotten ("lost dependencies").  A
    :class:`~toolkit.errors.ToolkitError` never is.  The causes of ``exc`` (``raise ... from``
    and the exception being handled when it was raised) are checked too.  Another attempt
    with the data placed again can succeed after such an error; after any other it would fail
    the same way.
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ToolkitError):  # already explained to the user, whatever its cause
            return False
        if _infra_one(cur):
            return True
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    return False


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


class KMeansBackend(abc.ABC):
    """A k-means implementation on one kind of hardware and data placement.

    Subclasses set the class attributes and implement :meth:`prepare` and :meth:`_fit`.
    ``__init__`` only stores the Dask client (``None`` for backends that need none) and the
    data placement options (``data.persist``, ``data.chunk_rows``).
    """

    name: ClassVar[str]
    device: ClassVar[Literal["cpu", "gpu"]] = "cpu"
    #: trial-parallel backends fit one model per worker; data-parallel ones spread one fit.
    parallelism: ClassVar[Parallelism] = "trial"
    #: ``init`` values (toolkit vocabulary) this backend accepts.
    inits: ClassVar[tuple[str, ...]] = ("k-means++", "random")
    #: Python packages the backend imports; named in the error when one is missing.
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, client: Any = None, *, persist: bool = True, chunk_rows: int = 250_000) -> None:
        self.client = client
        self.persist = persist
        self.chunk_rows = chunk_rows

    # -- availability ---------------------------------------------------------------------
    @classmethod
    def check_available(cls) -> None:
        """Raise :class:`BackendUnavailableError` naming the missing package or device."""
        from toolkit.backends import require_packages

        require_packages(cls.name, cls.requires)

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
        """The scikit-learn ``KMeans`` that predicts like ``model``."""
        from toolkit.convert import to_sklearn

        return to_sklearn(model)

    def library_versions(self) -> dict[str, str]:
        """``{package: version}`` of the libraries this backend computes with."""
        from importlib.metadata import PackageNotFoundError, version

        out = {}
        for pkg in ("numpy", "scikit-learn", *self.requires):
            try:
                out[pkg] = version(pkg)
            except PackageNotFoundError:
                continue
        return out
