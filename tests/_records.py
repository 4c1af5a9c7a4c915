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
