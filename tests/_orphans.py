"""Processes a test's drivers left behind: alive, no longer under pytest, and tied to the test's folder."""

from __future__ import annotations

import contextlib
from pathlib import Path


def orphans(roots: list[Path], grace_s: float = 3.0) -> list[tuple[int, str]]:
    """(pid, command line) of every live process outside this process's tree whose environment,
    command line, working directory or open files name one of ``roots`` (a driver's writer, its
    resource tracker or a Dask worker inherit the driver's ``MLFLOW_TRACKING_URI``, which names the
    test's store).  Processes still under pytest (a session writer, a test's server) are its own.
    Looked for again for up to ``grace_s`` seconds: a driver that just exited may leave its
    resource tracker a moment to notice."""
    import time

    deadline = time.monotonic() + grace_s
    while True:
        found = _scan(roots)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)


def _scan(roots: list[Path]) -> list[tuple[int, str]]:
    import psutil

    me = psutil.Process()
    ours = {me.pid, *(p.pid for p in me.children(recursive=True))}
    needles = [str(r) for r in roots]  # a root itself, or a path under it (not a sibling test_x01)
    found = []
    for proc in psutil.process_iter():
        if proc.pid in ours:
            continue
        with contextlib.suppress(psutil.Error):
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            texts = [" ".join(proc.cmdline()), proc.cwd(), *proc.environ().values(),
                     *(f.path for f in proc.open_files())]
            if any(t == n or f"{n}/" in t for n in needles for t in texts):
                found.append((proc.pid, " ".join(proc.cmdline())[:120]))
    return found
