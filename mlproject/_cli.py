"""Shared command-line plumbing: config options, overrides, and the error guard.

Every entry point parses its flags here, loads the experiment config, calls the library, and
exits through :func:`run_main`: a user error prints one line, marks the MLflow run FAILED with
the reason and exits 2; anything else prints its traceback and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from toolkit.config import ExperimentConfig, load_experiment, parse_overrides
from toolkit.errors import ToolkitError, first_line
from toolkit.redact import redact

# Flags that map straight onto a config key ("" means: keep the config's value).
_FIELD_FLAGS = {
    "backend": "backend",
    "n_clusters": "model.n_clusters",
    "n_workers": "cluster.n_workers",
    "scheduler_address": "cluster.scheduler_address",
    "experiment": "tracking.experiment",
}


def base_parser(description: str, fields: Sequence[str] = tuple(_FIELD_FLAGS)) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="", help="experiment YAML (default: built-in defaults)")
    for field in fields:
        parser.add_argument(f"--{field.replace('_', '-')}", dest=field, default="",
                            help=f"override {_FIELD_FLAGS.get(field, field)}")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[],
        help="dotted config overrides, e.g. --set 'model.max_iter=50 data.n_samples=1000'",
    )
    return parser


def load_config(args: argparse.Namespace, extra: dict[str, str] | None = None) -> ExperimentConfig:
    """The experiment config with every non-empty flag and ``--set`` override applied."""
    overrides: dict[str, Any] = {}
    for field, key in {**_FIELD_FLAGS, **(extra or {})}.items():
        value = getattr(args, field, "")
        if value not in ("", None):
            overrides.update(parse_overrides([f"{key}={value}"]))
    for chunk in args.overrides:
        overrides.update(parse_overrides(chunk))
    return load_experiment(args.config or None, overrides)


def _fail_active_run(error: BaseException) -> None:
    """Under ``mlflow run`` the run exists before we parse anything: end it FAILED too."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        from mlflow import MlflowClient

        from toolkit.tracking import mark_failed, tracking_uri

        if MlflowClient(tracking_uri()).get_run(run_id).info.status == "RUNNING":
            mark_failed(run_id, error)
    except Exception:  # never hide the real error behind a tracking one
        pass


def _scrub_launcher_params() -> None:
    """Under ``mlflow run``, mask credentials that the user put in a ``-P`` value."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    from toolkit.console import say
    from toolkit.tracking.runs import scrub_credentials

    left = scrub_credentials(run_id)
    if left:
        say(f"warning: mlflow run recorded a password given in -P {', '.join(left)} as a param of run {run_id}; "
            "pass secrets as ${VAR} references (e.g. -P storage='postgresql://u:${PGPASSWORD}@host/db') "
            "and change that password")


def run_main(main: Callable[[], int | None]) -> None:
    """Call ``main`` and exit with a clear status."""
    try:
        from toolkit.tracking.runs import check_store

        check_store()
        _scrub_launcher_params()
        code = main() or 0
    except ToolkitError as exc:
        _fail_active_run(exc)
        print(redact(f"error: {exc}"), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        _fail_active_run(exc)
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        _fail_active_run(exc)
        print(redact(traceback.format_exc()), file=sys.stderr, end="")
        print(redact(f"error: {type(exc).__name__}: {first_line(exc)}"), file=sys.stderr)
        sys.exit(1)
    sys.exit(code)
