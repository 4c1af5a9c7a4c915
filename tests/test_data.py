"""Data sources: blobs, scikit-learn datasets, CSV/Parquet files; bad data gives one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from toolkit.config import DataConfig
from toolkit.data import check_finite, load_dataset
from toolkit.errors import DataError


def _frame(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n) * 10,
            "c": np.arange(n, dtype=np.int64),
            "label": ["cat", "dog", "eel"] * (n // 3),
        }
    )


def _file_cfg(path: Path | str, **kw) -> DataConfig:
    return DataConfig(source="file", path=str(path), **kw)


def _error(cfg: DataConfig) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(cfg)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


# -- in-memory sources --------------------------------------------------------------------


def test_blobs_shape_dtype_labels():
    ds = load_dataset(DataConfig(source="blobs", n_samples=300, n_features=3, centers=4))
    assert ds.X.shape == (300, 3)
    assert ds.X.dtype == np.float32
    assert isinstance(ds.X, np.ndarray) and not ds.is_lazy
    assert ds.y is not None and ds.y.shape == (300,)
    assert set(np.unique(ds.y)) == {0, 1, 2, 3}
    assert ds.feature_names == ["x0", "x1", "x2"]
    assert ds.n_samples == 300 and ds.n_features == 3
    assert "make_blobs" in ds.source


def test_blobs_are_seeded():
    a = load_dataset(DataConfig(source="blobs", n_samples=200, random_state=3))
    b = load_dataset(DataConfig(source="blobs", n_samples=200, random_state=3))
    c = load_dataset(DataConfig(source="blobs", n_samples=200, random_state=4))
    np.testing.assert_array_equal(a.X, b.X)
    assert a.digest() == b.digest()
    assert a.digest() != c.digest()


def test_sklearn_digits():
    ds = load_dataset(DataConfig(source="sklearn", dataset="digits"))
    assert ds.X.shape == (1797, 64)
    assert ds.X.dtype == np.float32
    assert ds.y is not None and len(np.unique(ds.y)) == 10
    assert len(ds.feature_names) == 64
    assert ds.name == "digits"


# -- files --------------------------------------------------------------------------------


def test_csv_single_file_with_label_column(tmp_path):
    df = _frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    ds = load_dataset(_file_cfg(tmp_path / "d.csv", label_column="label"))
    assert ds.is_lazy
    assert ds.X.dtype == np.float32
    assert ds.feature_names == ["a", "b", "c"]
    np.testing.assert_allclose(ds.X.compute(), df[["a", "b", "c"]].to_numpy(np.float32))
    # labels are encoded to 0..k-1 in sorted order of the original values
    np.testing.assert_array_equal(ds.y, [0, 1, 2] * 4)
    assert ds.file_format == "csv"
    assert ds.files == [str(tmp_path / "d.csv")]


def test_csv_column_selection(tmp_path):
    df = _frame()
    df.to_csv(tmp_path / "d.csv", index=False)
    ds = load_dataset(_file_cfg(tmp_path / "d.csv", columns=["c", "a"]))
    assert ds.y is None
    assert ds.X.shape == (12, 2)
    assert set(ds.feature_names) == {"a", "c"}
    got = pd.DataFrame(ds.X.compute(), columns=ds.feature_names)
    np.testing.assert_allclose(got["a"], df["a"].astype(np.float32))
    np.testing.assert_allclose(got["c"], df["c"].astype(np.float32))


def test_csv_glob_of_several_files(tmp_path):
    df = _frame()
    for i in range(3):
        df.iloc[4 * i : 4 * (i + 1)].to_csv(tmp_path / f"part-{i}.csv", index=False)
    (tmp_path / "other.txt").write_text("not data")
    ds = load_dataset(_file_cfg(tmp_path / "part-*.csv", label_column="label"))
    assert len(ds.files) == 3
    assert ds.X.shape == (12, 3)
    np.testing.assert_allclose(ds.X.compute(), df[["a", "b", "c"]].to_numpy(np.float32))
    np.testing.assert_array_equal(ds.y, [0, 1, 2] * 4)


def test_parquet_single_file_with_columns(tmp_path):
    df = _frame()
    df.to_parquet(tmp_path / "d.parquet")
    ds = load_dataset(_file_cfg(tmp_path / "d.parquet", columns=["b"], label_column="label"))
    assert ds.file_format == "parquet"
    assert ds.feature_names == ["b"]
    assert ds.X.shape == (12, 1)
    np.testing.assert_allclose(ds.X.compute()[:, 0], df["b"].astype(np.float32))
    np.testing.assert_array_equal(ds.y, [0, 1, 2] * 4)


def test_parquet_directory_of_several_files(tmp_path):
    df = _frame()
    folder = tmp_path / "pq"
    folder.mkdir()
    for i in range(3):
        df.iloc[4 * i : 4 * (i + 1)].to_parquet(folder / f"part-{i}.parquet")
    ds = load_dataset(_file_cfg(folder, label_column="label"))
    assert len(ds.files) == 3
    assert ds.X.shape == (12, 3)
    np.testing.assert_allclose(ds.X.compute(), df[["a", "b", "c"]].to_numpy(np.float32))


def test_parquet_directory_with_one_selected_column(tmp_path):
    # Projection to one column lets Dask fuse small files into one partition; the array's
    # chunks must still be known and match the data.
    df = _frame()
    folder = tmp_path / "pq"
    folder.mkdir()
    for i in range(3):
        df.iloc[4 * i : 4 * (i + 1)].to_parquet(folder / f"part-{i}.parquet")
    ds = load_dataset(_file_cfg(folder, columns=["a"], label_column="label"))
    assert ds.X.shape == (12, 1)
    assert not any(np.isnan(c) for c in ds.X.chunks[0])
    np.testing.assert_allclose(ds.X.compute()[:, 0], df["a"].astype(np.float32))
    np.testing.assert_array_equal(ds.y, [0, 1, 2] * 4)


# -- bad data -----------------------------------------------------------------------------


def test_nan_in_csv(tmp_path):
    (tmp_path / "nan.csv").write_text("a,b\n1,2\n,3\n4,5\n")
    msg = _error(_file_cfg(tmp_path / "nan.csv"))
    assert "NaN" in msg and "nan.csv" in msg


def test_inf_in_csv(tmp_path):
    (tmp_path / "inf.csv").write_text("a,b\n1,2\ninf,3\n4,-inf\n")
    msg = _error(_file_cfg(tmp_path / "inf.csv"))
    assert "2 NaN or infinite" in msg


def test_nan_in_parquet(tmp_path):
    pd.DataFrame({"a": [1.0, np.nan, 3.0], "b": [1.0, 2.0, 3.0]}).to_parquet(tmp_path / "n.parquet")
    assert "NaN" in _error(_file_cfg(tmp_path / "n.parquet"))
    assert "NaN" in _error(_file_cfg(tmp_path / "n.parquet", persist=False))  # read straight by pyarrow


def test_check_finite_numpy_and_validate_off():
    check_finite(np.ones((3, 2), np.float32))
    with pytest.raises(DataError, match="1 NaN"):
        check_finite(np.array([[1.0, np.nan]]))
    # validate=False skips the scan (the caller takes responsibility).
    ds = load_dataset(DataConfig(source="blobs", n_samples=50), validate=False)
    assert ds.n_samples == 50


def test_non_numeric_column(tmp_path):
    _frame().to_csv(tmp_path / "d.csv", index=False)
    msg = _error(_file_cfg(tmp_path / "d.csv"))
    assert "non-numeric" in msg and "label" in msg
    assert "data.columns" in msg  # the fix


def test_empty_file(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    msg = _error(_file_cfg(tmp_path / "empty.csv"))
    assert "empty" in msg and "empty.csv" in msg


def test_header_only_csv_has_no_rows(tmp_path):
    (tmp_path / "hdr.csv").write_text("a,b\n")
    msg = _error(_file_cfg(tmp_path / "hdr.csv"))
    assert "no rows" in msg


def test_glob_matching_nothing(tmp_path):
    msg = _error(_file_cfg(tmp_path / "nothing-*.csv"))
    assert "matches no file" in msg and "nothing-*.csv" in msg


def test_directory_without_data_files(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    assert "no .csv or .parquet" in _error(_file_cfg(tmp_path))


def test_missing_file(tmp_path):
    msg = _error(_file_cfg(tmp_path / "missing.csv"))
    assert "does not exist" in msg and "missing.csv" in msg


def test_selected_column_missing(tmp_path):
    _frame().to_csv(tmp_path / "d.csv", index=False)
    msg = _error(_file_cfg(tmp_path / "d.csv", columns=["a", "zz"]))
    assert "zz" in msg


def test_label_column_missing(tmp_path):
    _frame()[["a", "b"]].to_csv(tmp_path / "d.csv", index=False)
    msg = _error(_file_cfg(tmp_path / "d.csv", label_column="target"))
    assert "target" in msg


def test_unknown_extension(tmp_path):
    (tmp_path / "d.json").write_text("{}")
    msg = _error(_file_cfg(tmp_path / "d.json"))
    assert "data.format" in msg


# -- several files: columns are matched by name ---------------------------------------------


def _blob_frame() -> pd.DataFrame:
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=600, n_features=3, centers=4, cluster_std=0.3, random_state=0)
    return pd.DataFrame(X * [1.0, 10.0, 100.0], columns=["x0", "x1", "x2"])  # unlike scales


def _write_parts(df: pd.DataFrame, folder: Path, fmt: str, orders: list[list[str]]) -> str:
    """Write ``df`` in ``len(orders)`` consecutive row slices, part i with columns ``orders[i]``."""
    folder.mkdir()
    rows = -(-len(df) // len(orders))
    for i, cols in enumerate(orders):
        part = df.iloc[i * rows : (i + 1) * rows][cols]
        if fmt == "parquet":
            part.to_parquet(folder / f"part-{i}.parquet")
        else:
            part.to_csv(folder / f"part-{i}.{fmt}", index=False)
    return str(folder / f"part-*.{fmt}")


def _inertia(X: np.ndarray) -> float:
    from sklearn.cluster import KMeans

    return float(KMeans(n_clusters=4, n_init=1, random_state=0).fit(X).inertia_)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "csv.gz"])
def test_glob_with_columns_in_another_order_is_read_by_name(tmp_path, fmt):
    df = _blob_frame()
    same = _write_parts(df, tmp_path / "same", fmt, [["x0", "x1", "x2"]] * 3)
    mixed = _write_parts(df, tmp_path / "mixed", fmt, [["x0", "x1", "x2"], ["x2", "x0", "x1"], ["x1", "x2", "x0"]])
    a = load_dataset(_file_cfg(same))
    b = load_dataset(_file_cfg(mixed))
    assert a.feature_names == b.feature_names == ["x0", "x1", "x2"]
    Xa, Xb = a.X.compute(), b.X.compute()
    np.testing.assert_array_equal(Xb, Xa)
    np.testing.assert_allclose(Xb, df.to_numpy(np.float32), rtol=1e-6)
    assert _inertia(Xb) == pytest.approx(_inertia(Xa))
    # data.columns picks by name too, in the order given.
    c = load_dataset(_file_cfg(mixed, columns=["x2", "x0"]))
    assert c.feature_names == ["x2", "x0"]
    np.testing.assert_array_equal(c.X.compute(), Xa[:, [2, 0]])


def test_csv_files_split_into_blocks_keep_their_own_header(tmp_path):
    # Dask gives every block after a file's first the FIRST file's header; a file with
    # another column order must not be read under it.
    from toolkit.data import read_table

    df = _blob_frame()
    _write_parts(df, tmp_path / "mixed", "csv", [["x0", "x1", "x2"], ["x2", "x0", "x1"]])
    files = sorted(str(p) for p in (tmp_path / "mixed").glob("*.csv"))
    ddf = read_table(files, "csv", blocksize=2_000)
    assert ddf.npartitions > 4  # several blocks per file
    got = ddf.compute()
    assert list(got.columns) == ["x0", "x1", "x2"]
    np.testing.assert_allclose(got.to_numpy(), df.to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_glob_with_other_column_names_names_the_file(tmp_path, fmt):
    df = _blob_frame()
    folder = tmp_path / "d"
    _write_parts(df, folder, fmt, [["x0", "x1", "x2"]] * 2)
    renamed = df.iloc[:10].rename(columns={"x1": "y1"})
    bad = folder / f"part-9.{fmt}"
    renamed.to_parquet(bad) if fmt == "parquet" else renamed.to_csv(bad, index=False)
    msg = _error(_file_cfg(folder / f"part-*.{fmt}"))
    assert "part-9" in msg and "part-0" in msg
    assert "missing column(s) x1" in msg and "extra column(s) y1" in msg


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_glob_with_an_extra_column(tmp_path, fmt):
    df = _blob_frame()
    folder = tmp_path / "d"
    _write_parts(df, folder, fmt, [["x0", "x1", "x2"]] * 3)
    wider = pd.read_parquet(folder / "part-1.parquet") if fmt == "parquet" else pd.read_csv(folder / "part-1.csv")
    wider = wider.assign(extra=7.0)
    if fmt == "parquet":
        wider.to_parquet(folder / "part-1.parquet")
    else:
        wider.to_csv(folder / "part-1.csv", index=False)
    msg = _error(_file_cfg(folder / f"part-*.{fmt}"))
    assert "part-1" in msg and "extra column(s) extra" in msg
    assert "data.columns" in msg  # the fix
    # Selecting the columns every file has is fine: the extra one is not read.
    ds = load_dataset(_file_cfg(folder / f"part-*.{fmt}", columns=["x0", "x1", "x2"]))
    np.testing.assert_allclose(ds.X.compute(), df.to_numpy(np.float32), rtol=1e-6)
    # A selected column that one file lacks names that file.
    msg = _error(_file_cfg(folder / f"part-*.{fmt}", columns=["x0", "extra"]))
    assert "part-0" in msg and "no column(s) extra" in msg


@pytest.mark.parametrize("offset", [0.0, 1e9], ids=["near", "centred"])
def test_out_of_core_parquet_reads_the_same_blocks_straight_through_pyarrow(tmp_path, offset):
    # data.persist=false re-reads the files every pass: one pyarrow task per file fills the float32
    # block (toolkit.data._read_parquet_block); it must give exactly the blocks of the dd.read_parquet
    # path (same values, dtype, order, rows per block, centring), whatever order each file stores
    # its columns in and whatever their types (float64, float32, int64).
    rng = np.random.default_rng(1)
    n = 300
    df = pd.DataFrame({
        "a": offset + rng.normal(size=n),
        "b": (offset + rng.normal(size=n) * 5).astype(np.float32),
        "c": (int(offset) + rng.integers(-50, 50, n)).astype(np.int64),
        "label": rng.integers(0, 3, n),
    })
    glob = _write_parts(df, tmp_path / "d", "parquet", [["a", "b", "c", "label"], ["c", "label", "a", "b"],
                                                        ["label", "b", "c", "a"]])
    for columns in (None, ["c", "a"], ["b"]):  # ["b"]: float32 only, Arrow's row-major copy
        kw = {"columns": columns, "label_column": "label"}
        direct = load_dataset(_file_cfg(glob, persist=False, **kw))
        via_dask = load_dataset(_file_cfg(glob, **kw))
        assert direct.feature_names == via_dask.feature_names
        assert direct.X.dtype == via_dask.X.dtype == np.float32
        # One block per file (dask.dataframe may fuse small files once columns are projected away).
        assert direct.X.chunks == ((100, 100, 100), (len(direct.feature_names),))
        assert columns or direct.X.chunks == via_dask.X.chunks
        np.testing.assert_array_equal(direct.y, via_dask.y)
        assert (direct.shift is None) == (via_dask.shift is None)
        assert (direct.shift is None) == (not offset) or columns == ["b"]  # float32 at 1e9: constant
        # Same partitions, or nothing centred: the very same numbers.  Fused partitions sum the mean
        # in another order: the shift may differ in its last bit.
        same = direct.X.chunks == via_dask.X.chunks or direct.shift is None
        if direct.shift is not None:
            np.testing.assert_allclose(direct.shift, via_dask.shift, rtol=0 if same else 1e-15)
        np.testing.assert_allclose(direct.X.compute(), via_dask.X.compute(), rtol=0, atol=0 if same else 1e-6)
        # The path taken: one task per file, named for the direct reader, nothing of dask.dataframe.
        layers = list(direct.X.dask.layers)
        assert len(layers) == 1 and layers[0].startswith("parquet-block-float32-"), layers
        assert len(direct.X.__dask_graph__()) == 3
        assert not any(k.startswith("parquet-block") for k in via_dask.X.dask.layers)
