"""A resume finds its study from the record (the parent run), from any working directory, or says
plainly that there is none; a study in the earlier releases' ``./optuna.log`` is found and named."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

import pytest
from mlflow import MlflowClient

from toolkit.config import load_experiment, parse_overrides
from toolkit.errors import ConfigError
from toolkit.search import search
from toolkit.search.study import STORAGE_TAG, default_storage, locate_study

REPO = Path(__file__).resolve().parents[1]


def _cfg(*overrides: str):
    return load_experiment(REPO / "experiments" / "blobs.yaml", [
        "data.n_samples=300", "metrics.silhouette_sample=300", "search.n_trials=2", "search.sampler=random",
        "tracking.log_plot=false", "registry.register_best=false", "search.baseline_sample=0", *overrides])


def _children(uri: str, parent: str) -> list:
    c = MlflowClient(uri)
    exp = c.get_run(parent).info.experiment_id
    return [r for r in c.search_runs([exp]) if r.data.tags.get("mlflow.parentRunId") == parent]


def test_resume_reads_the_study_from_the_record_from_any_directory(tracking_uri, client, tmp_path, monkeypatch):
    """The first search keeps its study in a journal relative to where it ran; a resume started
    elsewhere, with no storage given, reads the recorded (absolute) path from the parent run."""
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    first = search(_cfg("search.storage=studies.log"), client=client)
    recorded = MlflowClient(tracking_uri).get_run(first.parent_run_id).data.tags[STORAGE_TAG]
    assert recorded == str(tmp_path / "here" / "studies.log")

    monkeypatch.chdir(tmp_path / "elsewhere")
    where = locate_study(_cfg("search.resume=true"))
    assert (where.storage, where.name) == (recorded, first.study_name)
    again = search(_cfg("search.resume=true", "search.n_trials=3"), client=client)
    assert again.resumed and again.parent_run_id == first.parent_run_id
    assert len(_children(tracking_uri, first.parent_run_id)) == 3
    assert not (tmp_path / "elsewhere" / "studies.log").exists()


def test_resume_true_without_a_study_is_one_line_and_auto_starts_fresh(tracking_uri, client, tmp_path,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        search(_cfg("search.resume=true"), client=client)
    line = str(err.value)
    assert "\n" not in line and "there is no study 'blobs-sklearn' to resume" in line and "--resume auto" in line
    c = MlflowClient(tracking_uri)
    assert not c.search_runs([e.experiment_id for e in c.search_experiments()])  # nothing started
    out = search(_cfg("search.resume=auto"), client=client)
    assert not out.resumed and len(_children(tracking_uri, out.parent_run_id)) == 2


def test_a_study_in_the_earlier_releases_optuna_log_is_found_and_named(tracking_uri, client, tmp_path,
                                                                        monkeypatch, capsys):
    """An earlier release kept its study in ./optuna.log and recorded no storage on the parent:
    the resume finds that study there (not a fresh one in the new default) and says where."""
    monkeypatch.chdir(tmp_path)
    first = search(_cfg("search.storage=optuna.log"), client=client)
    MlflowClient(tracking_uri).delete_tag(first.parent_run_id, STORAGE_TAG)  # as the earlier release left it
    monkeypatch.delenv("KMEANS_QUIET", raising=False)
    again = search(_cfg("search.resume=true", "search.n_trials=3"), client=client)
    assert again.resumed and again.parent_run_id == first.parent_run_id
    said = capsys.readouterr()
    assert f"{tmp_path / 'optuna.log'}, where releases before this one kept their studies" in said.out + said.err
    assert not Path(default_storage()).exists()  # nothing was started in the new default


def test_a_recorded_database_storage_keeps_its_var_reference_and_a_masked_one_is_one_line(tracking_uri,
                                                                                         monkeypatch):
    """A parent run recorded its study's database URL as the runner records it (``redact``): a
    ``${VAR}`` password is kept and the resume uses it; a literal password was masked, so the
    resume says in one line how to pass the storage, instead of opening a store as ``***``."""
    from toolkit.redact import redact
    from toolkit.search.study import STUDY_TAG

    c = MlflowClient(tracking_uri)
    exp = c.create_experiment("blobs")
    for storage in ("postgresql://u:${KL_PGPW}@h/db", "postgresql://u:hunter2@h/db"):
        c.create_run(exp, tags={"entry_point": "search", STUDY_TAG: "blobs-sklearn",
                                STORAGE_TAG: redact(storage)})
        if "$" in storage:
            where = locate_study(_cfg("search.resume=true"))
            assert (where.storage, where.name) == (storage, "blobs-sklearn")
    with pytest.raises(ConfigError) as err:
        locate_study(_cfg("search.resume=true"))
    line = str(err.value)
    assert "\n" not in line and "recorded with its password masked" in line and "hunter2" not in line
    assert "${PGPASSWORD}" in line, line


def test_closing_hint_is_the_exact_resume_command(monkeypatch):
    from mlproject.search import _resume_command

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://u:secret@mlflow.internal:5000")
    monkeypatch.delenv("KMEANS_LIFECYCLE_ENTRY_POINT", raising=False)
    args = argparse.Namespace(config="experiments/blobs.yaml", overrides=["data.path='a b.csv' search.resume=false"],
                              **dict.fromkeys(("backend", "strategy", "objective", "parallelism", "resume",
                                               "storage", "n_workers", "scheduler_address"), "from-config"),
                              n_trials="7")
    storage = os.path.join("/data", "kmeans-lifecycle", "studies", "optuna-x.log")
    line = _resume_command(args, storage, "blobs-sklearn-3", "blobs")
    assert "secret" not in line
    words = shlex.split(line)  # as the shell will read it
    assert words == ["MLFLOW_TRACKING_URI=http://u:***@mlflow.internal:5000", "python", "-m", "mlproject.search",
                     "--config", "experiments/blobs.yaml", "--n-trials", "7", "--resume", "true", "--storage", storage,
                     "--set", words[-1]]
    assert parse_overrides(words[-1]) == {"data.path": "a b.csv", "search.study_name": "blobs-sklearn-3"}
