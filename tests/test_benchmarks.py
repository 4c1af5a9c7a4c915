"""The benchmark suite runs end to end on small sizes and logs to the caller's MLflow store.

Figures from such small runs mean nothing; the real ones come from ``python -m benchmarks.run``
(see the README).  This only proves the script works: every section it was asked for is in the
report, the targets are evaluated, and ``--mlflow`` writes to the store and run it was given.
"""

from __future__ import annotations

import json
import math
import os

import pytest
from mlflow import MlflowClient

from benchmarks import run as bench

pytestmark = pytest.mark.slow


def test_benchmark_search_section_logs_to_the_callers_store(tracking_uri, tmp_path):
    out = tmp_path / "bench.json"
    rc = bench.main([
        "--sections", "iteration,search", "--rows", "20000", "--features", "4", "--iters", "4",
        "--repeats", "1", "--tiny-trials", "4", "--tiny-searches", "2", "--speed-rows", "4000", "--speed-trials", "2",
        "--speed-rounds", "1", "--json", str(out), "--mlflow",
    ])
    assert rc == 0
    report = json.loads(out.read_text())
    it, se = report["iteration"], report["search"]
    assert set(it["backends"]) >= {"sklearn", "dask", "dask-ml"}
    assert it["backends"]["dask"]["inertia_rel_diff_vs_sklearn"] <= 1e-5
    # Two searches of 4 trials, pooled.
    assert se["overhead"]["trials"] == 8 and se["overhead"]["median_mlflow_write_ms"] > 0
    assert len(se["overhead"]["search_median_overhead_ms"]) == 2
    assert se["overhead"]["random_sampler"]["median_mlflow_write_ms"] > 0
    assert 0 < se["overhead"]["median_mlflow_write_cpu_ms"]
    # The machine probe ran before and after the tiny searches.
    assert all(v > 0 for v in se["overhead"]["idle_write_cpu_ms"].values())
    assert se["speedup"]["rounds"] == 1
    assert se["speedup"]["wall_1_worker_s"] > 0 and se["speedup"]["wall_2_workers_s"] > 0
    # One paired round: its own ratio is the speed-up.
    sp = se["speedup"]
    assert sp["round_speedups"] == [sp["speedup_2_over_1"]] == [sp["wall_1_worker_s"] / sp["wall_2_workers_s"]]
    assert {"dask <= 1.5x sklearn", "per-trial overhead <= 50 ms"} <= set(it["targets"]) | set(se["targets"])
    # The search section's throwaway store did not leak into the caller's environment.
    assert os.environ["MLFLOW_TRACKING_URI"] == tracking_uri
    mlc = MlflowClient(tracking_uri=tracking_uri)
    exp = mlc.get_experiment_by_name("benchmarks")
    assert mlc.get_experiment_by_name("probe") is None  # the machine probe kept to its scratch store
    (run,) = mlc.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["iteration.backends.dask.inertia"] == pytest.approx(it["backends"]["dask"]["inertia"])
    assert "search.overhead.median_overhead_ms" in run.data.metrics
    assert [a.path for a in mlc.list_artifacts(run.info.run_id, "benchmark")] == ["benchmark/bench.json"]


def test_paired_ratios_and_medians():
    """Ratios are taken per repeat (fits run back to back) and their median reported; a
    non-positive per-iteration figure (noise swamped the iterations) is no figure."""
    assert bench._paired([2.0, 8.0, 9.0], [1.0, 2.0, 3.0]) == 3.0  # ratios 2, 4, 3
    assert bench._paired([2.0, -1.0], [1.0, 1.0]) == 2.0
    assert math.isnan(bench._paired([-1.0], [1.0]))
    assert bench._median([3.0, 1.0, 2.0]) == 2.0
    assert math.isnan(bench._median([-1.0, 0.0, 1.0]))
