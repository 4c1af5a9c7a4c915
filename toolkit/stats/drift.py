"""Scoring statistics against the training profile: PSI, distance shift and a verdict.

* **Population stability index** of the cluster shares: ``sum_i (a_i - e_i) * ln(a_i / e_i)``
  over clusters, ``e`` the training shares and ``a`` the scoring shares (both floored at
  :data:`SHARE_FLOOR`, as is usual, so an empty cluster gives a large finite term).  Each
  cluster's term is reported as its own PSI; their sum is the overall PSI.
* **Distance shift**: the median and p95 of the distance to the assigned centre, scoring over
  training (both read from histograms on the same fixed edges).  A ratio ``r`` counts as far
  from 1 as ``max(r, 1/r)``: data drawn tighter is a change too.

The verdict is the worse of the two against :class:`~toolkit.config.MonitoringConfig`
thresholds: ``none``, ``moderate`` or ``major``; ``unknown`` when the model has no profile (it
was registered before profiles were kept), in which case only the scoring side is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from toolkit.config import MonitoringConfig
from toolkit.stats.profile import ClusterStats, TrainingProfile

__all__ = ["LEVELS", "SHARE_FLOOR", "DriftReport", "compare", "psi"]

#: Shares below this are taken as this in the PSI (an empty cluster would be infinite).
SHARE_FLOOR = 1e-4
LEVELS = ("none", "moderate", "major")
_QUANTILES = {"p50": 0.5, "p95": 0.95}


def psi(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per-cluster PSI terms of ``actual`` shares against ``expected`` shares (sum: the PSI)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), SHARE_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), SHARE_FLOOR)
    return (a - e) * np.log(a / e)


def _level(value: float, moderate: float, major: float) -> int:
    if not math.isfinite(value):
        return 0
    return 2 if value >= major else 1 if value >= moderate else 0


def _ratio_distance(r: float) -> float:
    """How far a ratio is from 1, the same for x2 and x0.5."""
    if not math.isfinite(r) or r <= 0:
        return float("nan")
    return max(r, 1.0 / r)


@dataclass
class DriftReport:
    """Everything a monitoring run logs: figures, the verdict and its one-line explanation."""

    scoring: ClusterStats
    profile: TrainingProfile | None
    verdict: str
    summary: str
    psi: float | None = None
    psi_per_cluster: np.ndarray | None = None
    quantiles: dict[str, float] = field(default_factory=dict)
    training_quantiles: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        """The ``drift`` tag: ``"<verdict>: <why>"``, one line."""
        return f"{self.verdict}: {self.summary}"

    def metrics(self) -> dict[str, float]:
        """Metrics to log (``drift.*``); per-cluster figures carry the cluster ID."""
        out: dict[str, float] = {"drift.rows": float(self.scoring.rows)}
        for i, share in enumerate(self.scoring.shares):
            out[f"drift.share.cluster_{i}"] = float(share)
        for key, value in self.quantiles.items():
            out[f"drift.distance_{key}"] = value
        for key, value in self.training_quantiles.items():
            out[f"drift.training_distance_{key}"] = value
        for key, value in self.ratios.items():
            out[f"drift.distance_{key}_ratio"] = value
        if self.psi is not None and self.psi_per_cluster is not None:
            out["drift.psi"] = self.psi
            for i, value in enumerate(self.psi_per_cluster):
                out[f"drift.psi.cluster_{i}"] = float(value)
            if self.profile is not None:
                for i, share in enumerate(self.profile.stats.shares):
                    out[f"drift.training_share.cluster_{i}"] = float(share)
        return out


def compare(scoring: ClusterStats, profile: TrainingProfile | None, thresholds: Any = None) -> DriftReport:
    """Compare scoring statistics with the training profile (None: the model has none).

    ``thresholds`` is a :class:`~toolkit.config.MonitoringConfig` (default: its defaults).
    """
    if thresholds is None:
        thresholds = MonitoringConfig()
    quantiles = {k: scoring.quantile(q) for k, q in _QUANTILES.items()}
    if profile is None:
        return DriftReport(scoring, None, "unknown",
                           "the model has no training profile (registered before drift profiles were kept): "
                           f"shares and distance quantiles of {scoring.rows} rows logged, no PSI; "
                           "re-register the model to compare", quantiles=quantiles)
    ref = profile.stats
    if ref.n_clusters != scoring.n_clusters:
        return DriftReport(scoring, profile, "unknown",
                           f"the profile has {ref.n_clusters} clusters, the model {scoring.n_clusters}: no PSI",
                           quantiles=quantiles)
    terms = psi(ref.shares, scoring.shares)
    total = float(terms.sum())
    trained = {k: ref.quantile(q) for k, q in _QUANTILES.items()}
    ratios = {k: quantiles[k] / trained[k] if trained[k] > 0 else float("nan") for k in _QUANTILES}
    spread = [_ratio_distance(r) for r in ratios.values()]
    far = max((v for v in spread if math.isfinite(v)), default=float("nan"))
    level = max(_level(total, thresholds.psi_moderate, thresholds.psi_major),
                _level(far, thresholds.distance_moderate, thresholds.distance_major))
    worst = int(np.argmax(terms))
    summary = (f"PSI {total:.3f} (moderate >= {thresholds.psi_moderate:g}, major >= {thresholds.psi_major:g}; "
               f"largest: cluster {worst} {terms[worst]:.3f}), "
               f"distance ratio median x{ratios['p50']:.2f}, p95 x{ratios['p95']:.2f} "
               f"(moderate >= x{thresholds.distance_moderate:g}, major >= x{thresholds.distance_major:g}), "
               f"{scoring.rows} rows vs {ref.rows} at training")
    return DriftReport(scoring, profile, LEVELS[level], summary, psi=total, psi_per_cluster=terms,
                       quantiles=quantiles, training_quantiles=trained, ratios=ratios)
