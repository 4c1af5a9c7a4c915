"""Benchmark section ``load``: many searches writing to one ``mlflow server`` on PostgreSQL at once.

    python -m benchmarks.run --sections load --load-searches 1,4,8 --load-trials 50 --load-server-workers 1

A throwaway PostgreSQL cluster (``initdb`` + ``postgres`` in a temp dir, as ``tests/test_stack.py``
starts it: no sudo, no systemd, a free loopback port, run as the ``postgres`` user under root) and
one ``mlflow server`` on it (``--workers`` = ``--load-server-workers``, artifacts proxied to a temp
folder), then for each concurrency level of ``--load-searches``, in separate driver processes
started together:

* ``ours``: this project's search (``backend=sklearn``, trial-parallel on one shared 2-worker Dask
  cluster, ``--load-trials`` trials of ``--load-rows`` rows, a child run per trial written by the
  search's writer); the per-trial write latency is the writer's own ``mlflow_write_s``;
* ``optuna``: an Optuna study (2 trials at a time, ``n_jobs=2``) of scikit-learn ``KMeans`` fits with
  ``optuna_integration.mlflow.MLflowCallback`` (one run per trial; a plain callback doing the same
  where optuna-integration is not installed), the latency of each callback call timed around it.

Reported per level and kind: trial records written per second (FINISHED trial runs over the write
window: first trial run created to last one ended, the drivers' start-up excluded), p50/p99
per-trial write latency, client-side errors, server-side 5xx/429 responses (each a retry or an
error a client saw), and a check of the store afterwards: every expected trial run
present and FINISHED, none RUNNING, none lost.  The capacity model these figures imply is in
``docs/scaling-load.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._common import Section
from testbed._procs import pg_bindir, stop_process_group, wait_until_ready

__all__ = ["SECTION", "bench_load"]

REPO = Path(__file__).resolve().parents[1]
#: Seconds one level (all its drivers) may take before it is ended and reported as failed.
_LEVEL_LIMIT_S = 1800.0


# -- services ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PG", "DASK_"))}
    return {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **extra}


def _start(es: contextlib.ExitStack, log: Path, cmd: list[str], sig: int = signal.SIGTERM,
           **kwargs: Any) -> subprocess.Popen:
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
    es.callback(stop_process_group, proc, sig)  # stopped by its own handle however the benchmark ends
    return proc


def _pg_bindir() -> Path:
    """PostgreSQL's server binaries (:func:`testbed._procs.pg_bindir`), or RuntimeError with the fix."""
    found = pg_bindir()
    if found is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, postgres) not found: apt-get install postgresql")
    return found


def _run_as() -> dict[str, Any]:
    """initdb and postgres refuse root: run them as the ``postgres`` user there."""
    if os.geteuid() != 0:
        return {}
    pwd.getpwnam("postgres")
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def _postgres(es: contextlib.ExitStack, logs: Path, password: str, max_connections: int) -> int:
    """A PostgreSQL cluster in a temp dir on a free loopback port; role ``kmeans`` owns ``mlflow``."""
    bindir, run_as = _pg_bindir(), _run_as()
    base = Path(tempfile.mkdtemp(prefix="kmeans-load-pg-"))
    es.callback(shutil.rmtree, base, ignore_errors=True)
    if run_as:
        shutil.chown(base, "postgres", "postgres")
    env = _clean_env(LC_ALL="C")
    subprocess.run([str(bindir / "initdb"), "-D", str(base / "data"), "-U", "postgres", "-E", "UTF8", "--locale=C",
                    "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"],
                   cwd=base, env=env, capture_output=True, text=True, timeout=180, check=True, **run_as)
    port = _free_port()
    proc = _start(es, logs / "postgres.log",
                  [str(bindir / "postgres"), "-D", str(base / "data"), "-h", "127.0.0.1", "-p", str(port),
                   "-k", str(base), "-c", f"max_connections={max_connections}",
                   # A throwaway cluster: durability off, as tests/test_stack.py runs it.
                   "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                  sig=signal.SIGINT, cwd=base, env=env, **run_as)
    wait_until_ready("postgres", lambda: subprocess.run([str(bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                                                         str(port)], env=env, timeout=30, check=False).returncode == 0,
                     proc, logs / "postgres.log", 60)
    conn = ["-h", str(base), "-p", str(port), "-U", "postgres"]
    for cmd in ([str(bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", *conn,
                 "-c", f"CREATE ROLE kmeans LOGIN PASSWORD '{password}'"],
                [str(bindir / "createdb"), *conn, "-O", "kmeans", "mlflow"]):
        subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True, timeout=60, check=True, **run_as)
    return port


def _server(es: contextlib.ExitStack, folder: Path, pg_port: int, password: str, workers: int) -> tuple[str, Path]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "mlflow-server.log"
    proc = _start(es, log, [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                            "--backend-store-uri", f"postgresql+psycopg://kmeans@127.0.0.1:{pg_port}/mlflow",
                            "--artifacts-destination", str(folder / "artifacts"), "--workers", str(workers)],
                  cwd=folder, env=_clean_env(PGPASSWORD=password))  # the password never on a command line

    def ready() -> bool:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200

    wait_until_ready("mlflow server", ready, proc, log, 300)
    return url, log


@contextlib.contextmanager
def _shared_cluster(workers: int) -> Iterator[str]:
    """One process LocalCluster every driver of a level submits its trials to (its address)."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit="2GiB",
                           host="127.0.0.1", dashboard_address=None)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


# -- the drivers (child processes) ----------------------------------------------------------------
def _driver_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from toolkit.config import load_experiment
    from toolkit.search import search

    cfg = load_experiment(None, {
        "name": spec["name"], "backend": "sklearn", "data.n_samples": spec["rows"], "data.n_features": 2,
        "data.centers": 4, "cluster.scheduler_address": spec["scheduler"], "search.n_trials": spec["trials"],
        "search.storage": spec["storage"], "search.sampler": "random", "search.refit": False,
        "search.space.n_clusters.low": 2, "search.space.n_clusters.high": 8,
        "metrics.silhouette_sample": min(spec["rows"], 300), "tracking.log_plot": False, "model.n_init": 1,
        "registry.register_best": False, "tracking.experiment": spec["experiment"],
    })
    out = search(cfg)
    return {"parent": out.parent_run_id, "latencies": [r["mlflow_write_s"] for r in out.trials
                                                       if r.get("mlflow_write_s") is not None],
            "errors": sum(1 for r in out.trials if r.get("error"))}


def _driver_optuna(spec: dict[str, Any]) -> dict[str, Any]:
    import mlflow
    import optuna
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    X, _ = make_blobs(n_samples=spec["rows"], n_features=2, centers=4, random_state=0)
    try:
        from optuna_integration.mlflow import MLflowCallback

        # The level's experiment, made once before the drivers start, named by id: four drivers
        # racing mlflow.set_experiment(name) left one driver's runs in "Default" (seen at 4 searches).
        callback: Any = MLflowCallback(tracking_uri=spec["url"], metric_name="inertia", create_experiment=False,
                                       mlflow_kwargs={"experiment_id": spec["experiment_id"]})
        kind = "optuna-integration MLflowCallback"
    except ImportError:  # a plain callback writing what MLflowCallback writes: one run per trial
        mlflow.set_tracking_uri(spec["url"])

        def callback(study: Any, trial: Any) -> None:
            with mlflow.start_run(run_name=str(trial.number), experiment_id=spec["experiment_id"]):
                mlflow.log_params(trial.params)
                mlflow.log_metric("inertia", trial.value)

        kind = "plain callback"
    latencies: list[float] = []
    errors = [0]

    def timed(study: Any, trial: Any) -> None:
        t = time.perf_counter()
        try:
            callback(study, trial)
        except Exception:
            errors[0] += 1
        latencies.append(time.perf_counter() - t)

    def objective(trial: Any) -> float:
        k = trial.suggest_int("n_clusters", 2, 8)
        return float(KMeans(n_clusters=k, n_init=1, random_state=trial.number).fit(X).inertia_)

    study = optuna.create_study(study_name=spec["name"])
    study.optimize(objective, n_trials=spec["trials"], n_jobs=2, callbacks=[timed])
    return {"parent": None, "latencies": latencies, "errors": errors[0], "callback": kind}


def _child(spec_json: str) -> None:
    """A driver process: run one search, write its figures to ``spec["out"]``."""
    spec = json.loads(spec_json)
    os.environ["MLFLOW_TRACKING_URI"] = spec["url"]
    os.environ["KMEANS_QUIET"] = "1"
    t = time.perf_counter()
    try:
        res = (_driver_ours if spec["kind"] == "ours" else _driver_optuna)(spec)
        res["failed"] = None
    except Exception as exc:  # reported, never hidden: a failed driver is an error of the level
        res = {"parent": None, "latencies": [], "errors": 0, "failed": f"{type(exc).__name__}: {exc}"[:300]}
    res["wall_s"] = time.perf_counter() - t
    Path(spec["out"]).write_text(json.dumps(res))


# -- one level ------------------------------------------------------------------------------------
def _refused(log: Path, start: int) -> int:
    """Responses the server logged since byte ``start`` (uvicorn's access log) with a 5xx or 429
    status: each one a request a client had to retry or gave up on.  (404s are lookups of an
    experiment not created yet: part of the protocol, not errors.)"""
    with open(log, errors="replace") as fh:
        fh.seek(start)
        return sum(1 for line in fh if re.search(r'" (5\d\d|429)\b', line))


def _check_store(url: str, kind: str, experiment: str, parents: list[str], expected: int) -> dict[str, int]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=url)
    exp = c.get_experiment_by_name(experiment)
    runs = [] if exp is None else c.search_runs([exp.experiment_id], max_results=50_000)
    # Ours: the children of the searches' parent runs; Optuna's callback: every run is a trial.
    trials = [r for r in runs if kind == "optuna" or r.data.tags.get("mlflow.parentRunId") in parents]
    finished = sum(r.info.status == "FINISHED" for r in trials)
    # The write window: first trial run created to last one ended (the drivers' start-up excluded).
    stamps = [(r.info.start_time, r.info.end_time) for r in trials if r.info.end_time]
    window = (max(e for _, e in stamps) - min(s for s, _ in stamps)) / 1e3 if stamps else float("nan")
    return {"expected": expected, "recorded": len(trials), "finished": finished,
            "running": sum(r.info.status == "RUNNING" for r in runs), "lost": max(0, expected - finished),
            "window_s": window}


def _level(kind: str, n: int, trials: int, rows: int, url: str, log: Path, scheduler: str, tmp: Path) -> dict[str, Any]:
    from mlflow import MlflowClient

    experiment = f"load-{kind}-{n}-{secrets.token_hex(3)}"
    experiment_id = MlflowClient(tracking_uri=url).create_experiment(experiment)
    mark = log.stat().st_size
    procs, outs = [], []
    env = {**_clean_env(PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))}
    t = time.perf_counter()
    with contextlib.ExitStack() as es:
        for i in range(n):
            out = tmp / f"{experiment}-{i}.json"
            spec = {"kind": kind, "name": f"{experiment}-{i}", "experiment": experiment, "trials": trials, "rows": rows,
                    "url": url, "scheduler": scheduler, "storage": str(tmp / f"{experiment}-{i}.optuna.log"),
                    "out": str(out), "experiment_id": experiment_id}
            code = f"from benchmarks.load import _child; _child({json.dumps(spec)!r})"
            procs.append(_start(es, tmp / f"{experiment}-{i}.log", [sys.executable, "-c", code], cwd=REPO, env=env))
            outs.append(out)
        deadline = time.monotonic() + _LEVEL_LIMIT_S
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
    wall = time.perf_counter() - t
    results = [json.loads(o.read_text()) if o.exists() else {"latencies": [], "errors": 0, "failed": "no result",
                                                              "parent": None} for o in outs]
    lat = sorted(x for r in results for x in r["latencies"])
    records = len(lat)
    store = _check_store(url, kind, experiment, [r["parent"] for r in results if r["parent"]], n * trials)
    return {
        "kind": kind, "searches": n, "trials_each": trials, "wall_s": wall, "records": records,
        # Over the write window (first trial run created to last ended), not the drivers' start-up.
        "records_per_s": store["finished"] / store["window_s"] if store["window_s"] > 0 else float("nan"),
        "p50_ms": 1e3 * statistics.median(lat) if lat else float("nan"),
        "p99_ms": 1e3 * lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
        "client_errors": sum(r["errors"] for r in results),
        "failed_drivers": [r["failed"] for r in results if r.get("failed")],
        "server_5xx_429": _refused(log, mark), "store": store,
        "callback": next((r.get("callback") for r in results if r.get("callback")), None),
    }


def bench_load(tmp: str, searches: list[int], trials: int = 50, rows: int = 300, server_workers: int = 1,
               kinds: tuple[str, ...] = ("ours", "optuna"), dask_workers: int = 2) -> dict[str, Any]:
    """Every level of ``searches`` concurrent drivers, for each kind; see the module docstring."""
    folder = Path(tmp) / "load"
    folder.mkdir(parents=True, exist_ok=True)
    password = "pw-" + secrets.token_hex(12)
    levels = []
    with contextlib.ExitStack() as es:
        t = time.perf_counter()
        pg = _postgres(es, folder, password, max_connections=max(100, 20 * max(searches)))
        url, log = _server(es, folder, pg, password, server_workers)
        up = time.perf_counter() - t
        scheduler = es.enter_context(_shared_cluster(dask_workers))
        for n in searches:
            for kind in kinds:
                levels.append(_level(kind, n, trials, rows, url, log, scheduler, folder))
    ok = all(lv["store"]["lost"] == 0 and lv["store"]["running"] == 0 and not lv["failed_drivers"] for lv in levels)
    return {"server_workers": server_workers, "stack_up_s": up, "trials": trials, "rows": rows, "levels": levels,
            "targets": {"load: no lost or RUNNING trial runs, no failed driver": ok}}


def _show(r: dict[str, Any]) -> None:
    print(f"\n-- load: one mlflow server (--workers {r['server_workers']}) on PostgreSQL; {r['trials']} trials per "
          f"search, trial-parallel; stack up in {r['stack_up_s']:.0f} s")
    print(f"   {'kind':<7} {'searches':>8} {'records':>8} {'rec/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
          f"{'5xx/429':>7} {'lost':>5} {'RUNNING':>7} {'wall s':>7}")
    for lv in r["levels"]:
        st = lv["store"]
        print(f"   {lv['kind']:<7} {lv['searches']:>8} {lv['records']:>8} {lv['records_per_s']:>7.1f} "
              f"{lv['p50_ms']:>8.0f} {lv['p99_ms']:>8.0f} {lv['client_errors'] + len(lv['failed_drivers']):>6} "
              f"{lv['server_5xx_429']:>7} {st['lost']:>5} {st['running']:>7} {lv['wall_s']:>7.1f}")
        for f in lv["failed_drivers"]:
            print(f"     failed driver: {f}")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--load-searches", default="1,4,8", help="comma list of concurrent searches per level")
    p.add_argument("--load-trials", type=int, default=50, help="trials per search")
    p.add_argument("--load-rows", type=int, default=300, help="rows each trial fits (tiny: the store is measured)")
    p.add_argument("--load-server-workers", type=int, default=1, help="mlflow server --workers")
    p.add_argument("--load-kinds", default="ours,optuna", help="comma list of ours, optuna")


SECTION = Section(
    lambda a, tmp: bench_load(tmp, [int(s) for s in a.load_searches.split(",")], a.load_trials, a.load_rows,
                              a.load_server_workers, tuple(a.load_kinds.split(","))),
    _show, _add_arguments)
