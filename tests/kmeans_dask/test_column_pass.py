"""The out-of-core Lloyd pass on a file's columns (``data.persist=false`` on Parquet).

A pass over a direct Parquet array reads each file and steps on its Arrow columns in one task,
with no row-major block (``toolkit.data._ParquetPart``, ``kernels.k_stats_columns``).  It must
give the very sums the block kernel gives on the same rows, however the columns are chunked,
and fall back to the block wherever the columns are not plain float32.
"""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from toolkit.config import DataConfig
from toolkit.data import _ParquetPart, _read_parquet_block, load_dataset
from toolkit.kmeans_dask import DaskKMeans
from toolkit.kmeans_dask._numba import TILE
from toolkit.kmeans_dask.engines import make_engine
from toolkit.kmeans_dask.kernels import k_stats, k_stats_columns, k_stats_source, kernel_centers

D, K = 5, 4


def _rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, D)) * 3 + 40).astype(np.float32)


def _runs(X: np.ndarray, cuts: list[int]) -> list[list[np.ndarray]]:
    edges = [0, *cuts, len(X)]
    return [[np.ascontiguousarray(X[a:b, j]) for j in range(D)] for a, b in itertools.pairwise(edges)]


@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize(("n", "cuts"), [
    (3 * TILE + 17, []),                          # one run, a partial last tile
    (3 * TILE + 17, [TILE]),                      # runs on a tile boundary
    (3 * TILE + 17, [5, TILE + 3, TILE + 3, 2 * TILE + 1000]),  # odd cuts and an empty run
    (TILE - 1, [100]),                            # less than one tile
    (0, []),                                      # an empty block
])
def test_column_runs_give_the_block_kernels_sums_bit_for_bit(n, cuts, centred):
    X = _rows(n)
    C = _rows(K, seed=1).astype(np.float64)
    o = (X.mean(axis=0) if n else np.ones(D)).astype(np.float32) if centred else np.zeros(D, np.float32)
    C2, cn = kernel_centers(C - o)
    want = k_stats(X, 0, 0, o, C2, cn)
    got = k_stats_columns(_runs(X, cuts), o, C2, cn)
    assert got.shape == want.shape == (K, D + 1)
    np.testing.assert_array_equal(got, want)
    assert got[:, D].sum() == n


def _write(path, table: pa.Table, **kw) -> str:
    pq.write_table(table, path, **kw)
    return str(path)


def test_a_file_is_read_as_column_runs_only_where_its_columns_are_plain_float32(tmp_path):
    X = _rows(5000)
    cols = [f"x{j}" for j in range(D)]
    f32 = pa.table({c: X[:, j] for j, c in enumerate(cols)})
    # Several row groups: Arrow hands each column over in several chunks.
    path = _write(tmp_path / "f32.parquet", f32, row_group_size=1500)
    part = _ParquetPart(path, list(reversed(cols)))  # the array's column order, not the file's
    runs = part.read()
    assert isinstance(runs, list) and len(runs) >= 2
    np.testing.assert_array_equal(np.column_stack([np.concatenate(c) for c in zip(*runs, strict=True)]),
                                  X[:, ::-1])
    assert all(not c.flags.writeable for run in runs for c in run)  # Arrow's own buffers, not copies
    np.testing.assert_array_equal(_read_parquet_block(path, list(reversed(cols)), None, np.float32), X[:, ::-1])
    # float64 columns, or a null, go through the block (cast once, nulls as NaN), from the one read.
    f64 = _write(tmp_path / "f64.parquet", pa.table({c: X[:, j].astype(np.float64) for j, c in enumerate(cols)}))
    f64_block = _ParquetPart(f64, cols).read()
    assert isinstance(f64_block, np.ndarray)
    np.testing.assert_array_equal(f64_block, _read_parquet_block(f64, cols, None, np.float32))
    nulls = pa.table({c: pa.array([None, *X[1:, j].tolist()], pa.float32()) for j, c in enumerate(cols)})
    null_path = _write(tmp_path / "null.parquet", nulls)
    with_null = _ParquetPart(null_path, cols)
    block = with_null.read()
    assert isinstance(block, np.ndarray)
    np.testing.assert_array_equal(block, _read_parquet_block(null_path, cols, None, np.float32))
    C2, cn = kernel_centers(X[:K].astype(np.float64))
    o = np.zeros(D, np.float32)
    assert np.isnan(block[0]).all()
    np.testing.assert_array_equal(k_stats_source(with_null, 0, 0, o, C2, cn), k_stats(block, 0, 0, o, C2, cn))


def test_a_part_reads_its_file_once_whichever_way_it_hands_it_over(tmp_path, monkeypatch):
    import toolkit.data

    X = _rows(3000)
    cols = [f"x{j}" for j in range(D)]
    f32 = _write(tmp_path / "f32.parquet", pa.table({c: X[:, j] for j, c in enumerate(cols)}))
    f64 = _write(tmp_path / "f64.parquet", pa.table({c: X[:, j].astype(np.float64) for j, c in enumerate(cols)}))
    reads: list[str] = []
    real = toolkit.data._parquet_table
    monkeypatch.setattr(toolkit.data, "_parquet_table", lambda path, columns=None: reads.append(path) or
                        real(path, columns))
    C2, cn = kernel_centers(X[:K].astype(np.float64))
    o = np.zeros(D, np.float32)
    for path in (f32, f64):
        k_stats_source(_ParquetPart(path, cols), 0, 0, o, C2, cn)
    assert reads == [f32, f64]


def _parquet_glob(tmp_path, X: np.ndarray, files: int) -> str:
    for i, part in enumerate(np.array_split(X, files)):
        _write(tmp_path / f"part-{i}.parquet", pa.table({f"x{j}": part[:, j] for j in range(D)}), row_group_size=700)
    return str(tmp_path / "part-*.parquet")


def test_a_lloyd_pass_on_parquet_reads_columns_and_fits_as_the_blocks_do(client, tmp_path):
    X = _rows(6000)
    ds = load_dataset(DataConfig(source="file", path=_parquet_glob(tmp_path, X, 3), persist=False))
    Xd = ds.X
    assert ds.shift is None and len(Xd.block_columns) == Xd.numblocks[0] == 3
    # The same array without its readers: the step runs on the blocks the read tasks build.
    plain = da.Array(Xd.dask, Xd.name, Xd.chunks, dtype=Xd.dtype)
    assert getattr(plain, "block_columns", None) is None
    C = X[[0, 1500, 3000, 4500]].astype(np.float64)
    o = X.mean(axis=0).astype(np.float32)
    C2, cn = kernel_centers(C - o)
    with_parts, _ = make_engine(Xd, client)
    without, _ = make_engine(plain, client)
    assert with_parts.kind == without.kind == "graph"
    assert with_parts._parts is not None and without._parts is None
    for blocks in (None, [2]):
        np.testing.assert_array_equal(np.stack(with_parts.run(k_stats, o, C2, cn, blocks=blocks)),
                                      np.stack(without.run(k_stats, o, C2, cn, blocks=blocks)))
    # A whole fit, k-means|| included: the same model either way.
    fits = [DaskKMeans(K, init="k-means||", max_iter=20, tol=0.0, random_state=0).fit(arr, client=client)
            for arr in (Xd, plain)]
    np.testing.assert_array_equal(fits[0].cluster_centers_, fits[1].cluster_centers_)
    assert fits[0].inertia_ == fits[1].inertia_ and fits[0].n_iter_ == fits[1].n_iter_
