"""The one place the toolkit talks to a person: status lines and progress bars.

A progress bar on a terminal; piped or logged (``mlflow run ... | tee``, CI, a scheduler's log),
a plain line every tenth of the work or every 10 s instead, so a long search is never silent.
``KMEANS_QUIET=1`` silences everything.  Every line passes through :func:`toolkit.redact.redact`:
no credential reaches the console.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from toolkit.redact import redact

__all__ = ["LineProgress", "PassLines", "progress", "quiet", "say"]

_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("kmeans_quiet", default=False)


def _is_quiet() -> bool:
    return _QUIET.get() or os.environ.get("KMEANS_QUIET") == "1"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Within the block, in this thread (context) only, print nothing -- as ``KMEANS_QUIET=1`` does
    for the whole process, without changing the environment other threads read."""
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


def say(message: str) -> None:
    """Print one status line for the user (to stdout)."""
    if not _is_quiet():
        print(redact(message), flush=True)


def progress(total: int, desc: str) -> Any:
    """A tqdm progress bar on a terminal; progress lines (:class:`LineProgress`) elsewhere."""
    from tqdm.auto import tqdm

    silent = _is_quiet()
    if not silent and not sys.stderr.isatty():
        return LineProgress(total, desc)
    return tqdm(total=total, desc=desc, disable=silent, leave=True, dynamic_ncols=True)


class LineProgress:
    """tqdm's ``update``/``set_postfix``/``reset``/``close`` as plain lines on stdout:
    ``search blobs-sklearn: 6/12 done, best=0.9496, 4.1 s`` every ``total // 10`` steps (at
    least one) or every ``every_s`` seconds, whichever comes first, and once at the end."""

    def __init__(self, total: int, desc: str, every_s: float = 10.0) -> None:
        self.desc, self.every_s = desc, every_s
        self.postfix: dict[str, Any] = {}
        self.reset(total)

    def reset(self, total: int | None = None) -> None:
        self.total = int(total or 0)
        self.n = 0
        self._t0 = self._last_t = time.monotonic()
        self._last_n = 0
        self._step = max(1, -(-self.total // 10))  # about ten lines for the whole work

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        self.postfix.update(values)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n - self._last_n >= self._step or now - self._last_t >= self.every_s:
            self._say(now)

    def _say(self, now: float) -> None:
        self._last_n, self._last_t = self.n, now
        extra = "".join(f", {k}={v}" for k, v in self.postfix.items())
        say(f"{self.desc}: {self.n}/{self.total} done{extra}, {now - self._t0:.1f} s")

    def close(self) -> None:
        if self.n != self._last_n:
            self._say(time.monotonic())


#: :class:`PassLines`' default: at most one line per this many seconds (a pass that takes
#: longer gets its own line).
PASS_EVERY_S = 10.0


class PassLines:
    """Progress of a long fit, one plain line per pass over the data or per ``every_s`` seconds,
    whichever is later: ``fit dask: pass 9 (lloyd), iteration 2, inertia=5.87e+04,
    shift=0.0108, 41.3 s``.  The first pass is always reported; a pass still running after
    ``still_s`` seconds without a line gets a ``still on pass N`` line (a daemon thread), so a
    fit is never silent for longer than that.  Quiet (``KMEANS_QUIET=1``) prints nothing.

    Call it with :meth:`toolkit.kmeans_dask.DaskKMeans.fit`'s ``on_pass`` dicts; :meth:`close`
    ends the heartbeat.
    """

    def __init__(self, desc: str, every_s: float | None = None, still_s: float = 30.0) -> None:
        import threading

        self.desc, self.still_s = desc, still_s
        self.every_s = PASS_EVERY_S if every_s is None else every_s
        self._last_line = self._t0 = time.monotonic()
        self._said = 0
        self._pass = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # In a copy of this context: a quiet() block around the fit silences the heartbeat too.
        ctx = contextvars.copy_context()
        self._beat = threading.Thread(target=ctx.run, args=(self._heartbeat,), name="pass-lines", daemon=True)
        self._beat.start()

    def __call__(self, info: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            self._pass = int(info.get("pass", self._pass + 1))
            if self._said and now - self._last_line < self.every_s:
                return
            self._said += 1
            self._last_line = now
        parts = [f"{self.desc}: pass {self._pass} ({info.get('phase', '?')})"]
        if info.get("iteration"):
            parts.append(f"iteration {info['iteration']}")
        if info.get("inertia") is not None:
            parts.append(f"inertia={info['inertia']:.6g}")
        if info.get("shift") is not None:
            parts.append(f"shift={info['shift']:.3g}")
        parts.append(f"{info.get('elapsed', now - self._t0):.1f} s")
        say(", ".join(parts))

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(self.still_s, 5.0)):
            now = time.monotonic()
            with self._lock:
                if now - self._last_line < self.still_s:
                    continue
                self._last_line = now
                n = self._pass + 1
            say(f"{self.desc}: still on pass {n}, {now - self._t0:.1f} s")

    def close(self) -> None:
        """Stop the heartbeat (idempotent)."""
        self._stop.set()
