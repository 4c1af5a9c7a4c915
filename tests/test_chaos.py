"""Faults injected into real searches; after each, the record must still be one users can trust.

Every case ends with the same checks (:func:`assert_record_trusted`): exactly ``n_trials``
FINISHED child runs under the search's parent, zero RUNNING runs anywhere in the store, every
registered version's files byte-for-byte what they were before the fault, and no planted secret
in any file of the store (database, WAL, artifacts, Optuna journal) or on the console, and no
orphan process (alive, outside pytest's tree, naming the test's folder: :func:`_orphans.orphans`).

Cases here: the driver killed and resumed; a real ``mlflow server`` stopped (SIGSTOP, the search
rides it out) and killed (the search fails within its retry budget, a resume after the restart
writes every computed trial); the artifact store made read-only mid-search; the driver killed
alone, after which no process it started may outlive it; the child-run writer process killed
mid-search (its replacement is unit-tested in ``tests/test_writer.py``).  Lost Dask workers
are in ``tests/test_worker_loss.py`` (one per CPU backend), with the same checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from _orphans import orphans
from _records import artifact_dirs, children, running
from _servers import free_port, kill_group, server_env, stop, wait_ready
from mlflow import MlflowClient

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SECRET = "Chaos-s3cret-Pw"
# A credential planted in a config value (logged as a param) and, for the server, in the URI.
PLANTED = f"description=postgresql://svc:{SECRET}@db.internal/segments"


# -- the checks every case ends with ---------------------------------------------------------


def registered_bytes(uri: str) -> dict[tuple[str, str], dict[str, str]]:
    """sha256 of every file of every registered version, downloaded through the registry."""
    from mlflow.artifacts import download_artifacts

    mlc = MlflowClient(uri, registry_uri=uri)
    out = {}
    for mv in mlc.search_model_versions():
        where = mlc.get_model_version_download_uri(mv.name, mv.version)
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(download_artifacts(artifact_uri=where, dst_path=tmp, tracking_uri=uri))
            out[(mv.name, str(mv.version))] = {
                str(p.relative_to(local)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(local.rglob("*")) if p.is_file()}
    return out


def grep(roots: list[Path], needle: str) -> list[str]:
    hits = []
    for root in roots:
        for p in [root] if root.is_file() else root.rglob("*"):
            if p.is_file() and needle.encode() in p.read_bytes():
                hits.append(str(p))
    return hits


def assert_record_trusted(uri: str, parent_id: str, n_trials: int, before: dict, roots: list[Path],
                          console: str = "") -> None:
    mlc = MlflowClient(uri)
    kids = children(mlc, parent_id)
    trials = [k for k in kids if "optuna.trial_number" in k.data.tags]  # not a resume's own run
    finished = sorted(int(k.data.tags["optuna.trial_number"]) for k in trials if k.info.status == "FINISHED")
    assert len(finished) == n_trials == len(set(finished)), finished
    left = running(mlc)
    assert not left, [(r.info.run_name, r.info.run_id) for r in left]
    assert mlc.get_run(parent_id).info.status == "FINISHED"
    after = registered_bytes(uri)
    for key, files in before.items():
        assert after.get(key) == files, f"registered version {key} changed"
    assert grep([*roots, *artifact_dirs(mlc)], SECRET) == []  # artifacts too, wherever the driver put them
    assert SECRET not in console
    assert not orphans(roots), orphans(roots)  # nothing a killed or finished driver started lives on


# -- helpers for driver subprocesses ---------------------------------------------------------


SEARCH_SET = ("data.n_samples=20000 metrics.silhouette_sample=2000 tracking.log_plot=false search.sampler=random "
              f"{PLANTED}")


def search_cmd(n_trials: int, *extra: str, resume: bool = False) -> list[str]:
    return [sys.executable, "-m", "mlproject.search", "--config", "experiments/blobs.yaml",
            "--n-trials", str(n_trials), "--resume", "true" if resume else "false",
            "--set", SEARCH_SET, *extra]


def search_here(uri: str, n_trials: int, client, monkeypatch, *extra: str):
    """The search :func:`search_cmd` runs (``mlproject.search``'s call), in this process: for the
    steps whose driver is not killed (no interpreter, imports and cluster to start)."""
    import shlex

    from toolkit.config import load_experiment
    from toolkit.search import search

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    cfg = load_experiment(REPO / "experiments" / "blobs.yaml",
                          [*shlex.split(SEARCH_SET), f"search.n_trials={n_trials}", "search.resume=false", *extra])
    return search(cfg, client=client, register=cfg.registry.register_best)


def env_for(uri: str, cwd: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update({"MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1", **extra})
    return env


def finished_children(db: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)) as con:
            return int(con.execute(
                "SELECT COUNT(*) FROM runs r JOIN tags t ON r.run_uuid = t.run_uuid "
                "WHERE t.key = 'mlflow.parentRunId' AND r.status = 'FINISHED'").fetchone()[0])
    except sqlite3.Error:
        return 0


def wait_for(pred, proc: subprocess.Popen | None, log: Path | None, limit_s: float = 240) -> None:
    deadline = time.monotonic() + limit_s
    while not pred():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"process ended early ({proc.returncode}):\n{log.read_text()[-3000:] if log else ''}")
        assert time.monotonic() < deadline, log.read_text()[-3000:] if log else "timed out"
        time.sleep(0.05)


def run_driver(cmd: list[str], env: dict, cwd: Path, log: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    finally:
        kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, log.read_text(), "")


def parent_of(journal: Path, study: str) -> str:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=study, storage=storage).user_attrs["mlflow_parent_run_id"]


# -- the driver killed mid-search, then resumed -------------------------------------------------


def test_driver_killed_then_resumed(tmp_path, monkeypatch, capfd, client):
    from _mlflow_store import init_store

    db = tmp_path / "mlflow.db"
    uri = init_store(db)
    env = env_for(uri, tmp_path)
    n = 16
    search_here(uri, 6, client, monkeypatch)  # registers v1; its driver is not the one killed
    console = "".join(capfd.readouterr())
    before = registered_bytes(uri)
    assert len(before) == 2  # the native model and its twin

    log = tmp_path / "killed.log"
    first = subprocess.Popen(search_cmd(n), cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                             start_new_session=True)
    try:
        base = finished_children(db)
        wait_for(lambda: finished_children(db) >= base + 3, first, log)
        kill_group(first)
    finally:
        kill_group(first)
    resumed = run_driver(search_cmd(n, resume=True), env, tmp_path, tmp_path / "resume.log")
    assert resumed.returncode == 0, resumed.stdout
    assert "resuming study blobs-sklearn-2" in resumed.stdout
    parent = parent_of(tmp_path / "mlflow.optuna.log", "blobs-sklearn-2")
    assert_record_trusted(uri, parent, n, before, [tmp_path], log.read_text() + resumed.stdout + console)


# -- a real tracking server stopped, then killed ----------------------------------------------------


class _Server:
    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        from _mlflow_store import init_store

        if not (self.root / "server.db").exists():
            init_store(self.root / "server.db")  # migrated already: the server starts sooner
        log = self.root / f"server-{time.time_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            cwd=self.root, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
            env=server_env())
        wait_ready(self.proc, f"http://127.0.0.1:{self.port}/health", log, "mlflow server", limit_s=120)

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGCONT)
            stop(self.proc)


@pytest.mark.server
def test_tracking_server_stopped_then_killed(tmp_path, monkeypatch, capfd, client):
    server = _Server(tmp_path)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        secret_url = f"http://kmeans:{SECRET}@127.0.0.1:{server.port}"  # credentials in the URI
        db = tmp_path / "server.db"
        env = env_for(secret_url, tmp_path, KMEANS_LIFECYCLE_TRACKING_TIMEOUT_S="15",
                      MLFLOW_HTTP_REQUEST_TIMEOUT="3")
        n = 16
        journal = tmp_path / "optuna.log"
        storage = ("--storage", str(journal))

        # 1. Stopped for a few seconds mid-search: the search (in this process) rides it out.
        for key in ("KMEANS_LIFECYCLE_TRACKING_TIMEOUT_S", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            monkeypatch.setenv(key, env[key])
        stopped = threading.Event()

        def stop_after_three() -> None:
            wait_for(lambda: finished_children(db) >= 3, None, None)
            server.signal(signal.SIGSTOP)
            time.sleep(4)
            server.signal(signal.SIGCONT)
            stopped.set()

        pauser = threading.Thread(target=stop_after_three, daemon=True)
        pauser.start()
        try:
            search_here(secret_url, n, client, monkeypatch, f"search.storage={journal}")
        finally:
            pauser.join(timeout=60)
        assert stopped.is_set()
        console1 = "".join(capfd.readouterr())
        before = registered_bytes(url)
        assert len(before) == 2

        # 2. Killed mid-search: the search fails within its budget, in one line.
        log2 = tmp_path / "killed.log"
        second = subprocess.Popen(search_cmd(n, *storage), cwd=REPO, env=env, stdout=open(log2, "w"),  # noqa: SIM115
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            base = finished_children(db)
            wait_for(lambda: finished_children(db) >= base + 3, second, log2)
            server.kill()
            t0 = time.monotonic()
            rc = second.wait(timeout=180)
            failed_in = time.monotonic() - t0
        finally:
            kill_group(second)
        text2 = log2.read_text()
        assert rc == 2, text2[-3000:]
        assert failed_in < 120, failed_in
        errors = [line for line in text2.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "is not answering" in errors[0], text2[-3000:]
        assert "Traceback" not in text2

        # 3. Back up: a resume (in this process) writes every trial the killed search had computed.
        server.start()
        resumed = search_here(secret_url, n, client, monkeypatch, f"search.storage={journal}", "search.resume=true")
        assert resumed.resumed
        parent = parent_of(journal, "blobs-sklearn-2")
        assert parent == resumed.parent_run_id
        assert_record_trusted(url, parent, n, before, [tmp_path], console1 + text2 + "".join(capfd.readouterr()))
    finally:
        server.close()


# -- the artifact store made read-only mid-search ------------------------------------------------


def test_artifact_store_read_only_mid_search(tmp_path, monkeypatch, client):
    from _mlflow_store import init_store

    from toolkit.config import load_experiment
    from toolkit.errors import ToolkitError
    from toolkit.search import search

    if os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(tmp_path)], capture_output=True).returncode:
        pytest.skip("cannot make a folder read-only for root here (chattr +i)")
    subprocess.run(["chattr", "-i", str(tmp_path)], capture_output=True)
    uri = init_store(tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("KMEANS_QUIET", "1")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    mlc = MlflowClient(uri)
    n = 12

    def cfg(*extra: str):
        return load_experiment(REPO / "experiments" / "blobs.yaml", [
            "data.n_samples=8000", "metrics.silhouette_sample=1000", "tracking.log_plot=false",
            "search.sampler=random", "search.prefetch=0", f"search.n_trials={n}", PLANTED, *extra])

    first = cfg("search.n_trials=3")
    search(first, client=client, register=True)
    before = registered_bytes(uri)
    assert len(before) == 2

    exp_dir = tmp_path / "mlruns" / mlc.get_experiment_by_name("blobs").experiment_id
    locked = threading.Event()

    def lock_after_three() -> None:
        wait_for(lambda: finished_children(tmp_path / "mlflow.db") >= 3 + 3, None, None, limit_s=120)
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(exp_dir)], check=True)
        else:
            exp_dir.chmod(0o500)
        locked.set()

    locker = threading.Thread(target=lock_after_three, daemon=True)
    locker.start()
    try:
        second = cfg()
        with pytest.raises(ToolkitError, match="cannot write a trial's run") as err:
            search(second, client=client, register=True)
        # Run directly, the hint names the option as typed: --resume true.
        assert locked.is_set() and "\n" not in str(err.value) and "--resume true" in str(err.value)
    finally:
        locker.join(timeout=130)
        subprocess.run(["chattr", "-i", str(exp_dir)], capture_output=True)
        exp_dir.chmod(0o755)
    again = cfg("search.resume=true")
    out = search(again, client=client, register=True)
    assert out.resumed
    assert_record_trusted(uri, out.parent_run_id, n, before, [tmp_path])


# -- the driver killed alone: nothing it started outlives it ------------------------------------


def _alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_driver_killed_leaves_no_process_behind(tmp_path):
    """kill -9 of the driver alone (not its process group): 5 s later no process it started is
    alive (the child-run writer, multiprocessing's resource tracker, Dask worker processes) and
    none holds the store's files open."""
    import psutil
    from _mlflow_store import init_store

    db = tmp_path / "mlflow.db"
    # Dask's default start method, as users have it (the suite's own is a fork server: conftest).
    env = env_for(init_store(db), tmp_path, DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD="spawn")
    cmd = search_cmd(40)
    cmd[cmd.index("--set") + 1] += " cluster.processes=true"  # worker processes and nannies too
    log = tmp_path / "driver.log"
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                              start_new_session=True)
    try:
        wait_for(lambda: finished_children(db) >= 2, driver, log)
        started = psutil.Process(driver.pid).children(recursive=True)
        lines = [" ".join(p.cmdline()) for p in started]
        assert sum("resource_tracker" in c for c in lines) == 1, lines
        assert sum("spawn_main" in c for c in lines) >= 3, lines  # the writer and two Dask workers
        os.kill(driver.pid, signal.SIGKILL)  # the driver only
        driver.wait(timeout=30)
        t0 = time.monotonic()
        while any(_alive(p) for p in started) and time.monotonic() - t0 < 5:
            time.sleep(0.1)
        gone_s = time.monotonic() - t0
        time.sleep(max(0.0, 5 - gone_s))  # and still none 5 s after the kill
        print(f"\ndriver killed: its {len(started)} processes gone {gone_s:.1f} s later")
        left = [(p.pid, " ".join(p.cmdline())[:120]) for p in started if _alive(p)]
        assert not left, left
        holders = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                holders += [(p.pid, f.path) for f in p.open_files() if f.path.startswith(str(tmp_path))]
        assert not holders, holders
        assert not orphans([tmp_path])  # nor one started after the snapshot (a replacement writer)
        assert SECRET not in log.read_text()
        assert grep([tmp_path, *artifact_dirs(MlflowClient(env["MLFLOW_TRACKING_URI"]))], SECRET) == []
    finally:
        kill_group(driver)


# -- the child-run writer process killed mid-search ------------------------------------------------


def test_writer_killed_mid_search(tmp_path, monkeypatch, client):
    """kill -9 of the writer process after two child runs: a new writer takes the unfinished
    jobs, the search goes on and its record is whole (was: the search stopped, blaming the store)."""
    from _mlflow_store import init_store

    from toolkit.config import load_experiment
    from toolkit.search import search
    from toolkit.tracking.writer import writer_for

    uri = init_store(tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("KMEANS_QUIET", "1")
    monkeypatch.setenv("KMEANS_LIFECYCLE_WRITER_NICE", "0")  # its successor is not starved on a busy machine
    monkeypatch.setenv("KMEANS_LIFECYCLE_WRITER", "process")  # 10 trials: auto would write from a thread
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    n = 10
    cfg = load_experiment(REPO / "experiments" / "blobs.yaml", [
        "data.n_samples=8000", "metrics.silhouette_sample=1000", "tracking.log_plot=false",
        "search.sampler=random", f"search.n_trials={n}", PLANTED])
    writer = writer_for(n, cfg.data.n_samples * cfg.data.n_features)
    pid = writer.submit(os.getpid).result(timeout=120)[0]
    assert pid != os.getpid(), "KMEANS_LIFECYCLE_WRITER=process gave a thread"
    deaths = writer.deaths

    def kill_after_two() -> None:
        wait_for(lambda: finished_children(tmp_path / "mlflow.db") >= 2, None, None, limit_s=120)
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_after_two, daemon=True)
    killer.start()
    try:
        out = search(cfg, client=client, register=False)
    finally:
        writer.prefer(False)  # later tests in this process write from a thread again
    killer.join(timeout=5)
    assert writer.deaths == deaths + 1 and not psutil_alive(pid)
    assert_record_trusted(uri, out.parent_run_id, n, {}, [tmp_path])


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return _alive(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False
