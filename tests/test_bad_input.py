"""Bad input through the ``train`` entry point: one-line error, non-zero exit, run FAILED.

Each case runs ``mlproject.train.main`` under ``mlproject._cli.run_main`` in-process (argv
patched), against a real sqlite store.  Errors found before any run exists (config problems)
are checked the way ``mlflow run`` meets them: the run is created first and handed over in
``MLFLOW_RUN_ID``.  One case also goes through a real ``mlflow run`` subprocess.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _mlflow_run import mlflow_run
from _mlflow_store import init_store
from mlflow import MlflowClient

import mlproject.train as train_entry
from mlproject._cli import run_main
from toolkit.tracking import get_or_create_experiment

REPO = Path(__file__).resolve().parents[1]
BLOBS = str(REPO / "experiments" / "blobs.yaml")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return init_store(tmp_path_factory.mktemp("bad") / "mlflow.db")


@pytest.fixture()
def mlc(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("KMEANS_QUIET", "1")
    return MlflowClient(tracking_uri=store)


def _cli(monkeypatch, capsys, *argv: str) -> str:
    """Run the train entry point; assert non-zero exit and exactly one 'error:' line; return it."""
    monkeypatch.setattr(sys, "argv", ["mlproject.train", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_main(train_entry.main)
    assert exc.value.code not in (0, None)
    assert exc.value.code == 2  # a user error, not a crash
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def _all_runs(mlc: MlflowClient):
    ids = [e.experiment_id for e in mlc.search_experiments()]
    return mlc.search_runs(ids) if ids else []


def _assert_nothing_running(mlc: MlflowClient) -> None:
    running = [r.info.run_id for r in _all_runs(mlc) if r.info.status == "RUNNING"]
    assert running == []


def _failed_run(mlc: MlflowClient, experiment: str, needle: str):
    """The single run of ``experiment``: FAILED with ``needle`` in its ``error`` tag."""
    exp = mlc.get_experiment_by_name(experiment)
    assert exp is not None, f"no run was recorded in {experiment!r}"
    runs = mlc.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FAILED"
    assert needle in run.data.tags["error"]
    assert "\n" not in run.data.tags["error"]
    _assert_nothing_running(mlc)
    return run


def _outer_run(mlc: MlflowClient, monkeypatch, experiment: str) -> str:
    """Create the run the way ``mlflow run`` does, before our code starts."""
    run_id = mlc.create_run(get_or_create_experiment(experiment)).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    return run_id


def _file_args(path: Path | str, experiment: str, *extra: str) -> list[str]:
    return [
        "--config", BLOBS,
        "--set", f"tracking.experiment={experiment} data.source=file data.path={path}", *extra,
    ]  # fmt: skip


# -- errors found while the run is under way ----------------------------------------------


def test_nan_in_data(mlc, monkeypatch, capsys, tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n1,2\nnan,3\n4,5\n")
    line = _cli(monkeypatch, capsys, *_file_args(tmp_path / "d.csv", "bad-nan"))
    assert "NaN" in line
    run = _failed_run(mlc, "bad-nan", "NaN")
    assert run.data.tags["error.type"] == "DataError"
    assert "error.traceback" not in run.data.tags


def test_inf_in_data(mlc, monkeypatch, capsys, tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n1,2\n3,inf\n4,5\n")
    line = _cli(monkeypatch, capsys, *_file_args(tmp_path / "d.csv", "bad-inf"))
    assert "infinite" in line
    _failed_run(mlc, "bad-inf", "infinite")


def test_non_numeric_column(mlc, monkeypatch, capsys, tmp_path):
    (tmp_path / "d.csv").write_text("a,kind\n1,x\n2,y\n3,z\n")
    line = _cli(monkeypatch, capsys, *_file_args(tmp_path / "d.csv", "bad-text"))
    assert "non-numeric" in line and "kind" in line
    _failed_run(mlc, "bad-text", "kind")


def test_empty_file(mlc, monkeypatch, capsys, tmp_path):
    (tmp_path / "d.csv").write_text("")
    line = _cli(monkeypatch, capsys, *_file_args(tmp_path / "d.csv", "bad-empty"))
    assert "empty" in line
    _failed_run(mlc, "bad-empty", "empty")


def test_glob_matches_nothing(mlc, monkeypatch, capsys, tmp_path):
    line = _cli(monkeypatch, capsys, *_file_args(tmp_path / "none-*.parquet", "bad-glob"))
    assert "matches no file" in line
    _failed_run(mlc, "bad-glob", "none-*.parquet")


def test_missing_data_file(mlc, monkeypatch, capsys, tmp_path):
    line = _cli(monkeypatch, capsys, *_file_args(tmp_path / "gone.csv", "bad-missing"))
    assert "does not exist" in line and "gone.csv" in line
    _failed_run(mlc, "bad-missing", "gone.csv")


def test_n_clusters_larger_than_samples(mlc, monkeypatch, capsys):
    line = _cli(
        monkeypatch, capsys,
        "--config", BLOBS, "--n-clusters", "8", "--set", "tracking.experiment=bad-k data.n_samples=5",
    )  # fmt: skip
    assert "n_clusters=8" in line and "5 samples" in line
    run = _failed_run(mlc, "bad-k", "n_clusters=8")
    assert run.data.params["data.rows"] == "5"  # the data was loaded before the check


# -- errors found before any run of ours exists (as under `mlflow run`) -------------------


def test_unknown_backend(mlc, monkeypatch, capsys):
    outer = _outer_run(mlc, monkeypatch, "bad-backend")
    line = _cli(monkeypatch, capsys, "--config", BLOBS, "--backend", "tensorflow")
    assert "backend" in line and "tensorflow" in line
    run = _failed_run(mlc, "bad-backend", "backend")
    assert run.info.run_id == outer
    assert run.data.tags["error.type"] == "ConfigError"


def test_unknown_config_key_override(mlc, monkeypatch, capsys):
    outer = _outer_run(mlc, monkeypatch, "bad-key")
    line = _cli(monkeypatch, capsys, "--config", BLOBS, "--set", "model.n_clusterz=5")
    assert "model.n_clusterz" in line
    assert _failed_run(mlc, "bad-key", "model.n_clusterz").info.run_id == outer


def test_unknown_config_key_in_file(mlc, monkeypatch, capsys, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: bad\nmodel:\n  n_clusters: 3\n  colour: red\n")
    outer = _outer_run(mlc, monkeypatch, "bad-key-file")
    line = _cli(monkeypatch, capsys, "--config", str(cfg))
    assert "model.colour" in line and str(cfg) in line
    assert _failed_run(mlc, "bad-key-file", "model.colour").info.run_id == outer


def test_unknown_config_key_without_mlflow_run_starts_no_run(mlc, monkeypatch, capsys):
    before = len(_all_runs(mlc))
    line = _cli(monkeypatch, capsys, "--config", BLOBS, "--set", "data.nope=1")
    assert "data.nope" in line
    assert len(_all_runs(mlc)) == before  # failed before any run was started
    _assert_nothing_running(mlc)


def test_missing_config_file(mlc, monkeypatch, capsys, tmp_path):
    outer = _outer_run(mlc, monkeypatch, "bad-config-file")
    line = _cli(monkeypatch, capsys, "--config", str(tmp_path / "nope.yaml"))
    assert "nope.yaml" in line and "does not exist" in line
    assert _failed_run(mlc, "bad-config-file", "nope.yaml").info.run_id == outer


def test_bad_flag_value_names_the_option_as_given(mlc, monkeypatch, capsys):
    from toolkit.errors import LAUNCHER_ENV

    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    line = _cli(monkeypatch, capsys, "--config", BLOBS, "--register", "maybe")
    assert line.endswith("fix: pass --register true or --register false"), line
    # Under `mlflow run` (the MLproject command sets LAUNCHER_ENV) the user typed -P register=...
    outer = _outer_run(mlc, monkeypatch, "bad-flag")
    monkeypatch.setenv(LAUNCHER_ENV, "train")
    line = _cli(monkeypatch, capsys, "--config", BLOBS, "--register", "maybe")
    assert line.endswith("fix: pass -P register=true or -P register=false"), line
    assert _failed_run(mlc, "bad-flag", "register='maybe'").info.run_id == outer


def test_missing_config_hint_per_launch_mode(mlc, monkeypatch, capsys, tmp_path):
    from toolkit.errors import LAUNCHER_ENV

    monkeypatch.setenv(LAUNCHER_ENV, "train")
    line = _cli(monkeypatch, capsys, "--config", str(tmp_path / "nope.yaml"))
    assert line.endswith("pass an existing file, e.g. -P config=experiments/blobs.yaml"), line
    monkeypatch.delenv(LAUNCHER_ENV)
    line = _cli(monkeypatch, capsys, "--config", str(tmp_path / "nope.yaml"))
    assert line.endswith("pass an existing file, e.g. --config experiments/blobs.yaml"), line


# -- the same through a real `mlflow run` --------------------------------------------------


@pytest.mark.slow
def test_mlflow_run_with_nan_fails_cleanly(subprocess_env, tracking_uri, tmp_path):
    init_store(tracking_uri)
    data = tmp_path / "nan.csv"
    data.write_text("a,b\n1,2\n,3\n4,5\n6,7\n")
    proc = mlflow_run(
        "train", {"overrides": f"data.source=file data.path={data}"},
        env=subprocess_env, experiment="bad-nan-cli",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "NaN" in error_lines[0], out
    assert "Traceback" not in proc.stderr.split(error_lines[0])[0], out  # no crash before it
    mlc = MlflowClient(tracking_uri=tracking_uri)
    exp = mlc.get_experiment_by_name("bad-nan-cli")
    assert exp is not None, out
    runs = mlc.search_runs([exp.experiment_id])
    assert len(runs) == 1, out
    assert runs[0].info.status == "FAILED"
    assert "NaN" in runs[0].data.tags["error"]
    assert runs[0].data.tags["error.type"] == "DataError"
    _assert_nothing_running(mlc)


# -- findings: files matched by column name, non-finite values, empty/directory configs ----


def test_glob_whose_files_have_other_columns(mlc, monkeypatch, capsys, tmp_path):
    (tmp_path / "part-0.csv").write_text("a,b\n1,2\n3,4\n5,6\n")
    (tmp_path / "part-1.csv").write_text("a,c\n1,2\n3,4\n5,6\n")
    line = _cli(monkeypatch, capsys, *_file_args(tmp_path / "part-*.csv", "bad-columns"))
    assert "part-1.csv" in line and "missing column(s) b" in line and "extra column(s) c" in line
    run = _failed_run(mlc, "bad-columns", "part-1.csv")
    assert run.data.tags["error.type"] == "DataError"


@pytest.mark.parametrize(
    "override, key", [("model.tol=inf", "model.tol"), ("data.cluster_std=nan", "data.cluster_std")]
)
def test_non_finite_override(mlc, monkeypatch, capsys, override, key):
    experiment = f"bad-finite-{key}"
    outer = _outer_run(mlc, monkeypatch, experiment)
    line = _cli(monkeypatch, capsys, "--config", BLOBS, "--set", override)
    assert f"{key}: Input should be a finite number" in line
    run = _failed_run(mlc, experiment, key)
    assert run.info.run_id == outer and run.data.tags["error.type"] == "ConfigError"


def test_non_finite_value_in_config_file(mlc, monkeypatch, capsys, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("name: bad\nmodel:\n  tol: .inf\n")
    outer = _outer_run(mlc, monkeypatch, "bad-finite-file")
    line = _cli(monkeypatch, capsys, "--config", str(cfg))
    assert str(cfg) in line and "model.tol" in line and "finite" in line
    assert _failed_run(mlc, "bad-finite-file", "model.tol").info.run_id == outer


def test_empty_config_file(mlc, monkeypatch, capsys, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("# nothing set yet\n")
    outer = _outer_run(mlc, monkeypatch, "bad-empty-config")
    line = _cli(monkeypatch, capsys, "--config", str(cfg))
    assert str(cfg) in line and "is empty" in line
    assert _failed_run(mlc, "bad-empty-config", "is empty").info.run_id == outer


def test_config_path_is_a_directory(mlc, monkeypatch, capsys):
    outer = _outer_run(mlc, monkeypatch, "bad-config-dir")
    line = _cli(monkeypatch, capsys, "--config", str(REPO / "experiments"))
    assert "is a directory" in line and "blobs.yaml" in line and "does not exist" not in line
    assert _failed_run(mlc, "bad-config-dir", "is a directory").info.run_id == outer
