"""The monitoring run of a scoring job: drift figures, a plot and a verdict tag, in MLflow.

:func:`drift_report` turns the statistics batch scoring gathered into a
:class:`~toolkit.stats.drift.DriftReport` against the profile stored with the model;
:func:`log_drift_report` writes it into a run linked to the model (tags ``model.name``,
``model.version``, ``model.uri``, ``model.id`` and the LoggedModel as the run's input): the
``drift.*`` metrics, ``drift/drift.png``, ``drift/report.json`` and the one-line ``drift`` tag.

The statistics themselves are :mod:`toolkit.stats` (no MLflow); :func:`compare` and
:class:`DriftReport` are handed on from there so that ``toolkit.monitoring`` is the one import a
scoring job needs.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

import numpy as np

from toolkit.registry import model_experiment
from toolkit.stats.drift import DriftReport, compare
from toolkit.stats.profile import ClusterStats, TrainingProfile, read_profile
from toolkit.tracking import log_metrics, log_tags, mark_failed
from toolkit.tracking.plots import _plt
from toolkit.tracking.record import log_artifacts_dir
from toolkit.tracking.runs import client, end_run, get_or_create_experiment

__all__ = ["DRIFT_TAG", "DriftReport", "compare", "drift_plot", "drift_report", "log_drift_report", "model_tags"]

DRIFT_TAG = "drift"


def drift_report(source: Any, stats: ClusterStats, thresholds: Any = None,
                 profile: TrainingProfile | None = None) -> DriftReport:
    """Compare scoring ``stats`` with the training profile of ``source`` (a resolved
    :class:`~toolkit.serving.ModelSource`; its verified copy is read, checked again first).

    ``profile`` skips the read when the caller already has it.  A model logged without a
    profile gives an ``unknown`` verdict that says so.
    """
    if profile is None:
        profile = read_profile(getattr(source, "verified", None))
    return compare(stats, profile, thresholds)


def model_tags(source: Any) -> dict[str, str]:
    """The tags that link a run to the model it scored with."""
    tags = {"model.uri": str(getattr(source, "uri", ""))}
    for key, attr in (("model.name", "name"), ("model.version", "version"), ("model.id", "model_id")):
        value = getattr(source, attr, None)
        if value:
            tags[key] = str(value)
    return tags


def drift_plot(report: DriftReport) -> Any:
    """Two panels: cluster shares (training vs scoring) and the distance-to-centre CDFs."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    k = report.scoring.n_clusters
    x = np.arange(k)
    if report.profile is not None and report.profile.stats.n_clusters == k:
        left.bar(x - 0.2, report.profile.stats.shares, width=0.4, label="training")
        left.bar(x + 0.2, report.scoring.shares, width=0.4, label="scoring")
    else:
        left.bar(x, report.scoring.shares, width=0.6, label="scoring")
    left.set_xlabel("cluster")
    left.set_ylabel("share of rows")
    left.set_xticks(x)
    left.legend(loc="best")
    left.set_title(f"cluster shares (PSI {report.psi:.3f})" if report.psi is not None else "cluster shares")
    series = [("scoring", report.scoring)]
    if report.profile is not None:
        series.insert(0, ("training", report.profile.stats))
    for name, st in series:
        hist = st.counts.sum(axis=0)
        if hist.sum() == 0:
            continue
        cdf = np.cumsum(hist)[:-1] / hist.sum()  # share below each edge
        right.step(st.edges, cdf, where="post", label=name)
    right.set_xscale("log")
    # Zoom on where the rows are: the six decades of fixed edges are mostly empty.
    low = [st.quantile(0.001) for _, st in series if st.rows]
    high = [float(st.max_distance.max(initial=0.0)) for _, st in series if st.rows]
    if low and high and min(low) > 0 and max(high) > 0:
        right.set_xlim(min(low) / 2, max(high) * 2)
    right.set_xlabel("distance to assigned centre")
    right.set_ylabel("share of rows below")
    right.legend(loc="best")
    right.set_title("distance to centre (CDF)")
    fig.suptitle(f"drift: {report.verdict}")
    fig.tight_layout()
    return fig


def _json_safe(value: float) -> float | None:
    return value if math.isfinite(value) else None


def log_drift_report(report: DriftReport, source: Any, run_id: str | None = None,
                     run_name: str | None = None) -> str:
    """Log ``report`` into ``run_id``, or into a new FINISHED run in the model's experiment.

    Returns the run's id.  The run carries the model's tags (:func:`model_tags`), the
    ``drift`` tag (the one-line verdict), the ``drift.*`` metrics, the plot and the report.
    """
    tags = {**model_tags(source), "monitoring.kind": "drift", DRIFT_TAG: report.tag,
            "drift.verdict": report.verdict}
    own = run_id is None
    if own:
        # Created here rather than through tracked_run: under `mlflow run` that would resume the
        # launcher's run, which may sit in another experiment than the model's.
        model = f"{getattr(source, 'name', None) or 'model'}-v{getattr(source, 'version', None) or '?'}"
        # The model's experiment (its version's source run, else its LoggedModel's); a copy
        # logged elsewhere still gets a home in Default.
        exp_id = model_experiment(getattr(source, "name", None), getattr(source, "version", None),
                                  getattr(source, "model_id", None)) or get_or_create_experiment("Default")
        run_id = client().create_run(exp_id, run_name=run_name or f"drift-{model}",
                                     tags={"entry_point": "monitoring"}).info.run_id
    try:
        log_tags(run_id, tags)
        log_metrics(run_id, report.metrics())
        model_id = getattr(source, "model_id", None)
        if model_id:
            from mlflow.entities import LoggedModelInput

            client().log_inputs(run_id, models=[LoggedModelInput(model_id)])
        with tempfile.TemporaryDirectory() as tmp:
            fig = drift_plot(report)
            fig.savefig(os.path.join(tmp, "drift.png"), dpi=90)
            import matplotlib.pyplot as plt

            plt.close(fig)
            body = {"verdict": report.verdict, "summary": report.summary,
                    "metrics": {k: _json_safe(v) for k, v in report.metrics().items()},
                    "scoring": report.scoring.to_dict(),
                    "profile_source": report.profile.source if report.profile is not None else None}
            with open(os.path.join(tmp, "report.json"), "w", encoding="utf-8") as fh:
                json.dump(body, fh)
            log_artifacts_dir(run_id, tmp, "drift")
    except BaseException:
        if own:
            mark_failed(run_id, "the drift report could not be logged")
        raise
    if own:
        end_run(run_id, "FINISHED")
    return run_id
