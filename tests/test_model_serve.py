"""`mlflow models serve -m models:/<twin>@champion` serves the scikit-learn twin.

A real server on loopback (its own process group, killed by its own handle), a real POST to
/invocations, compared with the local predictor; the same server refuses requests with other
columns than the model's with a 400 naming them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from _mlflow_run import run_env
from _servers import free_port, stop, wait_ready

from toolkit.config import load_experiment
from toolkit.data import load_dataset
from toolkit.serving import load_predictor
from toolkit.train import train

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TWIN = "served-blobs-sklearn"


def _post(base: str, columns: list[str], data: list[list[float]]) -> tuple[int, str]:
    """POST a ``dataframe_split`` request to /invocations: (HTTP status, body)."""
    body = {"dataframe_split": {"columns": columns, "data": data}}
    request = urllib.request.Request(
        f"{base}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("backend", ["sklearn", "dask"])
def test_models_serve_twin_matches_local_predictor(store, client, tmp_path, backend):
    name = f"served-{backend}"
    cfg = load_experiment(
        REPO / "experiments" / "blobs.yaml",
        [
            "data.n_samples=2000",
            "tracking.log_plot=false",
            f"backend={backend}",
            "data.chunk_rows=500",
            f"registry.native_name={name}",
            f"registry.sklearn_name={name}-sklearn",
            "tracking.experiment=model-serve",
        ],
    )
    train(cfg, client=client if backend == "dask" else None, register=True)
    uri = f"models:/{name}-sklearn@champion"
    X = load_dataset(cfg.data).X[:300]
    expected = load_predictor(uri).predict(X)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    env = run_env(store, store)
    with open(log, "w") as log_fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "models",
                "serve",
                "-m",
                uri,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                "1",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(proc, f"{base}/ping", log, "mlflow models serve")
        status, answer = _post(base, ["x0", "x1"], X.astype(float).tolist())
        if status != 200:
            pytest.fail(f"/invocations answered {status}: {answer[:2000]!r}")
        served = np.asarray(json.loads(answer)["predictions"])
        assert served.shape == (len(X),)
        assert np.array_equal(served, expected)
        # The same server refuses other columns, naming them (MLflow alone drops extras).
        rows = X[:5].astype(float)
        status, answer = _post(base, ["x0", "x1", "zz"], np.c_[rows, np.ones(5)].tolist())
        assert 400 <= status < 500, answer
        assert "unexpected column(s) zz" in answer and "expects exactly the columns x0, x1" in answer
        status, answer = _post(base, ["x0"], rows[:, :1].tolist())
        assert 400 <= status < 500 and "missing column(s) x1" in answer, answer
        # Columns are matched by name, not position.
        status, answer = _post(base, ["x1", "x0"], rows[:, ::-1].tolist())
        assert status == 200, answer
        assert np.array_equal(json.loads(answer)["predictions"], expected[:5])
    finally:
        stop(proc)
    assert proc.poll() is not None
