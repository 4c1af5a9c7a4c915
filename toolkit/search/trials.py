"""Running trials: where a fit happens, and what comes back to the driver.

*Trial-parallel* (single-device backends: sklearn, cuml): the data is scattered once to every
worker and each trial is one Dask task; several run at once, one per worker thread.
*Data-parallel* (dask-ml, dask, cuml-dask): trials run one after another on the driver and each
fit is spread over the whole cluster.  Either way a trial returns a small :class:`TrialResult`
(centroids, metrics) and the driver alone writes MLflow runs.

Lost workers: a trial that fails because the cluster lost a worker or data
(:func:`is_infrastructure_error`) is run again, same key and parameters, up to
:data:`INFRA_ATTEMPTS` times in all.  Trial-parallel, the data is scattered again first when
every copy of it was lost; data-parallel, it is placed again from its source (the backend's
``prepare``).  Both first wait, bounded, for the cluster to have workers again; with none for
:data:`NO_WORKERS_S` the search stops with a :class:`~toolkit.errors.ToolkitError`.  A trial
still lost after its last attempt comes back with ``infra=True``, so that a resume runs it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from toolkit import _speedups
from toolkit.backends.base import is_infrastructure_error
from toolkit.config import MetricsConfig, ModelConfig
from toolkit.errors import ToolkitError, first_line

__all__ = [
    "INFRASTRUCTURE_ATTR",
    "INFRA_ATTEMPTS",
    "NO_WORKERS_S",
    "DataParallelRunner",
    "TrialParallelRunner",
    "TrialResult",
    "TrialRunner",
    "is_infrastructure_error",
    "run_trial",
    "wait_for_workers",
]

#: Attempts per trial, the first included, while it keeps failing because the cluster lost a
#: worker or data.  Bounded: a trial that kills its worker every time (say, out of memory)
#: must not hold the search forever.
INFRA_ATTEMPTS = 3
#: Pause before the 2nd, 3rd, ... attempt: time for the scheduler to drop a dead worker and
#: for a nanny to start its replacement (1-3 s seen on a busy 2-core machine).
_BACKOFF_S = (1.0, 2.0)
#: Before data is placed again, how long to wait for the cluster to have as many workers as
#: before the loss (a nanny restarts a killed one); then it is placed on those there are.
#: Placed on fewer workers, the data is split into other blocks, which changes the
#: k-means|| draws of the ``dask`` backend (seeded per block).
REPLACE_WAIT_S = 15.0
#: With no worker at all for this long, the search stops (a ToolkitError) instead of failing
#: every trial left.
NO_WORKERS_S = 60.0
#: How often a trial-parallel runner waiting for results checks that the cluster has workers.
_WATCH_S = 1.0
#: A data-parallel fit still running this long after the cluster lost one of the workers it
#: started with is given up as lost with the worker: the data it runs on is cancelled, so the
#: fit fails as an infrastructure failure and is run again on the data placed again.  A fit
#: waiting on data that no worker will ever deliver would otherwise wait for good (a dask-ml
#: search once stood still for minutes after a lost worker).
STALL_AFTER_LOSS_S = 60.0
#: Optuna user attribute of a trial failed by the cluster (after its last attempt): like an
#: interrupted trial, it does not count as done when a search is resumed.
INFRASTRUCTURE_ATTR = "infrastructure_failure"


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
    # The failure was the cluster's (a lost worker or lost data), not the parameters'.
    infra: bool = False
    # Runs it took, retries after a lost worker included.
    attempts: int = 1
    # Fitted on every row of the data (not a multi-fidelity rung's subset): its centers are the
    # model a refit of these parameters would give.
    full_data: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def _one_line(exc: BaseException) -> str:
    text = first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _n_workers(client: Any) -> int:
    """Workers the scheduler has now (0 when it cannot be asked).

    ``Client.nthreads`` is one small round trip; ``scheduler_info`` would ship every worker's
    details and replace the client's cached copy of them.
    """
    try:
        return len(client.nthreads())
    except OSError:  # the scheduler is unreachable for now: as good as no workers
        return 0


def _no_workers_error(waited: float) -> ToolkitError:
    return ToolkitError(
        f"the Dask cluster has no workers: every worker was lost and none came back within "
        f"{waited:.0f} s",
        "restart the Dask workers (or the cluster), then run the search again with "
        "search.resume=true to run the trials that were lost",
    )


def wait_for_workers(
    client: Any,
    want: int,
    *,
    replace_wait_s: float = REPLACE_WAIT_S,
    no_workers_s: float = NO_WORKERS_S,
) -> int:
    """Wait until the cluster has ``want`` workers again, or settle for fewer; return how many.

    Up to ``replace_wait_s`` for ``want`` workers (a nanny restarting a killed worker takes a
    few seconds), then any number above zero will do.  With none at all after
    ``no_workers_s``, raises :class:`~toolkit.errors.ToolkitError`.
    """
    start = time.monotonic()
    while True:
        n = _n_workers(client)
        waited = time.monotonic() - start
        if n >= max(1, want) or (n > 0 and waited >= replace_wait_s):
            return n
        if n == 0 and waited >= no_workers_s:
            raise _no_workers_error(waited)
        time.sleep(0.25)


def _backoff(attempt: int) -> None:
    """Pause before ``attempt`` (2, 3, ...) of a trial lost to the cluster."""
    time.sleep(_BACKOFF_S[min(attempt - 2, len(_BACKOFF_S) - 1)])


def run_trial(
    key: Any,
    backend: Any,
    X: Any,
    params: ModelConfig,
    metrics_cfg: MetricsConfig,
    y: np.ndarray | None,
    keep_model: bool = True,
    score: Any = None,
) -> TrialResult:
    """Fit and score one parameter set; a failure is returned, not raised.

    ``score(fit) -> metrics`` scores the fit instead of :func:`toolkit.train.fit_and_score`'s
    every metric (a data-parallel trial: :meth:`DataParallelRunner._score`).
    """
    from toolkit.train import fit_and_score

    started = time.time()
    try:
        if score is None:
            fit, metrics = fit_and_score(backend, X, params, metrics_cfg, y)
        else:
            fit = backend.fit(X, params)
            metrics = score(X, params, fit)
    # asyncio's CancelledError is a BaseException: a future cancelled under a lost worker can
    # surface as one, and it is a lost trial, not a reason to stop the search.
    except (Exception, asyncio.CancelledError) as exc:  # a failed trial is data, not a crash
        res = TrialResult(key, params, error=_one_line(exc), error_type=type(exc).__name__,
                          infra=is_infrastructure_error(exc))
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
    subset: tuple[int, int] | None = None,
) -> TrialResult:
    """Task body on a worker: a local backend, BLAS/OpenMP threads limited to the worker's.

    ``subset = (n_rows, seed)``: a multi-fidelity rung, fitted on those rows of the worker's
    copy of the data (:func:`toolkit.search.fidelity.take_rows`; the rows are cached per worker).
    """
    from threadpoolctl import threadpool_limits

    from toolkit.backends import get_backend
    from toolkit.data import Dataset
    from toolkit.search.fidelity import rung_metrics, take_rows

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
    n_total = int(X.shape[0])
    X, y = take_rows(X, y, subset)
    metrics_cfg = rung_metrics(metrics_cfg, int(X.shape[0]), n_total)
    with limits:
        prepared = backend.prepare(Dataset("trial", X, None, [], "scattered"))
        # The fitted estimator stays here: the driver needs only centers and metrics (a
        # scikit-learn KMeans carries labels_ for every row, megabytes per trial to ship back).
        res = run_trial(key, backend, prepared, params, metrics_cfg, y, keep_model=False)
    res.worker = name
    res.slot = f"{name}#{threading.get_ident()}"
    res.full_data = int(X.shape[0]) == n_total  # what was fitted, as take_rows decided
    return res


def _warm_up(backend_name: str) -> None:
    import sklearn.cluster  # noqa: F401 - imported by the first fit otherwise: ~2.7 s inside fit_seconds
    import threadpoolctl  # noqa: F401

    import toolkit.train  # noqa: F401
    from toolkit.backends import get_backend

    get_backend(backend_name)


class TrialRunner(Protocol):
    """Where trials run: the contract both runners (:class:`TrialParallelRunner`,
    :class:`DataParallelRunner`) keep, checked by ``tests/test_trial_runners.py``.

    **Call order.**  The driver makes the runner, then repeats: :meth:`submit` while
    :meth:`pending` is below the number it wants in flight (``slots`` says how many fits run at
    once); :meth:`results` to wait for at least one.  When the search stops early it calls
    :meth:`cancel`; once the loop is over, :meth:`refit_data` gives the data the best model is
    refitted on.  Every call comes from one thread (the driver's loop): a runner is **not
    thread-safe** and needs no lock.

    **Ownership.**  The runner owns what it places for the trials (the scattered copies, the
    rungs' subsets) and the futures of the trials in flight; the caller keeps its own placed
    data (given to :meth:`refit_data`) and the Dask client, which the runner never closes.

    **What comes back, and when.**  Nothing is persisted here: a trial's outcome is the
    :class:`TrialResult` :meth:`results` returns, once, in the order trials finished, with its
    ``key`` as submitted.  A failed fit is a result with ``error`` set, never an exception; a
    fit lost with a worker is run again (:data:`INFRA_ATTEMPTS` runs in all) and comes back once,
    with ``infra=True`` if it never succeeded.  The driver records results (Optuna, MLflow).

    **Raises.**  :meth:`results` raises :class:`~toolkit.errors.ToolkitError` when the cluster
    has had no workers for :data:`NO_WORKERS_S` (the search stops; a resume runs the trials
    lost), and, data-parallel, whatever placing the data from a broken source raises.
    :meth:`submit`, :meth:`pending`, :meth:`cancel` and :meth:`refit_data` do not raise on a
    trial's account.
    """

    mode: str

    @property
    def slots(self) -> int:
        """How many fits run at once (worker threads trial-parallel, 1 data-parallel)."""

    def submit(self, key: Any, params: ModelConfig, subset: tuple[int, int] | None = None) -> None:
        """Queue a fit of ``params`` under ``key`` (the trial's number); ``subset = (n_rows, seed)``
        fits it on those rows only (a multi-fidelity rung, :func:`toolkit.search.fidelity.take_rows`).
        Returns at once: the fit starts on a worker (trial-parallel) or in :meth:`results`."""

    def pending(self) -> int:
        """Trials submitted and not yet returned by :meth:`results`."""

    def results(self) -> list[TrialResult]:
        """Wait for at least one trial (none pending: return ``[]`` at once); every finished one,
        in the order they finished."""

    def cancel(self) -> None:
        """Drop every trial still queued or running; none of them comes back.  Idempotent."""

    def refit_data(self, placed: Any) -> Any:
        """The data to refit the best model on: ``placed``, or its replacement if the runner had
        to place the data again after a lost worker."""


class TrialParallelRunner:
    """Many small fits at once, one Dask task per trial, data scattered once to all workers.

    A trial lost with its worker is submitted again (the scheduler itself moves a task whose
    worker died while other copies of the data remain; this covers the data lost with every
    worker, and ``KilledWorker``).
    """

    mode = "trial"

    def __init__(self, client: Any, backend_name: str, X: np.ndarray, y: np.ndarray | None,
                 metrics_cfg: MetricsConfig) -> None:
        from distributed import as_completed

        self.client = client
        self.backend_name = backend_name
        self.metrics_cfg = metrics_cfg
        # A speed trick: the fitting code imported on every worker now, in parallel, not inside the first trials.
        _speedups.warm(client.run, _warm_up, backend_name)
        # Kept to scatter again should every worker holding a copy be lost.
        self._host_X, self._host_y = np.asarray(X), y
        self._scatter()
        self._workers = _n_workers(client)
        self._futures: dict[Any, Any] = {}
        self._attempts: dict[Any, int] = {}
        self._done = as_completed([], loop=client.loop, with_results=True, raise_errors=False)
        self._slots, self._slots_at = 1, -math.inf
        self._no_workers_since: float | None = None

    def _scatter(self) -> None:
        # One copy per worker, not one per task.
        self._X = self.client.scatter(self._host_X, broadcast=True, hash=False)
        self._y = (self.client.scatter(self._host_y, broadcast=True, hash=False)
                   if self._host_y is not None else None)

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

    def submit(self, key: Any, params: ModelConfig, subset: tuple[int, int] | None = None,
               submitted: float | None = None) -> None:
        fut = self.client.submit(
            _worker_trial, key, self.backend_name, self._X, params, self.metrics_cfg, self._y, subset,
            pure=False, key=f"trial-{key}-{time.time_ns()}",
        )
        self._futures[fut] = (key, params, submitted or time.time(), subset)
        self._attempts.setdefault(key, 1)
        self._done.add(fut)

    def pending(self) -> int:
        return len(self._futures)

    def refit_data(self, placed: Any) -> Any:
        """The driver's own placement: the workers' copies are for trials only."""
        return placed

    def cancel(self) -> None:
        """Cancel the trials still queued or running (the search stopped early).  Their
        result watchers would otherwise keep them alive until they finish."""
        if self._futures:
            self.client.cancel(list(self._futures))
            self._futures.clear()

    def _check_workers(self) -> None:
        """Raise the no-workers ToolkitError once the cluster has had none for NO_WORKERS_S.

        Without workers the scheduler holds tasks forever; the wait for results would too.
        """
        if _n_workers(self.client) > 0:
            self._no_workers_since = None
            return
        now = time.monotonic()
        if self._no_workers_since is None:
            self._no_workers_since = now
        elif now - self._no_workers_since >= NO_WORKERS_S:
            raise _no_workers_error(now - self._no_workers_since)

    def _wait_ready(self) -> None:
        """Block until a trial has finished, checking every _WATCH_S that workers are left."""
        cond = self._done.thread_condition
        while True:
            with cond:  # a result is queued, then notified under this lock: no wake-up is missed
                if self._done.has_ready():
                    return
                cond.wait(timeout=_WATCH_S)
                if self._done.has_ready():
                    return
            # Outside the lock: the client's event loop takes it to hand over results.
            self._check_workers()

    def _retry(self, lost: list[tuple[Any, ModelConfig, float, tuple[int, int] | None]]) -> None:
        """Submit trials lost with a worker again; scatter the data again if it was lost too."""
        _backoff(min(self._attempts[key] for key, _, _, _ in lost))
        data = [self._X] if self._y is None else [self._X, self._y]
        if any(f.status != "finished" for f in data):  # every replica went with its worker
            self._workers = wait_for_workers(self.client, self._workers)
            self._scatter()
        for key, params, submitted, subset in lost:
            self.submit(key, params, subset, submitted)

    def results(self) -> list[TrialResult]:
        """Wait for at least one trial; return every finished one, in the order they finished.

        A trial lost with a worker (or with the data) is submitted again, up to
        :data:`INFRA_ATTEMPTS` runs in all, and only comes back after its last one.
        """
        out: list[TrialResult] = []
        while self._futures and not out:
            # Results are fetched on the client's event loop as each trial ends, not one round
            # trip per future here, so the driver gets back to submitting sooner.
            self._wait_ready()
            done = self._done.next_batch(block=False)
            received = time.time()  # one stamp for the batch: later bookkeeping is not scheduling
            lost = []
            for fut, result in done:
                if fut not in self._futures:  # cancelled by cancel()
                    continue
                key, params, submitted, subset = self._futures.pop(fut)
                if fut.status == "finished" and isinstance(result, TrialResult):
                    res = result  # infra too if the fit on the worker lost touch with the cluster
                else:
                    exc = result[1] if isinstance(result, tuple) and len(result) == 3 else result
                    if not isinstance(exc, BaseException):
                        exc = RuntimeError(f"trial task ended as {fut.status}")
                    res = TrialResult(key, params, error=_one_line(exc), error_type=type(exc).__name__,
                                      started=submitted, finished=received,
                                      infra=is_infrastructure_error(exc))
                if res.infra and self._attempts[key] < INFRA_ATTEMPTS:
                    self._attempts[key] += 1
                    lost.append((key, params, submitted, subset))
                    continue
                res.submitted, res.received = submitted, received
                res.attempts = self._attempts.pop(key, 1)
                out.append(res)
            if lost:
                self._retry(lost)
        return sorted(out, key=lambda r: r.finished)


class DataParallelRunner:
    """One fit at a time on the driver; the backend spreads each fit over the cluster.

    Given the ``dataset`` (and a backend with a Dask client), a fit lost with a worker or with
    its data is run again, on the data placed again from its source by ``backend.prepare``;
    :attr:`X` is the current placement (the search refits its best model on it).
    """

    mode = "data"
    slots = 1

    def __init__(self, backend: Any, X: Any, y: np.ndarray | None, metrics_cfg: MetricsConfig,
                 dataset: Any = None, *, stall_after_loss_s: float = STALL_AFTER_LOSS_S) -> None:
        self.backend = backend
        #: A fit still running this long after the cluster lost a worker it started with is given
        #: up as lost (:data:`STALL_AFTER_LOSS_S` by default).
        self.stall_after_loss_s = stall_after_loss_s
        self._X = X
        self.y = y
        self.metrics_cfg = metrics_cfg
        self.dataset = dataset
        self.client = getattr(backend, "client", None)
        # Without a cluster, or without the source to place the data from, a lost fit is final.
        self._replaceable = self.client is not None and dataset is not None
        self._workers = _n_workers(self.client) if self._replaceable else 0
        self._queue: list[tuple[Any, ModelConfig, float, tuple[int, int] | None]] = []
        # Multi-fidelity rungs: each subset placed once (rungs are a few fixed sizes), dropped
        # with the full placement when a worker is lost.
        self._subsets: dict[tuple[int, int], Any] = {}
        # The rows every full-data trial is scored on: gathered once, at the first trial.
        self._sample: Any = None

    @property
    def X(self) -> Any:
        """The data as placed for the backend; placed again first if the last placement was lost."""
        if self._X is None:
            self.replace()
        return self._X

    def replace(self) -> None:
        """Place the data on the cluster again, from its source, once workers are back.

        Raises:
            ToolkitError: the cluster has had no workers for :data:`NO_WORKERS_S`.
        """
        self._workers = wait_for_workers(self.client, self._workers)
        self._X = self.backend.prepare(self.dataset)

    def _placed(self, subset: tuple[int, int] | None) -> Any:
        """The data a fit runs on: the full placement, or a rung's rows placed by the backend's
        own ``prepare`` (from the dataset's source rows, NumPy or Dask)."""
        if subset is None or self.dataset is None or subset[0] >= self.dataset.n_samples:
            return self._X
        if subset not in self._subsets:
            from toolkit.data import Dataset
            from toolkit.search.fidelity import take_rows

            X, _ = take_rows(self.dataset.X, None, subset)
            self._subsets[subset] = self.backend.prepare(
                Dataset(f"{self.dataset.name}[{subset[0]} rows]", X, None, self.dataset.feature_names,
                        self.dataset.source))
        return self._subsets[subset]

    def submit(self, key: Any, params: ModelConfig, subset: tuple[int, int] | None = None) -> None:
        self._queue.append((key, params, time.time(), subset))

    def pending(self) -> int:
        return len(self._queue)

    def cancel(self) -> None:
        """Drop the queued trials (none runs until :meth:`results` asks)."""
        self._queue.clear()

    def refit_data(self, placed: Any) -> Any:
        """The live placement: placed again if a worker was lost since ``placed`` was made."""
        return self.X

    def _run(self, key: Any, params: ModelConfig, subset: tuple[int, int] | None = None) -> TrialResult:
        """One attempt: place the data first if it was lost, then fit and score."""
        from toolkit.search.fidelity import take_rows

        if self._X is None:
            started = time.time()
            try:
                self.replace()
            except Exception as exc:
                if not is_infrastructure_error(exc):  # the source itself is broken: stop
                    raise
                return TrialResult(key, params, error=f"placing the data again: {_one_line(exc)}",
                                   error_type=type(exc).__name__, started=started,
                                   finished=time.time(), infra=True)
        if self.dataset is None:  # no source rows to take a rung from: the full data
            subset = None
        y = self.y if subset is None or self.y is None else take_rows(self.y, self.y, subset)[1]
        try:
            X = self._placed(subset)
        except Exception as exc:
            if not is_infrastructure_error(exc):
                raise
            return TrialResult(key, params, error=f"placing a rung's rows: {_one_line(exc)}",
                               error_type=type(exc).__name__, started=time.time(), finished=time.time(),
                               infra=True)
        metrics_cfg = self.metrics_cfg
        if subset is not None:  # (None above when there is no dataset to take rows from)
            from toolkit.search.fidelity import rung_metrics

            metrics_cfg = rung_metrics(metrics_cfg, subset[0], self.dataset.n_samples)
        # A full-data trial computes the metrics its objective needs (metrics.trial_metrics) on
        # the search's sample and centres; a rung's fit, on its own rows, every metric.
        score = self._score if subset is None and metrics_cfg.trial_metrics != "all" else None
        if not self._replaceable:
            return run_trial(key, self.backend, X, params, metrics_cfg, y, score=score)
        with self._watch_for_stall() as stalled:
            res = run_trial(key, self.backend, X, params, metrics_cfg, y, score=score)
        if stalled and not res.ok:
            res.infra = True
            res.error = (f"gave up {self.stall_after_loss_s:.0f} s after the cluster lost a worker during the fit: "
                         f"{res.error}")
        elif stalled:  # it ended just as its data was cancelled: the next fit places the data again
            self._X = None
            self._subsets.clear()
        return res

    def _score(self, X: Any, params: ModelConfig, fit: Any) -> dict[str, float]:
        """A full-data trial's metrics: ``metrics.trial_metrics`` (the objectives' and those asked
        for; every metric when empty, i.e. outside a search), labels from the fitted centres.

        Silhouette is computed on the search's :class:`~toolkit.metrics.MetricSample`, gathered
        from the cluster once and kept here on the driver, where the metrics run; Davies-Bouldin
        and Calinski-Harabasz exactly over all rows (:func:`toolkit.metrics.centre_statistics`).
        """
        from toolkit.metrics import MetricSample, trial_metrics
        from toolkit.names import EVAL_METRICS

        cfg = self.metrics_cfg
        hX, labels = self.backend.host_view(X, fit.labels)
        if self._sample is None:
            self._sample = MetricSample(hX, None, cfg.silhouette_sample, cfg.seed)
        names = cfg.trial_metrics or EVAL_METRICS
        metrics = trial_metrics(hX, fit.centers, names, self._sample, inertia=fit.inertia,
                                labels=labels if "adjusted_rand" in names else None, y_true=self.y)
        metrics["fit_seconds"] = fit.fit_seconds
        metrics["n_iter"] = float(fit.n_iter)
        if cfg.stability:
            from toolkit.metrics import resampling_metrics
            from toolkit.train import _centers_fitter

            metrics.update(resampling_metrics(
                hX, _centers_fitter(self.backend, params), resamples=cfg.stability_resamples,
                fraction=cfg.stability_fraction, sample=cfg.stability_sample, seed=cfg.seed,
                model_seed=params.random_state,
            ))
        return metrics

    @contextlib.contextmanager
    def _watch_for_stall(self) -> Any:
        """Around one fit on the driver: a thread that, should a worker the fit started with be
        lost and the fit still run :attr:`stall_after_loss_s` later, cancels the placed data
        (the fit then fails, lost, and is run again).  Yields a list, non-empty if it did."""
        from distributed import futures_of

        try:
            before = set(self.client.nthreads())
        except OSError:
            before = set()
        done = threading.Event()
        stalled: list[float] = []

        def watch() -> None:
            lost_at = None
            while not done.wait(_WATCH_S):
                if lost_at is None:
                    try:
                        now = set(self.client.nthreads())
                    except OSError:
                        now = set()
                    if not before <= now:
                        lost_at = time.monotonic()
                elif time.monotonic() - lost_at >= self.stall_after_loss_s:
                    placed = [self._X, *self._subsets.values()]
                    with contextlib.suppress(Exception):  # the cluster is going away: nothing to cancel
                        self.client.cancel([f for x in placed if x is not None for f in futures_of(x)])
                    stalled.append(time.monotonic() - lost_at)
                    return

        watcher = threading.Thread(target=watch, name="fit-stall-watch", daemon=True)
        watcher.start()
        try:
            yield stalled
        finally:
            done.set()
            watcher.join()

    def results(self) -> list[TrialResult]:
        """Run the oldest queued trial now, on the driver; after a lost worker, again on the
        data placed again (:data:`INFRA_ATTEMPTS` runs at most)."""
        if not self._queue:
            return []
        key, params, submitted, subset = self._queue.pop(0)
        for attempt in range(1, INFRA_ATTEMPTS + 1):
            if attempt > 1:
                _backoff(attempt)
            res = self._run(key, params, subset)
            res.attempts = attempt
            if not (res.infra and self._replaceable):
                break
            # Some blocks are gone: drop them all (the survivors would pin memory alongside a
            # new copy); the next attempt, or the next trial, places the data again.
            self._X = None
            self._subsets.clear()
        res.submitted, res.received, res.slot = submitted, time.time(), "driver"
        return [res]
