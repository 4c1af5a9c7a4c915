"""``toolkit.workers``: every worker runs the driver's toolkit and libraries, or the run stops.

The workers that differ are real ``dask worker`` processes: one whose ``PYTHONPATH`` holds a
copy of the toolkit with one file changed (another commit), one for which the installed
toolkit cannot be found at all.  Each test stops the processes it started, by their handles.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from toolkit.cluster import dask_client
from toolkit.config import ClusterConfig
from toolkit.errors import ToolkitError
from toolkit.workers import (
    PACKAGE,
    _make_probe,
    check_workers,
    local_facts,
    toolkit_version,
    worker_error,
)

REPO = Path(__file__).resolve().parents[1]
VERSION = re.compile(r"^\d+\.\d+\.\d+\+[0-9a-f]{12}$")

# Starts `dask worker` in this interpreter.  With --hide-toolkit it first removes what makes the
# installed toolkit findable (setuptools' editable finder; a sys.path entry holding toolkit/),
# and refuses to start (exit 3) if toolkit can still be found: a worker truly without it.
_BOOT = """
import importlib.util, os, sys
args = sys.argv[1:]
if args and args[0] == "--hide-toolkit":
    args = args[1:]
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in (getattr(f, "__module__", "") or "")]
    sys.path[:] = [p for p in sys.path
                   if not os.path.isfile(os.path.join(p or ".", "toolkit", "__init__.py"))]
    importlib.invalidate_caches()
    if importlib.util.find_spec("toolkit") is not None:
        sys.exit(3)
sys.argv = ["dask-worker", *args]
from distributed.cli.dask_worker import main
main()
"""


def _start_worker(
    scheduler: str, tmp_path: Path, name: str, pythonpath: Path | None = None, hide_toolkit: bool = False
) -> subprocess.Popen:
    """A ``dask worker`` process for ``scheduler``, on loopback, one thread; without a nanny when
    the toolkit is hidden (a nanny's worker process would find it again through site-packages).
    Its local directory, where a shipped toolkit lands, is under ``tmp_path``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DASK_SCHEDULER_ADDRESS")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    cmd = [sys.executable, "-c", _BOOT, *(["--hide-toolkit"] if hide_toolkit else []), scheduler,
           "--nthreads", "1", "--memory-limit", "1GiB", "--host", "127.0.0.1", "--no-dashboard",
           "--name", name, "--local-directory", str(tmp_path / "scratch"),
           *(["--no-nanny"] if hide_toolkit else [])]  # fmt: skip
    # A log file, not a pipe: nobody reads the output while the worker runs (the child keeps its
    # own copy of the descriptor).  cwd: not the repository, whose toolkit/ would be found
    # through sys.path[0] == "".
    with open(tmp_path / f"{name}.log", "wb") as log:
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_for(client, count: int, procs: list[subprocess.Popen], tmp_path: Path, timeout: float = 60) -> None:
    """Until the scheduler has ``count`` workers; fail with a worker's log if one exits."""
    deadline = time.monotonic() + timeout
    while len(client.scheduler_info()["workers"]) != count:
        for proc in procs:
            if proc.poll() is not None:
                if proc.returncode == 3:
                    pytest.skip("this environment installs the toolkit in a way the test cannot hide")
                logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*.log"))
                pytest.fail(f"a worker exited with {proc.returncode}:\n{logs}")
        if time.monotonic() > deadline:
            pytest.fail(f"the scheduler has {len(client.scheduler_info()['workers'])} workers, not {count}")
        time.sleep(0.1)


@pytest.fixture()
def scheduler() -> Iterator:
    """A scheduler of its own (a LocalCluster without workers): restarts and odd workers here
    never reach the session cluster."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                           silence_logs=logging.ERROR)  # fmt: skip
    try:
        yield cluster
    finally:
        cluster.close()


def _other_commit(tmp_path: Path) -> Path:
    """A folder holding a copy of the driver's toolkit with one file changed, for PYTHONPATH."""
    root = tmp_path / "other-commit"
    shutil.copytree(Path(local_facts()["toolkit_path"]), root / PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    with open(root / PACKAGE / "names.py", "a") as fh:
        fh.write("\n# another commit\n")
    return root


def test_toolkit_version_is_the_version_and_a_hash_of_the_sources(tmp_path, monkeypatch):
    ours = toolkit_version()
    assert VERSION.match(ours), ours
    # The same sources under another folder and name hash the same; compiled files do not count;
    # one changed line is another version.
    copy = tmp_path / "toolkit_copy"
    shutil.copytree(Path(local_facts()["toolkit_path"]), copy, ignore=shutil.ignore_patterns("__pycache__"))
    # A source tree: the version is its pyproject's (toolkit/_version.py), as for the original.
    shutil.copyfile(Path(local_facts()["toolkit_path"]).parent / "pyproject.toml", tmp_path / "pyproject.toml")
    monkeypatch.syspath_prepend(str(tmp_path))
    probe = _make_probe()
    assert probe("toolkit_copy", (), ())["toolkit"] == ours
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "stale.cpython-311.pyc").write_bytes(b"\0")
    assert probe("toolkit_copy", (), ())["toolkit"] == ours
    (copy / "search" / "loop.py").write_text((copy / "search" / "loop.py").read_text() + "\n")
    changed = probe("toolkit_copy", (), ())["toolkit"]
    assert changed != ours and changed.split("+")[0] == ours.split("+")[0]
    assert probe("no_such_package_here", ("numpy", "no-such-distribution"), ()) == {
        "toolkit": None, "toolkit_path": None,
        "packages": {"numpy": local_facts()["packages"]["numpy"], "no-such-distribution": None},
    }  # fmt: skip


def test_session_workers_match_and_connecting_checks_them(client, monkeypatch):
    facts = check_workers(client)
    assert facts["toolkit"] == toolkit_version()
    assert set(facts["packages"]) == {"numpy", "scikit-learn", "dask", "distributed"}
    assert all(facts["packages"].values())
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask_client(ClusterConfig(scheduler_address=client.scheduler.address, ship_package=True)) as c:
        # Nothing differed, so nothing was shipped: no worker was restarted.
        assert c.submit(sum, [1, 2]).result() == 3
    assert not any(client.run(lambda: any("kmeans-toolkit-" in p for p in __import__("sys").path)).values())


def test_library_versions_are_compared_and_the_fix_names_the_pins():
    driver = {"toolkit": "0.1.0+aaaaaaaaaaaa", "toolkit_path": "/a/toolkit",
              "packages": {"numpy": "2.0.0", "scikit-learn": "1.5.0", "cuml": "cuml-cu13==25.10.0", "cupy": None}}
    same = {**driver, "toolkit_path": "/b/toolkit"}  # another place, same sources: fine
    other = {"toolkit": "0.1.0+aaaaaaaaaaaa", "toolkit_path": "/b/toolkit",
             "packages": {"numpy": "2.0.0", "scikit-learn": "1.4.2", "cuml": "cuml-cu12==25.10.0"}}
    assert worker_error(driver, {"tcp://h:1": same}) is None
    err = worker_error(driver, {"tcp://h:1": same, "tcp://h:2": other, "tcp://h:3": {**driver, "toolkit": None}})
    assert err is not None and "\n" not in str(err)
    assert str(err).startswith("worker tcp://h:2 runs scikit-learn 1.4.2 but this driver runs 1.5.0, and runs cuml "
                               "cuml-cu12==25.10.0 but this driver runs cuml-cu13==25.10.0 (and 1 more worker)")
    assert "scikit-learn==1.5.0" in err.fix and "cuml-cu13==25.10.0" in err.fix and "numpy" not in err.fix
    assert "ship_package" in err.fix  # tcp://h:3 has no toolkit: that one shipping can fix


def test_worker_with_another_commit_is_refused_and_ship_package_fixes_it(scheduler, tmp_path, monkeypatch):
    from distributed import Client

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    other = _other_commit(tmp_path)
    address = scheduler.scheduler_address
    proc = _start_worker(address, tmp_path, "other-commit", pythonpath=other)
    try:
        with Client(scheduler) as watch:
            _wait_for(watch, 1, [proc], tmp_path)
            worker = next(iter(watch.scheduler_info()["workers"]))
        ours = toolkit_version()
        with pytest.raises(ToolkitError) as caught, dask_client(ClusterConfig(scheduler_address=address)):
            pytest.fail("a worker with another toolkit was accepted")
        msg = str(caught.value)
        assert "\n" not in msg
        assert re.match(rf"worker {re.escape(worker)} runs toolkit [0-9][^+ ]*\+[0-9a-f]{{12}} from "
                        rf"{re.escape(str(other / PACKAGE))} but this driver runs {re.escape(ours)} -- fix: ", msg), msg
        assert "install the same commit on every worker, or set cluster.ship_package=true" in msg

        with dask_client(ClusterConfig(scheduler_address=address, ship_package=True)) as c:
            # The worker was restarted with the driver's copy first on its path, and imports it.
            where = c.submit(lambda: __import__("toolkit").__file__, pure=False).result()
            assert where.startswith(str(tmp_path / "scratch")) and "kmeans-toolkit-" in where
            assert c.run(lambda: __import__("toolkit.workers").workers.toolkit_version()).popitem()[1] == ours
        # The shipped copy stays: the next driver of this commit connects without shipping.
        with dask_client(ClusterConfig(scheduler_address=address)) as c:
            assert c.submit(sum, [1, 2]).result() == 3
    finally:
        _stop(proc)


def test_worker_without_toolkit_is_named_and_shipping_needs_a_nanny(tmp_path, monkeypatch, spawned_workers):
    from distributed import Client, LocalCluster

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    # One worker like the driver (with a nanny) and one that cannot find the toolkit (without).
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                           memory_limit="1GiB", dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
                           local_directory=str(tmp_path / "scratch"))  # fmt: skip
    proc = None
    try:
        proc = _start_worker(cluster.scheduler_address, tmp_path, "no-toolkit", hide_toolkit=True)
        with Client(cluster) as c:
            good = set(c.scheduler_info()["workers"])
            _wait_for(c, 2, [proc], tmp_path)
            (bad,) = set(c.scheduler_info()["workers"]) - good
            with pytest.raises(ToolkitError) as caught:
                check_workers(c)
            assert str(caught.value).startswith(
                f"worker {bad} has no toolkit installed but this driver runs toolkit {toolkit_version()} -- fix: "
            ), caught.value
            # The nanny's worker takes the shipped copy; the one without a nanny cannot.  The
            # cluster's nanny runs in this process: the driver's own path must not change.
            path = list(sys.path)
            with pytest.raises(ToolkitError, match="even after shipping the toolkit -- fix: start every worker "
                               "with a nanny"):  # fmt: skip
                check_workers(c, ship=True)
            assert sys.path == path
            facts = c.run(_make_probe(), PACKAGE, (), ())
            assert facts[bad]["toolkit"] is None
            shipped = [f for a, f in facts.items() if a != bad]
            assert len(shipped) == 1 and "kmeans-toolkit-" in shipped[0]["toolkit_path"]
    finally:
        if proc is not None:
            _stop(proc)
        cluster.close()
