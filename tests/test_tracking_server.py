"""One writer against a real `mlflow server`: a trial-parallel search loses no trial.

The server runs on loopback in its own process group (sqlite backend, artifacts proxied to a
temp folder) and is stopped by its own handle even when the test fails.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from toolkit.config import load_experiment
from toolkit.search import search

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def mlflow_server(shared_mlflow_server, monkeypatch):
    """The session's real ``mlflow server`` (conftest: a server, not a fresh one; the experiment
    ``server-search`` is this test's own)."""
    url = shared_mlflow_server
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)
    yield url


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
    # The cluster's workers ran the trials (which of them is the scheduler's choice), and the
    # driver alone wrote them all.
    ran_on = {r.data.tags["trial.worker"] for r in children}
    assert ran_on and ran_on <= set(client.scheduler_info()["workers"])
    assert {a.path for a in c.list_artifacts(out.parent_run_id, "plots")} >= {
        "plots/optimization_history.png", "plots/elbow.png"}
    assert "database is locked" not in "".join(capfd.readouterr())
