"""Benchmark section ``outofcore``: the ``dask`` backend on Parquet data larger than its workers' memory.

    python -m benchmarks.run --sections outofcore --ooc-over 2 --ooc-worker-mib 512 --ooc-file-rows 250000

Parquet files of ``--ooc-file-rows`` x ``--features`` float32 rows, ``--ooc-over`` times the
workers' summed ``memory_limit`` in all, are fitted the way ``train`` fits them with
``data.persist=false`` (:func:`toolkit.data.load_dataset`, :meth:`DaskBackend.prepare`, k-means||,
``--ooc-iters`` Lloyd iterations, ``tol=0``) on a process LocalCluster of ``--ooc-workers``
workers.  Reported, medians over the passes:

* seconds per Lloyd pass (from the fit's own ``on_pass`` reports) against the *read floor*:
  reading the same files once with ``pyarrow.parquet.read_table`` on the same workers (one task
  per file, as the fit reads them), over ``--repeats`` reads; the ratio (target <= 1.5x); and,
  for reference, the same read plus the row-major float32 copy every pass needs (no fit);
* the peak process memory of each worker during the fit (its monitor's history) against its limit
  (target: never above it), and the number of passes the fit made (k-means|| included).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import time
from typing import Any

import numpy as np

from benchmarks._common import Section, cluster, environ

__all__ = ["SECTION", "bench_outofcore"]


def _write(folder: str, files: int, rows: int, features: int, k: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, size=(k, features)).astype(np.float32)
    for f in range(files):
        X = centres[rng.integers(0, k, rows)] + rng.standard_normal((rows, features), dtype=np.float32)
        pq.write_table(pa.table({f"x{j}": X[:, j] for j in range(features)}),
                       os.path.join(folder, f"part-{f:04d}.parquet"))


def _read_file(path: str) -> int:
    """The floor: one Parquet file read into Arrow memory, nothing else."""
    import pyarrow.parquet as pq

    return pq.read_table(path).num_rows


def _read_block(path: str) -> int:
    """The floor plus the copy a fit cannot skip: the file as one C-order float32 NumPy block."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return int(table.to_batches()[0].to_tensor(row_major=True).to_numpy().shape[0]) if table.num_rows else 0


def _peak(dask_worker: Any) -> float:
    history = dask_worker.monitor.range_query(start=0).get("memory") or [0]
    return float(max(history))


def bench_outofcore(tmp: str, over: float = 2.0, worker_mib: int = 512, workers: int = 2, file_rows: int = 250_000,
                    features: int = 16, k: int = 8, iters: int = 3, repeats: int = 3) -> dict[str, Any]:
    """Fit ``over`` x the summed worker limit of Parquet data out of core; see the module docstring."""
    from toolkit.backends.dask_lloyd import DaskBackend
    from toolkit.config import DataConfig, ModelConfig
    from toolkit.data import load_dataset

    limit = worker_mib * 2**20
    data_bytes = int(over * workers * limit)
    files = max(workers, -(-data_bytes // (file_rows * features * 4)))
    folder = os.path.join(tmp, "outofcore")
    os.makedirs(folder, exist_ok=True)
    _write(folder, files, file_rows, features, k)
    paths = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    passes: list[dict[str, Any]] = []
    # Arrow's default pool (jemalloc/mimalloc) keeps freed buffers as RSS; the system pool returns them.
    with environ(ARROW_DEFAULT_MEMORY_POOL=os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system")), \
            cluster(workers, memory_limit=f"{worker_mib}MiB") as client:
        floors, block_floors = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            client.gather(client.map(_read_file, paths, pure=False))
            floors.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.gather(client.map(_read_block, paths, pure=False))
            block_floors.append(time.perf_counter() - t)
        # persist=False as train reads data.persist=false: one pyarrow task per file and pass.
        ds = load_dataset(DataConfig(source="file", path=os.path.join(folder, "*.parquet"), persist=False))
        backend = DaskBackend(client, persist=False)
        X = backend.prepare(ds)
        backend.on_pass = passes.append
        t = time.perf_counter()
        fit = backend.fit(X, ModelConfig(n_clusters=k, init="k-means||", max_iter=iters, tol=0.0, random_state=0))
        wall = time.perf_counter() - t
        peaks = client.run(_peak)
    shutil.rmtree(folder, ignore_errors=True)
    stamps = [p["elapsed"] for p in passes]
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    lloyd = [s for s, p in zip(steps, passes[1:], strict=False) if p["phase"] == "lloyd"]
    per_pass = statistics.median(lloyd) if lloyd else float("nan")
    floor = statistics.median(floors)
    peak = max(peaks.values())
    return {
        "rows": files * file_rows, "features": features, "files": files, "data_gib": files * file_rows * features * 4
        / 2**30, "workers": workers, "worker_limit_mib": worker_mib,
        "data_over_summed_limit": files * file_rows * features * 4 / (workers * limit),
        "passes": len(passes), "lloyd_iterations": fit.n_iter, "fit_s": wall,
        "pass_s": per_pass, "pass_s_all": lloyd, "read_floor_s": floor, "read_floors_s": floors,
        "pass_over_floor": per_pass / floor, "block_floor_s": statistics.median(block_floors),
        "block_floors_s": block_floors, "peak_worker_mib": {a: v / 2**20 for a, v in peaks.items()},
        "peak_over_limit": peak / limit,
        "targets": {"out-of-core pass <= 1.5x the pyarrow read floor": per_pass <= 1.5 * floor,
                    "out-of-core peak worker memory <= its limit": peak <= limit},
    }


def _show(oc: dict[str, Any]) -> None:
    print(f"\n-- out of core: {oc['data_gib']:.2f} GiB of Parquet ({oc['files']} files, {oc['rows']:,} x "
          f"{oc['features']}) = {oc['data_over_summed_limit']:.1f}x the summed limit ({oc['workers']} workers x "
          f"{oc['worker_limit_mib']} MiB), persist=false, {oc['passes']} passes ({oc['lloyd_iterations']} Lloyd)")
    print(f"   Lloyd pass {oc['pass_s']:.2f} s (median) vs pyarrow read floor {oc['read_floor_s']:.2f} s on the same "
          f"workers: {oc['pass_over_floor']:.2f}x; fit {oc['fit_s']:.1f} s")
    print(f"   (read + one C-order float32 block per file, no fit: {oc['block_floor_s']:.2f} s)")
    print("   peak worker memory: " + ", ".join(f"{v:.0f} MiB" for v in oc["peak_worker_mib"].values())
          + f" (max {oc['peak_over_limit']:.2f}x the limit)")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ooc-over", type=float, default=2.0, help="data size / summed worker memory limit")
    p.add_argument("--ooc-worker-mib", type=int, default=512, help="memory_limit of each worker (MiB)")
    p.add_argument("--ooc-workers", type=int, default=1, help="workers of the process LocalCluster")
    p.add_argument("--ooc-file-rows", type=int, default=250_000, help="rows per Parquet file (one partition each)")
    p.add_argument("--ooc-iters", type=int, default=3, help="Lloyd iterations (tol=0)")


SECTION = Section(
    lambda a, tmp: bench_outofcore(tmp, a.ooc_over, a.ooc_worker_mib, a.ooc_workers, a.ooc_file_rows, a.features,
                                   a.k, a.ooc_iters, a.repeats),
    _show, _add_arguments)
