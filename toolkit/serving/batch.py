"""Batch scoring of CSV/Parquet files: read, predict per partition, write Parquet with labels.

The output keeps the input's rows in order and its index, adds a ``label`` column (or one
named by ``ScoringOptions.label``; never one the input has, which it would overwrite), and is
written to a temporary directory that is renamed into place only when every partition
succeeded, so a failure leaves nothing behind.

While the labels are written, the same pass gathers the drift statistics (cluster shares and
distance-to-centre histograms, :mod:`toolkit.stats.profile`): one small ``k x bins``
result per partition, computed on the worker that holds it and added up on the driver.  The
write and the statistics are computed together, from one graph, so the files are read (and
predicted) once: :func:`scoring_plan` builds both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import numpy as np

from toolkit.data import _expand, _format_of, is_url, read_table, url_fs
from toolkit.errors import DataError, option_hint

__all__ = ["ScoringKeywords", "ScoringOptions", "ScoringPlan", "score_files", "scoring_plan"]

#: The column batch scoring adds.
LABEL = "label"
#: What scoring does with a row that has a missing feature value.
ON_NAN = ("error", "drop")
_SHOWN_ROWS = 5


def _nan_rows(ddf: Any, features: list[str]) -> tuple[int, list[int], int]:
    """Rows with a NaN feature: how many, and the first few row numbers (from 1, in order); and
    how many rows there are in all.

    One pass over the features before scoring (the model would fail on the first NaN, with a
    traceback and no row number); each partition sends back its length, count and first rows.
    """
    import dask
    import pandas as pd

    def part(frame: pd.DataFrame) -> tuple[int, int, list[int]]:
        bad = np.flatnonzero(frame[features].isna().to_numpy().any(axis=1))
        return len(frame), int(bad.size), bad[:_SHOWN_ROWS].tolist()

    parts = dask.compute(*[dask.delayed(part)(p) for p in ddf.to_delayed()])
    n, offset, first = 0, 0, []
    for length, count, rows in parts:
        n += count
        first += [offset + r + 1 for r in rows]
        offset += length
    return n, first[:_SHOWN_ROWS], offset


@dataclass
class ScoringPlan:
    """The lazy work of one scoring job: the write and, when monitored, the statistics.

    Attributes:
        write: the lazy ``to_parquet`` of the scored frame into ``tmp``.
        stats_parts: one :func:`toolkit.stats.profile.frame_stats` result per partition
            (a lazy object Series of ``ClusterStats``), or None when drift statistics are off or cannot be computed.
        edges: the histogram's fixed edges (the profile's when the model has one).
        profile: the model's training profile, or None.
        note: why there are no statistics, when there are none.
        npartitions: partitions of the scored frame.
        n_clusters: the model's ``k`` (0 without statistics).
    """

    write: Any
    stats_parts: Any = None
    edges: np.ndarray | None = None
    profile: Any = None
    note: str = ""
    npartitions: int = 0
    n_clusters: int = 0


def _centers_of(predictor: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(centres, shift) the drift distances use: a model of centred data gives its centred
    centres and its shift (the training profile's coordinates), others their centres and None."""
    from toolkit.convert import split_centered, to_numpy

    model, shift = split_centered(getattr(predictor, "model", None))
    centers = getattr(model, "cluster_centers_", None)
    return (None if centers is None else np.asarray(to_numpy(centers), dtype=np.float64)), shift


def _fallback_edges(centers: np.ndarray, bins: int) -> np.ndarray:
    """Fixed edges for a model without a profile: scaled by a quarter of the median distance
    between neighbouring centres (the order of a cluster's radius)."""
    from toolkit.stats.profile import distance_edges

    if len(centers) < 2:
        return distance_edges(1.0, bins)
    gaps = np.sqrt(((centers[:, None, :] - centers[None]) ** 2).sum(-1))
    np.fill_diagonal(gaps, np.inf)
    return distance_edges(float(np.median(gaps.min(axis=1))) / 4, bins)


def _label_is_free(columns: Any, label: str, where: str) -> None:
    """Refuse an input that already has the labels' column: the output would overwrite it."""
    if label in list(columns):
        raise DataError(f"{where} already has a column named {label!r}, which the labels would overwrite",
                        f"rename that column, or name the labels' column with {option_hint('label_column', 'cluster')}")


def scoring_plan(predictor: Any, ddf: Any, features: list[str], tmp: str, options: ScoringOptions | None = None,
                 **keywords: Unpack[ScoringKeywords]) -> tuple[Any, ScoringPlan]:
    """The scored frame of ``ddf`` (labels from ``predictor`` on the ``features`` columns) and
    the lazy write into ``tmp`` and drift statistics, sharing one read of the input.

    ``options`` (:class:`ScoringOptions`), or its fields as keywords, say whether to gather the
    drift statistics (``drift``, ``bins``) and the labels' column (``label``).

    Raises:
        DataError: ``ddf`` already has a column named like the labels' column.
    """
    from toolkit.stats import profile as prof

    opts = dataclasses.replace(options or ScoringOptions(), **keywords)
    label, drift, bins = opts.label, opts.drift, opts.bins
    _label_is_free(ddf.columns, label, "the input")

    X = ddf[features] if list(ddf.columns) != features else ddf
    names = getattr(predictor, "feature_names", None)
    if names and len(names) == len(features) and features != list(names):
        # Columns the caller picked by position (--columns) take the model's names.
        X = X.rename(columns=dict(zip(features, names, strict=True)))
    labels = predictor.predict(X)
    scored = ddf.assign(**{label: labels})
    if scored.index.name is None:  # dask would write its placeholder "__null_dask_index__"
        scored = scored.rename_axis("index")
    plan = ScoringPlan(write=scored.to_parquet(tmp, write_index=True, compute=False),
                       npartitions=scored.npartitions)
    centers, shift = _centers_of(predictor)
    if not drift:
        plan.note = "drift statistics off"
    elif centers is None:
        plan.note = "the model has no cluster_centers_"
    else:
        source = getattr(predictor, "source", None)
        plan.n_clusters = len(centers)
        plan.profile = prof.read_profile(getattr(source, "verified", None))
        plan.edges = plan.profile.stats.edges if plan.profile is not None else _fallback_edges(
            centers, bins or prof.DEFAULT_BINS)
        plan.stats_parts = scored.map_partitions(prof.frame_stats, features, label, centers, plan.edges, shift,
                                                 meta=prof.frame_stats_meta(), enforce_metadata=False)
    return scored, plan


@dataclass(frozen=True)
class ScoringOptions:
    """How :func:`score_files` reads its input and writes its output.

    Attributes:
        fmt: the input's format (``"auto"``: from the file names).
        overwrite: replace an existing ``output``.
        drift: gather the drift statistics in the same pass.
        bins: log-spaced histogram bins for a model registered without a training profile.
        on_nan: a row with a missing feature value is an ``"error"`` (default) or ``"drop"``-ped.
        label: the output column that holds the labels (an input with a column of that name is
            refused: it would be overwritten).
    """

    fmt: str = "auto"
    overwrite: bool = False
    drift: bool = True
    bins: int | None = None
    on_nan: str = "error"
    label: str = LABEL


class ScoringKeywords(TypedDict, total=False):
    """The fields of :class:`ScoringOptions`, accepted by :func:`score_files` as keywords."""

    fmt: str
    overwrite: bool
    drift: bool
    bins: int | None
    on_nan: str
    label: str


def score_files(predictor: Any, path: str, output: str, columns: list[str] | None = None,
                options: ScoringOptions | None = None, **keywords: Unpack[ScoringKeywords]) -> dict[str, Any]:
    """Score every row of ``path`` (file, directory or glob) and write ``output`` (Parquet dir).

    ``predictor`` is a distributed predictor (:func:`toolkit.serving.load_predictor` given a
    client): CPU models predict pandas partitions on the workers, GPU models move them to the
    GPUs and return the labels on the input's index.  ``columns`` picks the features (default:
    every column); ``options`` (:class:`ScoringOptions`), or its fields as keywords, say the rest.

    With ``drift`` (default) the same pass gathers the cluster shares and distance histograms
    (on the fixed edges of the model's training profile, or of ``bins`` log-spaced bins when it
    has none); they are returned as ``drift_stats`` (a
    :class:`~toolkit.stats.profile.ClusterStats`, or None with the reason in
    ``drift_note``) with the model's ``profile`` (None when it was registered without one),
    for :func:`toolkit.monitoring.drift_report`.

    Rows with a missing feature value (NaN) cannot be assigned a cluster: ``on_nan="error"``
    (default) refuses the input in one line naming how many rows and the first ones, before
    anything is written; ``"drop"`` leaves them out of the output (``rows_dropped`` says how many).
    """
    opts = dataclasses.replace(options or ScoringOptions(), **keywords)
    if opts.on_nan not in ON_NAN:
        raise DataError(f"on_nan={opts.on_nan!r} is not one of {', '.join(ON_NAN)}",
                        f"pass {option_hint('on_nan', 'error')} or {option_hint('on_nan', 'drop')}")
    remote = is_url(output)
    out_fs, out_path = url_fs(output) if remote else (None, output)
    exists = out_fs.exists(out_path) if remote else os.path.lexists(output)
    if exists and not opts.overwrite:
        raise DataError(f"output {output!r} already exists",
                        f"choose another path or pass {option_hint('overwrite', 'true')}")
    files = _expand(path)
    if exists:
        _refuse_overwriting_the_input(files, output)
    ddf, features, n_nan = _read_features(path, files, columns, opts, getattr(predictor, "feature_names", None))
    job = _Job(predictor, ddf, features, opts)
    plan, parts = job.write_remote(out_fs, out_path) if remote else job.write_local(output)
    return _scored(plan, parts, files, output, n_nan)


def _refuse_overwriting_the_input(files: list[str], output: str) -> None:
    """Refuse an ``output`` (to be replaced) that is, or holds, one of the input ``files``."""
    def where(p: str) -> str:
        return url_fs(p)[1].rstrip("/") if is_url(p) else os.path.realpath(p)

    out = where(output)
    for f in files:
        if is_url(f) == is_url(output) and (where(f) == out or where(f).startswith(out + "/")):
            raise DataError(f"output {output!r} holds the input it is read from ({f}); overwriting it would "
                            "delete the input", "write the output to another path")


def _read_features(path: str, files: list[str], columns: list[str] | None, opts: ScoringOptions,
                   names: list[str] | None) -> tuple[Any, list[str], int]:
    """(lazy frame, feature columns, rows with a NaN feature) of the input ``path`` (its ``files``).

    The features are, in the model's order: ``columns`` when they are the model's ``names``;
    else ``columns`` as given, matched to the model's columns by position (the caller's
    choice); without ``columns``, the model's ``names`` (every other column is passed through)
    or, for a model that did not record its columns, every column.

    Raises:
        DataError: a named column is missing (one of ``columns``, or without them one the model
            was trained on), or a row has a NaN feature and ``on_nan="error"``.
    """
    # Every column is read (and written back): only the features are scored, so ids and other
    # non-feature columns stay beside the label.
    try:
        fmt = _format_of(files, opts.fmt)
    except DataError:  # its fix names data.format, which train has and predict has not
        exts = ", ".join(sorted({os.path.splitext(f)[1] or "(none)" for f in files}))
        raise DataError(f"cannot tell the format of {path}'s files ({exts})",
                        "point the input at CSV files or at Parquet files, one format at a time") from None
    ddf = read_table(files, fmt)
    _label_is_free(ddf.columns, opts.label, repr(files[0]))
    have = ", ".join(map(str, ddf.columns))
    if columns:
        missing = [c for c in columns if c not in ddf.columns]
        if missing:
            raise DataError(f"{files[0]!r} has no column(s) {', '.join(missing)}; it has {have}",
                            f"fix {option_hint('columns')}")
        if names and len(columns) != len(names):
            raise DataError(f"{len(columns)} feature column(s) picked ({', '.join(columns)}) but the model was "
                            f"trained on {len(names)} ({', '.join(names)})",
                            f"pick {len(names)} columns, in the model's order, with {option_hint('columns')}")
        features = list(names) if names and sorted(columns) == sorted(names) else list(columns)
    elif names:
        missing = [n for n in names if n not in ddf.columns]
        if missing:
            # Scoring other columns by position could assign every row to the wrong cluster.
            raise DataError(f"{files[0]!r} has no column(s) {', '.join(missing)} of the {len(names)} the model "
                            f"was trained on ({', '.join(names)}); it has {have}",
                            f"rename its columns, or pick {len(names)} feature columns in the model's order "
                            f"with {option_hint('columns')}")
        features = list(names)
    else:
        features = list(ddf.columns)
    ddf, n_nan = _without_nan_rows(ddf, features, path, opts.on_nan)
    return ddf, features, n_nan


def _without_nan_rows(ddf: Any, features: list[str], path: str, on_nan: str) -> tuple[Any, int]:
    """``ddf`` less its rows with a NaN feature (``on_nan="drop"``), and how many those were.

    Raises:
        DataError: the input holds no rows, or a row has a NaN feature and ``on_nan="error"``.
    """
    n_nan, first, rows = _nan_rows(ddf, features)
    if not rows:  # (a CSV of a header alone reads as text columns: say what is wrong instead)
        raise DataError(f"{path} holds no rows", "point the input at files with rows to score")
    if n_nan and on_nan == "error":
        shown = ", ".join(map(str, first)) + (", ..." if n_nan > len(first) else "")
        raise DataError(
            f"{n_nan:,} row(s) of {path} have a missing value (NaN) in the features: row(s) {shown} "
            "(data rows counted from 1, files in order)",
            f"fill or remove them, or pass {option_hint('on_nan', 'drop')} to score the other rows "
            "and leave these out of the output",
        )
    return (ddf.dropna(subset=features) if n_nan else ddf), n_nan


@dataclass(frozen=True)
class _Job:
    """The scoring of one input: written to a temporary place, moved into place when complete."""

    predictor: Any
    ddf: Any
    features: list[str]
    options: ScoringOptions

    def _compute(self, tmp: str) -> tuple[ScoringPlan, Any]:
        """Write the scored frame into ``tmp``: (plan, per-partition drift statistics or None)."""
        import dask

        _, plan = scoring_plan(self.predictor, self.ddf, self.features, tmp, self.options)
        # One compute for both: the graphs share the read and the predictions.
        _, parts = dask.compute(plan.write, plan.stats_parts)
        return plan, parts

    def write_remote(self, out_fs: Any, out_path: str) -> tuple[ScoringPlan, Any]:
        """On an object store: written beside the output, copied into place when complete."""
        import secrets

        tmp_path = f"{out_path.rstrip('/').rsplit('/', 1)[0]}/.scoring-{secrets.token_hex(6)}"
        tmp = out_fs.unstrip_protocol(tmp_path)
        try:
            plan, parts = self._compute(tmp)
            out_fs.invalidate_cache()  # the workers wrote the parts: this process's listings are stale
            if out_fs.exists(out_path):
                out_fs.rm(out_path, recursive=True)
            # Object by object (a recursive mv also copies the "directory" itself, which is no object).
            for src in out_fs.find(tmp_path):
                out_fs.copy(src, out_path.rstrip("/") + src[len(tmp_path):])
            out_fs.rm(tmp_path, recursive=True)
        except BaseException:
            with contextlib.suppress(Exception):
                out_fs.rm(tmp_path, recursive=True)
            raise
        return plan, parts

    def write_local(self, output: str) -> tuple[ScoringPlan, Any]:
        """On a local disk: a temporary folder beside ``output``, renamed into place when complete."""
        parent = os.path.dirname(os.path.abspath(output)) or "."
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".scoring-", dir=parent)
        try:
            plan, parts = self._compute(tmp)
            if os.path.isdir(output) and not os.path.islink(output):
                shutil.rmtree(output)
            elif os.path.lexists(output):  # a file (or a link) where the output goes: replaced too
                os.remove(output)
            os.replace(tmp, output)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return plan, parts


def _scored(plan: ScoringPlan, parts: Any, files: list[str], output: str, n_nan: int) -> dict[str, Any]:
    """What :func:`score_files` returns, from the computed plan."""
    stats = None
    if plan.stats_parts is not None:
        from toolkit.stats.profile import stats_from_frame

        stats = stats_from_frame(parts, plan.edges, plan.n_clusters)
    return {"files": len(files), "partitions": plan.npartitions, "output": output, "drift_stats": stats,
            "profile": plan.profile, "drift_note": plan.note, "rows_dropped": n_nan}

