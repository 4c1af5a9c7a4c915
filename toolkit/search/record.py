"""What a search writes to MLflow: one child run per trial, and the parent's summary.

Only the driver's side calls these: the search loop hands child runs to its one writer
process (``toolkit.tracking.writer``), and the parent's summary is written after that writer
has drained, so the store never sees two writers at once.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolkit.errors import first_line
from toolkit.redact import redact
from toolkit.tracking import log_centroids
from toolkit.tracking.runs import client

__all__ = [
    "TrialRecord",
    "discard_run",
    "finish_interrupted_run",
    "log_figure",
    "log_table",
    "log_trial_run",
    "trial_run_name",
    "write_trial_run",
]


def trial_run_name(number: int, params: Mapping[str, Any]) -> str:
    """A child run's name says what the trial tried: ``k=6 k-means++ #007``.

    The MLflow UI's runs table shows only the first 15-20 characters of a nested run's name,
    so the study name (already the parent's name, one level up) is left out and the two
    choices that shape a clustering most come first, then the trial number (the full name is
    the run page's title).  Other varied settings are the run's params.  Nothing looks a
    trial's run up by this name: a resume finds it by its ``optuna.trial_number`` tag.
    """
    parts = []
    if params.get("n_clusters") is not None:
        parts.append(f"k={params['n_clusters']}")
    if params.get("init") is not None:
        parts.append(str(params["init"]))
    parts.append(f"#{number:03d}")
    return " ".join(parts)


@dataclass(frozen=True)
class TrialRecord:
    """What one trial's child run holds: the parameter object of :func:`write_trial_run`.

    Plain data, so that it pickles to the writer process.
    """

    parent_run_id: str
    study_name: str
    number: int
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    tags: Mapping[str, Any]
    #: The run's MLflow status: FINISHED, FAILED, or KILLED (a pruned trial).
    status: str
    #: The trial's real start and end (epoch seconds): the run's own.
    started: float
    finished: float
    #: The fitted centroids, in the data's own coordinates (logged as the run's artifacts).
    centers: np.ndarray | None = None
    feature_names: list[str] | None = None
    error: str | None = None
    #: Metrics logged once per step (a multi-fidelity trial's objective per rung).
    history: Mapping[str, Sequence[tuple[int, float]]] | None = None

    def all_tags(self) -> dict[str, str]:
        """Every tag of the run, its key tags first (redacted: no credential reaches the store)."""
        tags = {
            "mlflow.parentRunId": self.parent_run_id,
            "optuna.study_name": self.study_name,
            "optuna.trial_number": str(self.number),
            "trial.state": self.status,
            "trial.duration_s": f"{self.finished - self.started:.3f}",
            **{k: redact(str(v)) for k, v in self.tags.items()},
        }
        if self.error:
            tags["error"] = redact(self.error)[:4000]
        return tags

    def metric_list(self) -> list[Any]:
        """Its metrics (and per-step history) as MLflow ``Metric`` entities; non-finite values left out."""
        from mlflow.entities import Metric

        now = int(self.finished * 1000)
        return [
            Metric(k, float(v), now, 0) for k, v in self.metrics.items() if v is not None and math.isfinite(float(v))
        ] + [
            Metric(k, float(v), now, int(step)) for k, points in (self.history or {}).items()
            for step, v in points if v is not None and math.isfinite(float(v))
        ]


def log_trial_run(*args: Any, **kwargs: Any) -> str:
    """:func:`write_trial_run` of ``TrialRecord(*args, **kwargs)`` (the fields in order, as before)."""
    return write_trial_run(TrialRecord(*args, **kwargs))


def write_trial_run(rec: TrialRecord) -> str:
    """Create a finished child run for one trial (its real start and end times) and return its id.

    The child lives in its parent's experiment (under ``mlflow run`` that is the experiment
    ``mlflow run`` chose, not necessarily the config's).  Never a half-written run: one whose
    writing fails is ended FAILED and deleted, and the error raised.  In a replayed writer job
    (:func:`toolkit.tracking.writer.replaying`) a run already written whole is returned as is.
    """
    from mlflow.entities import Param

    from toolkit.tracking.writer import replaying

    c = client()
    exp_id = _experiment_of(rec.parent_run_id)
    if replaying():
        # A writer process died under (or before) this job: the run may be written already.
        done = _written_before(c, exp_id, rec.parent_run_id, rec.number)
        if done is not None:
            return done
    # Three tracking-store calls per child: every tag goes in with create_run (tags in
    # log_batch cost ~10 ms more on sqlite), params and metrics in one log_batch, then the end.
    run = _create_once(c, exp_id, rec.started, rec.all_tags(), trial_run_name(rec.number, rec.params))
    run_id = run.info.run_id
    try:
        metric_list = rec.metric_list()
        param_list = [Param(k, str(v)) for k, v in rec.params.items()]
        if metric_list or param_list:
            c.log_batch(run_id, metrics=metric_list, params=param_list)
        if rec.centers is not None:
            log_centroids(run_id, rec.centers, rec.feature_names, None, artifact_uri=run.info.artifact_uri)
        c.set_terminated(run_id, status=rec.status, end_time=int(rec.finished * 1000))
    except BaseException as exc:
        # Never a half-written run: it is failed and deleted (a resume writes the trial again
        # from what the study kept).  If the store is down even for that, the resume settles it.
        line = first_line(exc)
        with contextlib.suppress(Exception):
            discard_run(run_id, f"could not be written whole: {type(exc).__name__}: {line}")
        raise
    return run_id


def _written_before(c: Any, exp_id: str, parent_run_id: str, number: int) -> str | None:
    """The run a dead writer wrote whole for trial ``number`` of the search, else None.

    A trial has one child run per parent (its key: the parent and ``optuna.trial_number``).
    One left RUNNING was half-written when the writer died: it is discarded, to be written again.
    """
    runs = c.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                                 f"tags.`optuna.trial_number` = '{number}'")
    for run in runs:
        if run.info.status == "RUNNING":
            discard_run(run.info.run_id, "half-written (the writer process died); rewritten")
    whole = [r for r in runs if r.info.status != "RUNNING"]
    return whole[0].info.run_id if whole else None


def _create_once(c: Any, exp_id: str, started: float, tags: dict[str, str], name: str) -> Any:
    """``create_run`` that never makes two runs: a create whose answer was lost (a timeout) is
    looked up by its write token before it is tried again."""
    from toolkit.tracking.retry import TrackingUnavailableError, is_transient

    token = uuid.uuid4().hex
    tags = {**tags, WRITE_TOKEN_TAG: token}
    for attempt in range(4):
        try:
            return c.create_run(exp_id, start_time=int(started * 1000), tags=tags, run_name=name)
        except TrackingUnavailableError:
            raise
        except Exception as exc:
            if not is_transient(exc) or attempt == 3:
                raise
            found = c.search_runs([exp_id], filter_string=f"tags.`{WRITE_TOKEN_TAG}` = '{token}'", max_results=1)
            if found:
                return found[0]
    raise AssertionError("unreachable")


#: Tag with a random token per child-run write, so a retried create can find its first attempt.
WRITE_TOKEN_TAG = "trial.write_token"


def discard_run(run_id: str, reason: str) -> None:
    """End a half-written run FAILED with ``reason`` and delete it (it stays in the store,
    hidden, until ``mlflow gc``)."""
    c = client()
    c.set_tag(run_id, "error", redact(reason)[:4000])
    c.set_terminated(run_id, status="FAILED")
    c.delete_run(run_id)


def child_runs(parent_run_id: str) -> list[Any]:
    """Every child run of ``parent_run_id``."""
    return client().search_runs(
        [_experiment_of(parent_run_id)],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        max_results=10_000,
    )


def finish_interrupted_run(run_id: str, value: float | None, finished: float) -> None:
    """End as FINISHED a child run whose writer was killed mid-write although its trial had
    completed: the objective from Optuna is logged (the rest may be missing), and it is tagged."""
    from mlflow.entities import Metric, RunTag

    c = client()
    now = int(finished * 1000)
    metrics = [Metric("objective", float(value), now, 0)] if value is not None and math.isfinite(value) else []
    c.log_batch(run_id, metrics=metrics, tags=[RunTag("trial.backfilled", "true"),
                                               RunTag("trial.state", "FINISHED")])
    c.set_terminated(run_id, status="FINISHED", end_time=now)


@functools.lru_cache(maxsize=64)
def _experiment_of(run_id: str) -> str:
    return client().get_run(run_id).info.experiment_id


def log_figure(run_id: str, fig: Any, name: str) -> None:
    """Save a matplotlib figure as ``plots/<name>`` on the run and close it."""
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory() as tmp:
        fig.savefig(os.path.join(tmp, name), dpi=90)
        plt.close(fig)
        client().log_artifact(run_id, os.path.join(tmp, name), "plots")


def log_table(run_id: str, rows: Sequence[Mapping[str, Any]] | Any, name: str) -> None:
    """A table (records or a DataFrame) as a CSV artifact under ``search/``."""
    import pandas as pd

    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    with tempfile.TemporaryDirectory() as tmp:
        frame.to_csv(os.path.join(tmp, name), index=False)
        client().log_artifact(run_id, os.path.join(tmp, name), "search")

