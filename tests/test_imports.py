"""Choosing a CPU backend never imports RAPIDS, and a blocked RAPIDS gives one-line errors.

Both checks run in fresh ``python -c`` subprocesses (this test process may already hold
modules), against a temp sqlite store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from _mlflow_store import init_store

REPO = Path(__file__).resolve().parents[1]
GPU_MODULES = ("cuml", "cudf", "dask_cudf", "dask_cuda", "cupy")

# Shared prologue: a meta-path hook that notes every attempt to import a GPU module and
# where it came from (the first frame outside importlib); `BLOCK` makes it refuse them too.
_PROLOGUE = textwrap.dedent(
    """
    import json, os, sys
    GPU = {gpu!r}
    REPO = {repo!r}
    BLOCK = {block!r}
    attempts = []

    class Watch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] not in GPU:
                return None
            f = sys._getframe(1)
            while f is not None and (f.f_code.co_filename.startswith("<frozen importlib")
                                     or "importlib" in f.f_code.co_filename):
                f = f.f_back
            attempts.append([name, f.f_code.co_filename if f is not None else "?"])
            if BLOCK:
                raise ImportError(f"import of {{name}} blocked by test", name=name)
            return None

    sys.meta_path.insert(0, Watch())

    def gpu_loaded():
        return sorted(m for m in sys.modules if m.split(".")[0] in GPU)

    # Third-party stack first: whatever it loads on its own (dask.array imports cupy when
    # installed) is the baseline, not the toolkit's doing.
    import dask, dask.array, dask.dataframe, distributed, sklearn.cluster, mlflow, dask_ml.cluster
    baseline = gpu_loaded()
    """
)


def _run(tmp_path: Path, body: str, block: bool) -> dict:
    uri = init_store(tmp_path / "mlflow.db")
    code = _PROLOGUE.format(gpu=GPU_MODULES, repo=str(REPO), block=block) + textwrap.dedent(body)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=uri, KMEANS_QUIET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert last, proc.stdout + proc.stderr
    return json.loads(last[-1].removeprefix("RESULT "))


_CPU_WORK = """
import numpy as np
import toolkit
from toolkit.backends import make_backend
from toolkit.config import ModelConfig, load_experiment
from toolkit.data import Dataset
from toolkit.train import train

sk = make_backend("sklearn")
dk = make_backend("dask-ml")
cfg = load_experiment(None, ["data.n_samples=300", "data.centers=3", "model.n_clusters=3",
                             "tracking.experiment=cpu-imports", "tracking.log_plot=false"])
outcome = train(cfg)
X = np.random.default_rng(0).normal(size=(200, 2)).astype("float32")
with dask.config.set(scheduler="threads"):
    res = dk.fit(dk.prepare(Dataset("t", X, None, ["a", "b"], "test")), ModelConfig(n_clusters=3))
    n_dask_labels = int(res.labels.compute().shape[0])
from mlflow import MlflowClient
status = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(outcome.run_id).info.status
"""


def test_cpu_backends_never_import_rapids(tmp_path):
    result = _run(
        tmp_path,
        _CPU_WORK
        + """
print("RESULT " + json.dumps({
    "status": status, "ari": outcome.metrics["adjusted_rand"], "n_dask_labels": n_dask_labels,
    "baseline": baseline, "loaded": gpu_loaded(), "attempts": attempts,
}))
""",
        block=False,
    )
    assert result["status"] == "FINISHED"
    assert result["ari"] == 1.0
    assert result["n_dask_labels"] == 200
    # Nothing GPU was loaded beyond what the third-party stack loads by itself ...
    assert set(result["loaded"]) == set(result["baseline"]), result
    # ... and the RAPIDS libraries proper are not loaded at all.
    for mod in ("cuml", "cudf", "dask_cudf", "dask_cuda"):
        assert not any(m.split(".")[0] == mod for m in result["loaded"]), result
    # No toolkit/mlproject module even tried to import one (works where they are not installed).
    ours = [a for a in result["attempts"] if a[1].startswith(str(REPO))]
    assert ours == [], ours


def test_blocked_rapids_cpu_still_works_and_gpu_backends_fail_cleanly(tmp_path):
    result = _run(
        tmp_path,
        _CPU_WORK
        + """
from toolkit.errors import BackendUnavailableError
errors = {}
for name in ("cuml", "cuml-dask"):
    try:
        make_backend(name)
    except BackendUnavailableError as exc:
        errors[name] = str(exc)
    else:
        errors[name] = None
print("RESULT " + json.dumps({
    "status": status, "ari": outcome.metrics["adjusted_rand"], "errors": errors,
    "loaded": gpu_loaded(),
}))
""",
        block=True,
    )
    assert result["status"] == "FINISHED"
    assert result["ari"] == 1.0
    assert result["loaded"] == []
    for name, msg in result["errors"].items():
        assert msg is not None, f"make_backend({name!r}) did not raise BackendUnavailableError"
        assert "\n" not in msg
        assert "'cuml'" in msg
        assert "CPU backend" in msg  # the fix names the way out


def test_config_reads_backend_facts_without_importing_the_backends():
    """The facts sit below everything: validating a config against a backend's facts imports
    none of the backend modules the registry names (only the package, via toolkit/__init__)."""
    code = textwrap.dedent(
        """
        import json, sys
        from toolkit.config import load_experiment
        from toolkit.names import BACKENDS
        try:
            load_experiment(None, ["backend=cuml-dask", "model.init=random", "model.oversampling_factor=3"])
        except Exception as exc:
            refused = str(exc)
        targets = {t.partition(":")[0] for t in BACKENDS.values()}
        print(json.dumps({"refused": refused, "loaded": sorted(targets & set(sys.modules))}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert "model.oversampling_factor=3.0 would be ignored" in out["refused"] and "'cuml-dask'" in out["refused"]
    assert out["loaded"] == []
