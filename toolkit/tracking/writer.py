"""A background MLflow writer: one separate process that writes runs one at a time.

A search writes one child run per trial, and writing one is tens of milliseconds of CPU, almost
all of it SQLAlchemy in Python.  Done on a thread of the driver, it would hold the GIL that the
search loop and the Dask client need, so results would wait to be picked up and trials to be
handed out.  Here the writes run in one spawned process, reused by every search of this driver
process, so the driver's own thread stays free for scheduling (figures: benchmarks/RESULTS.md).

Still one writer: jobs run strictly one after another, in submission order.  Each job carries
the tracking and registry URIs of the moment it was submitted (pinned for the job with
:func:`toolkit.tracking.runs.using_store`), so a driver that switches stores (tests do) writes
each run where it belongs.  If no process can be started, writes fall back
to one thread of this process; ``KMEANS_LIFECYCLE_WRITER=thread`` asks for the thread.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["ChildWriter", "shared_writer"]


def _absolute(uri: str) -> str:
    """``sqlite:///relative.db`` made absolute: the writer process may sit in another folder."""
    from toolkit.tracking._sqlite import PREFIX, file_part

    part = file_part(uri)
    return PREFIX + os.path.abspath(part[0]) + part[1] if part else uri


def _run_job(stores: tuple[str, str | None], fn: Callable[..., Any], args: tuple,
             kwargs: dict) -> tuple[Any, float, float]:
    """In the writer: run ``fn`` against the submitter's stores; (result, wall s, CPU s)."""
    from toolkit.tracking.runs import using_store

    wall, cpu = time.perf_counter(), time.thread_time()
    with using_store(*stores):
        out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.thread_time() - cpu


#: Niceness of the writer process (``KMEANS_LIFECYCLE_WRITER_NICE``): 0 keeps the driver's.
_NICE_ENV = "KMEANS_LIFECYCLE_WRITER_NICE"
_DEFAULT_NICE = 10


def _lower_priority() -> None:
    """Child runs are bookkeeping; the fits come first.

    On a machine whose cores all run trials, a writer at normal priority takes its share of
    the workers' CPU.  At nice 10 it still gets the idle time and a small share of a busy core,
    so writes are late but never starved; a search waits for them before its summary.
    """
    try:
        nice = int(os.environ.get(_NICE_ENV, _DEFAULT_NICE))
    except ValueError:
        nice = _DEFAULT_NICE
    if nice > 0 and hasattr(os, "nice"):
        with contextlib.suppress(OSError):  # not permitted here: normal priority will do
            os.nice(nice)


def _leave() -> None:
    # The writer's jobs are all done (the pool hands its process the stop signal only then):
    # skip the teardown of an interpreter full of MLflow, SQLAlchemy and matplotlib, which
    # the driver would otherwise wait for at its own exit.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _warm() -> None:
    """In a new writer process: lower its priority, import what writing runs needs before the
    first real job arrives, and arrange a quick exit."""
    atexit.register(_leave)
    _lower_priority()
    import mlflow
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

    # A search's last jobs draw its figures: matplotlib and Optuna's importance evaluator are
    # imported now, at this process's low priority, not while the driver waits on them.
    with contextlib.suppress(ImportError):
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot
        import optuna.importance  # noqa: F401


class ChildWriter:
    """Run MLflow writes one at a time off the driver's thread.

    Args:
        process: write in a spawned process (default); ``False`` writes on one thread.
    """

    def __init__(self, process: bool = True) -> None:
        self._lock = threading.Lock()
        self._process = process
        self._pool: concurrent.futures.Executor | None = None

    @property
    def kind(self) -> str:
        return "process" if isinstance(self._pool, concurrent.futures.ProcessPoolExecutor) else "thread"

    def _executor(self) -> concurrent.futures.Executor:
        with self._lock:
            if getattr(self._pool, "_broken", False):
                # The writer process died (killed, out of memory, or it could not start here):
                # a thread writes from now on rather than failing every later run.
                self._process = False
                self._pool = None
            if self._pool is None:
                self._pool = self._start()
            return self._pool

    def _start(self) -> concurrent.futures.Executor:
        if self._process:
            try:
                pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn")
                )
                pool.submit(_warm)  # starts the process now; imports overlap the caller's work
                return pool
            except (OSError, RuntimeError, ValueError):  # no processes here: one thread will do
                pass
        return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer")

    def start(self) -> None:
        """Start the writer now (its imports take ~2 s), so the first write does not wait."""
        self._executor()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Queue ``fn(*args, **kwargs)``; the future's result is ``(fn's result, wall seconds,
        CPU seconds)`` of the job in the writer.

        ``fn`` and its arguments must pickle (a module-level function, plain data).
        """
        from toolkit.tracking.runs import registry_uri, tracking_uri

        stores = (_absolute(tracking_uri()), _absolute(registry_uri()))
        return self._executor().submit(_run_job, stores, fn, args, kwargs)

    def shutdown(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=False)
                self._pool = None


_SHARED: ChildWriter | None = None


def shared_writer() -> ChildWriter:
    """This process's writer, started on first use and closed at exit."""
    global _SHARED
    if _SHARED is None:
        _SHARED = ChildWriter(process=os.environ.get("KMEANS_LIFECYCLE_WRITER", "process") != "thread")
        atexit.register(_SHARED.shutdown)
    return _SHARED
