"""Section ``lean`` (issue 25): fixed costs and the data-parallel search against their peers.

    python -m benchmarks.run --sections lean
    python -m benchmarks.run --sections lean --lean-parts data_parallel_search --lean-rows 4000000

Parts (``--lean-parts``, comma list; each prints medians over ``--repeats`` rounds and, where it
has a peer, the median of the paired ratios of the rounds, run back to back):

* ``help_startup``  ``python -m mlproject.<entry> --help`` for every entry point, against
  ``python -c pass`` (the interpreter's own start); target: each under 1 s.
* ``train_startup``  ``python -m mlproject.train`` on ``experiments/blobs.yaml`` with the sklearn
  backend (``--lean-train-rows`` rows), against the interpreter's start; target: at most 2.5 s.
  In the same rounds ``mlflow run . -e train --env-manager local`` with the same settings: target
  at most 2x the direct command; what ``mlflow run`` itself adds is reported (paired difference).
* ``data_parallel_search``  one trial per k of ``--lean-ks`` through the data-parallel trial runner
  (``dask`` backend, fit + the objective's metric, as a search's trial loop) against a plain loop
  of scikit-learn fits with the same k values and the same metric (silhouette on the same seeded
  sample), on ``--lean-rows`` x ``--features``; targets: at most 1.1x at 1M rows, 0.8x at 4M.
* ``first_fit_cold_vs_warm``  the first ``dask`` fit on a fresh cluster against the second, the
  data made and placed after the cluster starts (``train``'s order); target: at most 1.5x.  Run
  with the speed-ups on and off in each round, with the cluster start and the time from it to the
  end of the first fit, so a warm-up that only moves the cost shows (:func:`first_fit_cold_vs_warm`).
* ``trial_parallel_init``  two k-means++ initialisations on two threads at once against the same
  two one after the other: 2.0x means the threads ran side by side, 1.0x that they took turns
  (the GIL); the sklearn backend's (a Numba kernel without the GIL) and scikit-learn's own.

Sizes are flags so that a test runs every part tiny (``tests/test_benchmarks.py``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import Section, blobs, cluster, environ, median, paired

REPO = Path(__file__).resolve().parents[1]
PARTS = ("help_startup", "train_startup", "data_parallel_search", "first_fit_cold_vs_warm", "trial_parallel_init")


def _entry_points() -> list[str]:
    return sorted(p.stem for p in (REPO / "mlproject").glob("*.py") if not p.stem.startswith("_"))


def _wall(cmd: list[str], cwd: str, env: dict[str, str] | None = None) -> float:
    """Wall seconds of one process, which must succeed."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-500:]}")
    return wall


def _env(tmp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{os.path.join(tmp, 'lean-mlflow.db')}"
    env["KMEANS_QUIET"] = "1"
    return env


def help_startup(tmp: str, repeats: int, entries: list[str] | None = None) -> dict[str, Any]:
    """``--help`` of each entry point against ``python -c pass``, in an empty folder."""
    entries = entries or _entry_points()
    where = os.path.join(tmp, "help")
    os.makedirs(where, exist_ok=True)
    env = _env(tmp)
    floor, walls = [], {e: [] for e in entries}
    for _ in range(repeats):
        floor.append(_wall([sys.executable, "-c", "pass"], where, env))
        for e in entries:
            walls[e].append(_wall([sys.executable, "-m", f"mlproject.{e}", "--help"], where, env))
    worst = max(median(w) for w in walls.values())
    return {"repeats": repeats, "python_s": median(floor),
            "help_s": {e: median(w) for e, w in walls.items()},
            "help_over_python": {e: paired(w, floor) for e, w in walls.items()},
            "files_written": sorted(os.listdir(where)),
            "targets": {"help_startup: every entry point's --help < 1 s": worst < 1.0,
                        "help_startup: --help writes nothing": not os.listdir(where)}}


def train_startup(tmp: str, repeats: int, rows: int, mlflow_run: bool = True) -> dict[str, Any]:
    """``python -m mlproject.train`` (sklearn, blobs) against ``python -c pass``, and, with
    ``mlflow_run``, ``mlflow run . -e train`` with the same settings in the same rounds: its wall,
    its ratio to the direct command, and what ``mlflow run`` itself adds (the paired difference)."""
    env = _env(tmp)
    sets = f"data.n_samples={rows} tracking.experiment=lean-train"
    cmd = [sys.executable, "-m", "mlproject.train", "--config", str(REPO / "experiments" / "blobs.yaml"),
           "--backend", "sklearn", "--set", sets]
    wrapped = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "train", "--env-manager", "local",
               "--experiment-name", "lean-train", "-P", "backend=sklearn", "-P", f"overrides={sets}"]
    _wall(cmd, tmp, env)  # the store and the experiment are created once, not in the figure
    floor, train, run = [], [], []
    for _ in range(repeats):
        floor.append(_wall([sys.executable, "-c", "pass"], tmp, env))
        train.append(_wall(cmd, tmp, env))
        if mlflow_run:
            run.append(_wall(wrapped, tmp, env))
    out: dict[str, Any] = {
        "repeats": repeats, "rows": rows, "python_s": median(floor), "train_s": median(train),
        "train_over_python": paired(train, floor),
        "targets": {"train_startup: python -m mlproject.train (sklearn, blobs) <= 2.5 s": median(train) <= 2.5}}
    if run:
        out.update({"mlflow_run_s": median(run), "mlflow_run_over_train": paired(run, train),
                    "mlflow_run_own_s": median([a - b for a, b in zip(run, train, strict=True)])})
        out["targets"]["train_startup: mlflow run -e train <= 2x python -m mlproject.train"] = (
            out["mlflow_run_over_train"] <= 2.0)
    return out


def _sklearn_loop(X: np.ndarray, ks: list[int], sample: int, seed: int) -> dict[int, float]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    out = {}
    for k in ks:
        labels = KMeans(n_clusters=k, n_init=1, random_state=0).fit_predict(X)
        out[k] = float(silhouette_score(X, labels, sample_size=min(sample, len(X)), random_state=seed))
    return out


def _project_loop(client: Any, X: np.ndarray, ks: list[int], sample: int, seed: int) -> dict[int, float]:
    from toolkit.backends import get_backend
    from toolkit.config import MetricsConfig, ModelConfig
    from toolkit.data import Dataset
    from toolkit.search.trials import DataParallelRunner

    backend = get_backend("dask")(client=client)
    dataset = Dataset("lean", X, None, [f"x{i}" for i in range(X.shape[1])], "blobs")
    metrics = MetricsConfig(silhouette_sample=sample, seed=seed, trial_metrics=["silhouette"])
    runner = DataParallelRunner(backend, backend.prepare(dataset), None, metrics, dataset=dataset)
    for key, k in enumerate(ks):
        runner.submit(key, ModelConfig(n_clusters=k, n_init=1, random_state=0))
    out = {}
    while runner.pending():
        for res in runner.results():
            if not res.ok:
                raise RuntimeError(res.error)
            out[res.params.n_clusters] = res.metrics["silhouette"]
    return out


def data_parallel_search(repeats: int, rows: int, features: int, ks: list[int], workers: int,
                         sample: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """A data-parallel trial loop (placing the data included) against a plain scikit-learn loop."""
    X = blobs(rows, features, max(ks))
    project, plain = [], []
    with cluster(workers) as client:
        _project_loop(client, X[: max(2000, max(ks) * 10)], ks[:1], min(sample, 500), seed)  # warm the workers
        for _ in range(repeats):
            t0 = time.perf_counter()
            _sklearn_loop(X, ks, sample, seed)
            plain.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _project_loop(client, X, ks, sample, seed)
            project.append(time.perf_counter() - t0)
    ratio = paired(project, plain)
    target = 1.1 if rows < 4_000_000 else 0.8
    return {"repeats": repeats, "rows": rows, "features": features, "ks": ks, "workers": workers,
            "project_s": median(project), "sklearn_loop_s": median(plain), "project_over_sklearn": ratio,
            "targets": {f"data_parallel_search: {rows} rows <= {target}x a scikit-learn loop": ratio <= target}}


def _cold_round(workers: int, rows: int, features: int, k: int) -> dict[str, float]:
    """One fresh cluster, in ``train``'s order: start the cluster, make the backend, make the
    data, place it, fit twice.  Seconds of each step; ``to_first_fit``: cluster start to the end
    of the first fit (where a warm-up that only moved the cost would show)."""
    from toolkit.backends import get_backend
    from toolkit.config import ModelConfig
    from toolkit.data import Dataset

    params = ModelConfig(n_clusters=k, n_init=1, random_state=0)
    t0 = time.perf_counter()
    with cluster(workers) as client:
        t1 = time.perf_counter()
        backend = get_backend("dask")(client=client)  # speed-ups on: the workers start loading the kernels
        X = blobs(rows, features, k)  # made after the cluster, as train loads its data
        placed = backend.prepare(Dataset("lean", X, None, [], "blobs"))
        t2 = time.perf_counter()
        backend.fit(placed, params)  # the first fit: its warm-up (wait for the workers' kernels) included
        t3 = time.perf_counter()
        backend.fit(placed, params)
        t4 = time.perf_counter()
    return {"cluster_start": t1 - t0, "data": t2 - t1, "cold": t3 - t2, "warm": t4 - t3, "to_first_fit": t3 - t0}


def first_fit_cold_vs_warm(repeats: int, rows: int, features: int, k: int, workers: int) -> dict[str, Any]:
    """A fresh cluster's first ``dask`` fit against its second, with the speed-ups on and off.

    "First fit": ``backend.fit`` on fresh worker processes (a new cluster per round), once the
    data is made and placed, as ``train`` does it: its clock includes the backend's warm-up (the
    workers' Numba import and kernel load, unless already done).  With the speed-ups on
    (:mod:`toolkit._speedups`) the workers start that load when the backend gets its client,
    overlapping the data's making and placing, so part of the cost moves out of the first fit:
    hence ``to_first_fit`` (cluster start to the end of the first fit), compared on against off
    in the same round, and the cluster start and data steps reported apart.  The driver's own
    one-time compile is paid once before the rounds (it is per driver process, not per worker).
    """
    from toolkit._speedups import SWITCH_ENV
    from toolkit.backends.dask_lloyd import _warm_dask_driver

    _warm_dask_driver(features)
    runs: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for r in range(repeats):
        for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
            with environ(**{SWITCH_ENV: "1" if mode == "on" else "0"}):
                runs[mode].append(_cold_round(workers, rows, features, k))

    def col(mode: str, key: str) -> list[float]:
        return [x[key] for x in runs[mode]]

    ratio = paired(col("on", "cold"), col("on", "warm"))
    out: dict[str, Any] = {"repeats": repeats, "rows": rows, "workers": workers,
                           "rounds": [{"speedups": m, **x} for m in ("on", "off") for x in runs[m]]}
    for mode, suffix in (("on", ""), ("off", "_off")):  # the headline figures: speed-ups on, as shipped
        for key in ("cluster_start", "data", "cold", "warm", "to_first_fit"):
            out[f"{key}_s{suffix}"] = median(col(mode, key))
    out |= {"cold_over_warm": ratio, "cold_over_warm_off": paired(col("off", "cold"), col("off", "warm")),
            "to_first_fit_on_over_off": paired(col("on", "to_first_fit"), col("off", "to_first_fit")),
            "targets": {"first_fit_cold_vs_warm: a fresh worker's first fit <= 1.5x a warm one": ratio <= 1.5}}
    return out


def trial_parallel_init(repeats: int, rows: int, features: int, k: int) -> dict[str, Any]:
    """Two k-means++ initialisations one after the other against two threads at once: the
    sklearn backend's (``toolkit.backends.scikit.kmeans_plusplus_centers``, a Numba kernel without
    the GIL) and, as the peer, scikit-learn's own ``kmeans_plusplus``, in alternating rounds."""
    from sklearn.cluster import kmeans_plusplus

    from toolkit.backends.scikit import kmeans_plusplus_centers

    X = blobs(rows, features, k)
    inits = {"project": lambda seed: kmeans_plusplus_centers(X, k, seed),
             "sklearn": lambda seed: kmeans_plusplus(X, k, random_state=seed)}
    serial: dict[str, list[float]] = {name: [] for name in inits}
    threads: dict[str, list[float]] = {name: [] for name in inits}
    for init in inits.values():
        init(0)  # compile / import
    for r in range(repeats):
        for name, init in inits.items():
            t0 = time.perf_counter()
            init(2 * r)
            init(2 * r + 1)
            serial[name].append(time.perf_counter() - t0)
            pool = [threading.Thread(target=init, args=(2 * r + i,)) for i in range(2)]
            t0 = time.perf_counter()
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            threads[name].append(time.perf_counter() - t0)
    speedup = paired(serial["project"], threads["project"])
    return {"repeats": repeats, "rows": rows, "serial_s": median(serial["project"]),
            "two_threads_s": median(threads["project"]), "two_threads_speedup": speedup,
            "sklearn_serial_s": median(serial["sklearn"]), "sklearn_two_threads_s": median(threads["sklearn"]),
            "sklearn_two_threads_speedup": paired(serial["sklearn"], threads["sklearn"]),
            "project_over_sklearn_serial": paired(serial["project"], serial["sklearn"]),
            "targets": {"trial_parallel_init: two inits on two threads >= 1.6x one after the other": speedup >= 1.6}}


def run(args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    parts = [p.strip() for p in args.lean_parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown --lean-parts {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    ks = [int(k) for k in args.lean_ks.split(",")]
    out: dict[str, Any] = {}
    if "help_startup" in parts:
        out["help_startup"] = help_startup(tmp, args.repeats)
    if "train_startup" in parts:
        out["train_startup"] = train_startup(tmp, args.repeats, args.lean_train_rows)
    if "data_parallel_search" in parts:
        out["data_parallel_search"] = data_parallel_search(args.repeats, args.lean_rows, args.features, ks,
                                                           args.workers)
    if "first_fit_cold_vs_warm" in parts:
        out["first_fit_cold_vs_warm"] = first_fit_cold_vs_warm(args.repeats, args.lean_rows, args.features, args.k,
                                                               args.workers)
    if "trial_parallel_init" in parts:
        out["trial_parallel_init"] = trial_parallel_init(args.repeats, args.lean_rows, args.features, args.k)
    out["targets"] = {t: met for part in out.values() for t, met in part.get("targets", {}).items()}
    return out


def show(report: dict[str, Any]) -> None:
    for name, part in report.items():
        if name == "targets":
            continue
        figures = {k: v for k, v in part.items() if k != "targets" and not isinstance(v, dict | list)}
        print(f"  lean {name}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in figures.items()))
        for k, v in part.items():
            if isinstance(v, dict) and k != "targets":
                print(f"    {k}: " + ", ".join(f"{e}={x:.3f}" for e, x in v.items()))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lean-parts", default=",".join(PARTS), help="lean: comma list of " + ", ".join(PARTS))
    p.add_argument("--lean-rows", type=int, default=1_000_000,
                   help="lean: rows (x --features) of data_parallel_search, first_fit_cold_vs_warm and "
                        "trial_parallel_init")
    p.add_argument("--lean-ks", default="4,6,8,10,12,14,16,18,20,22", help="lean: k of each data-parallel trial")
    p.add_argument("--lean-train-rows", type=int, default=10_000, help="lean: rows of the train_startup run")


#: The section as ``python -m benchmarks.run --sections lean`` runs it.
SECTION = Section(run, show, add_arguments)
