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
