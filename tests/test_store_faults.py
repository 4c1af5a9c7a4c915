"""The tracking store under strain: a full disk, several searches started together on one store.

Real entry points in real subprocesses (``python -m mlproject.search``, not ``mlflow run``: these
are about the store, not the launcher), a real sqlite store, a real full file system (a small
tmpfs, which needs root: skipped where ``mount`` is refused).
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _mlflow_run import REPO, run_env
from mlflow import MlflowClient

SECRET = "Store-s3cret-Pw"
# A credential planted in a config value (logged as a param): it must reach no file and no console.
TINY = ["--set", "data.n_samples=300 search.n_trials=2 tracking.log_plot=false registry.register_best=false "
        f"description=postgresql://svc:{SECRET}@db.internal/segments"]


def _search(uri: str, *extra: str, cwd: Path = REPO, writer: str = "process") -> subprocess.Popen:
    env = {**run_env(uri), "KMEANS_QUIET": "1", "KMEANS_LIFECYCLE_WRITER": writer}
    return subprocess.Popen([sys.executable, "-m", "mlproject.search", *TINY, *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _clean(root: Path, uri: str, console: str) -> None:
    """No planted secret in any file under ``root`` (store, WAL, journal), in any run's or model's
    artifacts, or on the console, and no process of the searches left alive (:func:`_orphans.orphans`)."""
    from _orphans import orphans
    from _records import artifact_dirs

    assert SECRET not in console
    files = [p for d in [root, *artifact_dirs(MlflowClient(uri))] for p in d.rglob("*") if p.is_file()]
    assert [str(p) for p in files if SECRET.encode() in p.read_bytes()] == []
    assert not orphans([root]), orphans([root])


def _runs(uri: str) -> list:
    c = MlflowClient(uri)
    return c.search_runs([e.experiment_id for e in c.search_experiments()])


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder: Path, leave_kib: int) -> None:
    """Fill ``folder``'s file system up to ``leave_kib`` KiB free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize // 1024
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave_kib) * 1024)


@pytest.mark.slow
def test_a_full_disk_mid_search_is_one_line_and_leaves_no_run_running(tmp_path):
    """Finding 6: the artifact root fills up after the trials' runs (8 KiB each here) and before the
    best model (~100 KiB): one line naming the full mount and the fix, exit 2, the record clean."""
    from _mlflow_store import init_store

    uri = init_store(tmp_path / "mlflow.db")
    with _tmpfs(tmp_path / "art", "1m") as art:
        MlflowClient(uri).create_experiment("blobs", artifact_location=str(art))
        _fill(art, leave_kib=40)
        proc = _search(uri)
        out, _ = proc.communicate(timeout=180)
        _clean(tmp_path, uri, out)  # while the full file system (its artifacts) is mounted
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert len(errors) == 1 and f"no space left on {art}" in errors[0] and "-- fix: free space on" in errors[0]
    runs = _runs(uri)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FAILED" and "no space left on" in parent.data.tags["error"]
    # Both trials were written before the disk filled (the best model's files are what hit it).
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.status for r in kids) == ["FINISHED", "FINISHED"], [r.data.tags.get("error") for r in kids]


def test_disk_full_is_found_in_an_error_chain():
    import errno

    from toolkit.errors import disk_full

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/tmp/a", None, "/srv/art/x/model.pkl")
        except OSError as inner:
            raise RuntimeError("could not log the model") from inner
    except RuntimeError as outer:
        line = str(disk_full(outer))
    assert line.startswith("no space left on /") and "writing /srv/art/x/model.pkl" in line and "-- fix:" in line
    assert "tracking store's database" in str(disk_full(RuntimeError("(sqlite3.OperationalError) database or disk "
                                                                     "is full")))
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None


# -- several searches started together on one store (finding 7) ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("store", "n"), [("new", 4), ("initialised", 2)])
def test_searches_started_together_on_one_store_all_run(tmp_path, store, n):
    """Searches started at once on a store nobody opened yet (MLflow creates its tables in
    whichever process comes first: 2 of 4 failed) and on one with tables but no experiment (the
    experiment's creation races): all finish, each with its own parent run and its two trials.
    (The experiment race itself is pinned by the threaded test below; four processes on two
    cores cost ~100 s.)"""
    from _mlflow_store import init_store

    db = tmp_path / "mlflow.db"
    uri = init_store(db) if store == "initialised" else f"sqlite:///{db}"
    # The child-run writer on a thread: the race is the searches' first use of the store, and a
    # writer process per search would double the interpreters started (MLflow's imports each).
    procs = [_search(uri, writer="thread") for _ in range(n)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, "\n".join(o[-1500:] for o in outs)
    runs = _runs(uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == n and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["search.study_name"] for r in parents}) == n
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 2
    _clean(tmp_path, uri, "".join(outs))


def _all_at_once(calls: list[Callable[[], None]]) -> list[Exception]:
    """Each call on a thread of its own, all released together; what each call raised (the
    race's losers, before its fix), after every thread has ended."""
    barrier, errors = threading.Barrier(len(calls)), []

    def run(call: Callable[[], None]) -> None:
        barrier.wait()
        try:
            call()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_experiment_creation_tolerates_a_race(tracking_uri):
    """Eight threads get-or-create the same experiments at once: one experiment per name, no
    "UNIQUE constraint failed: experiments.name"."""
    from toolkit.tracking.runs import client, get_or_create_experiment

    client()  # the store's tables first, as every entry point does (check_store)
    ids: list[tuple[int, str]] = []

    def create() -> None:
        for i in range(10):
            ids.append((i, get_or_create_experiment(f"race-{i}")))

    errors = _all_at_once([create] * 8)
    assert not errors, errors[0]
    assert len(set(ids)) == 10 and len(ids) == 80


def test_searches_logging_the_same_dataset_at_once_all_record_it(tracking_uri):
    """Eight runs of one experiment log the same dataset at once (searches started together on
    one data set): MLflow looks the dataset up, then inserts it, so all but one used to fail with
    a unique-key error on the dataset (a driver of eight on one server was lost to it); each run
    now records it, against one dataset row."""
    from toolkit.config import DataConfig
    from toolkit.data import load_dataset
    from toolkit.tracking.record import log_dataset
    from toolkit.tracking.runs import client, get_or_create_experiment

    dataset = load_dataset(DataConfig(n_samples=200, n_features=2, centers=3))
    mlc = client()
    exp = get_or_create_experiment("dataset-race")
    runs = [mlc.create_run(exp).info.run_id for _ in range(8)]
    errors = _all_at_once([functools.partial(log_dataset, r, dataset) for r in runs])
    assert not errors, errors[0]
    logged = [MlflowClient(tracking_uri).get_run(r).inputs.dataset_inputs for r in runs]
    assert all(len(d) == 1 for d in logged)
    assert len({(d[0].dataset.name, d[0].dataset.digest) for d in logged}) == 1
