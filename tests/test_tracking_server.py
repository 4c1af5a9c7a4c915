"""One writer against a real `mlflow server`: a trial-parallel search loses no trial.

The server runs on loopback in its own process group (sqlite backend, artifacts proxied to a
temp folder) and is stopped by its own handle even when the test fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from _servers import free_port, stop, wait_ready
from mlflow import MlflowClient

from toolkit.config import load_experiment
from toolkit.search import search

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def mlflow_server(tmp_path, monkeypatch):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
            cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        )
    try:
        wait_ready(proc, f"{url}/health", log, "mlflow server", limit_s=120)
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        yield url
    finally:
        stop(proc)


def test_trial_parallel_search_against_tracking_server(mlflow_server, client, tmp_path, capfd):
    cfg = load_experiment(REPO / "experiments" / "blobs.yaml", [
        "data.n_samples=2000", "search.n_trials=6", "tracking.log_plot=false",
        f"search.storage=sqlite:///{tmp_path / 'optuna.db'}", "tracking.experiment=server-search",
        "registry.register_best=false",
    ])
    out = search(cfg, client=client)

    c = MlflowClient(mlflow_server)
    parent = c.get_run(out.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = c.search_runs([parent.info.experiment_id],
                             filter_string=f"tags.mlflow.parentRunId = '{out.parent_run_id}'")
    assert len(children) == 6
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(6))
    assert all(r.info.status == "FINISHED" for r in children)
    # Two workers really ran trials, and the driver alone wrote them all.
    assert len({r.data.tags["trial.worker"] for r in children}) == 2
    assert {a.path for a in c.list_artifacts(out.parent_run_id, "plots")} >= {
        "plots/optimization_history.png", "plots/elbow.png"}
    assert "database is locked" not in "".join(capfd.readouterr())
