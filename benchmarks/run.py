"""Benchmark suite: every backend on the same data, same initial centroids, same iterations.

    python -m benchmarks.run                       # all CPU sections, default sizes
    python -m benchmarks.run --sections iteration --rows 1000000 --json out.json --mlflow
    mlflow run . -e benchmark --env-manager local

Sections (figures are medians over ``--repeats`` runs, ratios come from the same run):

* ``iteration``  per-iteration time, end-to-end fit (with init) and peak memory of
  scikit-learn, dask-ml and ``dask`` (plus ``cuml``/``cuml-dask`` where a GPU exists), and the
  inertia of each against scikit-learn's from the same initial centroids.
* ``scaling``    ``dask`` and scikit-learn per-iteration time over rows x workers.
* ``search``     median per-trial overhead (scheduling + MLflow writes) on tiny fits, and the
  trial-parallel speed-up of a search with 2 workers over 1.
* ``evaluate``   ``mlflow.models.evaluate`` with the ``clustering`` evaluator against one prediction
  pass plus the metric passes on the same rows (target: at most 1.5x).
* ``outofcore``  ``dask`` with ``persist=False`` on Parquet files several times larger than the
  workers' summed memory limit; peak worker memory against the limit.
* ``drift``      batch scoring with and without the drift statistics (target: at most 1.10x).
* ``peers``      one search workload (``--peer-rows`` x ``--features`` blobs, ``--trials`` trials, 2 at a
  time, a child run each) run with no tracking (the floor), by Optuna + ``MLflowCallback``, by
  ``mlflow.sklearn.autolog`` + ``GridSearchCV`` and by this project (``python -m mlproject.search``
  and ``mlflow run -e search``), ``--repeats`` alternating rounds (:mod:`benchmarks.peers`).
* ``fidelity``   multi-fidelity (``_FIDELITY_MODES``) against full-fidelity search: wall and
  time to the best trial on ``--rows`` x ``--features``, ``--trials`` trials (target: at most 0.3x).

Speed targets live here, never in timed unit tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np

from benchmarks import large, lean, load, memory, outofcore, peers
from benchmarks._common import (
    Section,
    blobs,
    cluster,
    environ,
    gpu_available,
    initial_centers,
    median,
    paired,
    peak_cluster_memory,
    per_iteration,
    persist,
)

#: The multi-fidelity searches the ``fidelity`` section runs against full fidelity, as config
#: overrides: rungs of 1/81, 1/27, 1/9, 1/3 and all rows, with Optuna's asynchronous successive
#: halving and with the synchronous variant (a rung decided once all its trials have reported).
#: While the config rejects them the section skips with one line.
_FIDELITY_MODES = {
    pruner: f"search.fidelity.pruner={pruner} search.fidelity.min_fraction=0.012"
    for pruner in ("successive_halving", "synchronous_halving")
}


# -- section: per-iteration ----------------------------------------------------------------------
def bench_iteration(rows: int, features: int, k: int, iters: int, repeats: int, workers: int) -> dict[str, Any]:
    from dask_ml.cluster import KMeans as DaskMLKMeans
    from sklearn.cluster import KMeans

    from toolkit.backends.dask_lloyd import DaskKMeans, lloyd_fit

    X = blobs(rows, features, k)
    C0 = initial_centers(X, k)
    n1, n2 = max(1, iters // 4), iters
    out: dict[str, Any] = {"rows": rows, "features": features, "k": k, "iterations": f"{n1} vs {n2}",
                           "workers": workers,
                           "method": "(t(n2) - t(n1)) / (n2 - n1), interleaved repeats; ratios paired per repeat"}

    def sk_fit(n: int) -> int:
        return KMeans(n_clusters=k, init=C0, n_init=1, max_iter=n, tol=0.0, algorithm="lloyd").fit(X).n_iter_

    with cluster(workers) as client:
        dX = persist(X, client, max(1, rows // (4 * workers)))

        def dask_fit(n: int) -> int:
            return lloyd_fit(dX, C0, max_iter=n, tol=0.0, client=client)[2]

        def dask_ml_fit(n: int) -> int:
            return DaskMLKMeans(n_clusters=k, init=C0, max_iter=n, tol=0.0).fit(dX).n_iter_

        dask_fit(2)  # warm-up: worker imports and the per-worker actors
        main = per_iteration({"sklearn": sk_fit, "dask": dask_fit}, n1, n2, repeats)
        # dask-ml is an order of magnitude slower: fewer iterations, three repeats, same method,
        # each paired with a dask fit of the same iterations.
        vs_ml = per_iteration({"dask": dask_fit, "dask-ml": dask_ml_fit}, 2, 10, min(3, repeats))
        per_iter = {"sklearn": median(main["sklearn"]), "dask": median(main["dask"]),
                    "dask-ml": median(vs_ml["dask-ml"])}

        sk = KMeans(n_clusters=k, init=C0, n_init=1, max_iter=n2, tol=0.0, algorithm="lloyd").fit(X)
        _, dk_inertia, _ = lloyd_fit(dX, C0, max_iter=n2, tol=0.0, client=client)
        tracemalloc.start()
        sk_fit(n2)
        sk_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        _, dk_peak = peak_cluster_memory(client, lambda: dask_fit(n2))
        # End to end: each library's own default initialisation, to convergence.
        t = time.perf_counter()
        KMeans(n_clusters=k, n_init=1, random_state=0).fit(X)
        sk_e2e = time.perf_counter() - t
        t = time.perf_counter()
        DaskKMeans(n_clusters=k, init="k-means||", random_state=0).fit(dX, client=client)
        dk_e2e = time.perf_counter() - t
        t = time.perf_counter()
        DaskMLKMeans(n_clusters=k, init="k-means||", random_state=0).fit(dX)
        dml_e2e = time.perf_counter() - t

    res: dict[str, dict[str, float]] = {
        "sklearn": {"per_iter_ms": 1e3 * per_iter["sklearn"], "fit_s": sk_e2e, "peak_mem_mb": sk_peak / 2**20,
                    "inertia": float(sk.inertia_)},
        "dask": {"per_iter_ms": 1e3 * per_iter["dask"], "fit_s": dk_e2e, "peak_mem_mb": dk_peak / 2**20,
                 "inertia": float(dk_inertia),
                 "inertia_rel_diff_vs_sklearn": abs(dk_inertia - sk.inertia_) / sk.inertia_},
        "dask-ml": {"per_iter_ms": 1e3 * per_iter["dask-ml"], "fit_s": dml_e2e},
    }
    if gpu_available():  # pragma: no cover - needs a GPU
        res.update(_bench_gpu(X, C0, k, iters, repeats))

    sk_ms = res["sklearn"]["per_iter_ms"]
    out["backends"] = res
    # Ratios of fits run back to back in the same repeat (their medians); the last one pairs
    # nothing, so it is the ratio of the medians.
    out["ratios"] = {
        "dask_per_iter_vs_sklearn": paired(main["dask"], main["sklearn"]),
        "dask_ml_per_iter_vs_dask": paired(vs_ml["dask-ml"], vs_ml["dask"]),
        "dask_ml_per_iter_vs_sklearn": res["dask-ml"]["per_iter_ms"] / sk_ms,
    }
    out["repeats_ms"] = {"sklearn": [1e3 * t for t in main["sklearn"]], "dask": [1e3 * t for t in main["dask"]],
                         "dask (2 vs 10, beside dask-ml)": [1e3 * t for t in vs_ml["dask"]],
                         "dask-ml": [1e3 * t for t in vs_ml["dask-ml"]]}
    out["targets"] = {
        "dask <= 1.5x sklearn": out["ratios"]["dask_per_iter_vs_sklearn"] <= 1.5,
        "dask >= 10x faster than dask-ml": out["ratios"]["dask_ml_per_iter_vs_dask"] >= 10,
        "same inertia (rel diff <= 1e-5)": res["dask"]["inertia_rel_diff_vs_sklearn"] <= 1e-5,
    }
    return out


def _bench_gpu(X: np.ndarray, C0: np.ndarray, k: int, iters: int, repeats: int) -> dict[str, Any]:  # pragma: no cover
    import cuml
    import cupy

    gX = cupy.asarray(X)
    times = []
    for _ in range(repeats):
        cupy.cuda.runtime.deviceSynchronize()
        t = time.perf_counter()
        m = cuml.KMeans(n_clusters=k, init=C0.astype(np.float32), n_init=1, max_iter=iters, tol=0.0).fit(gX)
        cupy.cuda.runtime.deviceSynchronize()
        times.append((time.perf_counter() - t) / max(1, int(m.n_iter_)))
    return {"cuml": {"per_iter_ms": 1e3 * statistics.median(times), "inertia": float(m.inertia_)}}


# -- section: scaling ----------------------------------------------------------------------------
def bench_scaling(row_sizes: list[int], worker_counts: list[int], features: int, k: int, iters: int,
                  repeats: int) -> dict[str, Any]:
    from sklearn.cluster import KMeans

    from toolkit.backends.dask_lloyd import lloyd_fit

    table = []
    n1, n2 = max(1, iters // 4), iters
    for rows in row_sizes:
        X = blobs(rows, features, k)
        C0 = initial_centers(X, k)

        def sk_fit(n: int, X: np.ndarray = X, C0: np.ndarray = C0) -> int:
            return KMeans(n_clusters=k, init=C0, n_init=1, max_iter=n, tol=0.0).fit(X).n_iter_

        for workers in worker_counts:
            with cluster(workers) as client:
                dX = persist(X, client, max(1, rows // (4 * workers)))

                def dask_fit(n: int, dX: Any = dX, C0: np.ndarray = C0, client: Any = client) -> int:
                    return lloyd_fit(dX, C0, max_iter=n, tol=0.0, client=client)[2]

                dask_fit(2)
                per = per_iteration({"sklearn": sk_fit, "dask": dask_fit}, n1, n2, repeats)
            table.append({"rows": rows, "workers": workers, "sklearn_ms": 1e3 * median(per["sklearn"]),
                          "dask_ms": 1e3 * median(per["dask"]),
                          "dask_vs_sklearn": paired(per["dask"], per["sklearn"])})
    return {"features": features, "k": k, "iterations": f"{n1} vs {n2}", "table": table}


# -- section: search overhead and trial-parallel speed-up -------------------------------------
def _search_cfg(name: str, rows: int, n_trials: int, workers: int, storage: str, sampler: str = "tpe",
                features: int = 2) -> Any:
    from toolkit.config import load_experiment

    return load_experiment(None, {
        "name": name, "backend": "sklearn", "data.n_samples": rows, "data.n_features": features, "data.centers": 4,
        "cluster.n_workers": workers, "search.n_trials": n_trials, "search.storage": storage,
        "search.sampler": sampler,
        "search.space.n_clusters.low": 2, "search.space.n_clusters.high": 8, "search.refit": False,
        "metrics.silhouette_sample": min(rows, 500), "tracking.log_plot": False,
        "model.n_init": 1, "registry.register_best": False,
    })


def _write_probe(tmp: str, writes: int = 25) -> float:
    """CPU ms of one child-run write on an idle, scratch store: the machine's speed right now.

    The same call the search's writer makes (:func:`toolkit.search.record.log_trial_run`), in
    this process while nothing else runs.  It took 20-25 ms in quiet spells and 50-60 ms in slow
    ones on the 2-core VM the README's figures come from, for the same code: printed beside the
    overhead so a reader can tell a slow machine from a slow search.  The store is made once per
    folder (its schema migrations are not what the probe measures); each probe has a parent of
    its own.
    """
    from toolkit.search import record
    from toolkit.tracking.runs import client, using_store

    with using_store(f"sqlite:///{tmp}/probe.db"):
        c = client()
        exp = c.get_experiment_by_name("probe")
        parent = c.create_run(exp.experiment_id if exp else c.create_experiment("probe")).info.run_id
        centers = np.arange(8.0).reshape(4, 2)
        cpu = []
        for i in range(writes + 5):
            t = time.thread_time()
            record.log_trial_run(parent, "probe", i, {"n_clusters": 4, "init": "k-means++", "random_state": i},
                                 {"objective": 0.5, "silhouette": 0.5, "inertia": 1.0}, {"backend": "sklearn"},
                                 "FINISHED", time.time() - 0.01, time.time(), centers, ["x0", "x1"])
            cpu.append(time.thread_time() - t)
    return 1e3 * statistics.median(cpu[5:])  # the first writes warm caches


def _overhead_medians(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median per-trial overhead of some searches' trials, and its two parts, in ms."""
    def median_ms(key: str) -> float:
        return 1e3 * statistics.median(r[key] for r in rows)

    return {"median_overhead_ms": median_ms("overhead_s"), "median_schedule_ms": median_ms("schedule_s"),
            "median_mlflow_write_ms": median_ms("mlflow_write_s")}


def bench_search(tmp: str, tiny_rows: int, tiny_trials: int, speed_rows: int, speed_trials: int,
                 speed_features: int = 16, speed_rounds: int = 5, tiny_searches: int = 3,
                 probe_writes: int = 25) -> dict[str, Any]:
    """Search figures on a throwaway MLflow store; the caller's store and run are left alone."""
    with environ(MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/bench-mlflow.db", MLFLOW_RUN_ID=None):
        return _bench_search(tmp, tiny_rows, tiny_trials, speed_rows, speed_trials, speed_features, speed_rounds,
                             tiny_searches, probe_writes)


def _bench_search(tmp: str, tiny_rows: int, tiny_trials: int, speed_rows: int, speed_trials: int,
                  speed_features: int, speed_rounds: int, tiny_searches: int, probe_writes: int) -> dict[str, Any]:
    from toolkit.search import search
    from toolkit.tracking.writer import writer_for

    storage = os.path.join(tmp, "bench-optuna.log")  # the default kind: an Optuna journal file
    out: dict[str, Any] = {}
    probe_before = _write_probe(tmp, probe_writes)
    with cluster(2) as client:
        # Warm-up search (imports on the workers, sqlite schema) so the figure is steady-state,
        # with the child-run writer the tiny searches will choose already started.
        warmup = _search_cfg("warmup", tiny_rows, 4, 2, storage)
        writer_for(tiny_trials, tiny_rows * warmup.data.n_features).start()
        search(warmup, client=client)
        # Several short searches, their trials pooled (one 2-second search samples one moment of
        # a machine whose speed drifts), each followed by one with the random sampler: the
        # difference is what TPE's ask and tell cost the driver.  The headline keeps TPE, the default.
        tiny, plain = [], []
        for i in range(tiny_searches):
            tiny.append(search(_search_cfg(f"overhead-{i}", tiny_rows, tiny_trials, 2, storage), client=client))
            plain.append(search(_search_cfg(f"overhead-random-{i}", tiny_rows, tiny_trials, 2, storage,
                                            sampler="random"), client=client))
    probe_after = _write_probe(tmp, probe_writes)
    rows = [r for t in tiny for r in t.trials]
    plain_rows = [r for t in plain for r in t.trials]
    compute = [r["duration_s"] for r in rows]
    loop_s = sum(t.loop_seconds for t in tiny)
    out["overhead"] = {
        "rows": tiny_rows, "trials": len(rows), "searches": tiny_searches,
        **_overhead_medians(rows),
        # The writer runs at low priority beside busy workers: its wall time per run includes
        # waiting for a core; the CPU it spends is the write's own cost.
        "median_mlflow_write_cpu_ms": 1e3 * statistics.median(r["mlflow_write_cpu_s"] for r in rows),
        "median_trial_compute_ms": 1e3 * statistics.median(compute),
        "search_median_overhead_ms": [1e3 * statistics.median(r["overhead_s"] for r in t.trials) for t in tiny],
        # What a trial adds to the searches' wall time beyond its share of compute (2 slots),
        # the last child run written included: the writes overlap the next trials.
        "amortized_overhead_ms": 1e3 * (loop_s - sum(compute) / 2) / len(compute),
        "loop_s": loop_s,
        "idle_write_cpu_ms": {"before": probe_before, "after": probe_after},
        "random_sampler": _overhead_medians(plain_rows),
    }
    # The random sampler draws the same trials whatever finishes first, so both cluster sizes
    # do the same work.  This VM's speed drifts by up to 1.7x over minutes, so each round runs
    # the two sizes back to back (alternating which goes first) and the speed-up is the median
    # of the rounds' own ratios; the median walls per size are reported beside it.  The data
    # has the suite's 16 features (``--features``), like the iteration and scaling sections.
    walls: dict[int, list[float]] = {1: [], 2: []}
    for rnd in range(speed_rounds):
        for workers in ((1, 2) if rnd % 2 == 0 else (2, 1)):
            with cluster(workers) as client:
                search(_search_cfg(f"warm{workers}-{rnd}", speed_rows, 2, workers, storage,
                                   features=speed_features), client=client)
                res = search(_search_cfg(f"speed{workers}-{rnd}", speed_rows, speed_trials, workers, storage,
                                         sampler="random", features=speed_features), client=client)
            walls[workers].append(res.loop_seconds)
    w1, w2 = statistics.median(walls[1]), statistics.median(walls[2])
    out["speedup"] = {"rows": speed_rows, "features": speed_features, "trials": speed_trials, "rounds": speed_rounds,
                      "wall_1_worker_s": w1, "wall_2_workers_s": w2,
                      "speedup_2_over_1": paired(walls[1], walls[2]),
                      "round_speedups": [a / b for a, b in zip(walls[1], walls[2], strict=True)],
                      "ratio_of_median_walls": w1 / w2,
                      "walls_1_worker_s": walls[1], "walls_2_workers_s": walls[2]}
    out["targets"] = {
        "per-trial overhead <= 50 ms": out["overhead"]["median_overhead_ms"] <= 50,
        "trial-parallel speed-up >= 1.7x": out["speedup"]["speedup_2_over_1"] >= 1.7,
    }
    return out


# -- section: evaluate --------------------------------------------------------------------------
@contextlib.contextmanager
def _throwaway_store(tmp: str) -> Iterator[str]:
    """A fresh sqlite store as MLflow's tracking and registry URI for the block, then put back."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    uri = f"sqlite:///{tmp}/bench-evaluate.db"
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    with environ(MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri, MLFLOW_RUN_ID=None):
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            yield uri
        finally:
            tracking_utils._tracking_uri, registry_utils._registry_uri = saved


def bench_evaluate(tmp: str, rows: int, features: int, k: int, repeats: int) -> dict[str, Any]:
    """``mlflow.models.evaluate(..., model_type="clustering")`` against its own arithmetic.

    The evaluator's wall time (MLflow run, verified load, scoring, figures, quantiles, logging)
    is paired, repeat by repeat, with one prediction pass plus the toolkit's metric passes on
    the same rows (:func:`toolkit.metrics.cluster_metrics`, silhouette on its 10,000-row sample).
    """
    import mlflow
    from sklearn.cluster import KMeans

    from toolkit.metrics import cluster_metrics
    from toolkit.registry import Registration, log_and_register
    from toolkit.tracking import tracked_run

    X = blobs(rows, features, k)
    model = KMeans(n_clusters=k, n_init=1, max_iter=20, random_state=0).fit(X[:50_000])
    with _throwaway_store(tmp):
        with tracked_run("bench-evaluate", "fit") as run_id:
            log_and_register(model, model, X[:2_000], Registration(
                run_id=run_id, backend="sklearn", native_name="bench-eval", sklearn_name="bench-eval-sklearn",
                feature_names=[f"x{i}" for i in range(features)]))
        uri = "models:/bench-eval@champion"

        def by_hand() -> None:
            labels = model.predict(X)
            centers = model.cluster_centers_.astype(np.float64)
            inertia = float(((X - centers[labels]) ** 2).sum())
            cluster_metrics(X, labels, k, inertia=inertia)

        def evaluate() -> None:
            mlflow.models.evaluate(uri, X, model_type="clustering", evaluators=["clustering"])

        evaluate()  # warm-up: imports, the sqlite schema, matplotlib's font cache
        walls: dict[str, list[float]] = {"evaluate": [], "by_hand": []}
        for _ in range(repeats):
            for name, fn in (("by_hand", by_hand), ("evaluate", evaluate)):
                t = time.perf_counter()
                fn()
                walls[name].append(time.perf_counter() - t)
    ratio = paired(walls["evaluate"], walls["by_hand"])
    return {
        "rows": rows, "features": features, "k": k, "repeats": repeats,
        "evaluate_s": statistics.median(walls["evaluate"]), "by_hand_s": statistics.median(walls["by_hand"]),
        "evaluate_over_by_hand": ratio, "walls_s": walls,
        "targets": {"evaluate <= 1.5x predict + metric passes": ratio <= 1.5},
    }


# -- section: drift ------------------------------------------------------------------------------
def bench_drift(tmp: str, rows: int, features: int, k: int, repeats: int, workers: int,
                files: int = 8) -> dict[str, Any]:
    """Batch scoring (:func:`toolkit.serving.score_files`) of ``rows`` Parquet rows with and
    without the drift statistics gathered in the same pass; paired repeat by repeat."""
    import pandas as pd
    from sklearn.cluster import KMeans

    from toolkit.monitoring import drift_report
    from toolkit.registry import Registration, log_and_register
    from toolkit.serving import load_predictor, score_files
    from toolkit.tracking import tracked_run

    X = blobs(rows, features, k)
    folder = os.path.join(tmp, "drift-in")
    os.makedirs(folder, exist_ok=True)
    cols = [f"x{i}" for i in range(features)]
    for i, part in enumerate(np.array_split(np.arange(rows), files)):
        pd.DataFrame(X[part], columns=cols).to_parquet(os.path.join(folder, f"part-{i:03d}.parquet"))
    model = KMeans(n_clusters=k, n_init=1, max_iter=20, random_state=0).fit(X[:50_000])
    walls: dict[str, list[float]] = {"plain": [], "drift": []}
    with _throwaway_store(tmp), cluster(workers) as client:
        with tracked_run("bench-drift", "fit") as run_id:
            log_and_register(model, model, X[:2_000], Registration(
                run_id=run_id, backend="sklearn", native_name="bench-drift", sklearn_name="bench-drift-sklearn",
                feature_names=cols))
        predictor = load_predictor("models:/bench-drift-sklearn@champion", client=client)
        try:
            def score(drift: bool) -> Any:
                return score_files(predictor, os.path.join(folder, "*.parquet"), os.path.join(tmp, "drift-out"),
                                   overwrite=True, drift=drift)

            score(True)  # warm-up: imports and the model on the workers
            for _ in range(repeats):
                for name in ("plain", "drift"):
                    t = time.perf_counter()
                    info = score(name == "drift")
                    walls[name].append(time.perf_counter() - t)
            verdict = drift_report(predictor.source, info["drift_stats"], profile=info["profile"]).verdict
        finally:
            predictor.close()
    shutil.rmtree(folder, ignore_errors=True)
    ratio = paired(walls["drift"], walls["plain"])
    return {
        "rows": rows, "features": features, "k": k, "repeats": repeats, "workers": workers, "files": files,
        "plain_s": statistics.median(walls["plain"]), "drift_s": statistics.median(walls["drift"]),
        "drift_over_plain": ratio, "verdict_on_training_distribution": verdict, "walls_s": walls,
        "targets": {"drift statistics add <= 10% to batch scoring": ratio <= 1.10},
    }


# -- section: multi-fidelity search ----------------------------------------------------------------
def _time_to_best(parent: str, best_value: float) -> float:
    """Seconds from the search's parent run starting to the end of the first child run that
    reached ``best_value`` (its ``objective`` metric), read back from the store."""
    import math

    from toolkit.tracking.runs import client

    c = client()
    run = c.get_run(parent)
    children = c.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=5000)
    ends = [r.info.end_time for r in children if r.info.end_time is not None
            and math.isclose(r.data.metrics.get("objective", math.nan), best_value, rel_tol=1e-9)]
    return (min(ends) - run.info.start_time) / 1e3 if ends else float("nan")


def bench_fidelity(tmp: str, rows: int, features: int, k: int, trials: int, repeats: int, workers: int,
                   modes: dict[str, str] | None = None) -> dict[str, Any]:
    """Multi-fidelity against full-fidelity search on the same workload, in turns.

    The peers' workload (:func:`benchmarks.peers.project_overrides`) with the config's default
    sampler (TPE, what a pruner is paired with) and no refit: the figure is the search.  Each
    round runs full fidelity and every mode of ``modes`` (name -> overrides; default
    :data:`_FIDELITY_MODES`) on one cluster, rotating which goes first; walls and the time to
    the best trial are paired per round.  Skipped, with the reason, while the config or the
    search rejects a mode's overrides (a ConfigError: the feature has not landed).
    """
    from benchmarks.peers import project_overrides, workload_config
    from toolkit.errors import ConfigError, first_line
    from toolkit.search import search

    modes = dict(_FIDELITY_MODES if modes is None else modes)
    base = [o for o in project_overrides(rows, features, k, trials, workers) if not o.startswith("search.sampler=")]
    base += ["search.refit=false", "registry.register_best=false", f"search.storage={tmp}/fidelity-optuna.log"]
    for overrides in modes.values():
        try:
            workload_config(base + overrides.split())
        except ConfigError as exc:
            return {"skipped": f"the config rejects {overrides!r}: {first_line(exc)}"}
    out: dict[str, Any] = {"rows": rows, "features": features, "k": k, "trials": trials, "repeats": repeats,
                           "workers": workers, "modes": modes}
    order = ["full", *modes]
    figures: dict[str, dict[str, list[Any]]] = {m: {"wall_s": [], "to_best_s": [], "best_k": [], "best": [],
                                                    "full_fits": []} for m in order}
    with environ(MLFLOW_TRACKING_URI=f"sqlite:///{tmp}/bench-fidelity.db", MLFLOW_RUN_ID=None), \
            cluster(workers) as client:
        # Warm-up (imports on the workers, the sqlite schema): the first search must not pay for both.
        search(workload_config([*base, "search.n_trials=2", "name=fidelity-warmup"]), client=client)
        for rnd in range(repeats):
            for mode in order[rnd % len(order):] + order[:rnd % len(order)]:
                extra = modes[mode].split() if mode in modes else []
                cfg = workload_config([*base, *extra, f"name=fidelity-{mode}-{rnd}"])
                t = time.perf_counter()
                try:
                    res = search(cfg, client=client)
                except ConfigError as exc:
                    return {"skipped": f"the search rejects {modes.get(mode)!r}: {first_line(exc)}"}
                f = figures[mode]
                f["wall_s"].append(time.perf_counter() - t)
                f["to_best_s"].append(_time_to_best(res.parent_run_id, res.best_value))
                f["best_k"].append(int(res.best_params["n_clusters"]))
                f["best"].append(res.best_value)
                f["full_fits"].append(_full_fit_equivalents(res.parent_run_id, trials))
                print(f"fidelity round {rnd + 1}/{repeats}: {mode:<20} {f['wall_s'][-1]:7.2f} s, best k "
                      f"{f['best_k'][-1]} ({res.best_value:.4f}) reached after {f['to_best_s'][-1]:.2f} s, "
                      f"{f['full_fits'][-1]:.1f} full-fit equivalents", flush=True)
    for mode, f in figures.items():
        out[mode] = {"wall_s": statistics.median(f["wall_s"]), "to_best_s": statistics.median(f["to_best_s"]),
                     "walls_s": f["wall_s"], "to_best_runs_s": f["to_best_s"], "best_k": f["best_k"],
                     "best_value": f["best"], "full_fit_equivalents": statistics.median(f["full_fits"])}
    out["ratios"] = {}
    out["targets"] = {}
    for mode in modes:
        wall = paired(figures[mode]["wall_s"], figures["full"]["wall_s"])
        out["ratios"][f"{mode}: wall over full wall"] = wall
        out["ratios"][f"{mode}: time to best over full"] = paired(figures[mode]["to_best_s"],
                                                                  figures["full"]["to_best_s"])
        same_k = figures[mode]["best_k"] == figures["full"]["best_k"]
        out["targets"][f"fidelity: {mode} wall <= 0.3x full-fidelity wall"] = wall <= 0.3
        out["targets"][f"fidelity: {mode} finds the same best k as full fidelity"] = same_k
    return out


def _full_fit_equivalents(parent: str, trials: int) -> float:
    """The search's budget in full-data fits (the parent's ``budget/full_fit_equivalents``; one
    per trial without fidelity)."""
    from toolkit.tracking.runs import client

    return float(client().get_run(parent).data.metrics.get("budget/full_fit_equivalents", trials))


# -- report --------------------------------------------------------------------------------------
def _print_iteration(it: dict[str, Any]) -> None:
    print(f"\n-- per iteration: {it['rows']:,} x {it['features']} float32, k={it['k']}, "
          f"{it['iterations']} iterations from the same centroids, {it['workers']} workers; {it['method']}")
    print(f"{'backend':<10} {'ms/iter':>10} {'fit s':>8} {'peak MiB':>9} {'inertia':>16}")
    for name, r in it["backends"].items():
        print(f"{name:<10} {r['per_iter_ms']:>10.1f} {r.get('fit_s', float('nan')):>8.2f} "
              f"{r.get('peak_mem_mb', float('nan')):>9.1f} {r.get('inertia', float('nan')):>16.6g}")
    print("  (peak MiB: scikit-learn = allocations during fit, tracemalloc; dask = summed worker process memory)")
    for k, v in it["ratios"].items():
        print(f"  {k:<32} {v:8.2f}")
    for name, ms in it.get("repeats_ms", {}).items():
        print(f"  {name} ms/iter by repeat: {', '.join(f'{m:.1f}' for m in ms)}")
    print(f"  dask inertia rel. diff vs sklearn: {it['backends']['dask']['inertia_rel_diff_vs_sklearn']:.2e}")


def _print_scaling(sc: dict[str, Any]) -> None:
    print(f"\n-- scaling: {sc['features']} features, k={sc['k']}, ms per iteration")
    print(f"{'rows':>10} {'workers':>8} {'sklearn':>9} {'dask':>9} {'ratio':>7}")
    for r in sc["table"]:
        print(f"{r['rows']:>10,} {r['workers']:>8} {r['sklearn_ms']:>9.1f} {r['dask_ms']:>9.1f} "
              f"{r['dask_vs_sklearn']:>7.2f}")


def _print_search(se: dict[str, Any]) -> None:
    o, s = se["overhead"], se["speedup"]
    print(f"\n-- search: median per-trial overhead {o['median_overhead_ms']:.1f} ms "
          f"(scheduling {o['median_schedule_ms']:.1f} + MLflow writes {o['median_mlflow_write_ms']:.1f}; "
          f"{o['trials']} tiny trials in {o['searches']} searches, compute {o['median_trial_compute_ms']:.1f} ms "
          f"each; the searches' own medians {', '.join(f'{m:.1f}' for m in o['search_median_overhead_ms'])})")
    rs = o["random_sampler"]
    print(f"   with the random sampler instead of TPE (searches run in turn with those): "
          f"{rs['median_overhead_ms']:.1f} ms (scheduling {rs['median_schedule_ms']:.1f} + "
          f"MLflow writes {rs['median_mlflow_write_ms']:.1f})")
    print(f"   the writes' CPU: {o['median_mlflow_write_cpu_ms']:.1f} ms per child run (the writer runs at low "
          f"priority, so its wall time includes waiting for a core)")
    if "idle_write_cpu_ms" in o:
        p = o["idle_write_cpu_ms"]
        print(f"   machine probe: one child-run write on an idle store took {p['before']:.1f} ms of CPU before "
              f"these searches and {p['after']:.1f} ms after (same code; the VM's speed drifts)")
    print(f"   amortized: {o['amortized_overhead_ms']:.1f} ms of search wall time per trial beyond compute "
          f"({o['loop_s']:.2f} s for {o['trials']} trials on 2 workers; child runs written while trials run)")
    print(f"   trial-parallel: {s['trials']} trials on {s['rows']:,} x {s['features']} (random sampler, "
          f"{s['rounds']} paired rounds): speed-up {s['speedup_2_over_1']:.2f}x, the median of the rounds' "
          f"{', '.join(f'{r:.2f}' for r in s['round_speedups'])}")
    print(f"   median walls: 1 worker {s['wall_1_worker_s']:.2f} s, 2 workers {s['wall_2_workers_s']:.2f} s "
          f"(ratio {s['ratio_of_median_walls']:.2f}x)")


def _print_paired(head: str, a: tuple[float, str], b: tuple[float, str], ratio: str, repeats: int) -> None:
    """One line for a section that times two ways of one job, paired repeat by repeat:
    ``-- <head>: <a> s <a's label> against <b> s <b's label> (<ratio>, paired over <repeats> repeats)``."""
    print(f"\n-- {head}: {a[0]:.2f} s {a[1]} against {b[0]:.2f} s {b[1]} ({ratio}, paired over {repeats} repeats)")


def _print_evaluate(ev: dict[str, Any]) -> None:
    _print_paired(f"evaluate: on {ev['rows']:,} x {ev['features']}, k={ev['k']}",
                  (ev["evaluate_s"], "for mlflow.models.evaluate(model_type='clustering')"),
                  (ev["by_hand_s"], "for one prediction pass + the metric passes"),
                  f"{ev['evaluate_over_by_hand']:.2f}x", ev["repeats"])


def _print_drift(dr: dict[str, Any]) -> None:
    _print_paired(f"drift: score_files on {dr['rows']:,} x {dr['features']} Parquet rows, k={dr['k']}, "
                  f"{dr['workers']} workers", (dr["drift_s"], "with the drift statistics"), (dr["plain_s"], "without"),
                  f"{dr['drift_over_plain']:.3f}x", dr["repeats"])


def _print_fidelity(fi: dict[str, Any]) -> None:
    if "skipped" in fi:
        print(f"\n-- fidelity: skipped: {fi['skipped']}")
        return
    print(f"\n-- fidelity: {fi['trials']} trials on {fi['rows']:,} x {fi['features']}, {fi['workers']} workers, "
          f"{fi['repeats']} rotating round(s), medians")
    for mode in ("full", *fi["modes"]):
        r = fi[mode]
        print(f"  {mode:<20} wall {r['wall_s']:8.2f} s, best reached after {r['to_best_s']:8.2f} s, "
              f"{r['full_fit_equivalents']:5.1f} full-fit equivalents, best k {r['best_k']}")
    for mode, overrides in fi["modes"].items():
        print(f"  {mode}: {overrides}")
    for k, v in fi["ratios"].items():
        print(f"  {k:<48} {v:8.2f}x")


# -- the sections, in the order they run and print -------------------------------------------------
#: Every section by name.  A new section: a module ``benchmarks/<name>.py`` defining
#: ``SECTION = Section(run, show, add_arguments)`` (:class:`benchmarks._common.Section`; import
#: helpers from ``benchmarks._common``, never from this module), imported above and added here as
#: one line ``"<name>": <module>.SECTION,``.
SECTIONS: dict[str, Section] = {
    "iteration": Section(lambda a, tmp: bench_iteration(a.rows, a.features, a.k, a.iters, a.repeats, a.workers),
                         _print_iteration, default=True),
    "scaling": Section(lambda a, tmp: bench_scaling([int(r) for r in a.scaling_rows.split(",")],
                                                    [int(w) for w in a.scaling_workers.split(",")],
                                                    a.features, a.k, a.iters, a.repeats),
                       _print_scaling, default=True),
    "search": Section(lambda a, tmp: bench_search(tmp, 300, a.tiny_trials, a.speed_rows, a.speed_trials, a.features,
                                                  a.speed_rounds, a.tiny_searches, a.probe_writes),
                      _print_search, default=True),
    "evaluate": Section(lambda a, tmp: bench_evaluate(tmp, a.rows, a.features, a.k, a.repeats), _print_evaluate),
    "drift": Section(lambda a, tmp: bench_drift(tmp, a.rows, a.features, a.k, a.repeats, a.workers), _print_drift),
    "peers": peers.SECTION,
    "fidelity": Section(lambda a, tmp: bench_fidelity(tmp, a.rows, a.features, a.k, a.trials, a.repeats, a.workers),
                        _print_fidelity),
    "outofcore": outofcore.SECTION,
    "lean": lean.SECTION,
    "load": load.SECTION,
    "memory": memory.SECTION,
    "large": large.SECTION,
}


def _print_report(report: dict[str, Any]) -> None:
    print(f"\n== kmeans-lifecycle benchmarks  ({report['machine']})")
    for name, section in SECTIONS.items():
        if report.get(name) and section.show is not None:
            section.show(report[name])
    targets = {k: v for name in SECTIONS for k, v in report.get(name, {}).get("targets", {}).items()}
    if targets:
        print("\n-- targets")
        for k, v in targets.items():
            print(f"  [{'met' if v else 'MISSED'}] {k}")


def _log_mlflow(report: dict[str, Any], path: str) -> str:
    from toolkit.tracking import tracked_run
    from toolkit.tracking.record import log_metrics, log_tags
    from toolkit.tracking.runs import client

    flat: dict[str, float] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            flat[prefix.replace(" ", "_").replace(">", "gt").replace("<", "lt").replace("=", "")] = float(node)

    walk("", {k: v for k, v in report.items() if k != "scaling"})
    for row in report.get("scaling", {}).get("table", []):
        flat[f"scaling.dask_ms.rows{row['rows']}.w{row['workers']}"] = row["dask_ms"]
    with tracked_run("benchmarks", "benchmark", {"entry_point": "benchmark"}) as run_id:
        log_metrics(run_id, flat)
        log_tags(run_id, {"machine": report["machine"]})
        client().log_artifact(run_id, path, "benchmark")
    return run_id


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default=",".join(n for n, s in SECTIONS.items() if s.default),
                   help="comma list of " + ", ".join(SECTIONS))
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3, help="repeats; the rounds of peers and fidelity")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--scaling-rows", default="250000,1000000,4000000")
    p.add_argument("--scaling-workers", default="1,2")
    p.add_argument("--tiny-trials", type=int, default=40, help="search overhead: trials on 300 rows per search")
    p.add_argument("--tiny-searches", type=int, default=3, help="search overhead: searches (trials pooled)")
    p.add_argument("--probe-writes", type=int, default=25,
                   help="search overhead: child-run writes of the machine probe, before and after the searches")
    p.add_argument("--speed-rows", type=int, default=200_000, help="trial-parallel speed-up: rows (x --features)")
    p.add_argument("--speed-trials", type=int, default=16, help="trial-parallel speed-up: trials")
    p.add_argument("--speed-rounds", type=int, default=5,
                   help="trial-parallel speed-up: rounds of 1 then 2 workers back to back (median ratio)")
    p.add_argument("--trials", type=int, default=40, help="peers and fidelity: trials per search")
    for section in SECTIONS.values():
        if section.add_arguments is not None:
            section.add_arguments(p)
    p.add_argument("--json", default="benchmarks/results/latest.json")
    p.add_argument("--mlflow", action="store_true", help="log the figures to an MLflow run")
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    report: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
                              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory() as tmp:
        for name, section in SECTIONS.items():
            if name in sections:
                report[name] = section.run(args, tmp)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=2, default=float)
    _print_report(report)
    print(f"\nJSON: {args.json}")
    if args.mlflow:
        print(f"MLflow run: {_log_mlflow(report, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
