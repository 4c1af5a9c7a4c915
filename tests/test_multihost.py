"""The scaling-out deployment on separate hosts (testbed/multihost.py): one network namespace per
host, PostgreSQL, an S3 store (moto's server mode), ``mlflow server`` proxying artifacts to it, a
Dask scheduler, two worker hosts and a driver.  Data and predictions live in the object store and
are read and written by the workers themselves.

One bed for the module.  The entry points run as ``python -m mlproject.<entry>`` on the driver
host (what ``mlflow run`` runs, without its start-up); ``-e predict`` goes through ``mlflow run``
once, as the entry point across hosts.  The record is read in this process, its sockets on the
driver host (:meth:`Bed.on`); anything that needs a Dask client runs in a driver subprocess (a
client in this process could share an event loop thread that lives outside the bed).

Skipped in one line where network namespaces cannot be made (not root) or a service's binaries
are missing.  Figures (hosts, start-up, search walls, the link cut, predict equality) are printed
with ``-s``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from testbed import multihost  # noqa: E402
from testbed._procs import kill_process_group  # noqa: E402

pytestmark = [pytest.mark.server, pytest.mark.slow]

N_TRIALS = 3
TRAIN = "s3://data/train/*.parquet"
# Enough rows, initialisations and silhouette sample that a trial takes about a second of CPU
# on a worker: the link cut is made while a worker holds one.
ROWS = 40_000
OVERRIDES = ["data.source=file", f"data.path={TRAIN}", "tracking.log_plot=false", "model.n_init=4",
             "search.space.n_clusters.low=3", "search.space.n_clusters.high=6", "metrics.silhouette_sample=15000"]
FIGURES: dict[str, Any] = {}


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[multihost.Bed]:
    why = multihost.unavailable() or multihost.missing_parts()
    if why:
        pytest.skip(why)
    t0 = time.monotonic()
    with multihost.Bed(base=tmp_path_factory.mktemp("bed")) as b:
        FIGURES["bed_up_s"] = round(time.monotonic() - t0, 1)
        FIGURES["bed_timings_s"] = {k: round(v, 1) for k, v in b.timings.items()}
        from sklearn.datasets import make_blobs

        X, _ = make_blobs(n_samples=ROWS, n_features=2, centers=4, cluster_std=0.3, random_state=0)
        half = ROWS // 2
        b.on("driver", _put, b, "train/part-0.parquet", pd.DataFrame(X[:half], columns=["x0", "x1"]))
        b.on("driver", _put, b, "train/part-1.parquet", pd.DataFrame(X[half:], columns=["x0", "x1"]))
        yield b
        FIGURES["hosts"] = {h: multihost.address(h) for h in multihost.HOSTS}
        FIGURES["service_cpu_s"] = _service_cpu(b)
        print("\nmultihost figures: " + json.dumps(FIGURES, indent=1))


def _service_cpu(bed: multihost.Bed) -> dict[str, float]:
    """CPU seconds each bed service's process tree has used so far (a load-independent figure)."""
    import psutil

    out = {}
    for proc in bed._procs:
        with contextlib.suppress(psutil.Error):
            top = psutil.Process(proc.popen.pid)
            out[proc.name] = round(sum(sum(p.cpu_times()[:2]) for p in [top, *top.children(recursive=True)]), 1)
    return out


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
    return [sys.executable, "-m", "mlproject.search", "--n-trials", str(N_TRIALS), "--storage", bed.optuna_storage,
            "--scheduler-address", bed.scheduler_address,
            "--set", " ".join([*OVERRIDES, f"tracking.experiment={experiment}"])]


def _client(bed: multihost.Bed) -> Any:
    from mlflow import MlflowClient

    # The registry named too: another module's tracking_uri fixture leaves MLflow's process-wide
    # registry URI on its own sqlite store, which a client given only tracking_uri would use.
    return MlflowClient(tracking_uri=bed.tracking_uri, registry_uri=bed.tracking_uri)


def _runs(bed: multihost.Bed, experiment: str) -> tuple[Any, list[Any]]:
    """The search's parent run (None until it exists) and its child runs, asked on the driver host."""
    c = _client(bed)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None, []
    runs = c.search_runs([exp.experiment_id], max_results=500)
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    parents = {r.data.tags["mlflow.parentRunId"] for r in kids}
    parent = next((r for r in runs if r.info.run_id in parents), None)
    if parent is None:
        parent = next((r for r in runs if not r.data.tags.get("mlflow.parentRunId")), None)
    return parent, kids


def _best(bed: multihost.Bed, parent_id: str) -> tuple[dict, float]:
    """The Optuna study's best trial for the search whose parent run is ``parent_id``."""
    import optuna

    storage = optuna.storages.RDBStorage(bed.optuna_storage.replace("${PGPASSWORD}", bed.password))
    try:
        study = next(s for s in optuna.get_all_study_summaries(storage)
                     if s.user_attrs.get("mlflow_parent_run_id") == parent_id)
        return study.best_trial.params, study.best_trial.value
    finally:
        storage.remove_session()
        storage.engine.dispose()


def _summary(bed: multihost.Bed, experiment: str) -> dict:
    """The search's record: parent and children's statuses, workers, the study's best."""
    parent, kids = bed.on("driver", _runs, bed, experiment)
    assert parent is not None, f"no run in experiment {experiment!r}"
    params, value = bed.on("driver", _best, bed, parent.info.run_id)
    return {"parent": parent.info.status, "parent_id": parent.info.run_id, "parent_end": parent.info.end_time,
            "parent_start": parent.info.start_time,
            "kids": sorted(k.info.status for k in kids),
            "workers": sorted({k.data.tags.get("trial.worker", "") for k in kids}),
            "attempts": sorted(int(k.data.tags.get("trial.attempts", "1")) for k in kids),
            "trial_s": sorted(round((k.info.end_time - k.info.start_time) / 1000, 1) for k in kids),
            "best_params": params, "best_value": value,
            "texts": [*parent.data.params.values(), *parent.data.tags.values()]}


def _secrets_absent(bed: multihost.Bed, *texts: str) -> None:
    for secret in (bed.password, bed.aws_secret):
        assert not [t[:200] for t in texts if secret in str(t)]


def _ok(done: Any) -> None:
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def searched(bed: multihost.Bed) -> dict:
    """The undisturbed search (with registration), reading its data from the object store."""
    t0 = time.monotonic()
    done = bed.run(_search_cmd(bed, "bed"), timeout=300)
    FIGURES["search_wall_s"] = round(time.monotonic() - t0, 1)
    _ok(done)
    summary = _summary(bed, "bed")
    _secrets_absent(bed, done.stdout, done.stderr, *summary["texts"])
    return summary


@pytest.fixture(scope="module")
def names(bed: multihost.Bed, searched: dict) -> dict[str, str]:
    """The registered names (native and scikit-learn twin) the search's champion carries."""
    models = bed.on("driver", lambda: [m.name for m in _client(bed).search_registered_models()])
    twin = next(n for n in models if n.endswith("-sklearn"))
    return {"twin": twin, "native": twin.removesuffix("-sklearn")}


@pytest.mark.timeout(600)
def test_search_registers_and_predict_reads_and_writes_the_object_store(
        bed: multihost.Bed, searched: dict, names: dict[str, str]) -> None:
    assert searched["parent"] == "FINISHED"
    assert searched["kids"] == ["FINISHED"] * N_TRIALS
    # The trials ran on the worker hosts (their addresses on the bed's bridge).
    assert searched["workers"] and all(re.fullmatch(r"tcp://10\.213\.0\.1[12]:\d+", w) for w in searched["workers"])

    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=500, n_features=2, centers=4, cluster_std=0.3, random_state=1)
    bed.on("driver", _put, bed, "score/in.csv", pd.DataFrame(X, columns=["x0", "x1"]))
    uri = f"models:/{names['twin']}@champion"
    # The one `mlflow run` of the module: the entry point, as a user on the driver host runs it.
    t0 = time.monotonic()
    done = bed.run([sys.executable, "-m", "mlflow", "run", ".", "-e", "predict", "--env-manager", "local",
                    "-P", f"model_uri={uri}", "-P", "input=s3://data/score/in.csv",
                    "-P", "output=s3://data/out/labels.parquet", "-P", f"scheduler_address={bed.scheduler_address}"],
                   timeout=300)
    FIGURES["predict_wall_s"] = round(time.monotonic() - t0, 1)
    _ok(done)
    _secrets_absent(bed, done.stdout, done.stderr)
    scored = bed.on("driver", _get_parquet, bed, "out/labels.parquet/")
    assert len(scored) == len(X) and np.allclose(scored[["x0", "x1"]].to_numpy(), X)
    # The same model, loaded and predicting locally on the driver (no cluster).
    local = _predict_both(bed, uri, "s3://data/score/in.csv")
    equal = int((np.asarray(local["local"]) == scored["label"].to_numpy()).sum())
    FIGURES["predict_equal"] = f"{equal}/{len(X)}"
    assert equal == len(X)


# Loads a registered model twice on the driver: locally, and rebuilt as a distributed predictor on
# the bed's cluster (the model installed on every worker); predicts the same object-store rows.
_BOTH = """
import json, sys
import dask.dataframe as dd, pandas as pd
from distributed import Client
from toolkit.serving import load_predictor
uri, path, address = sys.argv[1:4]
X = pd.read_csv(path)
local = load_predictor(uri).predict(X)
with Client(address, timeout="30s") as client:
    with load_predictor(uri, client=client) as dist:
        frame = dd.read_csv(path, blocksize=4_000)
        labels = dist.predict(frame).compute()
        where = sorted(client.run(lambda dask_worker: dask_worker.name).values())
print(json.dumps({"local": [int(v) for v in local], "distributed": [int(v) for v in labels],
                  "kind": type(dist).__name__, "partitions": frame.npartitions, "workers": where}))
"""


def _predict_both(bed: multihost.Bed, uri: str, path: str) -> dict:
    done = bed.run([sys.executable, "-c", _BOTH, uri, path, bed.scheduler_address], timeout=180)
    _ok(done)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
def test_refresh_on_the_cluster_registers_a_challenger_the_cluster_serves_as_the_local_model(
        bed: multihost.Bed, searched: dict, names: dict[str, str]) -> None:
    # New rows from the same blobs (make_blobs draws the centres first: the same seed, the same
    # centres), in the object store; the refresh fits them on the workers.
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=ROWS + 4_000, n_features=2, centers=4, cluster_std=0.3, random_state=0)
    bed.on("driver", _put, bed, "fresh/part-0.parquet", pd.DataFrame(X[ROWS:], columns=["x0", "x1"]))
    t0 = time.monotonic()
    done = bed.run([sys.executable, "-m", "mlproject.refresh", "--model-name", names["native"], "--backend", "dask",
                    "--scheduler-address", bed.scheduler_address, "--set",
                    "data.source=file data.path=s3://data/fresh/*.parquet tracking.log_plot=false "
                    "tracking.experiment=bed-refresh"],
                   timeout=300)
    FIGURES["refresh_wall_s"] = round(time.monotonic() - t0, 1)
    _ok(done)
    _secrets_absent(bed, done.stdout, done.stderr)
    assert "refresh finished" in done.stdout + done.stderr
    shift = re.search(r"centre shift max ([0-9.e+-]+)", done.stdout + done.stderr)
    assert shift and float(shift[1]) < 0.5, done.stdout[-2000:]  # the same blobs: the centres barely move

    def challenger() -> Any:
        return _client(bed).get_model_version_by_alias(names["twin"], "challenger")

    version = bed.on("driver", challenger)
    assert version.version != bed.on("driver", lambda: _client(bed).get_model_version_by_alias(
        names["twin"], "champion")).version
    both = _predict_both(bed, f"models:/{names['twin']}@challenger", "s3://data/score/in.csv")
    assert both["kind"] == "DistributedPredictor" and both["partitions"] > 1
    assert both["workers"] == ["worker1", "worker2"]
    equal = int((np.asarray(both["local"]) == np.asarray(both["distributed"])).sum())
    FIGURES["refreshed_distributed_vs_local_equal"] = f"{equal}/{len(both['local'])}"
    assert len(both["local"]) == 500 and equal == 500


def _until(what: str, check: Any, limit_s: float) -> float:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if check():
            return time.time()
        time.sleep(0.25)
    raise AssertionError(f"{what} not seen within {limit_s:.0f} s")


# The scheduler's view from the driver host, 5 times a second: trial tasks held by each worker host.
_WATCH = """
import json, sys, time
from distributed import Client
with Client(sys.argv[1], timeout="30s") as client:
    while True:
        busy = {a.split("//")[1].split(":")[0]: sum(str(k).startswith("trial-") for k in keys)
                for a, keys in client.processing().items()}
        print(json.dumps(busy), flush=True)
        time.sleep(0.2)
"""


class _Watch:
    """Runs :data:`_WATCH` on the driver host; ``busy(host)`` is its latest count for ``host``."""

    def __init__(self, bed: multihost.Bed) -> None:
        self.proc = bed.popen([sys.executable, "-c", _WATCH, bed.scheduler_address])
        self.latest: dict[str, int] = {}
        self.lines = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            with contextlib.suppress(ValueError):
                self.latest = json.loads(line)
                self.lines += 1

    def busy(self, host: str) -> int:
        return self.latest.get(multihost.address(host), 0)

    def close(self) -> None:
        kill_process_group(self.proc)


@pytest.mark.timeout(600)
def test_a_worker_link_cut_mid_search_still_ends_with_every_trial_and_the_same_best(
        bed: multihost.Bed, searched: dict) -> None:
    watch = _Watch(bed)
    _until("the driver's view of the scheduler", lambda: watch.lines > 0, 120)
    seen = len(bed.worker_events())
    t0 = time.time()
    proc = bed.popen(_search_cmd(bed, "bed-cut"))
    lines: list[str] = []  # read as it comes, so a full pipe never holds the search up
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    try:
        # Cut a worker host while it holds a trial, worker1 if it does.  Not at the first child
        # run: those are written after their trial ends, by the writer, and with 3 trials
        # on 2 workers the first one appeared only once every trial had ended (3 runs of 3).
        _until("a worker holding a trial", lambda: watch.busy("worker1") + watch.busy("worker2") > 0, 240)
        victim = "worker2" if watch.busy("worker1") == 0 else "worker1"
        tasks_at_cut = watch.busy(victim)
        bed.cut(victim)
        cut_at = time.time()
        try:
            # Down until the scheduler has dropped it (its TTL ran out), then back.
            dropped = _until(f"the scheduler dropping {victim}",
                             lambda: ("remove", victim) in [e[1:] for e in bed.worker_events()[seen:]], 90)
        finally:
            bed.restore(victim)
            up_at = time.time()
        proc.wait(timeout=300)
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            kill_process_group(proc)
        watch.close()
    out = "".join(lines)
    assert proc.returncode == 0, out[-4000:]
    summary = _summary(bed, "bed-cut")
    cut = FIGURES["link_cut"] = {
        "parent_started_after_s": round(summary["parent_start"] / 1000 - t0, 1), "cut_after_s": round(cut_at - t0, 1),
        "cut": victim, "trials_it_held": tasks_at_cut, "dropped_by_scheduler_after_cut_s": round(dropped - cut_at, 1),
        "down_s": round(up_at - cut_at, 1),
        "search_ended_after_restore_s": round(summary["parent_end"] / 1000 - up_at, 1),
        "search_wall_s": round(summary["parent_end"] / 1000 - t0, 1),
        "undisturbed_wall_s": FIGURES.get("search_wall_s"),
        "trial_s": summary["trial_s"], "undisturbed_trial_s": searched["trial_s"],
        "trial_attempts": summary["attempts"], "trial_workers": summary["workers"]}
    assert summary["parent"] == "FINISHED"
    assert summary["kids"] == ["FINISHED"] * N_TRIALS  # exactly n_trials, none RUNNING or FAILED
    # The cut landed mid-search: after the parent run started, before it ended, and took work
    # away from the cluster (the worker held a trial).
    assert summary["parent_start"] / 1000 < cut_at < summary["parent_end"] / 1000
    assert tasks_at_cut > 0, cut
    assert summary["best_params"] == searched["best_params"]
    assert summary["best_value"] == pytest.approx(searched["best_value"], rel=1e-6)
    _secrets_absent(bed, out, *summary["texts"])
    # The dropped worker's process ended; its host's supervisor starts it again and it registers.
    back = _until(f"{victim} registering again", lambda: [
        what for _, what, name in bed.worker_events()[seen:] if name == victim][-1:] == ["register"], 180)
    cut["back_after_restore_s"] = round(back - up_at, 1)
