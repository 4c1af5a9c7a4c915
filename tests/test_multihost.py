"""The scaling-out deployment on separate hosts (testbed/multihost.py): one network namespace per
host, PostgreSQL, an S3 store (moto's server mode), ``mlflow server`` proxying artifacts to it, a
Dask scheduler, two worker hosts and a driver.  Data and predictions live in the object store and
are read and written by the workers themselves.

One bed for the module (it takes most of the module's time to start).  Skipped in one line where
network namespaces cannot be made (not root) or a service's binaries are missing.
"""

from __future__ import annotations

import io
import json
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from testbed import multihost  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.slow]

N_TRIALS = 4
TRAIN = "s3://data/train/*.parquet"
OVERRIDES = f"data.source=file data.path={TRAIN} tracking.log_plot=false"


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[multihost.Bed]:
    why = multihost.unavailable() or multihost.missing_parts()
    if why:
        pytest.skip(why)
    t0 = time.monotonic()
    with multihost.Bed(base=tmp_path_factory.mktemp("bed")) as b:
        print(f"bed up in {time.monotonic() - t0:.1f} s: {b.timings}")
        from sklearn.datasets import make_blobs

        X, _ = make_blobs(n_samples=600, n_features=2, centers=4, cluster_std=0.3, random_state=0)
        b.on("driver", _put, b, "train/part-0.parquet", pd.DataFrame(X[:300], columns=["x0", "x1"]))
        b.on("driver", _put, b, "train/part-1.parquet", pd.DataFrame(X[300:], columns=["x0", "x1"]))
        yield b


def _put(bed: multihost.Bed, key: str, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    frame.to_csv(buf, index=False) if key.endswith(".csv") else frame.to_parquet(buf, index=False)
    bed.s3_client().put_object(Bucket="data", Key=key, Body=buf.getvalue())


def _get_parquet(bed: multihost.Bed, prefix: str) -> pd.DataFrame:
    s3 = bed.s3_client()
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="data", Prefix=prefix)["Contents"]
                  if o["Key"].endswith(".parquet"))
    return pd.concat([pd.read_parquet(io.BytesIO(s3.get_object(Bucket="data", Key=k)["Body"].read())) for k in keys])


def _search_cmd(bed: multihost.Bed, experiment: str) -> list[str]:
    return [sys.executable, "-m", "mlflow", "run", ".", "-e", "search", "--env-manager", "local",
            "--experiment-name", experiment, "-P", f"n_trials={N_TRIALS}", "-P", f"storage={bed.optuna_storage}",
            "-P", f"scheduler_address={bed.scheduler_address}", "-P", f"overrides={OVERRIDES}"]


def _summary(bed: multihost.Bed, experiment: str) -> dict:
    """The search's record, asked from the driver host: children's statuses and the study's best."""
    code = f"""
import json, optuna, os
from mlflow import MlflowClient
c = MlflowClient()
exp = c.get_experiment_by_name({experiment!r})
runs = c.search_runs([exp.experiment_id], max_results=500)
parent = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "search"][0]
kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
storage = {bed.optuna_storage!r}.replace("${{PGPASSWORD}}", os.environ["PGPASSWORD"])
s = next(s for s in optuna.get_all_study_summaries(storage)
         if s.user_attrs.get("mlflow_parent_run_id") == parent.info.run_id)
print(json.dumps({{"parent": parent.info.status, "kids": [k.info.status for k in kids],
                  "workers": sorted({{k.data.tags.get("trial.worker", "") for k in kids}}),
                  "best_params": s.best_trial.params, "best_value": s.best_trial.value,
                  "texts": [*parent.data.params.values(), *parent.data.tags.values()]}}))
"""
    done = bed.run([sys.executable, "-c", code], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _secrets_absent(bed: multihost.Bed, *texts: str) -> None:
    for secret in (bed.password, bed.aws_secret):
        assert not [t[:200] for t in texts if secret in str(t)]


@pytest.fixture(scope="module")
def searched(bed: multihost.Bed) -> dict:
    """The undisturbed search (with registration), reading its data from the object store."""
    t0 = time.monotonic()
    done = bed.run(_search_cmd(bed, "bed"), timeout=300)
    wall = time.monotonic() - t0
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    print(f"search on the bed: {wall:.1f} s")
    summary = _summary(bed, "bed")
    _secrets_absent(bed, done.stdout, done.stderr, *summary["texts"])
    return {**summary, "wall": wall}


@pytest.mark.timeout(600)
def test_search_registers_and_predict_reads_and_writes_the_object_store(bed: multihost.Bed, searched: dict) -> None:
    assert searched["parent"] == "FINISHED"
    assert searched["kids"] == ["FINISHED"] * N_TRIALS
    # The trials ran on the worker hosts (their addresses on the bed's bridge).
    assert searched["workers"] and all(re.fullmatch(r"tcp://10\.213\.0\.1[12]:\d+", w) for w in searched["workers"])

    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=500, n_features=2, centers=4, cluster_std=0.3, random_state=1)
    bed.on("driver", _put, bed, "score/in.csv", pd.DataFrame(X, columns=["x0", "x1"]))
    models = bed.run([sys.executable, "-c", "from mlflow import MlflowClient; "
                      "print(' '.join(m.name for m in MlflowClient().search_registered_models()))"], timeout=60)
    twin = next(n for n in models.stdout.split() if n.endswith("-sklearn"))
    uri = f"models:/{twin}@champion"
    done = bed.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "predict", "--env-manager", "local",
                    "-P", f"model_uri={uri}", "-P", "input=s3://data/score/in.csv",
                    "-P", "output=s3://data/out/labels.parquet", "-P", f"scheduler_address={bed.scheduler_address}"],
                   timeout=300)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    _secrets_absent(bed, done.stdout, done.stderr)
    scored = bed.on("driver", _get_parquet, bed, "out/labels.parquet/")
    assert len(scored) == len(X) and np.allclose(scored[["x0", "x1"]].to_numpy(), X)
    # The same model, loaded and predicting locally on the driver (no cluster).
    local = bed.run([sys.executable, "-c",
                     "import json, sys, pandas as pd; from toolkit.serving import load_predictor; "
                     f"p = load_predictor({uri!r}); X = pd.read_csv('s3://data/score/in.csv'); "
                     "print(json.dumps([int(v) for v in p.predict(X)]))"], timeout=120)
    assert local.returncode == 0, local.stderr[-3000:]
    labels = np.asarray(json.loads(local.stdout.strip().splitlines()[-1]))
    equal = int((labels == scored["label"].to_numpy()).sum())
    print(f"predict through the cluster vs local: {equal}/{len(X)} rows equal")
    assert equal == len(X)


@pytest.mark.timeout(600)
def test_a_worker_link_cut_mid_search_still_ends_with_every_trial_and_the_same_best(
        bed: multihost.Bed, searched: dict) -> None:
    proc = bed.popen(_search_cmd(bed, "bed-cut"))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    t0 = time.monotonic()
    out: list[str] = []
    # Cut once the trials are under way (the first trial line), or after 20 s at the latest.
    while time.monotonic() - t0 < 20:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        out.append(line)
        if re.search(r"\btrial\b|\b\d+/\d+\b", line, re.IGNORECASE):
            break
    bed.cut("worker1")
    cut_at = time.monotonic()
    time.sleep(8)
    bed.restore("worker1")
    up_at = time.monotonic()
    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            multihost._kill_group(proc)
    end = time.monotonic()
    while not lines.empty():
        out.append(lines.get())
    print(f"link cut {up_at - cut_at:.1f} s at {cut_at - t0:.1f} s into the search; search ended "
          f"{end - up_at:.1f} s after the link came back; wall {end - t0:.1f} s "
          f"vs {searched['wall']:.1f} s undisturbed")
    assert proc.returncode == 0, "".join(out)[-4000:]
    summary = _summary(bed, "bed-cut")
    assert summary["parent"] == "FINISHED"
    assert summary["kids"] == ["FINISHED"] * N_TRIALS
    assert summary["best_params"] == searched["best_params"]
    assert summary["best_value"] == pytest.approx(searched["best_value"], rel=1e-6)
