"""Every speed trick of the lifecycle's orchestration, behind one switch.

The search and the entry points are written as if nothing here existed: they call
:func:`warm` for a head start, :func:`background` for work that may overlap theirs, and the
writer and the entry points ask :func:`writer_niceness` and :func:`quick_exit_allowed`.  With
the switch off (``KMEANS_LIFECYCLE_SPEEDUPS=0``) each does the plain thing: no warm-up, the work
done in line, normal priority, the interpreter's normal exit.  The record a search writes is
the same either way (``tests/test_speedups.py``); only the wall time changes.

The tricks, and what each is for (figures: ``benchmarks/RESULTS.md``):

* **warm-ups** (:func:`warm`): the child-run writer process started before the cluster and the
  data, so its ~2 s of imports overlap them; the registration's one-time imports and MLflow's
  index of installed packages (:func:`toolkit.registry.register.warm_up`) while the baseline
  runs, not between the last trial and the registered model; the fitting code imported on every
  Dask worker when the trial-parallel runner starts
  (:func:`toolkit.search.trials._warm_up`), not inside the first trials' fit times; the ``dask``
  backend's compiled kernels loaded on every worker process as soon as the backend gets its
  client (:func:`toolkit.kmeans_dask.preload.load_on_workers`), while the data is loaded and
  placed, not inside the first fit.
* **overlap** (:func:`background`): the labelled baseline on a thread of its own while the
  driver writes the summary, with its imports done first on the calling thread (two threads
  importing at once can be refused by Python as a deadlock).
* **priority** (:func:`writer_niceness`): the writer process at nice 10, so bookkeeping never
  takes the CPU the trials need (``KMEANS_LIFECYCLE_WRITER_NICE`` sets another value).
* **quick exits** (:func:`quick_exit_allowed`): the writer process and an entry point run as a
  program leave with ``os._exit`` once their work is saved, skipping seconds of interpreter
  teardown.

Bottom layer: imports nothing of the toolkit.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["NICE_ENV", "SWITCH_ENV", "background", "enabled", "lower_priority", "quick_exit_allowed", "warm",
           "writer_niceness"]

#: ``0`` (or ``false``, ``off``, ``no``) turns every trick here off; anything else, or unset, leaves them on.
SWITCH_ENV = "KMEANS_LIFECYCLE_SPEEDUPS"
#: Niceness of the writer process (``KMEANS_LIFECYCLE_WRITER_NICE``): 0 keeps the driver's.
NICE_ENV = "KMEANS_LIFECYCLE_WRITER_NICE"
_DEFAULT_NICE = 10

T = TypeVar("T")


def enabled() -> bool:
    """Whether the speed tricks are on (read at each call: a test may flip the variable)."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def warm(fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn(*args)`` now, for a head start on work that would otherwise come later.

    Off: nothing (the work happens when it is needed).  A warm-up must never change what is
    written, only when its one-time cost is paid.
    """
    if enabled():
        fn(*args)


def background(fn: Callable[..., T], *args: Any, imports: Iterable[str] = (),
               name: str = "speedups") -> concurrent.futures.Future:
    """``fn(*args)`` on a thread of its own, as a future; off: computed now, in line.

    ``imports``: modules the thread needs, imported first on the calling thread, so that the
    thread only computes while the caller may be importing too (Python can refuse such a pair
    of imports as a deadlock).
    """
    if not enabled():
        done: concurrent.futures.Future = concurrent.futures.Future()
        try:
            done.set_result(fn(*args))
        except Exception as exc:  # handed over as the thread's would be
            done.set_exception(exc)
        return done
    for module in imports:
        importlib.import_module(module)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    try:
        return pool.submit(fn, *args)
    finally:
        pool.shutdown(wait=False)  # the thread ends with its one job


def writer_niceness() -> int:
    """How much to lower the writer process's priority (0: not at all; always 0 when off)."""
    if not enabled():
        return 0
    try:
        return int(os.environ.get(NICE_ENV, _DEFAULT_NICE))
    except ValueError:
        return _DEFAULT_NICE


def lower_priority() -> None:
    """In the writer process: nice it by :func:`writer_niceness` (a refusal is ignored)."""
    nice = writer_niceness()
    if nice > 0 and hasattr(os, "nice"):
        with contextlib.suppress(OSError):  # not permitted here: normal priority will do
            os.nice(nice)


def quick_exit_allowed() -> bool:
    """Whether a process whose work is saved may leave with ``os._exit`` (no teardown)."""
    return enabled()
