"""The ``search`` entry point as real subprocesses: ``mlflow run`` and a killed-then-resumed driver.

Each test gets its own sqlite MLflow store (a copy of one migrated once for the module, so no
process pays for MLflow's schema migrations) and its own Optuna database in a temp dir.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from _mlflow_run import mlflow_run
from _records import children, running
from _servers import kill_group
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture()
def store(tracking_uri) -> Path:
    """The test's store (``tracking_uri``: a migrated copy, see conftest); returns the database file."""
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    assert db.exists()
    return db


def _experiment(uri: str, name: str, tmp_path: Path) -> str:
    """The experiment, made up front with its artifacts in the temp dir (not the repo's mlruns/)."""
    return MlflowClient(tracking_uri=uri).create_experiment(
        name, artifact_location=(tmp_path / "artifacts").as_uri()
    )


def _tail(text: str | bytes | None, n: int = 3000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


# -- mlflow run . -e search ---------------------------------------------------------------


def test_mlflow_run_search_parent_children_plots(store, tracking_uri, subprocess_env, tmp_path):
    exp_id = _experiment(tracking_uri, "t", tmp_path)
    proc = mlflow_run(
        "search",
        {"n_trials": 5, "overrides": "data.n_samples=3000", "storage": f"sqlite:///{tmp_path / 'optuna.db'}"},
        env=subprocess_env, experiment="t", timeout=480,
    )
    assert proc.returncode == 0, _tail(proc.stdout) + _tail(proc.stderr)

    mlc = MlflowClient(tracking_uri=tracking_uri)
    runs = mlc.search_runs([exp_id], max_results=1000)
    tops = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(tops) == 1, [r.info.run_name for r in tops]
    parent = tops[0]
    # The parent is the run `mlflow run` created (not a second top-level run of the search).
    assert parent.data.tags.get("mlflow.source.type") == "PROJECT"
    assert parent.data.tags.get("mlflow.project.entryPoint") == "search"
    assert parent.data.params["n_trials"] == "5"
    # The parent's params are the experiment's settings: -P values as given, the ones left out
    # reading "from-config" (never ''), the effective settings under their config keys.
    params = parent.data.params
    assert "''" not in params.values() and "" not in params.values(), params
    assert (params["backend"], params["experiment.backend"]) == ("from-config", "sklearn")
    assert (params["strategy"], params["search.strategy"]) == ("from-config", "optuna")
    assert params["search.n_trials"] == "5" and params["overrides"] == "data.n_samples=3000"
    assert parent.data.tags["entry_point"] == "search"
    assert parent.info.status == "FINISHED"
    assert parent.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())
    assert parent.info.run_id in re.findall(r"Run \(ID '([0-9a-f]+)'\)", proc.stdout + proc.stderr)
    # The output ends with what the search made and how to look at it.
    made = proc.stdout[proc.stdout.rindex("made:\n"):].splitlines()
    assert made[1] == (f"  parent run {parent.info.run_id} ({parent.info.run_name}) in experiment 't', "
                       "5 trial(s) as its child runs"), made
    assert made[2] == ("  registered blobs-kmeans v1 (native) and blobs-kmeans-sklearn v1 (twin); "
                       "aliases: challenger, champion"), made
    # The exact command that resumes it: the storage it needs, the study, the experiment.
    study = parent.data.tags["search.study_name"]
    assert made[3] == (f"  study {study} in sqlite:///{tmp_path / 'optuna.db'}; continue it with: "
                       f"MLFLOW_TRACKING_URI={tracking_uri} mlflow run . -e search -P config=experiments/blobs.yaml "
                       f"-P n_trials=5 -P resume=true -P storage=sqlite:///{tmp_path / 'optuna.db'} "
                       f"-P overrides='data.n_samples=3000 search.study_name={study}' --experiment-name t "
                       "--env-manager local"), made
    look = f"look: mlflow ui --backend-store-uri {tracking_uri}  (experiment {exp_id}, run {parent.info.run_id})"
    assert made[4] == look, made
    # The config's own experiment ("blobs") got nothing: every run is in the one mlflow run chose.
    blobs = mlc.get_experiment_by_name("blobs")
    assert blobs is None or not mlc.search_runs([blobs.experiment_id])

    kids = children(mlc, parent.info.run_id)
    assert len(kids) == 5
    assert len(runs) == 1 + 5  # children hang under the parent, in the same experiment
    assert {k.info.experiment_id for k in kids} == {exp_id}
    for k in kids:
        assert k.info.status in ("FINISHED", "FAILED")
        if k.info.status == "FAILED":
            assert k.data.tags.get("error")
    study_name = parent.data.tags["search.study_name"]
    assert sorted(k.info.run_name[-4:] for k in kids) == [f"#{i:03d}" for i in range(5)]
    assert all(k.info.run_name.startswith(f"k={k.data.params['n_clusters']} ") for k in kids)

    assert {"best.n_clusters", "best.init"} <= set(parent.data.params)
    assert f"best_{parent.data.tags['search.objective']}" in parent.data.metrics
    plots = {f.path for f in mlc.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/elbow.png"} <= plots
    assert "plots/param_importance.png" in plots or parent.data.tags[
        "search.importance"
    ].startswith("not computed")
    assert not running(mlc)

    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert len(study.trials) == 5

    # Resumed through `mlflow run` with nothing left to run: the same parent, no new top-level
    # run (mlflow run's own run for the resume is nested under it), nothing registered twice.
    again = mlflow_run(
        "search",
        {"n_trials": 5, "resume": "true", "overrides": "data.n_samples=3000",
         "storage": f"sqlite:///{tmp_path / 'optuna.db'}"},
        env=subprocess_env, experiment="t", timeout=480,
    )
    assert again.returncode == 0, _tail(again.stdout) + _tail(again.stderr)
    assert "0 to run" in again.stdout and "nothing new refitted or registered" in again.stdout
    runs = mlc.search_runs([exp_id], max_results=1000)
    assert [r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags] == [parent.info.run_id]
    assert [str(v.version) for v in MlflowClient(tracking_uri, registry_uri=tracking_uri).search_model_versions(
        "name='blobs-kmeans'")] == ["1"]
    assert not running(mlc)


# -- kill the driver mid-search, then resume ----------------------------------------------


def _trials_in(journal: Path, state: TrialState) -> int:
    """Optuna trials in ``state`` (RUNNING: a fit under way on the driver), read from the
    journal file the driver appends to (reading takes no lock)."""
    if not journal.exists():
        return 0
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return sum(
        t.state == state
        for s in storage.get_all_studies()
        for t in storage.get_all_trials(s._study_id, deepcopy=False)
    )


def _journal(path: str) -> JournalStorage:
    return JournalStorage(JournalFileBackend(path))


def test_resume_after_killed_driver(store, tracking_uri, subprocess_env, tmp_path):
    # The default storage: an Optuna journal file.
    journal = tmp_path / "optuna.log"
    storage = str(journal)
    _experiment(tracking_uri, "blobs", tmp_path)
    # Data-parallel with sklearn: trials run one after another on the driver, so a kill once
    # 3 trials are told and the next one is RUNNING lands inside that trial's fit.  (Told, not
    # written: the child-run writer may lag the fits, so its runs may all land at the end;
    # those the kill cuts off are written by the resume.)
    cmd = [
        sys.executable,
        "-m",
        "mlproject.search",
        "--config",
        "experiments/blobs.yaml",
        "--n-trials",
        "8",
        "--storage",
        storage,
        "--set",
        "data.n_samples=20000 search.parallelism=data",
    ]
    log1 = tmp_path / "first.log"
    procs: list[subprocess.Popen] = []
    try:
        with open(log1, "wb") as out:
            first = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=subprocess_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(first)
            deadline = time.monotonic() + 300
            while _trials_in(journal, TrialState.COMPLETE) < 3 or not _trials_in(journal, TrialState.RUNNING):
                assert first.poll() is None, "search ended before it could be killed:\n" + _tail(
                    log1.read_bytes()
                )
                assert time.monotonic() < deadline, "no 3 trials in time:\n" + _tail(
                    log1.read_bytes()
                )
                time.sleep(0.01)
            kill_group(first)
        assert first.returncode == -signal.SIGKILL

        # What the dead driver left behind.
        study = optuna.load_study(study_name="blobs-sklearn", storage=_journal(storage))
        parent_id = study.user_attrs["mlflow_parent_run_id"]
        done_before = {t.number for t in study.trials if t.state == TrialState.COMPLETE}
        interrupted = {t.number for t in study.trials if t.state == TrialState.RUNNING}
        assert len(done_before) >= 3 and len(done_before) < 8
        mlc = MlflowClient(tracking_uri=tracking_uri)
        assert mlc.get_run(parent_id).info.status == "RUNNING"

        log2 = tmp_path / "resume.log"
        with open(log2, "wb") as out:
            second = subprocess.Popen(
                [*cmd, "--resume", "true"],
                cwd=REPO,
                env=subprocess_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            procs.append(second)
            rc = second.wait(timeout=300)
        assert rc == 0, _tail(log2.read_bytes())
        assert "resuming study blobs-sklearn" in log2.read_text()
    finally:
        for p in procs:
            kill_group(p)

    study = optuna.load_study(study_name="blobs-sklearn", storage=_journal(storage))
    complete = [t.number for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    assert len(set(complete)) == len(complete)
    assert set(done_before) <= set(complete)
    assert study.user_attrs["mlflow_parent_run_id"] == parent_id  # the same parent, resumed
    parent = mlc.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["trials_complete"] == 8

    kids = children(mlc, parent_id)
    by_number: dict[int, list] = {}
    for k in kids:
        by_number.setdefault(int(k.data.tags["optuna.trial_number"]), []).append(k)
    finished_numbers = [
        int(k.data.tags["optuna.trial_number"]) for k in kids if k.info.status == "FINISHED"
    ]
    assert len(finished_numbers) == len(set(finished_numbers)) == 8
    assert set(finished_numbers) == set(complete)
    for n in done_before:  # not re-run
        assert len(by_number[n]) == 1, n
    states = {t.number: t.state for t in study.trials}
    for n in interrupted:
        assert states[n] == TrialState.FAIL
        assert [k.info.status for k in by_number[n]] == ["FAILED"]
        assert "interrupted" in by_number[n][0].data.tags["error"]
    assert set(states.values()) <= {TrialState.COMPLETE, TrialState.FAIL}
    assert not running(mlc)
