"""Passes that cannot wait forever: a worker paused for memory ends the pass, within a bound.

A Dask worker past its ``pause`` fraction of ``memory_limit`` stops running tasks until its
memory falls; data re-read every pass (``persist=False``) never falls on its own, so a pass
would wait for ever (a ``max_iter=2`` fit was still silent after 15 minutes).  A worker past
``terminate`` is restarted by its nanny, and after ``allowed-failures`` restarts the task fails
with ``KilledWorker``.  :func:`gather_watched` turns the first into :class:`WorkerMemoryError`
after :data:`PAUSED_GRACE_S`; the backend turns both into one line naming memory and the fix.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["PAUSED_GRACE_S", "WorkerMemoryError", "gather_watched"]

#: Seconds a worker may stay paused (for memory) while a pass waits on it: long enough for a
#: spill or a garbage collection to bring it back under the pause fraction, short enough that
#: a fit that cannot proceed says so within a minute.
PAUSED_GRACE_S = 30.0
#: Seconds between looks at the workers' status while a pass runs.
_POLL_S = 1.0


class WorkerMemoryError(MemoryError):
    """A worker stayed paused for memory (or was killed for it) while a pass needed it."""

    def __init__(self, message: str, worker: str | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.worker, self.limit = worker, limit


def _paused(client: Any) -> dict[str, int]:
    """``{address: memory_limit}`` of the workers the scheduler has paused now."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return {a: int(w.get("memory_limit") or 0) for a, w in workers.items() if w.get("status") == "paused"}


def gather_watched(client: Any, futures: Sequence[Any], paused_grace_s: float | None = None) -> list:
    """``client.gather(futures)``, but a worker paused for ``paused_grace_s`` while these futures
    are unfinished cancels them and raises :class:`WorkerMemoryError`.

    A worker paused briefly (memory freed by a spill or a collection) is waited for.
    """
    from distributed import wait

    if paused_grace_s is None:
        paused_grace_s = PAUSED_GRACE_S
    since: dict[str, float] = {}
    pending = list(futures)
    while pending:
        with contextlib.suppress(TimeoutError):  # still running: look at the workers
            wait(pending, timeout=_POLL_S)
        pending = [f for f in pending if not f.done()]
        if any(f.status == "error" for f in futures):
            break  # gather raises it
        if not pending:
            break
        now = time.monotonic()
        paused = _paused(client)
        since = {a: since.get(a, now) for a in paused}
        stuck = [a for a, t0 in since.items() if now - t0 >= paused_grace_s]
        if stuck:
            client.cancel(list(futures))
            limit = paused[stuck[0]]
            raise WorkerMemoryError(
                f"worker {stuck[0]} paused for memory for {paused_grace_s:.0f} s", stuck[0], limit or None
            )
    return client.gather(list(futures))
