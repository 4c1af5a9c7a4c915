"""Batch scoring of CSV/Parquet files: read, predict per partition, write Parquet with labels.

The output keeps the input's rows in order and its index, adds a ``label`` column, and is
written to a temporary directory that is renamed into place only when every partition
succeeded, so a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from toolkit.data import _expand, _format_of, read_table
from toolkit.errors import DataError

__all__ = ["score_files"]


def score_files(
    predictor: Any,
    path: str,
    output: str,
    columns: list[str] | None = None,
    fmt: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score every row of ``path`` (file, directory or glob) and write ``output`` (Parquet dir).

    ``predictor`` is a distributed predictor (:func:`toolkit.serving.load_predictor` given a
    client): CPU models predict pandas partitions on the workers, GPU models move them to the
    GPUs and return the labels on the input's index.
    """
    if os.path.exists(output) and not overwrite:
        raise DataError(f"output {output!r} already exists", "choose another path or pass --overwrite")
    files = _expand(path)
    # Every column is read (and written back): ``columns`` only picks the features, so ids
    # and other non-feature columns stay beside the label.
    ddf = read_table(files, _format_of(files, fmt))
    if columns:
        missing = [c for c in columns if c not in ddf.columns]
        if missing:
            raise DataError(f"{files[0]!r} has no column(s) {', '.join(missing)}; it has "
                            f"{', '.join(map(str, ddf.columns))}", "fix --columns")
    features = ddf[columns] if columns else ddf
    labels = predictor.predict(features)
    scored = ddf.assign(label=labels)
    if scored.index.name is None:  # dask would write its placeholder "__null_dask_index__"
        scored = scored.rename_axis("index")
    parent = os.path.dirname(os.path.abspath(output)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".scoring-", dir=parent)
    try:
        scored.to_parquet(tmp, write_index=True)
        if os.path.exists(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"files": len(files), "partitions": scored.npartitions, "output": output}
