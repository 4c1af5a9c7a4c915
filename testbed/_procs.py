"""Helpers for the real processes that the test bed, the tests and the benchmarks start.

Standard library only, imported by ``testbed/``, ``tests/`` and ``benchmarks/`` alike: stopping a
process started in a session of its own (``start_new_session=True``, so its pid is its process
group's id) together with everything it started, and finding PostgreSQL's server binaries.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["PG_TOOLS", "kill_process_group", "log_tail", "pg_bindir", "stop_process_group", "wait_until_ready"]

#: The PostgreSQL programs a throwaway cluster needs, all in one folder.
PG_TOOLS = ("initdb", "postgres", "pg_isready", "psql", "createdb")


def kill_process_group(proc: subprocess.Popen, wait_s: float = 15.0) -> None:
    """SIGKILL ``proc``'s process group and reap ``proc`` (waiting at most ``wait_s`` seconds).

    Args:
        proc: a process started with ``start_new_session=True``.
        wait_s: how long to wait for ``proc`` to be reaped; a longer wait is not an error.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=wait_s)


def stop_process_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 15.0, *,
                       sweep: bool = False) -> None:
    """Signal ``proc``'s process group with ``sig``, SIGKILL it after ``grace_s`` seconds; reap ``proc``.

    Args:
        proc: a process started with ``start_new_session=True``.
        sig: the polite signal (SIGTERM; PostgreSQL's fast shutdown is SIGINT).
        grace_s: how long ``proc`` may take to exit after ``sig`` before the group is killed.
        sweep: also SIGKILL the group once ``proc`` has exited (or had already exited): children
            that outlived their leader (the test bed, whose namespaces must end empty).
    """
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace_s)
        except ProcessLookupError:
            pass  # the group is gone: nothing left to stop
        except subprocess.TimeoutExpired:
            kill_process_group(proc)
    if sweep:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def log_tail(log: Path | None, n: int = 3000) -> str:
    """The last ``n`` characters of a service's log (empty where there is none yet)."""
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-n:]


def wait_until_ready(what: str, check: Callable[[], bool], proc: subprocess.Popen | None = None,
                     log: Path | None = None, limit_s: float = 180.0, *, poll_s: float = 0.5,
                     error: type[Exception] = RuntimeError) -> None:
    """Poll ``check`` until it returns true; fail early, with the log's tail, if ``proc`` exits.

    A check that raises counts as "not yet" (a port not open, a server still importing).

    Args:
        what: the service's name, for the error.
        check: returns true once the service answers.
        proc: the service's process, watched for an early exit (None: not watched).
        log: the service's log, whose tail the error quotes.
        limit_s: how long to wait before giving up.
        poll_s: the pause between checks.
        error: the exception class raised (the bed raises its own).
    """
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise error(f"{what} exited with {proc.returncode}:\n{log_tail(log)}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(poll_s)
    raise error(f"{what} not ready after {limit_s:.0f} s:\n{log_tail(log)}")


def pg_bindir() -> Path | None:
    """The folder of PostgreSQL's server binaries (:data:`PG_TOOLS`), or None where none is installed.

    Debian keeps them off PATH, in ``/usr/lib/postgresql/<major>/bin``: the newest major there,
    else the folder of an ``initdb`` on PATH (other systems' packages).
    """
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                    key=lambda p: int(re.sub(r"\D", "", Path(p).parents[1].name) or 0), reverse=True)
    on_path = shutil.which("initdb")
    for initdb in [*debian, *([on_path] if on_path else [])]:
        folder = Path(initdb).parent
        if all((folder / tool).is_file() for tool in PG_TOOLS):
            return folder
    return None
