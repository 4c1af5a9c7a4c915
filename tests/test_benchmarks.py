"""The benchmark suite runs end to end on small sizes and logs to the caller's MLflow store.

Figures from such small runs mean nothing; the real ones come from ``python -m benchmarks.run``
(see the README).  This only proves the script works: every section it was asked for is in the
report, the targets are evaluated, and ``--mlflow`` writes to the store and run it was given.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import pytest
from mlflow import MlflowClient

from benchmarks import _common, peers
from benchmarks import run as bench


@pytest.mark.slow
def test_benchmark_search_section_logs_to_the_callers_store(tracking_uri, tmp_path):
    out = tmp_path / "bench.json"
    rc = bench.main([
        "--sections", "iteration,search", "--rows", "20000", "--features", "4", "--iters", "4",
        "--repeats", "1", "--tiny-trials", "4", "--tiny-searches", "2", "--speed-rows", "4000", "--speed-trials", "2",
        "--speed-rounds", "1", "--probe-writes", "3", "--json", str(out), "--mlflow",
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


@pytest.mark.slow
def test_benchmark_peers_section_runs_every_peer_on_the_same_trials(tmp_path):
    """The ``peers`` section at a tiny size (2k rows, 4 trials, 1 round): the floor, the Optuna +
    MLflowCallback peer and ``python -m mlproject.search`` (the other two commands are slower and
    add nothing the test checks; ``--peers`` leaves them out).  About 30 s: each is a process."""
    out = tmp_path / "bench.json"
    rc = bench.main([
        "--sections", "peers", "--peer-rows", "2000", "--features", "4", "--trials", "4",
        "--repeats", "1", "--peers", "floor,optuna,project", "--json", str(out),
    ])
    assert rc == 0
    report = json.loads(out.read_text())
    pe = report["peers"]
    missing = peers.optuna_integration_missing()
    assert set(pe["peers"]) == ({"floor", "project"} if missing else {"floor", "optuna", "project"})
    if missing:  # the section says how to get it, and carries on
        assert peers.BENCH_INSTALL in pe["skipped"]["optuna"]
    else:
        assert pe["peers"]["optuna"]["child_runs"] == [4]  # every trial a nested child run
        assert pe["ratios"]["project_wall_over_optuna_wall"] > 0
    # The project's child runs are the trials the floor (and the peers) were given.
    assert pe["same_trials_as_floor"] == {"project": True}
    assert pe["peers"]["project"]["child_runs"] == [4]
    assert all(r["wall_s"] > r["loop_s"] > 0 for r in pe["peers"].values())
    assert sum(n for _, _, n in pe["trial_mix"]) == 4
    assert pe["ratios"]["project_loop_over_floor_loop"] > 0
    assert "peers: python -m mlproject.search loop <= 1.1x no-tracking floor loop" in pe["targets"]


@pytest.mark.slow
def test_benchmark_fidelity_section_runs_tiny(tmp_path):
    """The ``fidelity`` section on 2k rows, 4 trials, 1 round (about 15 s): full fidelity and
    every multi-fidelity mode ran, with the section's own overrides (its first rung still has
    more rows than the largest k), and were compared."""
    fi = bench.bench_fidelity(str(tmp_path), 2000, 4, 8, 4, 1, 2)
    assert "skipped" not in fi, fi.get("skipped")
    assert fi["modes"] == bench._FIDELITY_MODES
    assert set(fi["ratios"]) == {f"{m}: {r}" for m in bench._FIDELITY_MODES
                                 for r in ("wall over full wall", "time to best over full")}
    for mode in ("full", *bench._FIDELITY_MODES):
        assert len(fi[mode]["best_k"]) == 1 and fi[mode]["wall_s"] > 0 and fi[mode]["to_best_s"] > 0
    assert fi["full"]["full_fit_equivalents"] == 4  # one per trial without rungs
    assert fi["synchronous_halving"]["full_fit_equivalents"] < 4


@pytest.mark.slow
def test_fidelity_section_skips_on_a_key_the_config_rejects(tmp_path):
    """An override the config does not know skips the section in one line, before any work."""
    fi = bench.bench_fidelity(str(tmp_path), 1000, 2, 3, 2, 1, 1, modes={"bad": "search.no_such_key=1"})
    assert set(fi) == {"skipped"}
    assert "search.no_such_key=1" in fi["skipped"] and "\n" not in fi["skipped"]


def test_paired_ratios_and_medians():
    """Ratios are taken per repeat (fits run back to back) and their median reported; a
    non-positive per-iteration figure (noise swamped the iterations) is no figure."""
    assert _common.paired([2.0, 8.0, 9.0], [1.0, 2.0, 3.0]) == 3.0  # ratios 2, 4, 3
    assert _common.paired([2.0, -1.0], [1.0, 1.0]) == 2.0
    assert math.isnan(_common.paired([-1.0], [1.0]))
    assert _common.median([3.0, 1.0, 2.0]) == 2.0
    assert math.isnan(_common.median([-1.0, 0.0, 1.0]))


def test_sections_are_one_registry_that_main_runs_and_parses(capsys):
    """``SECTIONS`` is the suite: ``--help`` lists each, a section's own flags are parsed
    (``peers``' ``--peer-rows``), an unknown name is refused naming the known ones; no section
    module imports ``benchmarks.run`` (tests/test_import_graph.py holds the cycle check)."""
    assert list(bench.SECTIONS) == ["iteration", "scaling", "search", "evaluate", "drift", "peers", "fidelity",
                                    "outofcore", "lean", "load", "memory", "large"]
    assert bench.SECTIONS["peers"] is peers.SECTION
    assert [n for n, s in bench.SECTIONS.items() if s.default] == ["iteration", "scaling", "search"]
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--peer-rows" in out and all(name in out for name in bench.SECTIONS)
    with pytest.raises(SystemExit) as exc:
        bench.main(["--sections", "iteration,nope"])
    assert exc.value.code == 2
    assert "unknown section(s) nope; choose from iteration, scaling" in capsys.readouterr().err


def test_lean_section_runs_each_part_tiny(tmp_path):
    """Every part of the ``lean`` section (benchmarks/lean.py) at a tiny size, figures and targets
    reported; what they measure is for ``python -m benchmarks.run --sections lean``."""
    from benchmarks import lean

    hs = lean.help_startup(str(tmp_path), 1, entries=["keygen"])
    assert hs["help_s"]["keygen"] > 0 and hs["files_written"] == [] and hs["help_over_python"]["keygen"] > 0
    init = lean.trial_parallel_init(1, 2000, 4, 4)
    assert init["serial_s"] > 0 and init["two_threads_speedup"] > 0
    report = lean.run(argparse.Namespace(lean_parts="trial_parallel_init", lean_ks="3", repeats=1, lean_rows=2000,
                                         features=4, k=4, workers=1, lean_train_rows=300), str(tmp_path))
    assert set(report) == {"trial_parallel_init", "targets"} and len(report["targets"]) == 1


@pytest.mark.slow
def test_lean_cluster_and_process_parts_run_tiny(tmp_path):
    """The parts that start clusters or entry-point processes, at a tiny size (about 40 s)."""
    from benchmarks import lean

    dp = lean.data_parallel_search(1, 3000, 4, [3, 4], 1, sample=300)
    assert dp["project_s"] > 0 and dp["sklearn_loop_s"] > 0 and dp["project_over_sklearn"] > 0
    cw = lean.first_fit_cold_vs_warm(1, 3000, 4, 3, 1)
    assert cw["cold_s"] > 0 and cw["warm_s"] > 0 and cw["cold_s_off"] > 0 and cw["to_first_fit_s_off"] > 0
    tr = lean.train_startup(str(tmp_path), 1, 300, mlflow_run=False)  # the wrapper: the section itself
    assert tr["train_s"] > tr["python_s"] > 0


@pytest.mark.slow
def test_outofcore_section_runs_tiny(tmp_path):
    """benchmarks/outofcore.py at a tiny size (data 0.1x the limit): passes timed against the pyarrow
    read floor, peak worker memory against the limit, k-means|| passes counted."""
    from benchmarks import outofcore

    r = outofcore.bench_outofcore(str(tmp_path), over=0.05, worker_mib=512, workers=1, file_rows=20_000,
                                  features=4, k=3, iters=2, repeats=1)
    assert r["lloyd_iterations"] == 2 and r["passes"] >= 1 + 2 + 2 + 1  # moments, k-means||, Lloyd, inertia
    assert r["pass_s"] > 0 and r["read_floor_s"] > 0 and r["pass_over_floor"] > 0
    assert 0 < r["peak_over_limit"] < 1 and set(r["targets"]) == {
        "out-of-core pass <= 1.5x the pyarrow read floor", "out-of-core peak worker memory <= its limit"}


def test_outofcore_section_runs_on_a_cluster_of_your_own(dask_cluster, tmp_path):
    """``--ooc-scheduler`` (the multi-host bed's way in): the running cluster's workers and their
    own limits set the data size (here 0.1% of the session cluster's 2 x 2 GiB), nothing is started."""
    from benchmarks import outofcore

    r = outofcore.bench_outofcore(str(tmp_path), over=0.001, file_rows=20_000, features=4, k=3, iters=2, repeats=1,
                                  scheduler=dask_cluster.scheduler_address)
    assert r["cluster"] == dask_cluster.scheduler_address and r["workers"] == 2 and r["worker_limit_mib"] == 2048
    assert r["files"] == 14 and r["data_over_summed_limit"] == pytest.approx(0.001, rel=0.1)
    assert r["lloyd_iterations"] == 2 and 0 < r["peak_over_limit"] < 1 and r["arrow_pool"]
    assert not (tmp_path / "outofcore").exists()  # its files removed after


@pytest.mark.slow
@pytest.mark.server
def test_load_section_runs_tiny(tmp_path):
    """benchmarks/load.py at a tiny size: PostgreSQL and one mlflow server, 1 search of each kind
    (ours, Optuna + MLflowCallback), every trial run FINISHED, none lost or RUNNING."""
    pytest.importorskip("psycopg")
    from benchmarks import load

    try:
        load._pg_bindir()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    r = load.bench_load(str(tmp_path), [1], trials=3, rows=200)
    assert [(lv["kind"], lv["searches"]) for lv in r["levels"]] == [("ours", 1), ("optuna", 1)]
    for lv in r["levels"]:
        assert lv["records"] == 3 and lv["store"] == {"expected": 3, "recorded": 3, "finished": 3, "running": 0,
                                                      "lost": 0, "window_s": lv["store"]["window_s"]}, lv
        assert lv["p99_ms"] >= lv["p50_ms"] > 0 and not lv["failed_drivers"]
    assert r["targets"] == {"load: no lost or RUNNING trial runs, no failed driver": True}


def test_large_section_slopes_fixed_iteration_fits():
    """The ``large`` section's slope is least squares over (iterations, seconds); a scikit-learn-only
    table on tiny data has its row and no ratio (figures mean nothing at this size)."""
    from benchmarks.large import bench_large, slope

    assert slope([(5, 1.0), (20, 4.0), (5, 1.2), (20, 4.2)]) == pytest.approx(0.2)
    assert math.isnan(slope([(5, 1.0), (5, 2.0)]))
    out = bench_large([3000], 4, 3, (2, 6), 1, 1, ["sklearn"])
    (row,) = out["table"]
    assert row["rows"] == 3000 and set(row["ms_per_iter"]) == {"sklearn"} and row["over_sklearn"] == {}
    assert out["targets"] == {}
    with pytest.raises(ValueError, match="two different iteration counts"):
        bench_large([3000], 4, 3, (5, 5), 1, 1, ["sklearn"])


def test_large_section_ratio_is_of_the_pooled_slopes():
    """Three iteration counts, two rounds, the toolkit's Lloyd on threaded workers beside
    scikit-learn: the ratio is the pooled slopes' (each round's own ratio kept as the spread)."""
    from benchmarks.large import bench_large

    out = bench_large([3000], 4, 3, (2, 4, 6), 2, 1, ["sklearn", "dask-threads"])
    (row,) = out["table"]
    ms = row["ms_per_iter"]
    assert row["over_sklearn"]["dask-threads"] == pytest.approx(ms["dask-threads"] / ms["sklearn"])
    assert len(row["round_over_sklearn"]["dask-threads"]) == 2 and out["iterations"] == "2, 4, 6"
    assert set(out["targets"]) == {"large: dask-threads <= 1.0x sklearn per iteration at 3,000"}
