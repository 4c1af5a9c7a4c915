"""Whether an error means the Dask cluster lost a worker or data, not that the work itself failed.

Used where a fit or a trial may be run again with its data placed anew (the search's retries)
and where a faster way of reaching the data must not hide a lost worker (the Dask k-means'
engines).  Bottom layer: imports nothing of the toolkit but :mod:`toolkit.errors`, and not
``distributed`` itself (its exceptions are matched by class name).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re

from toolkit.errors import ToolkitError

__all__ = ["is_infrastructure_error"]

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
