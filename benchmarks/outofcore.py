"""Benchmark section ``outofcore``: the ``dask`` backend on Parquet data larger than its workers' memory.

    python -m benchmarks.run --sections outofcore --ooc-over 2 --ooc-worker-mib 512 --ooc-file-rows 250000

Parquet files of ``--ooc-file-rows`` x ``--features`` float32 rows, ``--ooc-over`` times the
workers' summed ``memory_limit`` in all, are fitted the way ``train`` fits them with
``data.persist=false`` (:func:`toolkit.data.load_dataset`, :meth:`DaskBackend.prepare`, k-means||,
``--ooc-iters`` Lloyd iterations, ``tol=0``) on a process LocalCluster of ``--ooc-workers``
workers.  Reported, medians over the passes:

* seconds per Lloyd pass (from the fit's own ``on_pass`` reports) against the *read floor*:
  reading the same files once with ``pyarrow.parquet.read_table`` on the same workers (one task
  per file, as the fit reads them).  Paired: the floor is read right after each Lloyd pass, from
  the fit's own pass report (the time spent there is taken out of the next pass's), so a pass
  and its floor see the same machine; the median of the per-pass ratios is the figure (target
  <= 1.5x).  For reference, ``--repeats`` floors and floors plus the row-major float32 copy
  every pass needs (no fit), read before the fit;
* the peak process memory of each worker during the fit (its monitor's history) against its limit
  (target: never above it), and the number of passes the fit made (k-means|| included).

On a cluster of your own (``--ooc-scheduler ADDRESS``, e.g. the multi-host test bed's, which
``python -m testbed.multihost run`` exports as ``DASK_SCHEDULER_ADDRESS``), the files go to
``--ooc-url`` (an fsspec URL such as ``s3://data/ooc``, written from here and read by the workers
themselves), the data is ``--ooc-over`` times the *workers'* summed ``memory_limit``, and the
workers keep their own settings (Arrow's memory pool included); the objects are removed after.

    python -m testbed.multihost run --worker-memory 512MiB -- \
        python -m benchmarks.run --sections outofcore --ooc-scheduler env --ooc-url s3://data/ooc
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from benchmarks._common import Section, cluster, environ

__all__ = ["SECTION", "bench_outofcore"]


def _write(folder: str, files: int, rows: int, features: int, k: int) -> list[str]:
    """``files`` Parquet files of blobs under ``folder`` (a local folder or an fsspec URL); their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from toolkit.data import is_url, url_fs

    fs, root = url_fs(folder) if is_url(folder) else (None, folder)
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, size=(k, features)).astype(np.float32)
    paths = []
    for f in range(files):
        X = centres[rng.integers(0, k, rows)] + rng.standard_normal((rows, features), dtype=np.float32)
        name = f"part-{f:04d}.parquet"
        pq.write_table(pa.table({f"x{j}": X[:, j] for j in range(features)}), f"{root}/{name}", filesystem=fs)
        paths.append(f"{folder.rstrip('/')}/{name}")
    return paths


def _read_file(path: str) -> int:
    """The floor: one Parquet file read into Arrow memory (as the fit opens it), nothing else."""
    from toolkit.data import _parquet_table

    return _parquet_table(path).num_rows


def _read_block(path: str) -> int:
    """The floor plus the copy a fit cannot skip: the file as one C-order float32 NumPy block."""
    from toolkit.data import _parquet_table

    table = _parquet_table(path)
    return int(table.to_batches()[0].to_tensor(row_major=True).to_numpy().shape[0]) if table.num_rows else 0


def _arrow_pool() -> str:
    import pyarrow as pa

    return pa.default_memory_pool().backend_name


@contextlib.contextmanager
def _own_cluster(address: str) -> Iterator[Any]:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        yield client


def _peak(dask_worker: Any) -> float:
    history = dask_worker.monitor.range_query(start=0).get("memory") or [0]
    return float(max(history))


def bench_outofcore(tmp: str, over: float = 2.0, worker_mib: int = 512, workers: int = 2, file_rows: int = 250_000,
                    features: int = 16, k: int = 8, iters: int = 3, repeats: int = 3, scheduler: str | None = None,
                    url: str | None = None) -> dict[str, Any]:
    """Fit ``over`` x the summed worker limit of Parquet data out of core; see the module docstring.

    ``scheduler``: a running cluster's address (its workers, their limits and settings are used;
    ``worker_mib`` and ``workers`` are ignored); ``url``: where to write the files instead of ``tmp``.
    """
    from toolkit.backends.dask_lloyd import DaskBackend
    from toolkit.config import DataConfig, ModelConfig
    from toolkit.data import is_url, load_dataset, url_fs

    passes: list[dict[str, Any]] = []
    folder = url.rstrip("/") if url else os.path.join(tmp, "outofcore")
    with contextlib.ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(_own_cluster(scheduler))
        else:
            # Arrow's default pool (jemalloc/mimalloc) keeps freed buffers as RSS; the system pool returns them.
            pool = os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system")
            stack.enter_context(environ(ARROW_DEFAULT_MEMORY_POOL=pool))
            client = stack.enter_context(cluster(workers, memory_limit=f"{worker_mib}MiB"))
        info = client.scheduler_info(n_workers=-1)["workers"]
        limits = [int(w.get("memory_limit") or 0) for w in info.values()]
        if not limits or not all(limits):
            raise SystemExit(f"outofcore: every worker needs a memory_limit (got {limits})")
        workers, limit = len(limits), min(limits)
        data_bytes = int(over * sum(limits))
        files = max(workers, -(-data_bytes // (file_rows * features * 4)))
        if not is_url(folder):
            os.makedirs(folder, exist_ok=True)
        t = time.perf_counter()
        paths = _write(folder, files, file_rows, features, k)
        write_s = time.perf_counter() - t
        pools = sorted(set(client.run(_arrow_pool).values()))
        floors, block_floors = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            client.gather(client.map(_read_file, paths, pure=False))
            floors.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.gather(client.map(_read_block, paths, pure=False))
            block_floors.append(time.perf_counter() - t)
        # persist=False as train reads data.persist=false: one pyarrow task per file and pass.
        ds = load_dataset(DataConfig(source="file", path=f"{folder}/*.parquet", persist=False))
        backend = DaskBackend(client, persist=False)
        X = backend.prepare(ds)
        paired: list[float] = []
        away = [0.0]  # seconds spent reading floors inside the fit, taken out of its clock

        def on_pass(report: dict[str, Any]) -> None:
            t0 = time.perf_counter()
            passes.append({**report, "elapsed": report["elapsed"] - away[0]})
            if report["phase"] == "lloyd":
                client.gather(client.map(_read_file, paths, pure=False))
                paired.append(time.perf_counter() - t0)
            away[0] += time.perf_counter() - t0

        backend.on_pass = on_pass
        t = time.perf_counter()
        fit = backend.fit(X, ModelConfig(n_clusters=k, init="k-means||", max_iter=iters, tol=0.0, random_state=0))
        wall = time.perf_counter() - t - away[0]
        peaks = client.run(_peak)
    if is_url(folder):
        fs, inner = url_fs(folder)
        fs.rm(inner, recursive=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    stamps = [p["elapsed"] for p in passes]
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    lloyd = [s for s, p in zip(steps, passes[1:], strict=False) if p["phase"] == "lloyd"]
    per_pass = statistics.median(lloyd) if lloyd else float("nan")
    # Each Lloyd pass (a k-means|| pass comes before the first) pairs with the floor read right after it.
    ratios = [a / b for a, b in zip(lloyd, paired, strict=True)]
    ratio = statistics.median(ratios) if ratios else float("nan")
    floor = statistics.median(paired) if paired else float("nan")
    peak = max(peaks.values())
    return {
        "rows": files * file_rows, "features": features, "files": files, "data_gib": files * file_rows * features * 4
        / 2**30, "workers": workers, "worker_limit_mib": limit / 2**20, "cluster": scheduler or "local",
        "data_at": "url" if is_url(folder) else "local files", "write_s": write_s, "arrow_pool": pools,
        "data_over_summed_limit": files * file_rows * features * 4 / sum(limits),
        "passes": len(passes), "lloyd_iterations": fit.n_iter, "fit_s": wall,
        "pass_s": per_pass, "pass_s_all": lloyd, "read_floor_s": floor, "paired_floors_s": paired,
        "pass_over_floor_each": ratios, "pass_over_floor": ratio, "floors_before_fit_s": floors,
        "block_floor_s": statistics.median(block_floors),
        "block_floors_s": block_floors, "peak_worker_mib": {a: v / 2**20 for a, v in peaks.items()},
        "peak_over_limit": peak / limit,
        "targets": {"out-of-core pass <= 1.5x the pyarrow read floor": ratio <= 1.5,
                    "out-of-core peak worker memory <= its limit": peak <= limit},
    }


def _show(oc: dict[str, Any]) -> None:
    print(f"\n-- out of core: {oc['data_gib']:.2f} GiB of Parquet ({oc['files']} files, {oc['rows']:,} x "
          f"{oc['features']}, {oc['data_at']}) = {oc['data_over_summed_limit']:.1f}x the summed limit "
          f"({oc['workers']} workers x {oc['worker_limit_mib']:.0f} MiB, {oc['cluster']} cluster, Arrow pool "
          f"{'/'.join(oc['arrow_pool'])}), persist=false, {oc['passes']} passes ({oc['lloyd_iterations']} Lloyd)")
    print(f"   Lloyd pass {oc['pass_s']:.2f} s vs pyarrow read floor {oc['read_floor_s']:.2f} s on the same workers "
          f"(medians); paired per pass: {', '.join(f'{r:.2f}' for r in oc['pass_over_floor_each'])} -> "
          f"{oc['pass_over_floor']:.2f}x (median); fit {oc['fit_s']:.1f} s without the floors")
    print(f"   before the fit: floors {', '.join(f'{f:.2f}' for f in oc['floors_before_fit_s'])} s; read + one C-order "
          f"float32 block per file, no fit: {oc['block_floor_s']:.2f} s")
    print("   peak worker memory: " + ", ".join(f"{v:.0f} MiB" for v in oc["peak_worker_mib"].values())
          + f" (max {oc['peak_over_limit']:.2f}x the limit)")


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ooc-over", type=float, default=2.0, help="data size / summed worker memory limit")
    p.add_argument("--ooc-worker-mib", type=int, default=512, help="memory_limit of each worker (MiB)")
    p.add_argument("--ooc-workers", type=int, default=1, help="workers of the process LocalCluster")
    p.add_argument("--ooc-file-rows", type=int, default=250_000, help="rows per Parquet file (one partition each)")
    p.add_argument("--ooc-iters", type=int, default=3, help="Lloyd iterations (tol=0)")
    p.add_argument("--ooc-scheduler", default=None,
                   help="a running cluster's address instead of a LocalCluster ('env': $DASK_SCHEDULER_ADDRESS)")
    p.add_argument("--ooc-url", default=None, help="write the files here (fsspec URL, e.g. s3://data/ooc)")


def _scheduler(value: str | None) -> str | None:
    if value == "env":
        value = os.environ.get("DASK_SCHEDULER_ADDRESS")
        if not value:
            raise SystemExit("outofcore: --ooc-scheduler env, but DASK_SCHEDULER_ADDRESS is not set")
    return value


SECTION = Section(
    lambda a, tmp: bench_outofcore(tmp, a.ooc_over, a.ooc_worker_mib, a.ooc_workers, a.ooc_file_rows, a.features,
                                   a.k, a.ooc_iters, a.repeats, _scheduler(a.ooc_scheduler), a.ooc_url),
    _show, _add_arguments)
