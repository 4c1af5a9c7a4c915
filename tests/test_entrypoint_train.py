"""The ``train`` entry point through real ``mlflow run`` subprocesses (sklearn and dask-ml).

Both runs start together (each ``mlflow run`` spends most of its time importing and starting
up, so they overlap well), each writing to its own temp sqlite store.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _mlflow_run import mlflow_run_cmd
from _mlflow_store import init_store
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = {
    "inertia",
    "silhouette",
    "davies_bouldin",
    "calinski_harabasz",
    "adjusted_rand",
    "fit_seconds",
    "n_iter",
}


def _mlflow_run(*params: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = mlflow_run_cmd("train", dict(p.split("=", 1) for p in params))
    handle = open(log, "w")  # noqa: SIM115 - closed by the caller after wait()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, text=True
    )
    proc.log_handle = handle  # type: ignore[attr-defined]
    return proc


def _wait(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    finally:
        proc.log_handle.close()  # type: ignore[attr-defined]
    return log.read_text()


def _only_run(mlc: MlflowClient, out: str):
    exps = [e.experiment_id for e in mlc.search_experiments()]
    runs = mlc.search_runs(exps)
    assert len(runs) == 1, out
    return runs[0]


def _centroids(mlc: MlflowClient, run_id: str, dst: Path) -> tuple[np.ndarray, Path]:
    local = Path(mlc.download_artifacts(run_id, "centroids", str(dst)))
    frame = pd.read_csv(local / "centroids.csv", index_col="cluster")
    return frame.to_numpy(), local


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.slow
def test_train_entry_point_sklearn_and_daskml(subprocess_env, tracking_uri, tmp_path):
    sk_uri = init_store(tracking_uri)
    dk_uri = init_store(tmp_path / "daskml" / "mlflow.db")
    dk_env = {**subprocess_env, "MLFLOW_TRACKING_URI": dk_uri}
    start = time.perf_counter()
    sk = _mlflow_run(
        "config=experiments/blobs.yaml", "backend=sklearn", "overrides=data.n_samples=3000",
        env=subprocess_env, log=tmp_path / "sklearn.log",
    )  # fmt: skip
    dk = _mlflow_run(
        "config=experiments/blobs.yaml", "backend=dask-ml", "n_workers=2",
        # A threaded LocalCluster: worker processes would each re-import the stack (tens of
        # seconds on a slow machine); process workers are covered by the session cluster tests.
        "overrides=data.n_samples=3000 data.chunk_rows=1000 cluster.processes=false",
        env=dk_env, log=tmp_path / "daskml.log",
    )  # fmt: skip
    sk_out = _wait(sk, tmp_path / "sklearn.log", timeout=400)
    dk_out = _wait(
        dk, tmp_path / "daskml.log", timeout=max(30.0, 400 - (time.perf_counter() - start))
    )
    assert sk.returncode == 0, sk_out
    assert dk.returncode == 0, dk_out
    assert "train finished: backend=sklearn" in sk_out
    assert "train finished: backend=dask-ml" in dk_out

    # -- the sklearn run --------------------------------------------------------------------
    sk_mlc = MlflowClient(tracking_uri=sk_uri)
    run = _only_run(sk_mlc, sk_out)
    assert run.info.status == "FINISHED"
    assert METRICS <= set(run.data.metrics)
    assert run.data.metrics["adjusted_rand"] == 1.0
    assert run.data.params["backend"] == "sklearn"  # logged by `mlflow run` from -P
    assert run.data.params["n_clusters"] == "from-config"  # left out: says so, not ''
    assert "''" not in run.data.params.values()
    assert run.data.params["experiment.backend"] == "sklearn"  # the effective config
    assert run.data.params["data.rows"] == "3000"
    assert run.data.params["model.n_clusters"] == "6"
    assert run.data.tags["mlflow.project.entryPoint"] == "train"
    # The output ends with the run made (mlflow run's own, named by train) and how to look at it.
    made = sk_out[sk_out.rindex("made:\n"):].splitlines()
    assert made[1] == f"  run {run.info.run_id} (train-sklearn-k6) in experiment 'Default'", made
    assert made[2].startswith(f"look: mlflow ui --backend-store-uri {sk_uri}") and run.info.run_id in made[2]
    assert run.data.tags["backend"] == "sklearn"
    assert run.inputs.dataset_inputs[0].dataset.name == "blobs-3000x2-c6"
    sk_centers, sk_local = _centroids(sk_mlc, run.info.run_id, tmp_path / "sk_art")
    assert sk_centers.shape == (6, 2)
    assert np.load(sk_local / "centroids.npy").shape == (6, 2)
    assert (sk_local / "centroids.png").read_bytes()[:8] == PNG_MAGIC

    # -- the dask-ml run, on its own 2-worker LocalCluster ---------------------------------------
    dk_mlc = MlflowClient(tracking_uri=dk_uri)
    drun = _only_run(dk_mlc, dk_out)
    assert drun.info.status == "FINISHED"
    assert METRICS <= set(drun.data.metrics)
    assert drun.data.metrics["adjusted_rand"] == 1.0
    assert drun.data.params["cluster.n_workers"] == "2"
    assert drun.data.params["n_workers"] == "2"  # the -P value, as `mlflow run` logged it
    assert drun.data.tags["backend"] == "dask-ml"
    assert drun.data.tags["dask.workers"] == "2"
    assert drun.data.tags["dask.dashboard_at_run_time"].startswith("http")  # closed with the run
    dk_centers, dk_local = _centroids(dk_mlc, drun.info.run_id, tmp_path / "dk_art")
    assert (dk_local / "centroids.png").read_bytes()[:8] == PNG_MAGIC

    # Same data, same partition (ARI 1 against the truth): the same centroids up to order.
    np.testing.assert_allclose(_sorted_rows(sk_centers), _sorted_rows(dk_centers), atol=1e-3)
    assert run.data.metrics["inertia"] == pytest.approx(drun.data.metrics["inertia"], rel=1e-3)
