"""Drift monitoring: training profiles stored with models, scoring statistics, drift reports.

``profile`` computes per-cluster shares and distance-to-centre histograms on fixed edges
(partition by partition, reduced on the driver) and stores the training profile with a model;
``drift`` compares scoring statistics with it (PSI, distance ratios, verdict); ``report`` logs
the monitoring run.
"""

from __future__ import annotations

from toolkit.monitoring.drift import DriftReport, compare
from toolkit.monitoring.profile import (
    PROFILE_FILE,
    ClusterStats,
    TrainingProfile,
    build_profile,
    read_profile,
    save_profile,
)
from toolkit.monitoring.report import drift_report, log_drift_report

__all__ = [
    "PROFILE_FILE",
    "ClusterStats",
    "DriftReport",
    "TrainingProfile",
    "build_profile",
    "compare",
    "drift_report",
    "log_drift_report",
    "read_profile",
    "save_profile",
]
