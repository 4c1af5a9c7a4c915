"""Real ``mlflow run`` subprocesses for the entry-point tests: one command builder, one env."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_env(tracking_uri: str, registry_uri: str | None = None) -> dict[str, str]:
    """This process's environment pointed at ``tracking_uri`` (and registry), no outer run."""
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    if registry_uri:
        env["MLFLOW_REGISTRY_URI"] = registry_uri
    env.pop("MLFLOW_RUN_ID", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def mlflow_run_cmd(
    entry: str, params: Mapping[str, object] | None = None, experiment: str | None = None
) -> list[str]:
    """``mlflow run . -e <entry> -P k=v ... --env-manager local [--experiment-name ...]``."""
    cmd = [sys.executable, "-m", "mlflow", "run", ".", "-e", entry, "--env-manager", "local"]
    for key, value in (params or {}).items():
        cmd += ["-P", f"{key}={value}"]
    if experiment:
        cmd += ["--experiment-name", experiment]
    return cmd


def mlflow_run(
    entry: str,
    params: Mapping[str, object] | None = None,
    *,
    env: Mapping[str, str],
    experiment: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run the entry point from the repository root; output captured as text."""
    return subprocess.run(
        mlflow_run_cmd(entry, params, experiment), cwd=REPO, env=dict(env),
        capture_output=True, text=True, timeout=timeout, check=False,
    )
