"""Data sources: synthetic blobs, scikit-learn's bundled datasets, and CSV/Parquet files.

Every source yields a :class:`Dataset` of float32 features (a NumPy array for in-memory
sources, a lazy Dask array for files) and, where known, ground-truth labels.  Validation
(empty data, non-numeric columns, NaN/inf) happens here, once, with one-line errors.

Precision: sources are read in float64 and cast to float32 here, once.  Data far from the
origin relative to its spread (coordinates, timestamps: 1e9 +- 10) would lose in that cast what
separates its points (float32 steps by 64 at 1e9), so such data is first centred on its
per-feature mean, computed in float64 in the validation pass (:func:`precision_shift`); the
dataset keeps that ``shift`` and every result leaves the toolkit in the original coordinates
(:meth:`Dataset.raw`).
GPU placement (CuPy / dask_cudf) is the GPU backends' job: this module never imports RAPIDS.
"""

from __future__ import annotations

import functools
import glob as _glob
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.config import DataConfig
from toolkit.errors import DataError
from toolkit.redact import redact

__all__ = ["CENTRE_RATIO", "MAX_RATIO", "Dataset", "check_finite", "is_url", "load_dataset", "precision_shift",
           "read_table", "url_fs"]

#: Data are centred (before the float32 cast) when their mean lies farther from 0 than this many
#: times their spread ``sqrt(sum(var))``.  float32 keeps 24 bits: at ratio ``R`` the cast moves a
#: value by up to ``R * 2**-24`` spreads, and a k-means predict (``|c|^2 - 2 x.c`` in float32, as
#: scikit-learn computes it, uncentred) errs by ``~3 * 2**-24 * R**2`` squared spreads: 7e-4 at 64,
#: harmless; 1.8e11 at the 1e9 offset that collapsed 4 clusters into 1.  Below it the data are
#: used as before (bit for bit).
CENTRE_RATIO = 64.0
#: Beyond this ratio even float64 keeps under 8 bits of the spread (2**-52 * 2**44 = 2**-8): such
#: data is refused rather than clustered on rounding noise.
MAX_RATIO = 2.0**44


@dataclass
class Dataset:
    """Features ``X`` (float32), optional labels ``y`` and where they came from.

    ``shift`` (float64, one value per feature, or None): ``X`` holds the data minus ``shift``
    (see :func:`precision_shift`); :meth:`raw` adds it back to rows or centroids.
    """

    name: str
    X: Any  # numpy.ndarray or dask.array.Array, float32, 2-D
    y: np.ndarray | None
    feature_names: list[str]
    source: str
    files: list[str] = field(default_factory=list)
    file_format: str | None = None
    columns: list[str] | None = None
    shift: np.ndarray | None = None
    #: Direct Parquet reads only: ``(shift, dtype) -> Dask array`` of the same files, so the cast
    #: builds float32 blocks in the reading task itself (see :func:`_parquet_array`).
    _reread: Any = field(default=None, repr=False, compare=False)

    def raw(self, a: Any) -> Any:
        """Rows or centroids of ``X``'s coordinates in the data's own: float64 plus ``shift``
        (``a`` unchanged when the data was not centred)."""
        if self.shift is None:
            return a
        return np.asarray(a, dtype=np.float64) + self.shift

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def is_lazy(self) -> bool:
        return not isinstance(self.X, np.ndarray)

    def digest(self) -> str:
        """A short content fingerprint (shape, source, first and last rows)."""
        h = hashlib.sha1(f"{self.source}|{self.X.shape}".encode())
        if isinstance(self.X, np.ndarray) and len(self.X):
            h.update(np.ascontiguousarray(self.X[:100]).tobytes())
            h.update(np.ascontiguousarray(self.X[-100:]).tobytes())
        else:
            for f in self.files:
                h.update(_file_fingerprint(f).encode())
        return h.hexdigest()[:12]


def is_url(path: str | None) -> bool:
    """Whether ``path`` names a remote fsspec location (``s3://``, ``gs://``, ``https://``, ...),
    read by whoever computes on it (a Dask worker reads its own partitions), not a local path."""
    return bool(path) and "://" in str(path) and not str(path).startswith("file://")


def url_fs(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it.

    Credentials are never taken from the URL or the config: the filesystem finds them as its SDK
    does (for ``s3://``: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` naming a
    profile in ``~/.aws``, instance roles; ``AWS_ENDPOINT_URL_S3`` for an S3-compatible store).

    Raises:
        DataError: no filesystem implementation is installed for the URL's scheme.
    """
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        scheme = url.split("://", 1)[0]
        hint = "pip install s3fs" if scheme in ("s3", "s3a") else f"install the fsspec implementation for {scheme}://"
        raise DataError(f"cannot open {redact(url)!r}: {' '.join(str(exc).split())[:200]}", hint) from None


def _remote_error(url: str, exc: BaseException) -> DataError:
    """One line for a remote read that failed (no credentials, access denied, unreachable)."""
    msg = " ".join(str(exc).split())[:300] or type(exc).__name__
    return DataError(f"cannot read {redact(url)!r}: {type(exc).__name__}: {redact(msg)}",
                     "check the URL and the credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                     "or AWS_PROFILE; AWS_ENDPOINT_URL_S3 for a non-AWS store)")


def _file_fingerprint(f: str) -> str:
    """What identifies one file's content cheaply: size and mtime, or a remote object's ETag and size."""
    if not is_url(f):
        st = os.stat(f)
        return f"{f}:{st.st_size}:{int(st.st_mtime)}"
    fs, path = url_fs(f)
    info = fs.info(path)
    tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("LastModified") or ""
    return f"{f}:{info.get('size')}:{str(tag).strip(chr(34))}"


def check_finite(X: Any, what: str = "data") -> None:
    """Raise :class:`DataError` when ``X`` holds NaN or inf (works on NumPy and Dask arrays)."""
    if isinstance(X, np.ndarray):
        bad = int(X.size - np.count_nonzero(np.isfinite(X)))
    else:
        import dask.array as da

        bad = int((~da.isfinite(X)).sum().compute())
    if bad:
        raise DataError(
            f"{what} contains {bad} NaN or infinite value(s)",
            "drop or impute them before clustering",
        )


def _blobs(cfg: DataConfig) -> Dataset:
    from sklearn.datasets import make_blobs

    X, y = make_blobs(
        n_samples=cfg.n_samples,
        n_features=cfg.n_features,
        centers=cfg.centers,
        cluster_std=cfg.cluster_std,
        random_state=cfg.random_state,
    )
    return Dataset(
        name=f"blobs-{cfg.n_samples}x{cfg.n_features}-c{cfg.centers}",
        X=np.asarray(X, dtype=np.float64),  # cast (and centred if need be) by load_dataset
        y=y.astype(np.int32),
        feature_names=[f"x{i}" for i in range(cfg.n_features)],
        source=(
            f"sklearn.datasets.make_blobs(n_samples={cfg.n_samples}, n_features={cfg.n_features}, "
            f"centers={cfg.centers}, cluster_std={cfg.cluster_std}, random_state={cfg.random_state})"
        ),
    )


def _bundled(cfg: DataConfig) -> Dataset:
    from sklearn import datasets

    loader = getattr(datasets, f"load_{cfg.dataset}")
    bunch = loader()
    names = [str(n) for n in getattr(bunch, "feature_names", [])] or [
        f"x{i}" for i in range(bunch.data.shape[1])
    ]
    return Dataset(
        name=str(cfg.dataset),
        X=np.asarray(bunch.data, dtype=np.float64),  # cast (and centred if need be) by load_dataset
        y=np.asarray(bunch.target, dtype=np.int32),
        feature_names=names,
        source=f"sklearn.datasets.load_{cfg.dataset}()",
    )


def _expand_url(url: str) -> list[str]:
    """The files a remote URL names (a file, a "directory" prefix, or a glob), as URLs."""
    fs, path = url_fs(url)
    try:
        fs.invalidate_cache()  # fsspec keeps listings per process: each load sees the store as it is now
        if any(ch in path for ch in "*?["):
            found = sorted(fs.glob(path))
            if not found:
                raise DataError(f"glob {url!r} matches no file", "check the pattern and the bucket")
        elif fs.isdir(path):
            found = sorted(p for p in fs.ls(path, detail=False) if p.endswith((".csv", ".parquet", ".pq")))
            if not found:
                raise DataError(f"{url!r} holds no .csv or .parquet file", "point at the files")
        elif fs.exists(path):
            return [url]
        else:
            raise DataError(f"data file {url!r} does not exist", "check data.path")
    except DataError:
        raise
    except Exception as exc:  # the SDK's own errors: no credentials, denied, unreachable
        raise _remote_error(url, exc) from None
    return [fs.unstrip_protocol(p) for p in found]


def _expand(path: str) -> list[str]:
    if is_url(path):
        return _expand_url(path)
    path = os.path.expanduser(path)
    if any(ch in path for ch in "*?["):
        files = sorted(_glob.glob(path, recursive=True))
        if not files:
            raise DataError(f"glob {path!r} matches no file", "check the pattern and directory")
        return files
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, f)
            for f in os.listdir(path)
            if f.endswith((".csv", ".parquet", ".pq"))
        )
        if not files:
            raise DataError(f"directory {path!r} holds no .csv or .parquet file", "point at the files")
        return files
    if not os.path.exists(path):
        raise DataError(f"data file {path!r} does not exist", "check data.path")
    return [path]


def _format_of(files: list[str], fmt: str) -> str:
    if fmt != "auto":
        return fmt
    exts = {os.path.splitext(f)[1].lower() for f in files}
    if exts <= {".parquet", ".pq"}:
        return "parquet"
    if exts <= {".csv", ".txt", ".gz"}:
        return "csv"
    raise DataError(f"cannot tell the format of {sorted(exts)}", "set data.format to csv or parquet")


def _header(path: str, fmt: str) -> list[str]:
    """The column names of one file, read without reading its rows.

    Parquet: the schema in the footer, less the columns pandas stored its index in (Dask
    reads those back as the index).  CSV: the header line, through pandas so quoting and
    compression (``.gz``) are handled as when the rows are read.
    """
    try:
        if fmt == "parquet":
            import pyarrow.dataset as pads
            import pyarrow.parquet as pq

            if is_url(path):  # the footer only, through the URL's filesystem
                fs, inner = url_fs(path)
                with fs.open(inner, "rb") as fh:
                    schema = pq.read_schema(fh)
            else:
                schema = (
                    pads.dataset(path, format="parquet").schema  # a directory of parts
                    if os.path.isdir(path)
                    else pq.read_schema(path)
                )
            meta = schema.pandas_metadata or {}
            index = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
            return [str(n) for n in schema.names if n not in index]
        import pandas as pd

        return [str(c) for c in pd.read_csv(path, nrows=0).columns]
    except Exception as exc:  # pyarrow, pandas, zlib/gzip: each has its own error types
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot read the columns of {path!r}: {msg}", "check the file and data.format") from None


def _check_columns(files: list[str], headers: list[list[str]], columns: list[str] | None) -> None:
    """Raise :class:`DataError` for the first file that lacks a needed column (or has more)."""
    first = headers[0]
    for path, names in zip(files, headers, strict=True):
        if columns is not None:
            missing = [c for c in columns if c not in names]
            if missing:
                raise DataError(
                    f"{path!r} has no column(s) {', '.join(missing)}; it has {', '.join(names)}",
                    "select columns every file has with data.columns",
                )
        elif set(names) != set(first):
            missing = [c for c in first if c not in names]
            extra = [c for c in names if c not in first]
            said = "; ".join(
                part for part in (
                    f"missing column(s) {', '.join(missing)}" if missing else "",
                    f"extra column(s) {', '.join(extra)}" if extra else "",
                ) if part
            )  # fmt: skip
            raise DataError(
                f"{path!r} has other columns than {files[0]!r} ({said})",
                "give every file the same column names (in any order), or select the columns "
                "they all have with data.columns",
            )


def _runs(files: list[str], headers: list[list[str]]) -> list[tuple[list[str], list[str]]]:
    """Consecutive files with the same header (and compression), as ``(files, header)``."""
    runs: list[tuple[list[str], list[str]]] = []
    for path, names in zip(files, headers, strict=True):
        if runs and runs[-1][1] == names and _gz(runs[-1][0][-1]) == _gz(path):
            runs[-1][0].append(path)
        else:
            runs.append(([path], names))
    return runs


def _gz(path: str) -> bool:
    return path.lower().endswith(".gz")


def read_table(
    files: list[str], fmt: str, columns: list[str] | None = None, blocksize: str | int = "64MB"
) -> Any:
    """Read CSV/Parquet files into a lazy ``dask.dataframe`` (helper shared with serving).

    Columns are matched by name, not position: the frame has ``columns`` in that order when
    given (every file must have them; other columns are ignored), else the first file's
    columns in its order (every file must have the same set, in any order).

    Raises:
        DataError: an empty or unreadable file, or a file whose columns do not match.
    """
    import dask.dataframe as dd

    for f in files:
        if is_url(f):
            fs, inner = url_fs(f)
            try:
                empty = fs.size(inner) == 0
            except Exception as exc:
                raise _remote_error(f, exc) from None
            if empty:
                raise DataError(f"data file {f!r} is empty", "remove it or point at non-empty files")
        elif not os.path.isdir(f) and os.path.getsize(f) == 0:
            raise DataError(f"data file {f!r} is empty", "remove it or point at non-empty files")
    headers = [_header(f, fmt) for f in files]
    _check_columns(files, headers, columns)
    order = list(columns) if columns is not None else headers[0]
    try:
        if fmt == "parquet":
            # pyarrow projects by name, whatever order each file stores its columns in.
            return dd.read_parquet(files, columns=order)
        # Dask reads the files of one read_csv call as if they shared the first one's header
        # (it prepends that header to every block after a file's first), so files are read
        # in runs that share a header, each put in ``order`` by name, and stacked in order.
        parts = []
        for run, names in _runs(files, headers):
            ddf = dd.read_csv(
                run, usecols=columns, blocksize=None if _gz(run[0]) else blocksize
            )  # gzip cannot be split into blocks
            parts.append(ddf if names == order else ddf[order])
        return parts[0] if len(parts) == 1 else dd.concat(parts)
    except (ValueError, KeyError) as exc:
        # Dask wraps the reader's error: "An error occurred while calling the read_csv method
        # ...\nOriginal Message: <the real reason>"; report the real reason.
        text = str(exc.args[0]) if exc.args else ""
        if "Original Message:" in text:
            text = text.split("Original Message:", 1)[1]
        msg = " ".join(text.split()) or type(exc).__name__
        raise DataError(f"cannot read {files[0]!r}: {msg}", "check data.columns and data.format") from None


def _check_numeric(ddf: Any, where: str) -> None:
    """Raise :class:`DataError` for a non-numeric column of ``ddf`` (from its metadata, no rows read)."""
    import pandas as pd

    bad = [str(c) for c, t in ddf.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if bad:
        if len(ddf.index) == 0:  # a header-only CSV reads as empty object columns
            raise DataError(f"{where} holds no rows", "point at non-empty data")
        raise DataError(
            f"{where} has non-numeric column(s): {', '.join(bad)}",
            "select numeric columns with data.columns or encode them first",
        )


#: Rows a Parquet block is filled in at a time: all columns of 16k rows stay in cache while the
#: C-order block is written (column by column over the whole block strides through memory).
_FILL_ROWS = 16_384
#: Name prefix of the direct reader's tasks (the dask dashboard and tests see it).
PARQUET_TASK = "parquet-block"


def _parquet_table(path: str, columns: list[str] | None = None) -> Any:
    """One Parquet file as an Arrow table, read where this runs: a URL through its filesystem,
    with the credentials of whoever reads it (a worker's own)."""
    import pyarrow.parquet as pq

    if is_url(path):
        fs, inner = url_fs(path)
        return pq.read_table(inner, columns=columns, filesystem=fs)
    return pq.read_table(path, columns=columns)


def _read_parquet_block(path: str, columns: list[str], shift: np.ndarray | None, dtype: Any) -> np.ndarray:
    """One Parquet file as one ``dtype`` block of ``columns``, minus ``shift``, read on a worker
    (float32: C-order, as the kernels take it; float64, for the statistics pass: column-major).

    The values are those of the ``dd.read_parquet`` -> float64 -> ``(X - shift).astype(float32)``
    chain, without pandas or the float64 block: a float32/float64 column is taken as it is
    (``- shift`` in float64 where it is centred), any other numeric type is cast to float64 by Arrow
    first (nulls become NaN), then each value is rounded once into ``dtype``.
    """
    return _table_block([_parquet_table(path, columns)], columns, shift, dtype)


def _table_block(box: list[Any], columns: list[str], shift: np.ndarray | None, dtype: Any) -> np.ndarray:
    """:func:`_read_parquet_block` of a table already read, handed over in a one-item list that
    this empties: the table's last reference is then this function's own, so the buffers the
    block does not need are freed before it is filled."""
    import pyarrow as pa

    table = box.pop()
    if (shift is None and np.dtype(dtype) == np.float32 and table.num_rows
            and all(pa.types.is_float32(table.schema.field(c).type) for c in columns)):
        # float32 files, nothing to centre: Arrow's own row-major copy (nulls as NaN), a 64-byte
        # aligned buffer, ~30% less CPU than filling the block column by column from Python.
        batch = table.select(columns).combine_chunks().to_batches()[0]
        return batch.to_tensor(null_to_nan=True, row_major=True).to_numpy()
    cols = []
    for name in columns:
        col = table.column(name)
        if not (pa.types.is_float32(col.type) or pa.types.is_float64(col.type)):
            col = col.cast(pa.float64(), safe=False)
        cols.append(col.to_numpy())
    if np.dtype(dtype) == np.float64:  # the statistics pass: column-major, as pandas hands its blocks over
        out = np.empty((table.num_rows, len(columns)), dtype=dtype, order="F")
        for j, c in enumerate(cols):
            out[:, j] = c if shift is None else c.astype(np.float64) - shift[j]
        return out
    out = np.empty((table.num_rows, len(columns)), dtype=dtype)
    del table  # the NumPy views keep the buffers they need; the rest goes now
    for r0 in range(0, out.shape[0], _FILL_ROWS):
        r1 = min(r0 + _FILL_ROWS, out.shape[0])
        for j, c in enumerate(cols):
            if shift is None:
                out[r0:r1, j] = c[r0:r1]
            else:  # centred in float64, then rounded once, as (X - shift).astype(float32)
                out[r0:r1, j] = c[r0:r1].astype(np.float64) - shift[j]
    return out


class _ParquetPart:
    """One Parquet file of a direct array, read on a worker for a Lloyd pass (the array's
    ``block_columns``, see :mod:`toolkit.kmeans_dask.engines`).  A plain class, not a dataclass:
    Dask would take a dataclass apart and rebuild it in every task."""

    __slots__ = ("columns", "path")

    def __init__(self, path: str, columns: list[str]) -> None:
        self.path, self.columns = path, list(columns)

    def read(self) -> list[list[np.ndarray]] | np.ndarray:
        """The file, read once: its rows as runs of float32 columns, zero-copy views of Arrow's
        buffers (a run per stretch where every column is one contiguous chunk), or, where a
        column is not float32 or holds a null, the array's float32 block (the block's reader
        casts those, and turns nulls into NaN)."""
        import pyarrow as pa

        box = [_parquet_table(self.path, self.columns)]
        cols = [box[0].column(c) for c in self.columns]
        if any(not pa.types.is_float32(c.type) or c.null_count for c in cols):
            del cols
            return _table_block(box, self.columns, None, np.float32)
        ends = sorted({int(e) for c in cols for e in np.cumsum([len(ch) for ch in c.chunks])})
        runs, start = [], 0
        for end in ends:
            if end > start:  # within one chunk of every column: a slice of it, no copy
                runs.append([next(ch for ch in c.slice(start, end - start).chunks if len(ch))
                             .to_numpy(zero_copy_only=True) for c in cols])
                start = end
        return runs


def _parquet_rows(path: str) -> int:
    """A Parquet file's row count, from its footer."""
    import pyarrow.parquet as pq

    if is_url(path):
        fs, inner = url_fs(path)
        with fs.open(inner, "rb") as fh:
            return int(pq.read_metadata(fh).num_rows)
    return int(pq.read_metadata(path).num_rows)


def _parquet_array(files: list[str], columns: list[str], rows: list[int], shift: np.ndarray | None,
                   dtype: Any) -> Any:
    """A Dask array of one block per Parquet file, each read by :func:`_read_parquet_block` in one task."""
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    stamps = [_file_fingerprint(f) if not is_url(f) else f for f in files]  # a rewritten file: new keys
    name = f"{PARQUET_TASK}-{np.dtype(dtype).name}-{tokenize(stamps, columns, rows, shift, np.dtype(dtype).str)}"
    dsk = {(name, i, 0): (_read_parquet_block, f, list(columns), shift, np.dtype(dtype))
           for i, f in enumerate(files)}
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    X = da.Array(graph, name, chunks=(tuple(rows), (len(columns),)), dtype=np.dtype(dtype))
    if shift is None and np.dtype(dtype) == np.float32:  # a Lloyd pass may read the columns as they are
        X.block_columns = [_ParquetPart(f, columns) for f in files]
    return X


def _direct_parquet(files: list[str], columns: list[str]) -> Any:
    """``(float64 array, re-reader)`` for Parquet ``files`` read one block per file, or None where
    a file's footer cannot be read (a directory, a damaged file: ``dd.read_parquet`` reports it)."""
    try:
        rows = [_parquet_rows(f) for f in files]
    except Exception:  # any footer problem: the Dask path, and its own errors
        return None
    reread = functools.partial(_parquet_array, list(files), list(columns), rows)  # picklable, like the Dataset
    return reread(None, np.float64), reread


def numeric_block(ddf: Any, where: str) -> Any:
    """Check every column is numeric and return a float64 Dask array with known chunk sizes
    (:func:`load_dataset` casts it to float32, centred first where the cast would lose precision)."""
    _check_numeric(ddf, where)
    # Optimise first: column projection can fuse small Parquet files into fewer partitions,
    # and lengths computed on the optimised graph must match the array's partitions.
    X = ddf.astype(np.float64).optimize().to_dask_array(lengths=True)
    return X


def _files(cfg: DataConfig) -> Dataset:
    assert cfg.path is not None
    files = _expand(cfg.path)
    fmt = _format_of(files, cfg.format)
    columns = list(cfg.columns) if cfg.columns else None
    read_cols = None
    if columns is not None:
        read_cols = columns + ([cfg.label_column] if cfg.label_column else [])
    # Columns are matched by name in every file (read_table checks each file has them).
    ddf = read_table(files, fmt, read_cols)
    y = None
    if cfg.label_column:
        if cfg.label_column not in ddf.columns:
            raise DataError(
                f"label column {cfg.label_column!r} not in {cfg.path!r}",
                f"use one of {list(ddf.columns)}",
            )
        y = ddf[cfg.label_column].compute().to_numpy()
        y = np.unique(y, return_inverse=True)[1].astype(np.int32)
        ddf = ddf.drop(columns=[cfg.label_column])
    if len(ddf.columns) == 0:
        raise DataError(f"{cfg.path!r} has no feature columns", "check data.columns")
    reread = None
    direct = None
    if fmt == "parquet" and not cfg.persist:
        # Out of core every pass re-reads the files: one pyarrow task per file straight into a
        # C-order block, no pandas frame and no float64 copy (and no pass to count rows).
        _check_numeric(ddf, repr(cfg.path))
        direct = _direct_parquet(files, [str(c) for c in ddf.columns])
    if direct is not None:
        X, reread = direct
    else:
        X = numeric_block(ddf, repr(cfg.path))
    if X.shape[0] == 0:
        raise DataError(f"{cfg.path!r} holds no rows", "point at non-empty data")
    return Dataset(
        name=os.path.basename(cfg.path.rstrip("/")) or cfg.path,
        X=X,
        y=y,
        feature_names=[str(c) for c in ddf.columns],
        source=redact(cfg.path),  # a URL as given, less any credentials in it
        files=files,
        file_format=fmt,
        columns=columns,
        _reread=reread,
    )


_SOURCES = {"blobs": _blobs, "sklearn": _bundled, "file": _files}


def precision_shift(mean: Any, var: Any, where: str = "the data") -> np.ndarray | None:
    """The float64 point to centre the data on before the float32 cast, or None (no need).

    ``mean`` and ``var`` are per-feature, computed in float64 on the raw data.  The data is
    centred on ``mean`` when ``|mean| > CENTRE_RATIO * sqrt(sum(var))`` (see
    :data:`CENTRE_RATIO` for the arithmetic); constant data is left as it is.

    Raises:
        DataError: ``|mean| > MAX_RATIO * sqrt(sum(var))``: the spread is below what float64
            itself resolves at that offset.
    """
    mean = np.asarray(mean, dtype=np.float64)
    spread2 = float(np.sum(np.asarray(var, dtype=np.float64)))
    far2 = float(mean @ mean)
    if spread2 <= 0.0 or far2 <= CENTRE_RATIO**2 * spread2:
        return None
    if far2 > MAX_RATIO**2 * spread2:
        raise DataError(
            f"{where} lies {np.sqrt(far2):.3g} from 0 but spreads only {np.sqrt(spread2):.3g} "
            f"(ratio {np.sqrt(far2 / spread2):.2g} > {MAX_RATIO:.2g}): float64 cannot resolve its points",
            "subtract a per-feature offset and rescale the features before clustering",
        )
    return mean


def _sums(block: Any, ref: np.ndarray | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """(rows, column sums, column sums of squares) of ``block - ref`` in float64.

    Without ``ref``: the raw sums, two BLAS-speed passes (about as long as the NaN/inf scan they
    replace); their variance cancels badly far from 0, but tells near from far, which is all
    it is used for.  With ``ref`` (the mean of far data): the accurate variance.
    """
    b = np.asarray(block, dtype=np.float64)
    if ref is not None:
        b = b - ref
    return int(b.shape[0]), np.ones(b.shape[0]) @ b, np.einsum("ij,ij->j", b, b)


def _moments(X: Any, ref: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (sum, sum of squares) over ``X`` (NumPy, or a Dask array: one pass, one task
    per block), of ``X - ref`` when given, divided by the row count."""
    if isinstance(X, np.ndarray):
        parts = [_sums(X, ref)]
    else:
        import dask

        parts = dask.compute(*[dask.delayed(_sums)(b, ref) for b in X.to_delayed().ravel()])
    n = max(sum(p[0] for p in parts), 1)
    return sum(p[1] for p in parts) / n, sum(p[2] for p in parts) / n


def _nonfinite(X: Any) -> int:
    if isinstance(X, np.ndarray):
        return int(X.size - np.count_nonzero(np.isfinite(X)))
    import dask.array as da

    return int((~da.isfinite(X)).sum().compute())


def _cast(ds: Dataset, validate: bool) -> Dataset:
    """``ds`` with float32 ``X``, centred on :func:`precision_shift` first where it must be.

    One pass over the data for data near 0: the column sums and sums of squares (a sum that is
    not finite reveals NaN/inf, counted then); data found far from 0 takes a second pass for
    its accurate variance.
    """
    X = ds.X
    what = f"data from {ds.source}"
    if isinstance(X, np.ndarray) and X.dtype == np.float32:  # already cast (a caller-made dataset)
        if validate:
            check_finite(X, what=what)
        return ds
    mean, sq = _moments(X)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(sq))):
        bad = _nonfinite(X)
        if validate and bad:
            raise DataError(f"{what} contains {bad} NaN or infinite value(s)", "drop or impute them before clustering")
        shift = None  # not validated, or squares beyond float64: cast as is
    else:
        rough = float(np.sum(sq - mean * mean))  # cancels far from 0: only tells near from far
        far = float(mean @ mean) > CENTRE_RATIO**2 * max(rough, 0.0)
        shift = None
        if far:  # the accurate variance, about the mean: a second pass, for far data only
            dev, dev_sq = _moments(X, mean)
            shift = precision_shift(mean, dev_sq - dev * dev, what)
    # Centred in float64, then cast: the differences that separate the points survive.
    if ds._reread is not None:  # the same values, rounded once in the task that reads the file
        X32 = ds._reread(shift, np.float32)
    else:
        X32 = X.astype(np.float32) if shift is None else (X - shift).astype(np.float32)
    if validate and isinstance(X32, np.ndarray) and not np.all(np.isfinite(X32)):
        check_finite(X32, what=f"{what} (as float32)")  # beyond float32's range
    ds.X, ds.shift = X32, shift
    return ds


def load_dataset(cfg: DataConfig, validate: bool = True) -> Dataset:
    """Load the configured data and check it is non-empty, numeric and finite.

    The features come back as float32, centred on their float64 mean when their offset is large
    next to their spread (``dataset.shift``, see :func:`precision_shift`).

    Raises:
        DataError: missing/empty file, glob with no match, non-numeric column, NaN or inf, or
            data whose spread float64 cannot resolve at its offset.
    """
    ds = _SOURCES[cfg.source](cfg)
    if ds.n_samples == 0:
        raise DataError(f"{ds.source} holds no rows", "point at non-empty data")
    return _cast(ds, validate)
