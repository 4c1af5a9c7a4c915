"""One driver per study: a lease that a second driver checks before it touches the study.

Two drivers telling the same study corrupt it: the second one fails the first one's trials in
flight and trial numbers get two child runs.  So a driver holds a *lease* on its study for as
long as it runs, and a resume refuses, with a one-line error naming the holder, while the lease
is alive.  A lease left by a driver that died is stale and is taken over.

The lease lives in the study's own Optuna storage, so it works the same on a journal file and on
a database shared by several hosts.  Taking a lease is *creating a study* named
``<study>.driver-lease.<epoch>``: study names are unique in every Optuna storage, so of two
drivers that try the same epoch at once exactly one succeeds, without any lock of our own.  The
holder records who it is (host, pid, process start time) on that lease study and bumps a
heartbeat counter every few seconds.

Whether a holder is alive is decided without comparing clocks: on the same host, by its process
(pid and start time, so a reused pid is not mistaken for it); on another host, by watching its
heartbeat counter move within a few heartbeat intervals.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from typing import Any

from toolkit._compat import optuna_study_id
from toolkit.errors import ConfigError, option_hint

__all__ = ["LEASE_INTERVAL_S", "DriverLease", "lease_name"]

#: Heartbeat period; a holder on another host is declared dead after 2.5 silent periods.
LEASE_INTERVAL_S = 5.0
_SEP = ".driver-lease."
# Tokens of the leases this process holds now (a lease with our pid but not among these was
# left by an earlier search of this process that could not release it).
_HELD: set[str] = set()


def lease_name(study_name: str, epoch: int) -> str:
    return f"{study_name}{_SEP}{epoch}"


def _epochs(storage: Any, study_name: str) -> list[tuple[int, int]]:
    """``(epoch, storage study id)`` of every lease study of ``study_name``, oldest first."""
    prefix = study_name + _SEP
    out = []
    for s in storage.get_all_studies():
        if s.study_name.startswith(prefix) and s.study_name[len(prefix):].isdigit():
            out.append((int(s.study_name[len(prefix):]), optuna_study_id(s)))
    return sorted(out)


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # no such process, or no permission to see it
        return None


def _describe(info: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {since}"


class DriverLease:
    """The lease of one driver on one study; :meth:`acquire` it, :meth:`release` it when done."""

    def __init__(self, storage: Any, study_name: str, interval_s: float = LEASE_INTERVAL_S) -> None:
        self.storage = storage
        self.study_name = study_name
        self.interval_s = interval_s
        self.token = uuid.uuid4().hex
        self._lease_id: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- liveness of another holder -------------------------------------------------------
    def _alive(self, lease_id: int) -> tuple[bool, dict[str, Any]]:
        info = dict(self.storage.get_study_user_attrs(lease_id))
        if info.get("released"):
            return False, info
        if info.get("host") == socket.gethostname() and "pid" in info:
            pid = int(info["pid"])
            if pid == os.getpid():
                return info.get("token") in _HELD, info
            start = _process_start(pid)
            return start is not None and abs(start - float(info.get("process_start", -1))) < 1.0, info
        # Another host (or a lease still being written): alive while its heartbeat moves.
        beat = info.get("beat")
        deadline = time.monotonic() + 2.5 * float(info.get("interval_s", self.interval_s))
        while time.monotonic() < deadline:
            time.sleep(min(0.5, self.interval_s))
            now = dict(self.storage.get_study_user_attrs(lease_id))
            if now.get("released"):
                return False, now
            if now.get("beat") != beat:
                return True, now
        return False, info

    # -- taking and giving back -----------------------------------------------------------
    def acquire(self) -> DriverLease:
        """Take the lease, or raise :class:`ConfigError` naming the live driver that holds it."""
        from optuna.exceptions import DuplicatedStudyError
        from optuna.study import StudyDirection

        epochs = _epochs(self.storage, self.study_name)
        epoch = epochs[-1][0] if epochs else 0
        if epochs:
            alive, info = self._alive(epochs[-1][1])
            if alive:
                raise ConfigError(
                    f"study {self.study_name!r} is being run by another live search ({_describe(info)})",
                    f"wait for it to finish, stop it, or start a new search ({option_hint('resume', 'false')})",
                )
        try:
            self._lease_id = self.storage.create_new_study([StudyDirection.MINIMIZE],
                                                           lease_name(self.study_name, epoch + 1))
        except DuplicatedStudyError:
            raise ConfigError(
                f"another search took over study {self.study_name!r} at the same moment",
                "let that one run; resume again after it ends",
            ) from None
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time(),
                "process_start": _process_start(os.getpid()) or 0.0, "token": self.token,
                "interval_s": self.interval_s, "beat": 0}
        for key, value in info.items():
            self.storage.set_study_user_attr(self._lease_id, key, value)
        _HELD.add(self.token)
        for _, old in epochs:  # the leases this one replaces
            with contextlib.suppress(Exception):
                self.storage.delete_study(old)
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.study_name}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        n = 0
        while not self._stop.wait(self.interval_s):
            n += 1
            # A missed beat (store busy or briefly down) is not fatal: the pid check on this host
            # and 2.5 silent periods elsewhere leave room for it.
            with contextlib.suppress(Exception):
                self.storage.set_study_user_attr(self._lease_id, "beat", n)

    def release(self) -> None:
        """Stop the heartbeat and mark the lease released (best effort: a stale lease is taken
        over anyway)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        if self._lease_id is not None:
            with contextlib.suppress(Exception):
                self.storage.set_study_user_attr(self._lease_id, "released", True)
        _HELD.discard(self.token)
        self._lease_id = None

    def __enter__(self) -> DriverLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
