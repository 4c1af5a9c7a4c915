"""MLflow tracking: run lifecycle (``runs``), what a fit logs (``record``), figures (``plots``)."""

from __future__ import annotations

from toolkit.tracking.record import (
    log_centroids,
    log_dataset,
    log_metrics,
    log_params,
    log_tags,
    tags_for,
)
from toolkit.tracking.runs import (
    DEFAULT_TRACKING_URI,
    end_run,
    get_or_create_experiment,
    mark_failed,
    run_url,
    start_run,
    tracked_run,
    tracking_uri,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "end_run",
    "get_or_create_experiment",
    "log_centroids",
    "log_dataset",
    "log_metrics",
    "log_params",
    "log_tags",
    "mark_failed",
    "run_url",
    "start_run",
    "tags_for",
    "tracked_run",
    "tracking_uri",
]
