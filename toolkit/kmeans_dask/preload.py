"""Load the Lloyd kernels on every worker in the background, while the driver loads the data.

A fresh worker process pays, before its first fit, for importing Numba (and, through Numba's
BLAS binding, SciPy's linear algebra) and for loading the kernels' machine code from Numba's
disk cache: 2-4 s on this project's 2-core machine against a 0.7 s fit of 1M x 16 rows.  No
signature or cache setting removes that: the code is already cached (no compilation), and
what remains is Numba setting up its typing and target contexts on first use.
:func:`load_on_workers` starts that work on a thread of every worker process as soon as the
``dask`` backend is given its client, so it overlaps what the driver does next (reading or
generating the data, sending it to the workers); the fit's own warm-up
(:func:`toolkit.kmeans_dask.kernels.warm_kernels`) then finds the kernels loaded, or waits for
the thread to finish them.

This module imports nothing but the standard library: a worker unpickles
:func:`_start_loading` (which names this module) on its event loop, and must not import Numba
there.  Threaded workers (``inproc://``) are this very process, where the driver's own imports
run: nothing is started for them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["load_on_workers", "process_workers", "settled_memory"]

_lock = threading.Lock()
_thread: threading.Thread | None = None


def _load() -> None:
    # Any failure only means no head start: the fit's own warm-up loads (and reports) it.
    with contextlib.suppress(Exception):
        from toolkit.kmeans_dask.kernels import warm_kernels

        warm_kernels(2)  # the kernels' types do not depend on the row width


def _start_loading() -> bool:
    """On a worker: start :func:`_load` on a daemon thread, once per process; returns at once."""
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_load, name="kmeans-kernels-preload", daemon=True)
            _thread.start()
    return True


def process_workers(addresses: Iterable[str]) -> list[str]:
    """The addresses of worker processes among ``addresses`` (threaded ``inproc://`` workers are
    this very process)."""
    return [a for a in addresses if not str(a).startswith("inproc://")]


def load_on_workers(client: Any) -> None:
    """Start loading the Lloyd kernels on every worker process of ``client`` (one round trip;
    the loading itself goes on in the background).  Threaded workers are left alone."""
    if client is None:
        return
    # A head start only: a worker lost or unreachable now is the fit's to find and report.
    with contextlib.suppress(Exception):
        workers = process_workers(client.scheduler_info().get("workers", {}))
        if workers:
            client.run(_start_loading, workers=workers)


def settled_memory(wait_s: float = 30.0) -> int:
    """On a worker: its process memory (RSS, bytes) with the kernels loaded, waiting up to
    ``wait_s`` for their loading (started here if no head start began it).

    The memory a worker holds through a fit before it reads a partition: the heartbeat's
    figure can predate the kernels' imports (Numba, SciPy's BLAS binding: tens of MiB), which
    the preload thread may still be doing when the backend checks the data against the limit.
    """
    import psutil  # a dependency of distributed, which every worker runs

    _start_loading()
    thread = _thread
    if thread is not None:
        thread.join(wait_s)
    return int(psutil.Process().memory_info().rss)
