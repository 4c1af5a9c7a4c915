"""Starting and stopping real processes: servers on loopback (the `server` tests) and drivers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# stop(proc, sig=SIGTERM, grace_s=15.0): the servers' process group, SIGKILL after the grace period.
from testbed._procs import stop_process_group as stop


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, log: Path, what: str, limit_s: float = 90.0) -> None:
    """Poll ``url`` until it answers 200 (bounded), failing with the server's log otherwise."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} not ready after {limit_s:.0f} s:\n{log.read_text()[-3000:]}")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started in a session of its own, with everything it started (a
    driver's Dask workers, its writer process), and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a test's ``mlflow server``: none of the test's ``MLFLOW_*`` settings, and
    no job runner (MLflow 3.x starts seven huey consumer processes with every server for its
    job feature, which no test uses: on two cores they slowed every server test's start)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **extra}


@contextlib.contextmanager
def mlflow_server(folder: Path, store: str | None = None) -> Iterator[str]:
    """A real ``mlflow server`` on a free loopback port, in a process group of its own: its store
    is ``store`` (default: a new, already migrated sqlite file in ``folder``), artifacts proxied to
    ``folder/artifacts``, log in ``folder/server.log``.  Yields its URL; stopped by its own
    handle however the block ends.  The server never inherits the test's ``MLFLOW_*`` settings."""
    if store is None:
        from _mlflow_store import init_store

        # A migrated copy: the server does not spend seconds creating MLflow's tables.
        store = init_store(folder / "server.db")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", store,
             "--artifacts-destination", str(folder / "artifacts"), "--workers", "1"],
            cwd=folder, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            env=server_env(),
        )
    try:
        wait_ready(proc, f"{url}/health", log, "mlflow server", limit_s=120)
        yield url
    finally:
        # A throwaway store: no need to wait out uvicorn's graceful close of a browser's
        # keep-alive connections (~10 s).
        stop(proc, grace_s=3.0)

