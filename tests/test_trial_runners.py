"""The :class:`~toolkit.search.trials.TrialRunner` contract, one suite for both runners.

Each test runs against :class:`TrialParallelRunner` (one Dask task per trial, on the session's
cluster) and :class:`DataParallelRunner` (one fit at a time on the driver), on 2,000 blobs.
What a lost worker does to each runner is ``tests/test_worker_loss.py``'s subject.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from toolkit.backends import get_backend
from toolkit.config import MetricsConfig, ModelConfig
from toolkit.data import Dataset
from toolkit.search.trials import DataParallelRunner, TrialParallelRunner, TrialResult

METRICS = MetricsConfig(silhouette_sample=300)


@pytest.fixture(params=["trial", "data"])
def runner(request, client, blobs_small):
    """A fresh runner of each kind over the same data."""
    X, y = blobs_small
    if request.param == "trial":
        return TrialParallelRunner(client, "sklearn", X, y, METRICS)
    backend = get_backend("dask")(client=client)
    dataset = Dataset("blobs", X, y, ["x0", "x1"], "blobs")
    return DataParallelRunner(backend, backend.prepare(dataset), y, METRICS, dataset=dataset)


def _batches(runner) -> list[list[TrialResult]]:
    """What each :meth:`results` call returned until nothing was pending (bounded)."""
    out: list[list[TrialResult]] = []
    deadline = time.monotonic() + 120
    while runner.pending() and time.monotonic() < deadline:
        out.append(runner.results())
    return out


def _drain(runner) -> list[TrialResult]:
    return [r for batch in _batches(runner) for r in batch]


def test_every_submitted_trial_comes_back_once_with_its_key_and_params(runner):
    assert runner.mode in ("trial", "data") and runner.slots >= 1
    asked = {key: ModelConfig(n_clusters=k, n_init=1, random_state=key) for key, k in enumerate((3, 6, 4))}
    for key, params in asked.items():
        assert runner.submit(key, params) is None  # returns at once: no result here
    assert runner.pending() == len(asked)
    batches = _batches(runner)
    got = [r for batch in batches for r in batch]
    assert sorted(r.key for r in got) == sorted(asked) and runner.pending() == 0
    for res in got:
        assert res.ok, res.error
        assert res.params.n_clusters == asked[res.key].n_clusters
        assert {"silhouette", "inertia", "fit_seconds"} <= set(res.metrics)
        assert res.centers is not None and np.asarray(res.centers).shape == (asked[res.key].n_clusters, 2)
        assert res.attempts == 1 and not res.infra and res.received >= res.submitted > 0
    # Each call's trials in the order they finished; across calls, in the order they reached the
    # driver (a trial that finished first on one worker can arrive after another's).
    for batch in batches:
        assert [r.finished for r in batch] == sorted(r.finished for r in batch)
    received = [r.received for r in got]
    assert received == sorted(received)
    assert runner.results() == []  # nothing pending: at once, empty


def test_a_failed_fit_is_a_result_not_an_exception(runner):
    runner.submit(7, ModelConfig(n_clusters=5000, n_init=1, random_state=0))  # more clusters than rows
    (res,) = _drain(runner)
    assert res.key == 7 and not res.ok and not res.infra and res.error and res.metrics == {}


def test_cancel_drops_every_pending_trial_and_is_idempotent(runner):
    for key in range(3):
        runner.submit(key, ModelConfig(n_clusters=4, n_init=1, random_state=key))
    runner.cancel()
    runner.cancel()
    assert runner.pending() == 0 and runner.results() == []


def test_a_rung_subset_is_fitted_on_that_many_rows(runner):
    params = ModelConfig(n_clusters=6, n_init=1, random_state=0)
    runner.submit(0, params, (500, 0))
    runner.submit(1, params)
    got = {r.key: r for r in _drain(runner)}
    assert got[0].ok and got[1].ok, (got[0].error, got[1].error)
    # Inertia sums over the rows fitted: a quarter of the rows, about a quarter of it.
    assert got[0].metrics["inertia"] < 0.5 * got[1].metrics["inertia"]
    assert not got[0].full_data


def test_refit_data_is_the_callers_placement_when_nothing_was_lost(runner):
    placed = object() if runner.mode == "trial" else runner.X
    assert runner.refit_data(placed) is placed
