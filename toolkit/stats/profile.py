"""Cluster populations and distance-to-centre histograms, reducible partition by partition.

One structure, :class:`ClusterStats`, serves both sides of drift monitoring:

* the **training profile**, computed from the training data when a model is registered and
  stored with it as ``monitoring/profile.json`` (inside its LoggedModel, so it is covered by the
  sha256 manifest like every other file of the model, and never written afterwards);
* the **scoring statistics**, computed by batch prediction in the same pass that writes the
  labels.

Both are per-cluster row counts and per-cluster histograms of the Euclidean distance from each
row to its assigned centre, on **fixed bin edges**: log-spaced between ``scale * 10**-3`` and
``scale * 10**3`` (plus an underflow bin ``[0, lo)`` and an overflow bin ``[hi, max]``), where
``scale`` is the median training distance.  Fixed edges make a histogram a sum of per-partition
histograms, so larger-than-memory data is summarised one partition at a time on the workers and
the small ``k x bins`` results are added up on the driver (:func:`combine`): the reduction is
exact (integer counts), and quantiles read from it are approximate only within a bin
(``10**(6/bins)`` wide, about 4 % at the default 360 bins, then interpolated).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.convert import to_numpy
from toolkit.errors import ModelError

__all__ = [
    "DEFAULT_BINS",
    "PROFILE_FILE",
    "ClusterStats",
    "TrainingProfile",
    "bin_index",
    "build_profile",
    "cluster_stats",
    "combine",
    "distance_edges",
    "distances",
    "frame_stats",
    "frame_stats_meta",
    "nearest",
    "partial_stats",
    "read_profile",
    "save_profile",
    "stats_from_frame",
]

#: Where the training profile lives inside a logged model folder (covered by its manifest).
PROFILE_FILE = "monitoring/profile.json"
#: Log-spaced bins between the lowest and highest edge (six decades): ~3.9 % per bin.
DEFAULT_BINS = 360
#: Decades covered below and above the scale.
_DECADES = 3.0
_FORMAT = 1


def distance_edges(scale: float, bins: int = DEFAULT_BINS) -> np.ndarray:
    """The ``bins + 1`` fixed edges, log-spaced from ``scale/1000`` to ``scale*1000``.

    A ``scale`` that is zero or not finite (every training row on its centre) falls back to 1.
    """
    scale = float(scale) if np.isfinite(scale) and scale > 0 else 1.0
    return scale * np.logspace(-_DECADES, _DECADES, int(bins) + 1)


def distances(X: Any, labels: Any, centers: np.ndarray) -> np.ndarray:
    """Euclidean distance (float32) of every row of ``X`` to its assigned centre."""
    X = np.asarray(X)
    return _column_distances([X[:, j] for j in range(X.shape[1])], labels, centers)


def _column_distances(columns: Sequence[np.ndarray], labels: Any, centers: np.ndarray,
                      shift: np.ndarray | None = None) -> np.ndarray:
    """Distances accumulated one feature column at a time, in float32.

    This runs on every scored partition, next to a predict that costs about as much: column by
    column it reads each (DataFrame) column where it is, with no row-major copy of the data
    and temporaries of one column only.  float32 is the precision the data and the predict
    have anyway, and training profiles and scoring use this same arithmetic, so a row on a bin
    edge falls on the same side of it in both.

    ``shift``: raw columns of a model of centred data (see :mod:`toolkit.data`) are centred
    column by column in float64 first, and ``centers`` are its centred centres: the values the
    training profile was computed on.
    """
    labels = np.asarray(labels, dtype=np.intp).ravel()
    c32 = np.asarray(centers, dtype=np.float32)
    acc = np.zeros(len(labels), dtype=np.float32)
    for j, col in enumerate(columns):
        col = col if shift is None else np.asarray(col, dtype=np.float64) - shift[j]
        diff = np.asarray(col, dtype=np.float32) - np.take(c32[:, j], labels)
        diff *= diff
        acc += diff
    return np.sqrt(acc, out=acc)


def bin_index(d: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The histogram column of every distance: 0 below ``edges[0]``, ``i`` in
    ``[edges[i-1], edges[i])``, ``len(edges)`` from ``edges[-1]`` up.

    Log-spaced edges (:func:`distance_edges`) are indexed by arithmetic on ``log(d)``, a tenth
    of a binary search's cost; any other edges by the search.
    """
    edges = np.asarray(edges, dtype=np.float64)
    n = len(edges) - 1
    logs = np.log(edges)
    step = (logs[-1] - logs[0]) / n if n > 0 else 0.0
    if n < 1 or step <= 0 or not np.allclose(np.diff(logs), step, rtol=1e-9, atol=0):
        return np.searchsorted(edges, d, side="right")
    lo = np.float32(edges[0])
    # Distances far below the first edge (0 included) are clipped first: no log(0).
    scaled = np.log(np.maximum(d, lo * np.float32(1e-3)) / lo) / np.float32(step)
    idx = np.floor(scaled).astype(np.int64) + 1
    return np.clip(idx, 0, n + 1, out=idx)


@dataclass
class ClusterStats:
    """Per-cluster row counts and distance histograms on fixed edges.

    Attributes:
        edges: ``(bins + 1,)`` fixed edges (:func:`distance_edges`).
        counts: ``(k, bins + 2)`` int64: column 0 is ``[0, edges[0])``, column ``i`` is
            ``[edges[i-1], edges[i])``, the last is ``[edges[-1], inf)``.
        max_distance: ``(k,)`` largest distance seen per cluster (0 where none): the upper end
            of the overflow bin for quantiles.
    """

    edges: np.ndarray
    counts: np.ndarray
    max_distance: np.ndarray

    @property
    def n_clusters(self) -> int:
        return int(self.counts.shape[0])

    @property
    def rows(self) -> int:
        return int(self.counts.sum())

    @property
    def populations(self) -> np.ndarray:
        """Rows per cluster."""
        return self.counts.sum(axis=1)

    @property
    def shares(self) -> np.ndarray:
        """Share of rows per cluster (zeros when there are no rows)."""
        pop = self.populations.astype(np.float64)
        total = pop.sum()
        return pop / total if total > 0 else pop

    def quantile(self, q: float, cluster: int | None = None) -> float:
        """Approximate ``q`` quantile of the distances (of one cluster, or all), NaN when empty.

        Interpolated inside the bin that holds it: log-uniformly in a log bin, linearly in the
        underflow bin ``[0, lo)`` and the overflow bin ``[hi, max]``.
        """
        hist = self.counts[cluster] if cluster is not None else self.counts.sum(axis=0)
        top = float(self.max_distance[cluster] if cluster is not None else self.max_distance.max(initial=0.0))
        return _hist_quantile(hist, self.edges, top, q)

    def reorder(self, order: Sequence[int]) -> ClusterStats:
        """These statistics with cluster ``new_id`` taken from cluster ``order[new_id]``."""
        idx = np.asarray(order, dtype=np.int64)
        return ClusterStats(self.edges, self.counts[idx].copy(), self.max_distance[idx].copy())

    def to_dict(self) -> dict[str, Any]:
        return {"edges": [float(e) for e in self.edges], "counts": self.counts.tolist(),
                "max_distance": [float(m) for m in self.max_distance]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterStats:
        edges = np.asarray(data["edges"], dtype=np.float64)
        counts = np.asarray(data["counts"], dtype=np.int64)
        top = np.asarray(data["max_distance"], dtype=np.float64)
        if edges.ndim != 1 or counts.ndim != 2 or counts.shape[1] != len(edges) + 1 or top.shape != counts.shape[:1]:
            raise ValueError(f"inconsistent histogram: edges {edges.shape}, counts {counts.shape}, max {top.shape}")
        return cls(edges, counts, top)


def _hist_quantile(hist: np.ndarray, edges: np.ndarray, top: float, q: float) -> float:
    total = int(hist.sum())
    if total == 0:
        return float("nan")
    target = min(max(float(q), 0.0), 1.0) * total
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, target, side="left"))
    b = min(b, len(hist) - 1)
    before = float(cum[b - 1]) if b > 0 else 0.0
    frac = (target - before) / float(hist[b]) if hist[b] > 0 else 0.0
    if b == 0:
        return frac * float(edges[0])
    if b == len(hist) - 1:
        lo = float(edges[-1])
        return lo + frac * max(top - lo, 0.0)
    lo, hi = float(edges[b - 1]), float(edges[b])
    # Never past the largest distance seen: the bin holding the maximum ends there.
    return min(lo * (hi / lo) ** frac, top) if top > 0 else lo * (hi / lo) ** frac


def partial_stats(X: Any, labels: Any, centers: np.ndarray, edges: np.ndarray) -> ClusterStats:
    """The statistics of one block of rows (any part of the data; :func:`combine` adds them)."""
    centers = np.asarray(centers, dtype=np.float64)
    k, nb = len(centers), len(edges) + 1
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if len(labels) == 0:
        return ClusterStats(edges, np.zeros((k, nb), np.int64), np.zeros(k))
    return _stats_of(distances(X, labels, centers), labels, k, edges)


def _stats_of(d: np.ndarray, labels: np.ndarray, k: int, edges: np.ndarray) -> ClusterStats:
    nb = len(edges) + 1
    counts = np.bincount(labels * nb + bin_index(d, edges), minlength=k * nb).reshape(k, nb)
    top = np.zeros(k)
    np.maximum.at(top, labels, d.astype(np.float64))
    return ClusterStats(np.asarray(edges, dtype=np.float64), counts.astype(np.int64), top)


def combine(parts: Iterable[ClusterStats]) -> ClusterStats:
    """The statistics of the union of the parts (counts added, maxima kept): exact."""
    parts = list(parts)
    if not parts:
        raise ValueError("nothing to combine")
    first = parts[0]
    counts = np.sum([p.counts for p in parts], axis=0)
    top = np.max([p.max_distance for p in parts], axis=0)
    return ClusterStats(first.edges, counts.astype(np.int64), top)


def cluster_stats(X: Any, labels: Any, centers: np.ndarray, edges: np.ndarray) -> ClusterStats:
    """Statistics of NumPy data, or of a Dask array: one :func:`partial_stats` per block (on the
    workers, where the blocks are), added up here.  ``labels`` must be chunked like ``X``'s rows.
    """
    if not hasattr(X, "to_delayed"):
        return partial_stats(X, labels, centers, edges)
    import dask

    if X.ndim == 2 and len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})
    if hasattr(labels, "to_delayed"):
        if labels.chunks[0] != X.chunks[0]:
            labels = labels.rechunk({0: X.chunks[0]})
        label_blocks = labels.to_delayed().ravel()
    else:  # host labels for Dask data: cut to the data's blocks
        cuts = np.cumsum((0, *X.chunks[0]))
        label_blocks = [np.asarray(labels)[a:b] for a, b in itertools.pairwise(cuts)]
    task = dask.delayed(partial_stats, pure=True)
    parts = [task(xb, lb, centers, edges) for xb, lb in zip(X.to_delayed().ravel(), label_blocks, strict=True)]
    return combine(dask.compute(*parts))


# -- per-partition results of a Dask DataFrame ------------------------------------------------
def frame_stats_meta() -> Any:
    """The empty pandas Series :func:`frame_stats` returns (Dask's ``meta``)."""
    import pandas as pd

    return pd.Series([], dtype=object, name="stats")


def frame_stats(frame: Any, features: Sequence[str], label: str, centers: np.ndarray,
                edges: np.ndarray, shift: np.ndarray | None = None) -> Any:
    """One partition's :func:`partial_stats`, as a one-element object Series (``map_partitions``).

    One object, not a ``k x bins`` frame: it travels (and, under memory pressure, spills) as
    one small pickled array instead of hundreds of columns.  Distances are read column by
    column straight from the frame (:func:`_column_distances`; ``shift`` and centred ``centers``
    for a model of centred data).
    """
    import pandas as pd

    labels = frame[label].to_numpy().astype(np.int64, copy=False)
    k = len(centers)
    if len(labels):
        d = _column_distances([frame[name].to_numpy() for name in features], labels, centers, shift)
        st = _stats_of(d, labels, k, edges)
    else:
        st = ClusterStats(np.asarray(edges, dtype=np.float64), np.zeros((k, len(edges) + 1), np.int64), np.zeros(k))
    return pd.Series([st], dtype=object, name="stats")


def stats_from_frame(parts: Any, edges: np.ndarray, k: int) -> ClusterStats:
    """Reduce the :func:`frame_stats` results of every partition (computed: a Series or a list
    of :class:`ClusterStats`) into the statistics of ``k`` clusters, on the driver."""
    items = [p for p in list(parts) if isinstance(p, ClusterStats)]
    if not items:  # no partition at all
        edges = np.asarray(edges, dtype=np.float64)
        return ClusterStats(edges, np.zeros((k, len(edges) + 1), np.int64), np.zeros(k))
    return combine(items)


# -- the training profile ---------------------------------------------------------------------
@dataclass
class TrainingProfile:
    """What the model saw at training: its cluster shares and distance histograms.

    ``source`` says what it was computed on (e.g. ``"training data (100000 rows)"``).
    """

    stats: ClusterStats
    source: str

    def reorder(self, order: Sequence[int]) -> TrainingProfile:
        """The profile with the clusters renumbered as a label-stable registration does."""
        return TrainingProfile(self.stats.reorder(order), self.source)

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, "source": self.source, "rows": self.stats.rows,
                           **self.stats.to_dict()}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> TrainingProfile:
        data = json.loads(text)
        if data.get("format") != _FORMAT:
            raise ValueError(f"unknown profile format {data.get('format')!r}")
        return cls(ClusterStats.from_dict(data), str(data.get("source", "")))


def nearest(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """The index of the nearest centre of every row (k-means' own assignment)."""
    from sklearn.metrics import pairwise_distances_argmin

    if len(X) == 0:
        return np.empty(0, np.int64)
    return pairwise_distances_argmin(np.asarray(X, np.float64), np.asarray(centers, np.float64))


def build_profile(X: Any, labels: Any, centers: Any, sample: Any | None = None,
                  bins: int = DEFAULT_BINS, source: str | None = None) -> TrainingProfile:
    """The training profile of a fit: ``X`` (NumPy or Dask, as fitted) with its ``labels``
    (None for NumPy ``X``: each row's nearest centre).

    The edges are fixed from ``sample`` (rows of ``X`` with the labels the centres give them;
    default: ``X`` itself when it is NumPy) so that the data is read once more, not twice.
    """
    centers = np.asarray(to_numpy(centers), dtype=np.float64)
    if labels is None:  # NumPy rows without labels (a registration sample): the centres decide
        X = np.asarray(to_numpy(X), dtype=np.float64)
        labels = nearest(X, centers)
    if sample is not None:
        ref = np.asarray(to_numpy(sample), dtype=np.float64)
        ref_d = distances(ref, nearest(ref, centers), centers) if len(ref) else np.ones(1)
    elif not hasattr(X, "to_delayed"):
        ref_d = distances(X, labels, centers)
    else:  # Dask data without a sample: its first block sets the scale
        first = np.asarray(X.blocks[0].compute())
        lab0 = labels.blocks[0].compute() if hasattr(labels, "blocks") else np.asarray(labels)[: len(first)]
        ref_d = distances(first, lab0, centers)
    scale = float(np.median(ref_d)) if len(ref_d) else 1.0
    stats = cluster_stats(X, labels, centers, distance_edges(scale, bins))
    return TrainingProfile(stats, source or f"training data ({stats.rows} rows)")


def save_profile(local_dir: str, profile: TrainingProfile) -> None:
    """Write ``profile`` into a model folder (called before its manifest is taken)."""
    path = os.path.join(local_dir, *PROFILE_FILE.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(profile.to_json())


def read_profile(verified: Any) -> TrainingProfile | None:
    """The profile of a verified model copy (:class:`toolkit.registry.integrity.VerifiedModel`),
    or None when the model was logged without one (registered before profiles were kept).

    Raises:
        ModelError: the file is there but unreadable.
    """
    if verified is None or PROFILE_FILE not in verified.manifest:
        return None
    verified.recheck()  # the bytes read are the bytes the store recorded
    try:
        with open(os.path.join(verified.local_path, *PROFILE_FILE.split("/")), encoding="utf-8") as fh:
            return TrainingProfile.from_json(fh.read())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{verified.label}: its {PROFILE_FILE} cannot be read ({exc})",
                         "re-register the model") from None
