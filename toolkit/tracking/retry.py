"""Talking to a tracking store that may blink or die: bounded retries, then one clear error.

MLflow's REST client retries each call on its own (7 times, exponential back-off, a 120 s read
timeout), so a search whose tracking server died waited out that whole budget once per queued
child run: 45 minutes, then 16 tracebacks.  Here every call the toolkit makes through
:func:`toolkit.tracking.runs.client` goes through :func:`call`:

* a *transient* failure (connection refused or reset, a timeout, HTTP 5xx, sqlite "database is
  locked") is retried with a growing pause, for at most ``KMEANS_LIFECYCLE_TRACKING_TIMEOUT_S``
  seconds (default 60) in all;
* when that budget is spent, the store is marked *down* for this process and every later call
  to it fails at once with :class:`TrackingUnavailableError` (one line, naming the store and
  what to do), so a search fails within about the budget instead of once per queued write;
* anything else (a permission error, a bad parameter) is raised at once, unchanged.

MLflow's own HTTP retries are turned down (unless the user set them) so that this module, not
the client, decides how long to wait: one attempt waits at most ``MLFLOW_HTTP_REQUEST_TIMEOUT``
(15 s here).  Calls that create something (``create_run``...) are retried only when the request
cannot have reached the server (connection refused), never after a timeout, so a retry never
makes a second run.  A retried write that meets a unique-key error is retried once more: the
attempt whose answer was lost reached the server after all and inserted the same rows at the
same moment (MLflow skips rows it finds already there with the same values, so the next
attempt settles it; another value is still refused).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from toolkit.errors import ToolkitError, option_hint
from toolkit.redact import redact

__all__ = ["TIMEOUT_ENV", "TrackingUnavailableError", "call", "is_down", "is_transient", "mark_down", "unavailable"]

TIMEOUT_ENV = "KMEANS_LIFECYCLE_TRACKING_TIMEOUT_S"
_DEFAULT_TIMEOUT_S = 60.0
# MLflow's HTTP client settings, unless the user chose their own.
_MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}

_LOCK = threading.Lock()
_DOWN: dict[str, str] = {}  # store URI -> why it is considered down


class TrackingUnavailableError(ToolkitError):
    """The tracking store did not answer within the retry budget."""


def configure_mlflow_http() -> None:
    """Turn MLflow's own HTTP retries down (idempotent; user settings win)."""
    for key, value in _MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    # MLflow prints "View run ... at: <url>" per run against a server, URL credentials included.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def timeout_s() -> float:
    """The retry budget of one call, in seconds (``KMEANS_LIFECYCLE_TRACKING_TIMEOUT_S``)."""
    try:
        return max(0.0, float(os.environ.get(TIMEOUT_ENV, _DEFAULT_TIMEOUT_S)))
    except ValueError:
        return _DEFAULT_TIMEOUT_S


_PERMANENT_WORDS = ("readonly", "read-only", "permission denied", "no space left")
_TRANSIENT_WORDS = (
    "connection refused", "connection reset", "connection aborted", "max retries exceeded",
    "timed out", "timeout", "remotedisconnected", "bad gateway", "service unavailable",
    "gateway timeout", "database is locked", "temporarily unavailable", "newconnectionerror",
    "broken pipe", "server closed the connection",
)
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a store that is briefly unreachable or busy."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, PermissionError) or any(w in text for w in _PERMANENT_WORDS):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import requests

        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                            requests.exceptions.ChunkedEncodingError)):
            return True
    except ImportError:  # pragma: no cover - requests comes with MLflow
        pass
    code = getattr(exc, "error_code", None)
    if code in _TRANSIENT_CODES:
        return True
    if any(w in text for w in _TRANSIENT_WORDS):
        return True
    # A 5xx from a server (INTERNAL_ERROR) is retried: a proxy or a restarting server says so.
    return code == "INTERNAL_ERROR" and "api request" in text


_DUPLICATE_WORDS = ("unique constraint failed", "violates unique constraint", "duplicate entry", "duplicate key")


def _raced_itself(exc: BaseException) -> bool:
    """A unique-key error: on a retry, the sign that the earlier attempt landed at the same time."""
    text = str(exc).lower()
    return any(w in text for w in _DUPLICATE_WORDS)


def _unsent(exc: BaseException) -> bool:
    """The request cannot have reached the server (so creating again cannot duplicate)."""
    text = str(exc).lower()
    return isinstance(exc, ConnectionRefusedError) or "connection refused" in text or "newconnectionerror" in text


def mark_down(uri: str, why: str) -> None:
    """Treat ``uri`` as down in this process from now on (every later call fails at once)."""
    with _LOCK:
        _DOWN.setdefault(uri, why)


def is_down(uri: str) -> bool:
    return uri in _DOWN


def reset(uri: str | None = None) -> None:
    """Forget that a store was down (all stores when ``uri`` is None)."""
    with _LOCK:
        if uri is None:
            _DOWN.clear()
        else:
            _DOWN.pop(uri, None)


def unavailable(uri: str, why: str) -> TrackingUnavailableError:
    return TrackingUnavailableError(
        f"the tracking store {redact(uri)} is not answering ({redact(why)})",
        f"start it again (or fix the network), then rerun with {option_hint('resume', 'true')}: trials "
        "already computed are kept in the Optuna study and their runs are written then",
    )


def call(fn: Callable[..., Any], *args: Any, uri: str, what: str = "", **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, retried on transient failures for at most :func:`timeout_s`."""
    if uri in _DOWN:
        raise unavailable(uri, _DOWN[uri])
    creates = what.startswith("create_")
    deadline = time.monotonic() + timeout_s()
    pause = 0.5
    retrying = False
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            own_race = retrying and not creates and _raced_itself(exc)
            if not (is_transient(exc) or own_race) or (creates and not _unsent(exc)):
                raise
            retrying = True
            if time.monotonic() + pause > deadline:
                why = " ".join(str(exc).split())[:200] or type(exc).__name__
                mark_down(uri, f"{what or 'a call'} failed for {timeout_s():.0f} s: {why}")
                raise unavailable(uri, _DOWN[uri]) from None
            time.sleep(pause)
            pause = min(pause * 2, 8.0)


class RetryingClient:
    """An ``MlflowClient`` whose public methods go through :func:`call`."""

    def __init__(self, inner: Any, uri: str) -> None:
        self._inner = inner
        self._uri = uri

    @property
    def inner(self) -> Any:
        """The plain ``MlflowClient`` (for MLflow functions that need the real class)."""
        return self._inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def retried(*args: Any, **kwargs: Any) -> Any:
            return call(attr, *args, uri=self._uri, what=name, **kwargs)

        retried.__name__ = name
        return retried
