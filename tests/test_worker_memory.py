"""What a ``dask`` fit holds in memory (issue 25): worker processes import only the kernels, a fit of
in-memory data runs on threaded workers, and the memory benchmark sums the whole process tree.

The figures themselves come from ``python -m benchmarks.run --sections memory``; these only pin
the mechanisms, on tiny data.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
from distributed import futures_of

from benchmarks.memory import tree_peak
from toolkit.backends import get_backend
from toolkit.cluster import _own_aligned
from toolkit.config import load_experiment
from toolkit.train import _threads_suit

#: Heavy libraries a worker running only the Lloyd kernels has no use for.
_HEAVY = ("sklearn", "pandas", "pyarrow", "pydantic", "mlflow")


def test_worker_side_kernel_modules_import_no_heavy_library():
    # A worker unpickling a block kernel or an engine's actor imports these modules (and the
    # package above them) and nothing else of the toolkit.
    code = ("import sys, toolkit.kmeans_dask.kernels, toolkit.kmeans_dask.engines;"
            f"print(sorted(m for m in {_HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_block_copy_function_is_numpys_own():
    # The persisted blocks' aligned copy pickles as NumPy's function: no toolkit import on workers.
    assert b"toolkit" not in pickle.dumps(_own_aligned)


def test_dask_fit_of_data_in_memory_suits_threaded_workers():
    def suits(backend: str, **data: object) -> bool:
        cfg = load_experiment(None, {"backend": backend, **{f"data.{k}": v for k, v in data.items()}})
        return _threads_suit(cfg, get_backend(backend), None)

    assert suits("dask", n_samples=1_000_000, n_features=16)  # generated here: threads
    assert suits("dask", source="sklearn", dataset="iris")
    assert not suits("dask", n_samples=100_000_000, n_features=16)  # too big for one process's monitor
    assert not suits("dask", source="file", path="x.parquet")  # read by the workers
    assert not suits("dask-ml", n_samples=1000, n_features=2)  # holds the GIL


def test_tree_peak_counts_the_children():
    # A parent of ~10 MiB whose child holds 200 MiB for a moment: the tree's peak holds both.
    child = "import time; b = bytearray(200 << 20); time.sleep(0.6)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    res = tree_peak([sys.executable, "-c", parent], interval=0.02)
    assert res["others_mib"] >= 190 and res["peak_mib"] >= res["driver_mib"] + 190


def test_threaded_workers_hold_the_drivers_rows_not_a_copy():
    from toolkit.cluster import dask_client, scatter_rows
    from toolkit.config import ClusterConfig

    X = np.arange(4000 * 3, dtype=np.float32).reshape(4000, 3)
    # No memory limit: a threaded worker's monitor measures this whole process (the test session's
    # pytest, past 1 GiB late in the suite), and a small limit would pause both workers for good.
    with dask_client(ClusterConfig(n_workers=2, processes=False, memory_limit="0")) as client:
        dX = scatter_rows(X, client, chunk_rows=1000)
        blocks = client.gather(futures_of(dX))
        assert len(blocks) == 4 and all(np.shares_memory(b, X) for b in blocks)
        np.testing.assert_array_equal(dX.compute(), X)
