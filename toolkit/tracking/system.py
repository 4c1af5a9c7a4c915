"""System metrics on a run: MLflow's own CPU, memory, disk, network (and GPU) samples.

MLflow collects these only for runs started with its fluent API (``mlflow.start_run(
log_system_metrics=True)``); the toolkit writes every run by id through ``MlflowClient``, so it
runs MLflow's :class:`~mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`
itself, on the run it names.  The samples are logged as ``system/cpu_utilization_percentage``,
``system/system_memory_usage_megabytes``... (``system/gpu_*`` where ``pynvml`` finds a GPU),
which the MLflow UI shows in a "System metrics" section of their own.

The monitor is a thread of this process.  :func:`monitored` stops it, and waits for it, before
the run is ended on every path, so no thread outlives its run and nothing is logged to a run
that has already ended.  Every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds
(:data:`SAMPLING_INTERVAL_S` unless set) it logs one step.  A run shorter than that still gets
one step, sampled when it ends: CPU use since the monitor started, memory at the end.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from toolkit._compat import mlflow_monitor_step
from toolkit.redact import redact_logs

__all__ = ["SAMPLING_INTERVAL_S", "SystemMetrics", "monitored"]

#: Seconds between samples (MLflow's default, 10 s, leaves a short run with one or two points);
#: ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it, as it does for MLflow's own runs.
SAMPLING_INTERVAL_S = 5.0

_log = logging.getLogger(__name__)


def _quiet_mlflow_monitor() -> None:
    # MLflow says "Started monitoring system metrics." and three more INFO lines per run on
    # stderr; the toolkit's output is its own one-line messages.  Its warnings still show.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    # Its warnings name the tracking URL it could not reach, password included.
    redact_logs("mlflow.system_metrics.system_metrics_monitor", "mlflow.system_metrics")


class SystemMetrics:
    """MLflow's system-metrics monitor on one run of the toolkit's tracking store.

    Args:
        run_id: the run the samples go to (it must be RUNNING while the monitor is).
        uri: the run's tracking store.
        resume: the run was resumed: continue its ``system/`` steps instead of starting at 0.
    """

    def __init__(self, run_id: str, uri: str, resume: bool = False) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        _quiet_mlflow_monitor()
        self.run_id = run_id
        self._uri = uri
        # The store is passed explicitly: the monitor's thread does not see a store pinned for
        # this thread (toolkit.tracking.runs.using_store), nor mlflow.set_tracking_uri's choice.
        self._monitor: Any = SystemMetricsMonitor(
            run_id, sampling_interval=SAMPLING_INTERVAL_S, resume_logging=resume, tracking_uri=self._uri,
        )
        self._first_step = mlflow_monitor_step(self._monitor)
        self._started = False

    def start(self) -> None:
        """Start sampling (a daemon thread)."""
        self._monitor.start()
        self._started = True

    def stop(self) -> None:
        """Stop sampling, wait for the thread, and flush what it holds; never raises.

        Call it while the run is still RUNNING: everything is written before this returns.
        """
        if not self._started:
            return
        self._started = False
        try:
            self._monitor.finish()  # sets the stop event, joins the thread, flushes its batch
            if mlflow_monitor_step(self._monitor) == self._first_step:
                self._last_sample()
        except Exception as exc:  # bookkeeping: the run's own outcome must not depend on it
            _log.warning("system metrics of run %s not written: %s: %s", self.run_id, type(exc).__name__, exc)

    def _last_sample(self) -> None:
        """One step for a run that ended before the first sampling interval did."""
        from toolkit.tracking.retry import is_down

        if is_down(self._uri):  # the store is known to be gone: do not wait on it again
            return
        m = self._monitor
        for monitor in m.monitors:
            monitor.clear_metrics()  # the thread's first sample: CPU use since the last call, i.e. none
        m.collect_metrics()  # CPU use since that first sample, which was taken as the run started
        m.publish_metrics(m.aggregate_metrics())
        m.mlflow_logger.flush()


@contextlib.contextmanager
def monitored(run_id: str, uri: str, enabled: bool = True, resume: bool = False) -> Iterator[None]:
    """Sample system metrics on ``run_id`` (in store ``uri``) for the block; stopped however
    the block ends.

    A monitor that cannot start (no psutil, an unexpected MLflow version) costs the run its
    system metrics only, with a warning.
    """
    monitor = None
    if enabled:
        try:
            monitor = SystemMetrics(run_id, uri, resume=resume)
            monitor.start()
        except Exception as exc:
            _log.warning("no system metrics for run %s: %s: %s", run_id, type(exc).__name__, exc)
            monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            monitor.stop()
