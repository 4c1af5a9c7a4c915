"""A quick end for an entry point's process once its work is saved.

Tearing down an interpreter that imported MLflow, scikit-learn, skops, Dask and matplotlib
takes seconds (every module's objects freed, then garbage-collection passes) after the
command has printed its last line.  An entry point run as the program arms :func:`arm` with
its exit status; the handler below, registered when ``mlproject`` is first imported and so
run after every other ``atexit`` handler (they run last-registered first), flushes the
streams and logging and leaves with ``os._exit``.  By then Python has joined the non-daemon
threads and run every library's handler (MLflow ends its runs, the child-run writer is
drained and shut down), so only the teardown is skipped.  Unarmed (imported by tests, or a
crash before the status is known) it does nothing; nor with the speed tricks switched off
(:mod:`toolkit._speedups`): the interpreter then ends as usual, with the same status.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys

from toolkit import _speedups

_status: int | None = None


def arm(status: int) -> None:
    """End the process with ``status`` and no teardown, once Python's exit handlers have run."""
    global _status
    _status = status


def _leave() -> None:
    if _status is None or not _speedups.quick_exit_allowed():
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_status)


atexit.register(_leave)
