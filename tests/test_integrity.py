"""A record users can trust: secrets masked, one driver per study, studies per store, resumes
that reuse their run and never re-register the same model, bounded retries for the store.

Real parts throughout: real sqlite MLflow stores, real Optuna journals, real driver processes
for the lease (a second process holds it), the session's 2-worker LocalCluster for searches.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from toolkit.config import load_experiment
from toolkit.errors import ConfigError
from toolkit.redact import expand_env, has_credentials, redact
from toolkit.search import search
from toolkit.search.lease import DriverLease, lease_name
from toolkit.search.study import default_storage, open_study, study_storage
from toolkit.tracking import retry

REPO = Path(__file__).resolve().parents[1]
SECRET = "hunter2-Pl4nted"


# -- redaction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:hunter2@host/db", "postgresql://u:***@host/db"),
        ("postgresql+psycopg://u:p@ss@h:5432/db?sslmode=require", "postgresql+psycopg://u:***@h:5432/db?sslmode=require"),
        ("http://user:pw@mlflow:5000/#/experiments/1", "http://user:***@mlflow:5000/#/experiments/1"),
        ("host=db password=hunter2 user=u", "host=db password=*** user=u"),
        ("https://h/api?token=abc&x=1", "https://h/api?token=***&x=1"),
        ("error: cannot open 'mysql://root:toor@h/x': boom", "error: cannot open 'mysql://root:***@h/x': boom"),
    ],
)
def test_redact_masks_credentials(text, masked):
    assert redact(text) == masked
    assert has_credentials(text)
    assert redact(masked) == masked  # idempotent


@pytest.mark.parametrize("text", ["sqlite:///mlflow.db", "postgresql://u@host/db", "tcp://127.0.0.1:8786",
                                  "user@example.com", "model.n_clusters=6", "postgresql://u:${PGPW}@h/db"])
def test_redact_leaves_plain_text(text):
    assert redact(text) == text and not has_credentials(text)


def test_library_log_lines_are_masked(capsys):
    """MLflow's system-metrics thread logs the URL it failed to reach, password included."""
    import logging

    from toolkit.redact import redact_logs

    name = "mlflow.system_metrics.system_metrics_monitor"
    logger = logging.getLogger(name)
    handler = logging.StreamHandler()  # prints to the stderr capsys captures
    logger.addHandler(handler)
    try:
        redact_logs(name)
        redact_logs(name)  # idempotent: one filter, not two
        logger.warning("API request to %s failed", "http://u:Pw-123@127.0.0.1:5000/api/2.0/mlflow/runs/get")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "Pw-123" not in err and "http://u:***@127.0.0.1:5000" in err
    assert sum(isinstance(f, type(logger.filters[0])) for f in logger.filters) == 1



def test_storage_env_references_are_expanded_at_use(monkeypatch):
    monkeypatch.setenv("KL_TEST_PW", SECRET)
    assert expand_env("postgresql://u:${KL_TEST_PW}@h/db") == f"postgresql://u:{SECRET}@h/db"
    monkeypatch.delenv("KL_TEST_PW")
    with pytest.raises(ConfigError, match="KL_TEST_PW"):
        expand_env("postgresql://u:${KL_TEST_PW}@h/db")


def _grep_tree(root: Path, needle: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(str(path.relative_to(root)))
    return hits


def test_no_secret_reaches_store_or_console(tmp_path):
    """A password in ``-P storage`` (as ``mlflow run`` records it) and in a config value: the
    search fails on the unreachable database, and neither the store (every file, WAL included)
    nor the console holds the password."""
    from _mlflow_run import run_env
    from _mlflow_store import init_store

    uri = init_store(tmp_path / "mlflow.db")
    mlc = MlflowClient(uri)
    exp = mlc.create_experiment("secrets")
    url = f"postgresql://u:{SECRET}@127.0.0.1:9/db"
    # What `mlflow run -P storage=...` leaves before the entry point starts: a RUNNING run whose
    # params hold every -P value.
    outer = mlc.create_run(exp, run_name="launcher").info.run_id
    mlc.log_param(outer, "storage", url)
    env = {**run_env(uri), "MLFLOW_RUN_ID": outer}
    cmd = [sys.executable, "-m", "mlproject.search", "--config", "experiments/blobs.yaml", "--storage", url,
           "--set", f"description=postgresql://svc:{SECRET}@db.internal/x data.n_samples=500"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 2, console
    assert SECRET not in console
    assert "u:***@127.0.0.1" in console
    run = mlc.get_run(outer)
    assert run.info.status == "FAILED"
    assert run.data.params["storage"] == "postgresql://u:***@127.0.0.1:9/db"
    assert SECRET not in run.data.tags["error"] and "cannot open Optuna storage" in run.data.tags["error"]
    MlflowClient(uri).search_experiments()  # checkpoint nothing: read the files as they are
    assert _grep_tree(tmp_path, SECRET) == []


# -- the study's storage belongs to its tracking store ----------------------------------------


def test_default_storage_sits_beside_its_tracking_store(tmp_path):
    assert default_storage(f"sqlite:///{tmp_path}/a/mlflow.db") == f"{tmp_path}/a/mlflow.optuna.log"
    assert default_storage(f"sqlite:///{tmp_path}/b.db") == f"{tmp_path}/b.optuna.log"
    one = default_storage("http://u:pw@mlflow.internal:5000")
    assert one == default_storage("http://other:pw2@mlflow.internal:5000")  # the store, not the login
    assert one != default_storage("http://mlflow.internal:5001")
    assert "pw" not in os.path.basename(one) and os.path.basename(one).startswith("optuna-mlflow.internal")
    # A server's studies live in this user's data folder, not wherever the search was started.
    assert one.startswith(os.path.join(os.environ["XDG_DATA_HOME"], "kmeans-lifecycle", "studies") + os.sep)


def _cfg(experiment: str, *overrides: str):
    return load_experiment(REPO / "experiments" / "blobs.yaml", [
        f"tracking.experiment={experiment}", "data.n_samples=600", "metrics.silhouette_sample=300",
        "search.n_trials=3", "search.sampler=random", "tracking.log_plot=false", *overrides])


@pytest.fixture()
def two_stores(tmp_path, monkeypatch):
    from _mlflow_store import init_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KMEANS_QUIET", "1")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    return init_store(tmp_path / "a" / "mlflow.db"), init_store(tmp_path / "b" / "mlflow.db")


def test_stores_never_share_studies(two_stores, client, monkeypatch):
    a, b = two_stores
    monkeypatch.setenv("MLFLOW_TRACKING_URI", a)
    first = search(_cfg("shared", "registry.register_best=false"), client=client)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", b)
    # resume in a fresh store: nothing of store a's study is visible here (resume=true would be
    # the one-line "no study to resume" error; auto starts fresh)
    second = search(_cfg("shared", "registry.register_best=false", "search.resume=auto"), client=client)
    assert not second.resumed and second.parent_run_id != first.parent_run_id
    assert Path(default_storage(a)).exists() and Path(default_storage(b)).exists()
    assert not (Path.cwd() / "optuna.log").exists()


def test_resume_against_another_store_is_one_line_error(two_stores, client, monkeypatch, tmp_path):
    a, b = two_stores
    journal = str(tmp_path / "shared-optuna.log")  # a storage the user points both stores at
    monkeypatch.setenv("MLFLOW_TRACKING_URI", a)
    search(_cfg("cross", "registry.register_best=false", f"search.storage={journal}"), client=client)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", b)
    with pytest.raises(ConfigError, match="not in the tracking store") as err:
        search(_cfg("cross", "registry.register_best=false", f"search.storage={journal}", "search.resume=true"),
               client=client)
    assert "\n" not in str(err.value)
    # the failed attempt released its lease: a resume in the right store goes on
    monkeypatch.setenv("MLFLOW_TRACKING_URI", a)
    again = search(_cfg("cross", "registry.register_best=false", f"search.storage={journal}",
                        "search.resume=true", "search.n_trials=4"), client=client)
    assert again.resumed and again.counts["complete"] == 4


# -- one driver per study ------------------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import sys, time
    from toolkit.search.lease import DriverLease
    from toolkit.search.study import study_storage
    lease = DriverLease(study_storage(sys.argv[1]), "s", interval_s=0.3).acquire()
    print("held", flush=True)
    time.sleep(120)
""")


def test_live_driver_blocks_a_second_one_and_a_dead_ones_lease_is_taken_over(tmp_path):
    journal = str(tmp_path / "optuna.log")
    storage = study_storage(journal)
    optuna.create_study(study_name="s", storage=storage)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, journal], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"another live search \(pid {holder.pid} on ") as err:
            DriverLease(study_storage(journal), "s").acquire()
        assert "\n" not in str(err.value)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        t0 = time.monotonic()
        lease = DriverLease(study_storage(journal), "s").acquire()  # same host: the pid is gone
        assert time.monotonic() - t0 < 5
        names = {s.study_name for s in optuna.get_all_study_summaries(study_storage(journal))}
        assert lease_name("s", 2) in names and lease_name("s", 1) not in names  # the stale one is gone
        lease.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)


def test_lease_of_another_host_is_live_while_its_heartbeat_moves(tmp_path):
    storage = study_storage(str(tmp_path / "optuna.log"))
    optuna.create_study(study_name="s", storage=storage)
    remote = DriverLease(storage, "s", interval_s=0.2).acquire()
    lease_id = storage.get_study_id_from_name(lease_name("s", 1))
    storage.set_study_user_attr(lease_id, "host", "another-host.example")  # as if run elsewhere
    with pytest.raises(ConfigError, match=r"another-host\.example"):
        DriverLease(storage, "s", interval_s=0.2).acquire()  # beating: alive
    remote._stop.set()
    remote._thread.join()  # that host dies without releasing: the beat stops
    taken = DriverLease(storage, "s", interval_s=0.2).acquire()
    assert storage.get_study_user_attrs(storage.get_study_id_from_name(lease_name("s", 2)))["token"] == taken.token
    taken.release()


def _open_new(journal: str, barrier, out) -> None:
    cfg = load_experiment(None, [f"search.storage={journal}", "name=race"])
    barrier.wait()
    study, _, lease = open_study(cfg, "maximize")
    out.put(study.study_name)
    lease.release()


def test_searches_started_together_get_studies_of_their_own(tmp_path):
    journal = str(tmp_path / "optuna.log")
    ctx = multiprocessing.get_context("spawn")
    for _ in range(3):
        barrier, out = ctx.Barrier(3), ctx.Queue()
        procs = [ctx.Process(target=_open_new, args=(journal, barrier, out)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
        names = [out.get(timeout=5) for _ in procs]
        assert len(set(names)) == 3, names


# -- resume: the parent is reused, nothing is registered twice --------------------------------


def test_resume_reuses_parent_clears_error_and_registers_only_a_better_model(two_stores, client, monkeypatch):
    a, _ = two_stores
    monkeypatch.setenv("MLFLOW_TRACKING_URI", a)
    mlc = MlflowClient(a, registry_uri=a)
    cfg = _cfg("resume-reg", "registry.native_name=rr", "registry.sklearn_name=rr-sk")
    first = search(cfg, client=client, register=True)
    assert first.registered is not None and first.registered.native_version == "1"
    assert [str(v.version) for v in mlc.search_model_versions("name='rr'")] == ["1"]
    mlc.set_tag(first.parent_run_id, "error", "an earlier failure")
    # Under `mlflow run`, a resume starts in a run of its own: it must not stay behind.
    launcher = mlc.create_run(mlc.get_run(first.parent_run_id).info.experiment_id).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    cfg = _cfg("resume-reg", "registry.native_name=rr", "registry.sklearn_name=rr-sk", "search.resume=true")
    again = search(cfg, client=client, register=True)
    assert again.registered is None
    monkeypatch.delenv("MLFLOW_RUN_ID")
    assert again.resumed and again.parent_run_id == first.parent_run_id
    assert again.best_fit is None and again.previous_best == pytest.approx(first.best_value)
    assert [str(v.version) for v in mlc.search_model_versions("name='rr'")] == ["1"]  # same model: no v2
    parent = mlc.get_run(first.parent_run_id)
    assert parent.info.status == "FINISHED" and "error" not in parent.data.tags
    folded = mlc.get_run(launcher)  # the resume's own run, nested under the parent it resumed
    assert folded.info.status == "FINISHED" and folded.info.lifecycle_stage == "active"
    assert folded.data.tags["mlflow.parentRunId"] == folded.data.tags["search.resume_of"] == first.parent_run_id
    top = mlc.search_runs([folded.info.experiment_id], filter_string="attributes.status != 'x'")
    assert [r.info.run_id for r in top if "mlflow.parentRunId" not in r.data.tags] == [first.parent_run_id]
    assert again.experiment == "resume-reg"


# -- bounded retries ---------------------------------------------------------------------------


def test_transient_failures_are_retried_then_the_store_is_down(monkeypatch):
    monkeypatch.setenv(retry.TIMEOUT_ENV, "5")
    uri = f"http://127.0.0.1:9/{time.time_ns()}"
    calls = []

    def flaky(x):
        calls.append(x)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return x * 2

    assert retry.call(flaky, 21, uri=uri, what="log_batch") == 42 and len(calls) == 3

    def refused():
        raise ConnectionRefusedError("connection refused")

    monkeypatch.setenv(retry.TIMEOUT_ENV, "1.2")
    t0 = time.monotonic()
    with pytest.raises(retry.TrackingUnavailableError, match="not answering") as err:
        retry.call(refused, uri=uri, what="log_batch")
    assert time.monotonic() - t0 < 3 and "--resume true" in str(err.value)  # run directly: the option as typed
    tried = []
    with pytest.raises(retry.TrackingUnavailableError):  # down: later calls fail at once, untried
        retry.call(lambda: tried.append(1), uri=uri, what="get_run")
    assert tried == []
    retry.reset(uri)
    assert retry.call(lambda: 1, uri=uri, what="get_run") == 1


def test_a_retry_that_races_its_own_lost_attempt_settles(monkeypatch, tmp_path):
    """A write whose answer was lost (a server paused mid-request) may land while its retry
    runs: both insert the same params and the later one meets the unique key.  That retry is
    retried again, and on a real store the next attempt finds the same values and passes; a
    unique-key error on a first attempt is no race of ours and is raised at once."""
    import sqlite3

    from mlflow.entities import Param

    monkeypatch.setenv(retry.TIMEOUT_ENV, "10")
    uri = f"sqlite:///{tmp_path / 'race.db'}"
    mlc = MlflowClient(uri)
    run_id = mlc.create_run(mlc.create_experiment("race")).info.run_id
    params = [Param("n_clusters", "6"), Param("init", "k-means++")]
    mlc.log_batch(run_id, params=params)  # the attempt whose answer was lost: it landed
    attempts = []

    def log_batch():
        attempts.append(1)
        if len(attempts) == 1:
            raise TimeoutError("read timed out")
        if len(attempts) == 2:  # as the server reports two inserts of one key at once
            raise RuntimeError(str(sqlite3.IntegrityError("UNIQUE constraint failed: params.key, params.run_uuid")))
        return mlc.log_batch(run_id, params=params)

    retry.call(log_batch, uri=uri, what="log_batch")
    assert len(attempts) == 3 and mlc.get_run(run_id).data.params == {"n_clusters": "6", "init": "k-means++"}

    def duplicate():
        raise RuntimeError("UNIQUE constraint failed: params.key, params.run_uuid")

    with pytest.raises(RuntimeError, match="UNIQUE"):
        retry.call(duplicate, uri=uri, what="log_batch")


def test_permanent_failures_are_not_retried():
    calls = []

    def denied():
        calls.append(1)
        raise PermissionError("[Errno 13] Permission denied: '/store/artifacts'")

    with pytest.raises(PermissionError):
        retry.call(denied, uri="sqlite:///x.db", what="log_artifacts")
    assert calls == [1]
    assert not retry.is_transient(RuntimeError("attempt to write a readonly database"))
    assert retry.is_transient(RuntimeError("(sqlite3.OperationalError) database is locked"))


def test_a_create_is_not_retried_after_an_answer_may_have_been_lost(monkeypatch):
    monkeypatch.setenv(retry.TIMEOUT_ENV, "5")
    calls = []

    def create_run():
        calls.append(1)
        raise TimeoutError("read timed out")

    with pytest.raises(TimeoutError):
        retry.call(create_run, uri="http://127.0.0.1:9/create", what="create_run")
    assert calls == [1]


# -- an unusable store is named in one line ------------------------------------------------------


def _immutable(path: Path) -> bool:
    """``chattr +i`` (root ignores file modes; an immutable folder takes no new files)."""
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("kind", ["missing-folder", "read-only-folder", "read-only-folder-new-store"])
def test_unwritable_store_is_one_line_error(tmp_path, kind):
    """Refused in one line, and at once: a sqlite file MLflow cannot open used to be retried
    by MLflow's engine creation for ~50 s per store (110 s in all)."""
    from _mlflow_run import run_env

    if kind == "missing-folder":
        uri = "sqlite:////proc/kmeans-no-such-folder/mlflow.db"
    else:
        from _mlflow_store import init_store

        folder = tmp_path / "ro"
        if kind == "read-only-folder":
            uri = init_store(folder / "mlflow.db")
        else:
            folder.mkdir()
            uri = f"sqlite:///{folder / 'mlflow.db'}"
        if os.geteuid() != 0:
            folder.chmod(0o500)
        elif not _immutable(folder):
            pytest.skip("cannot make a folder read-only for root here (chattr +i)")
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "mlproject.train", "--set", "data.n_samples=300"],
                              cwd=REPO, env=run_env(uri), capture_output=True, text=True, timeout=120)
    finally:
        wall = time.monotonic() - t0
        if kind != "missing-folder":
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
            folder.chmod(0o700)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(errors) == 1 and "cannot use the MLflow tracking store" in errors[0] and "-- fix:" in errors[0]
    assert wall < 10, f"refused after {wall:.0f} s"


def test_summary_names_the_experiment_the_runs_went_to(two_stores, client, monkeypatch):
    """Under ``mlflow run --experiment-name other`` the parent is ``mlflow run``'s run, in that
    experiment, whatever the config says."""
    a, _ = two_stores
    monkeypatch.setenv("MLFLOW_TRACKING_URI", a)
    mlc = MlflowClient(a, registry_uri=a)
    launcher = mlc.create_run(mlc.create_experiment("chosen-by-mlflow-run")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    out = search(_cfg("from-the-config", "registry.register_best=false"), client=client)
    assert out.parent_run_id == launcher and out.experiment == "chosen-by-mlflow-run"


def test_an_entry_points_commits_are_in_the_database_file_when_it_ends(tmp_path):
    """The entry points end without closing their store connections (mlproject/_exit.py): the
    write-ahead log is emptied into the file first, so a copy of mlflow.db alone holds the runs."""
    import shutil

    from _mlflow_run import run_env

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run([sys.executable, "-m", "mlproject.train", "--set", "data.n_samples=300"],
                          cwd=REPO, env=run_env(uri), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    wal = tmp_path / "mlflow.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    copy = tmp_path / "copy" / "mlflow.db"
    copy.parent.mkdir()
    shutil.copy(tmp_path / "mlflow.db", copy)  # the file alone, without its log
    runs = MlflowClient(f"sqlite:///{copy}").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{copy}").search_experiments()])
    assert [r.info.status for r in runs] == ["FINISHED"]
