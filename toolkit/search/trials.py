"""Running trials: where a fit happens, and what comes back to the driver.

*Trial-parallel* (single-device backends: sklearn, cuml): the data is scattered once to every
worker and each trial is one Dask task; several run at once, one per worker thread.
*Data-parallel* (dask-ml, dask, cuml-dask): trials run one after another on the driver and each
fit is spread over the whole cluster.  Either way a trial returns a small :class:`TrialResult`
(centroids, metrics) and the driver alone writes MLflow runs.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.config import MetricsConfig, ModelConfig

__all__ = ["DataParallelRunner", "TrialParallelRunner", "TrialResult", "run_trial"]


@dataclass
class TrialResult:
    """A finished trial, as sent back to the driver (small: no data, no labels)."""

    key: Any
    params: ModelConfig
    metrics: dict[str, float] = field(default_factory=dict)
    centers: np.ndarray | None = None
    model: Any = None
    error: str | None = None
    error_type: str | None = None
    started: float = 0.0
    finished: float = 0.0
    worker: str = "driver"
    # The thread it ran on ("" when unknown, e.g. a lost worker): one trial at a time per slot.
    slot: str = ""
    # Driver-side clock: when the trial was handed to a runner and its result came back.
    submitted: float = 0.0
    received: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_trial(
    key: Any,
    backend: Any,
    X: Any,
    params: ModelConfig,
    metrics_cfg: MetricsConfig,
    y: np.ndarray | None,
    keep_model: bool = True,
) -> TrialResult:
    """Fit and score one parameter set; a failure is returned, not raised."""
    from toolkit.train import fit_and_score

    started = time.time()
    try:
        fit, metrics = fit_and_score(backend, X, params, metrics_cfg, y)
    except Exception as exc:  # a failed trial is data for the driver, not a crash
        res = TrialResult(key, params, error=_one_line(exc), error_type=type(exc).__name__)
        res.metrics = {}
        res.started, res.finished = started, time.time()
        if not hasattr(exc, "problem"):
            res.error = res.error + " | " + traceback.format_exc(limit=3).replace("\n", " ")[-600:]
        return res
    return TrialResult(
        key,
        params,
        metrics=metrics,
        centers=fit.centers,
        model=fit.model if keep_model else None,
        started=started,
        finished=time.time(),
    )


_limited = threading.local()


def _limit_threads(n: int) -> None:
    """Cap BLAS/OpenMP threads at the worker's thread count, once per worker thread.

    Limits are left in place (the thread only ever runs trials): re-applying and restoring them
    around every trial cost ~3 ms of scanning the loaded libraries each time.
    """
    if getattr(_limited, "n", None) != n:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)
        _limited.n = n


def _worker_trial(
    key: Any,
    backend_name: str,
    X: np.ndarray,
    params: ModelConfig,
    metrics_cfg: MetricsConfig,
    y: np.ndarray | None,
) -> TrialResult:
    """Task body on a worker: a local backend, BLAS/OpenMP threads limited to the worker's."""
    from threadpoolctl import threadpool_limits

    from toolkit.backends import get_backend
    from toolkit.data import Dataset

    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # called in-process: limit this trial only
        worker = None
    if worker is not None:
        _limit_threads(max(1, worker.state.nthreads))
        name, limits = str(worker.address), contextlib.nullcontext()
    else:
        name, limits = "local", threadpool_limits(limits=1)
    backend = get_backend(backend_name)(client=None)
    with limits:
        prepared = backend.prepare(Dataset("trial", X, None, [], "scattered"))
        # The fitted estimator stays here: the driver needs only centers and metrics (a
        # scikit-learn KMeans carries labels_ for every row, megabytes per trial to ship back).
        res = run_trial(key, backend, prepared, params, metrics_cfg, y, keep_model=False)
    res.worker = name
    res.slot = f"{name}#{threading.get_ident()}"
    return res


def _warm_up(backend_name: str) -> None:
    import threadpoolctl  # noqa: F401

    import toolkit.train  # noqa: F401
    from toolkit.backends import get_backend

    get_backend(backend_name)


class TrialParallelRunner:
    """Many small fits at once, one Dask task per trial, data scattered once to all workers."""

    mode = "trial"

    def __init__(self, client: Any, backend_name: str, X: np.ndarray, y: np.ndarray | None,
                 metrics_cfg: MetricsConfig) -> None:
        from distributed import as_completed

        self.client = client
        self.backend_name = backend_name
        self.metrics_cfg = metrics_cfg
        # Import the fitting code on every worker now, in parallel, not inside the first trials.
        client.run(_warm_up, backend_name)
        # One copy per worker, not one per task.
        self._X = client.scatter(np.asarray(X), broadcast=True, hash=False)
        self._y = client.scatter(y, broadcast=True, hash=False) if y is not None else None
        self._futures: dict[Any, Any] = {}
        self._done = as_completed([], loop=client.loop, with_results=True, raise_errors=False)
        self._slots, self._slots_at = 1, -math.inf

    @property
    def slots(self) -> int:
        """Worker threads in the cluster, re-read at most once a second: the call is a round
        trip to the scheduler (~5 ms under load), and the loop asks before every submission."""
        now = time.monotonic()
        if now - self._slots_at > 1.0:
            info = self.client.scheduler_info().get("workers", {})
            self._slots = max(1, sum(w.get("nthreads", 1) for w in info.values()))
            self._slots_at = now
        return self._slots

    def submit(self, key: Any, params: ModelConfig) -> None:
        fut = self.client.submit(
            _worker_trial, key, self.backend_name, self._X, params, self.metrics_cfg, self._y,
            pure=False, key=f"trial-{key}-{time.time_ns()}",
        )
        self._futures[fut] = (key, params, time.time())
        self._done.add(fut)

    def pending(self) -> int:
        return len(self._futures)

    def cancel(self) -> None:
        """Cancel the trials still queued or running (the search stopped early).  Their
        result watchers would otherwise keep them alive until they finish."""
        if self._futures:
            self.client.cancel(list(self._futures))
            self._futures.clear()

    def results(self) -> list[TrialResult]:
        """Wait for at least one trial; return every finished one (a lost worker = a failed
        trial), in the order they finished."""
        if not self._futures:
            return []
        # Results are fetched on the client's event loop as each trial ends, not one round
        # trip per future here, so the driver gets back to submitting sooner.
        done = self._done.next_batch(block=True)
        received = time.time()  # one stamp for the batch: later bookkeeping is not scheduling
        out = []
        for fut, result in done:
            key, params, submitted = self._futures.pop(fut)
            if fut.status == "finished" and isinstance(result, TrialResult):
                res = result
            else:
                exc = result[1] if isinstance(result, tuple) and len(result) == 3 else result
                if not isinstance(exc, BaseException):
                    exc = RuntimeError(f"trial task ended as {fut.status}")
                res = TrialResult(key, params, error=_one_line(exc), error_type=type(exc).__name__,
                                  started=submitted, finished=received)
            res.submitted, res.received = submitted, received
            out.append(res)
        return sorted(out, key=lambda r: r.finished)


class DataParallelRunner:
    """One fit at a time on the driver; the backend spreads each fit over the cluster."""

    mode = "data"
    slots = 1

    def __init__(self, backend: Any, X: Any, y: np.ndarray | None, metrics_cfg: MetricsConfig) -> None:
        self.backend = backend
        self.X = X
        self.y = y
        self.metrics_cfg = metrics_cfg
        self._queue: list[tuple[Any, ModelConfig]] = []

    def submit(self, key: Any, params: ModelConfig) -> None:
        self._queue.append((key, params, time.time()))

    def pending(self) -> int:
        return len(self._queue)

    def results(self) -> list[TrialResult]:
        """Run the oldest queued trial now, on the driver."""
        if not self._queue:
            return []
        key, params, submitted = self._queue.pop(0)
        res = run_trial(key, self.backend, self.X, params, self.metrics_cfg, self.y)
        res.submitted, res.received, res.slot = submitted, time.time(), "driver"
        return [res]
