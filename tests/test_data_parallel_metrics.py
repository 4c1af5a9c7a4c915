"""A data-parallel search's trials compute what their objective needs, on a sample taken once.

Each trial of a data-parallel search (one fit at a time over the cluster) used to gather its
silhouette sample from the cluster again, label it through the fit's lazy labels and compute
every metric in two more passes over all rows.  Now the sample is gathered once per search and
kept on the driver, its labels come from the fitted centres, and only
``metrics.trial_metrics`` (the objectives' metrics and those asked for) are computed -- with
the values :func:`toolkit.metrics.cluster_metrics` gives.
"""

from __future__ import annotations

import time

import pytest

from toolkit.backends import get_backend
from toolkit.config import MetricsConfig, ModelConfig, load_experiment
from toolkit.data import Dataset
from toolkit.metrics import cluster_metrics, nearest_center
from toolkit.search.objectives import search_metrics
from toolkit.search.trials import DataParallelRunner

FREE = {"inertia", "fit_seconds", "n_iter"}


def _trials(client, X, y, metrics: MetricsConfig, ks=(4, 6)) -> tuple[DataParallelRunner, list]:
    backend = get_backend("dask")(client=client)
    dataset = Dataset("blobs", X, y, ["x0", "x1"], "blobs")
    runner = DataParallelRunner(backend, backend.prepare(dataset), y, metrics, dataset=dataset)
    samples = []
    for key, k in enumerate(ks):
        runner.submit(key, ModelConfig(n_clusters=k, n_init=1, random_state=key))
    got, deadline = [], time.monotonic() + 120
    while runner.pending() and time.monotonic() < deadline:
        got.extend(runner.results())
        samples.append(runner._sample)
    assert len(got) == len(ks) and all(r.ok for r in got), [r.error for r in got]
    assert all(s is samples[0] for s in samples)  # one sample for every trial
    return runner, got


def test_only_the_objectives_metrics_equal_to_every_metric_of_the_fit(client, blobs_small):
    X, y = blobs_small
    cfg = MetricsConfig(silhouette_sample=300, seed=2, trial_metrics=["silhouette"])
    _, got = _trials(client, X, y, cfg)
    for res in got:
        assert set(res.metrics) == {"silhouette"} | FREE
        labels = nearest_center(X, res.centers)
        full = cluster_metrics(X, labels, res.params.n_clusters, silhouette_sample=300, seed=2)
        assert res.metrics["silhouette"] == pytest.approx(full["silhouette"], rel=1e-9)

    cfg = MetricsConfig(silhouette_sample=300, trial_metrics=["davies_bouldin", "adjusted_rand"])
    _, got = _trials(client, X, y, cfg, ks=(5,))
    (res,) = got
    assert set(res.metrics) == {"davies_bouldin", "calinski_harabasz", "n_clusters_found", "adjusted_rand"} | FREE
    full = cluster_metrics(X, nearest_center(X, res.centers), 5, y_true=y)
    for name in ("davies_bouldin", "calinski_harabasz", "adjusted_rand"):
        assert res.metrics[name] == pytest.approx(full[name], rel=1e-9), name


def test_a_search_computes_its_objectives_and_what_metrics_trial_metrics_adds():
    def resolved(**overrides):
        return search_metrics(load_experiment(None, overrides)).trial_metrics

    assert resolved() == ["silhouette"]  # the default objective, nothing else
    assert resolved(**{"search.objective": "davies_bouldin"}) == ["davies_bouldin"]
    assert resolved(**{"search.objective": "davies_bouldin", "metrics.trial_metrics": ["silhouette"]}) == [
        "davies_bouldin", "silhouette"]
    assert set(resolved(**{"metrics.trial_metrics": "all"})) == {
        "silhouette", "davies_bouldin", "calinski_harabasz", "adjusted_rand", "inertia"}
    # Trade-offs and resampling metrics are not per-trial metric passes.
    assert resolved(**{"search.objectives": ["silhouette", "n_clusters"]}) == ["silhouette"]
