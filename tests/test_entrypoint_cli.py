"""The entry points' faces: MLproject and the parsers agree, ``--help``, hints per launch mode,
the closing summary, and where ``promote`` and ``predict`` record their work.

Entry points run in-process (``run_main`` with ``sys.argv`` patched) against a temp sqlite
store; ``mlflow run`` is imitated the way it hands over to the command: its run created first
(``MLFLOW_RUN_ID``) and, as the MLproject command does, ``KMEANS_LIFECYCLE_ENTRY_POINT`` set.
The real ``mlflow run`` subprocesses are in test_entrypoint_train/search.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from mlproject._cli import LAUNCHER_RUN_TAG, NO_OVERRIDES, RECORD_RUN_TAG, run_main
from toolkit.config import SearchConfig
from toolkit.errors import LAUNCHER_ENV, option_hint
from toolkit.names import BACKEND_NAMES, OBJECTIVES

REPO = Path(__file__).resolve().parents[1]
BLOBS = str(REPO / "experiments" / "blobs.yaml")
SMALL = "data.n_samples=600 tracking.log_plot=false"


def _mlproject() -> dict:
    return yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]


def _module_entry_points() -> list[tuple[str, dict, str]]:
    """``(entry point, its spec, module)`` for every entry point that runs an ``mlproject`` module."""
    out = []
    for name, spec in _mlproject().items():
        found = re.search(r"python -m (mlproject\.\w+)", spec["command"])
        if found:
            out.append((name, spec, found.group(1)))
    return out


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``--flag -> action`` for every option but ``--help``."""
    return {s: a for a in parser._actions if a.dest != "help" for s in a.option_strings}


# -- MLproject <-> argparse ---------------------------------------------------------------


def test_mlproject_parameters_are_the_options_of_each_entry_point(monkeypatch):
    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    entries = _module_entry_points()
    assert {"main", "train", "search", "promote", "predict"} <= {name for name, _, _ in entries}
    for name, spec, module in entries:
        command = " ".join(spec["command"].split())
        # The command tells the module it runs under `mlflow run`, and as which entry point.
        assert command.startswith(f"{LAUNCHER_ENV}={name} python -m {module} "), command
        pairs = re.findall(r"(?<!\S)(--[\w-]+) \{(\w+)\}", command)
        placeholders = re.findall(r"\{(\w+)\}", command)
        assert sorted(placeholders) == sorted(p for _, p in pairs), f"{name}: a placeholder without its flag"
        params = spec.get("parameters") or {}
        assert sorted(params) == sorted(placeholders), f"{name}: parameters and command differ"
        options = _options(importlib.import_module(module).build_parser())
        for flag, param in pairs:
            assert flag == option_hint(param), f"{name}: -P {param} is passed as {flag}"
            assert flag in options, f"{name}: {module} has no {flag}"
            action = options[flag]
            default = params[param].get("default") if isinstance(params[param], dict) else None
            if action.required:
                assert default is None, f"{name}: {param} is required by {module} but has a default"
            elif isinstance(action, argparse._AppendAction):
                assert default == NO_OVERRIDES and action.default == [], name
            else:
                assert str(default) == str(action.default), f"{name}: {param} defaults differ"
        # And the other way: every option of the module is a parameter of this entry point.
        assert set(options) == {flag for flag, _ in pairs}, f"{name}: options without a parameter"


def test_no_parameter_defaults_to_empty():
    """`mlflow run` logs every parameter as a run param, defaults too: '' would say nothing."""
    for name, spec in _mlproject().items():
        for param, decl in (spec.get("parameters") or {}).items():
            if isinstance(decl, dict) and "default" in decl:
                assert str(decl["default"]).strip() != "", f"{name}: {param}"
                assert " " not in str(decl["default"]), f"{name}: {param} would be logged quoted"


# -- --help ------------------------------------------------------------------------------------


def test_help_names_the_command_and_the_allowed_values(monkeypatch):
    from mlproject import predict, search, train

    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    text = " ".join(search.build_parser().format_help().split())
    assert text.startswith("usage: python -m mlproject.search ")
    assert "mlflow run . -e search -P name=value" in text
    for word in (*BACKEND_NAMES, *OBJECTIVES, *typing.get_args(SearchConfig.model_fields["strategy"].annotation),
                 *typing.get_args(SearchConfig.model_fields["parallelism"].annotation)):
        assert word in text.replace("- ", "-"), word  # (argparse may wrap a word at its dash)
    assert "--resume RESUME (search.resume): one of true, false, auto" in text
    assert "--register REGISTER register the native model" in " ".join(train.build_parser().format_help().split())
    assert "--overwrite OVERWRITE replace an existing output: true or false (default: false)" in " ".join(
        predict.build_parser().format_help().split())

    monkeypatch.setenv(LAUNCHER_ENV, "main")
    assert search.build_parser().format_help().startswith("usage: mlflow run . -e main ")


# -- hints name the option the way it was given -------------------------------------------------


def test_existing_output_hint_per_launch_mode(monkeypatch, tmp_path):
    from toolkit.errors import DataError
    from toolkit.serving import score_files

    (tmp_path / "out.parquet").mkdir()
    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    with pytest.raises(DataError, match=r"pass --overwrite true$"):
        score_files(None, str(tmp_path / "in.csv"), str(tmp_path / "out.parquet"))
    monkeypatch.setenv(LAUNCHER_ENV, "predict")
    with pytest.raises(DataError, match=r"pass -P overwrite=true$"):
        score_files(None, str(tmp_path / "in.csv"), str(tmp_path / "out.parquet"))


def _entry(monkeypatch, capsys, module: str, *argv: str) -> tuple[int, str, str]:
    """Run ``python -m mlproject.<module> argv...`` in-process: (exit code, stdout, stderr)."""
    main = importlib.import_module(f"mlproject.{module}").main
    monkeypatch.setattr(sys, "argv", [f"mlproject.{module}", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_main(main)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture()
def quiet_store(tracking_uri, monkeypatch):
    """The test's store (migrated, so MLflow logs nothing), nothing launched by `mlflow run`."""
    from _mlflow_store import init_store

    init_store(tracking_uri)
    monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    monkeypatch.delenv("KMEANS_QUIET", raising=False)
    return tracking_uri


def test_unknown_option_is_one_line_naming_it_as_given(quiet_store, monkeypatch, capsys):
    # What `mlflow run . -e search -P n_trial=5` runs: the undeclared -P appended as --n_trial 5.
    monkeypatch.setenv(LAUNCHER_ENV, "search")
    code, _, err = _entry(monkeypatch, capsys, "search", "--n_trial", "5")
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: unknown option(s): -P n_trial=5 -- fix: the options of mlflow run . -e search")
    assert "-P n_trials" in err
    # Run directly, the same mistake is named as typed, and options in their -- form.
    monkeypatch.delenv(LAUNCHER_ENV)
    code, _, err = _entry(monkeypatch, capsys, "search", "--n-trial", "5")
    assert code == 2 and err.startswith("error: unknown option(s): --n-trial 5 -- fix: the options of "
                                        "python -m mlproject.search are --config"), err
    # No abbreviation: -P obj=x must not quietly mean objective.
    code, _, err = _entry(monkeypatch, capsys, "search", "--obj", "adjusted_rand")
    assert code == 2 and "unknown option(s): --obj" in err


# -- what train, promote and predict say and record ------------------------------------------------


def _train(monkeypatch, capsys, name: str, k: int) -> str:
    code, out, err = _entry(
        monkeypatch, capsys, "train", "--config", BLOBS, "--backend", "sklearn", "--n-clusters", str(k),
        "--register", "true",
        "--set", f"{SMALL} registry.native_name={name} registry.sklearn_name={name}-sklearn "
                 f"tracking.experiment=home-of-{name}",
    )
    assert code == 0, err
    return out


def _runs(mlc: MlflowClient, experiment: str) -> list:
    exp = mlc.get_experiment_by_name(experiment)
    return mlc.search_runs([exp.experiment_id]) if exp else []


def test_train_promote_predict_say_what_they_made_and_record_beside_the_model(
    quiet_store, monkeypatch, capsys, tmp_path
):
    mlc = MlflowClient(quiet_store, registry_uri=quiet_store)
    name = "told"
    first = _train(monkeypatch, capsys, name, 6)
    (run1,) = _runs(mlc, f"home-of-{name}")
    tail = first[first.index("made:\n"):].splitlines()
    assert tail[1] == f"  run {run1.info.run_id} (train-sklearn-k6) in experiment 'home-of-{name}'"
    assert tail[2] == (f"  registered {name} v1 (native) and {name}-sklearn v1 (twin); "
                       "aliases: challenger, champion")
    assert tail[3].startswith(f"look: mlflow ui --backend-store-uri {quiet_store}")
    assert run1.info.run_id in tail[3] and len(tail) == 4
    second = _train(monkeypatch, capsys, name, 5)
    assert f"registered {name} v2 (native) and {name}-sklearn v2 (twin); aliases: challenger\n" in second

    # -- promote, run directly: one run, in the model's experiment, named after the decision.
    code, out, err = _entry(monkeypatch, capsys, "promote", "--model-name", name, "--config", BLOBS,
                            "--set", SMALL, "--force", "true")
    assert code == 0, err
    home = mlc.get_experiment_by_name(f"home-of-{name}").experiment_id
    (rec,) = mlc.search_runs([home], f"attributes.run_name = 'promote {name} v2'")
    assert rec.info.status == "FINISHED" and rec.data.tags["entry_point"] == "promote"
    assert rec.data.params["promote.challenger_version"] == "2"
    assert rec.data.params["eval.metric"] == "silhouette"
    assert "made:\n" in out and f"  run {rec.info.run_id} (promote {name} v2) in experiment 'home-of-{name}'" in out
    assert f"  alias champion: {name} v2 and {name}-sklearn v2 (was v1)" in out
    assert f"look: mlflow ui --backend-store-uri {quiet_store}" in out

    # -- promote under `mlflow run` without --experiment-name: its run is in Default.
    launcher = mlc.create_run("0").info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    monkeypatch.setenv(LAUNCHER_ENV, "promote")
    code, out, err = _entry(monkeypatch, capsys, "promote", "--model-name", name, "--config", BLOBS,
                            "--set", SMALL)
    assert code == 0, err
    recs = mlc.search_runs([home], f"attributes.run_name = 'promote {name} v2'")
    assert len(recs) == 2
    again = next(r for r in recs if r.info.run_id != rec.info.run_id)
    assert again.data.tags[LAUNCHER_RUN_TAG] == launcher and again.info.status == "FINISHED"
    outer = mlc.get_run(launcher)
    assert outer.info.run_name == f"promote {name} v2"
    assert outer.data.tags[RECORD_RUN_TAG] == again.info.run_id
    assert again.info.run_id in outer.data.tags["mlflow.note.content"]
    assert "no alias moved: champion stays on" in out and f"{RECORD_RUN_TAG}={again.info.run_id}" in out
    mlc.set_terminated(launcher)  # as `mlflow run` does once the command exits

    # -- under `mlflow run --experiment-name home-of-told`: mlflow run's own run is the record.
    launcher = mlc.create_run(home).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)
    code, _, err = _entry(monkeypatch, capsys, "promote", "--model-name", name, "--config", BLOBS,
                          "--set", SMALL)
    assert code == 0, err
    own = mlc.get_run(launcher)
    assert own.info.run_name == f"promote {name} v2" and own.data.tags["entry_point"] == "promote"
    assert len(mlc.search_runs([home], f"attributes.run_name = 'promote {name} v2'")) == 3
    monkeypatch.delenv("MLFLOW_RUN_ID")
    monkeypatch.delenv(LAUNCHER_ENV)

    # -- predict, run directly: its own run, in the model's experiment.
    from distributed import LocalCluster

    X = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    pd.DataFrame(X, columns=["x0", "x1"]).to_csv(tmp_path / "in.csv", index=False)
    out_dir = tmp_path / "scored.parquet"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        code, out, err = _entry(monkeypatch, capsys, "predict", "--model-uri", f"models:/{name}-sklearn@champion",
                                "--input", str(tmp_path / "in.csv"), "--output", str(out_dir),
                                "--scheduler-address", cluster.scheduler_address)
    assert code == 0, err
    (pred,) = mlc.search_runs([home], f"attributes.run_name = 'predict {name}-sklearn@champion'")
    assert pred.info.status == "FINISHED" and pred.data.tags["entry_point"] == "predict"
    p = pred.data.params
    assert p["predict.model_uri"] == f"models:/{name}-sklearn@champion"
    assert (p["predict.model_name"], p["predict.model_version"]) == (f"{name}-sklearn", "2")
    assert p["predict.input"] == str(tmp_path / "in.csv") and p["predict.output"] == str(out_dir)
    assert p["predict.rows"] == "300" and int(p["predict.partitions"]) >= 1
    assert f"  run {pred.info.run_id} (predict {name}-sklearn@champion) in experiment 'home-of-{name}'" in out
    assert f"  output {out_dir}: 300 row(s)" in out and "look: " in out


@pytest.mark.parametrize("armed", [True, False])
def test_entry_point_exit_runs_every_handler_then_skips_the_teardown(armed):
    # mlproject registers its handler first, so it runs last: libraries' handlers (MLflow ends
    # its runs, the writer drains) still run, output is flushed, and the status is kept.
    code = (
        "import atexit, sys\n"
        "import mlproject\n"
        "from mlproject._exit import arm\n"
        "atexit.register(print, 'a library handler ran')\n"
        "class Held:\n"
        "    def __del__(self):\n"
        "        sys.stdout.write('torn down\\n')\n"
        "held = Held()\n"
        "print('work done', end=' ')\n"
        + ("arm(3)\n" if armed else "")
        + "sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=REPO, check=False)
    assert proc.returncode == 3, proc.stderr
    # Armed, the teardown (which frees what the program still holds) is skipped; unarmed
    # (tests, a crash before the status is known) Python ends as usual.
    assert proc.stdout == "work done a library handler ran\n" + ("" if armed else "torn down\n")
