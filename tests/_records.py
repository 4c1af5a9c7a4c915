"""What the tests read back from an MLflow store: a parent's child runs, and RUNNING runs."""

from __future__ import annotations

from mlflow import MlflowClient


def children(mlc: MlflowClient, parent_id: str, max_results: int = 5000) -> list:
    """Every (not deleted) child run of ``parent_id``, in its experiment."""
    exp_id = mlc.get_run(parent_id).info.experiment_id
    return mlc.search_runs(
        [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=max_results
    )


def running(mlc: MlflowClient, max_results: int = 5000) -> list:
    """The runs still RUNNING in any experiment of the store."""
    exp_ids = [e.experiment_id for e in mlc.search_experiments()]
    return mlc.search_runs(exp_ids, filter_string="attributes.status = 'RUNNING'", max_results=max_results)


def artifact_dirs(mlc: MlflowClient) -> list:
    """The local folders holding the artifacts of every run and logged model of the store (a
    driver started in the repository writes them under its ``./mlruns``, outside the test's
    folder): what a check for a leaked secret must read besides the store's own files."""
    from pathlib import Path

    exp_ids = [e.experiment_id for e in mlc.search_experiments()]
    uris = [r.info.artifact_uri for r in mlc.search_runs(exp_ids, max_results=5000)]
    uris += [m.artifact_location for m in mlc.search_logged_models(exp_ids, max_results=5000)]
    return [Path(u.removeprefix("file://")) for u in uris if u and "://" not in u.removeprefix("file://")
            and Path(u.removeprefix("file://")).exists()]
