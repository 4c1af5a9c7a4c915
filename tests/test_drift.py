"""Drift reports from batch scoring: the training profile stored with the model, the statistics
gathered while scoring, PSI and distance shift against the profile, and the monitoring run.

Models are trained and registered for real into the module's sqlite store; scoring runs on the
session's 2-worker LocalCluster through :func:`toolkit.serving.score_files`.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections import Counter
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from toolkit.config import MonitoringConfig, load_experiment
from toolkit.convert import centers_of
from toolkit.monitoring import compare, drift_report, log_drift_report
from toolkit.registry import Registration, flavor, integrity, log_and_register, stable
from toolkit.serving import load_predictor, resolve, score_files
from toolkit.serving.batch import scoring_plan
from toolkit.stats.profile import (
    PROFILE_FILE,
    build_profile,
    cluster_stats,
    combine,
    distance_edges,
    frame_stats,
    frame_stats_meta,
    partial_stats,
    stats_from_frame,
)
from toolkit.tracking import tracked_run
from toolkit.train import train

CENTERS = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]])
NAME = "drift-blobs"


def _blobs(seed: int, n: int = 8_000, centers: np.ndarray = CENTERS, std: float = 0.5) -> np.ndarray:
    X, _ = make_blobs(n_samples=n, centers=centers, cluster_std=std, random_state=seed)
    return X.astype(np.float32)


def _parquet(folder: Path, X: np.ndarray, n_files: int = 3) -> str:
    folder.mkdir(parents=True)
    for i, part in enumerate(np.array_split(np.arange(len(X)), n_files)):
        pd.DataFrame(X[part], columns=["x0", "x1"]).to_parquet(folder / f"part-{i}.parquet")
    return str(folder / "part-*.parquet")


@pytest.fixture(scope="module")
def mlc(store):
    return MlflowClient(tracking_uri=store, registry_uri=store)


@pytest.fixture(scope="module")
def registered(store, tmp_path_factory):
    """4 blobs trained from a Parquet file and registered (train -> register_fit): (X, outcome)."""
    X = _blobs(0)
    path = tmp_path_factory.mktemp("train") / "train.parquet"
    pd.DataFrame(X, columns=["x0", "x1"]).to_parquet(path)
    cfg = load_experiment(None, ["data.source=file", f"data.path={path}", "model.n_clusters=4",
                                 f"registry.native_name={NAME}", f"registry.sklearn_name={NAME}-sklearn",
                                 "tracking.log_plot=false", "tracking.experiment=drift"])
    return X, train(cfg, register=True)


# -- the statistics ---------------------------------------------------------------------------


def test_partition_reduction_equals_one_pass(client):
    rng = np.random.default_rng(0)
    X = _blobs(3, n=20_000) + rng.normal(0, 0.01, (20_000, 2)).astype(np.float32)
    km = KMeans(n_clusters=4, n_init=1, random_state=0).fit(X)
    labels, centers = km.labels_, km.cluster_centers_
    edges = distance_edges(0.5)
    whole = partial_stats(X, labels, centers, edges)
    assert whole.rows == len(X) and whole.counts.shape == (4, len(edges) + 1)

    cuts = [0, 1, 4_999, 5_000, 12_345, 20_000]  # uneven parts, one of a single row
    parts = [partial_stats(X[a:b], labels[a:b], centers, edges) for a, b in itertools.pairwise(cuts)]
    parts.append(partial_stats(X[:0], labels[:0], centers, edges))  # an empty partition
    merged = combine(parts)
    assert np.array_equal(merged.counts, whole.counts)
    assert np.array_equal(merged.max_distance, whole.max_distance)

    # On the cluster: Dask blocks reduced on the driver, and the DataFrame path of batch scoring.
    dX, dlab = da.from_array(X, chunks=(3_000, 2)), da.from_array(labels, chunks=3_000)
    on_cluster = cluster_stats(dX, dlab, centers, edges)
    assert np.array_equal(on_cluster.counts, whole.counts)
    frame = pd.DataFrame(X, columns=["x0", "x1"]).assign(label=labels)
    import dask.dataframe as dd

    ddf = dd.from_pandas(frame, npartitions=7)
    lazy = ddf.map_partitions(frame_stats, ["x0", "x1"], "label", centers, edges, meta=frame_stats_meta())
    parts_frame = client.compute(lazy).result()
    assert len(parts_frame) == 7
    assert np.array_equal(stats_from_frame(parts_frame, edges, 4).counts, whole.counts)

    # Quantiles from the histogram are within a bin (~4 %) of the exact ones.
    d = np.linalg.norm(X - centers[labels], axis=1)
    for q in (0.05, 0.5, 0.95, 0.999):
        assert whole.quantile(q) == pytest.approx(np.quantile(d, q), rel=0.04)
    assert whole.quantile(1.0) == pytest.approx(d.max())
    np.testing.assert_allclose(whole.shares, np.bincount(labels) / len(X))


def test_profile_is_stored_with_both_models_and_covers_the_training_data(registered, mlc):
    X, out = registered
    reg = out.registered
    for name, version in ((reg.native_name, reg.native_version), (reg.sklearn_name, reg.sklearn_version)):
        manifest = json.loads(mlc.get_model_version(name, version).tags[integrity.MANIFEST_TAG])
        assert PROFILE_FILE in manifest and stable.REFERENCE_FILE in manifest  # checksummed with the model
    src = resolve(f"models:/{NAME}-sklearn@champion")
    from toolkit.stats.profile import read_profile

    profile = read_profile(src.verified)
    assert profile.source == f"training data ({len(X)} rows)"
    model = flavor.load_model(f"models:/{NAME}@champion")
    labels = model.predict(X)
    np.testing.assert_allclose(profile.stats.shares, np.bincount(labels, minlength=4) / len(X))


def test_profile_follows_the_stable_ids(store, mlc):
    """A retrain reordered onto the champion's IDs stores its profile in the same order."""
    name = "drift-stable"
    X = _blobs(5)
    uneven = np.concatenate([X[:5_000], X[X[:, 0] > 4][:500]])  # clusters of very different sizes

    def register(fit: KMeans, data: np.ndarray):
        profile = build_profile(data, fit.labels_, fit.cluster_centers_)  # in the fit's own order
        with tracked_run("drift", "fit") as run_id:
            return log_and_register(fit, fit, data[:2_000], Registration(
                run_id=run_id, backend="sklearn", native_name=name, sklearn_name=f"{name}-sklearn",
                feature_names=["x0", "x1"]), profile=profile)

    champion = KMeans(n_clusters=4, n_init=1, random_state=0).fit(X)
    register(champion, X)
    raw = KMeans(n_clusters=4, n_init=1, random_state=3).fit(uneven)
    # Number the retrain's clusters opposite to the champion's, so the registration must reorder.
    m = stable.match_centers(raw.cluster_centers_, champion.cluster_centers_)
    order = m.order[::-1]
    raw.cluster_centers_ = raw.cluster_centers_[order]
    raw.labels_ = np.argsort(order)[raw.labels_].astype(np.int32)
    register(raw, uneven)
    tags = mlc.get_model_version(name, "2").tags
    assert tags["stable.status"] == "matched to champion" and float(tags["stable.churn"]) == 0.0
    from toolkit.stats.profile import read_profile

    with integrity.fetch_verified(f"models:/{name}/2") as verified:
        profile = read_profile(verified)
        model = flavor.load_verified(verified)
    expected = np.bincount(model.predict(uneven), minlength=4) / len(uneven)
    np.testing.assert_allclose(profile.stats.shares, expected)


# -- scoring ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(registered, client):
    p = load_predictor(f"models:/{NAME}-sklearn@champion", client=client)
    try:
        yield p
    finally:
        p.close()


def test_scoring_the_training_distribution_is_no_drift(predictor, registered, tmp_path, mlc):
    fresh = _blobs(11)  # new rows, same blobs
    info = score_files(predictor, _parquet(tmp_path / "in", fresh), str(tmp_path / "out"))
    stats = info["drift_stats"]
    assert stats.rows == len(fresh) and info["profile"] is not None
    assert np.array_equal(stats.edges, info["profile"].stats.edges)  # the profile's fixed edges
    report = drift_report(predictor.source, stats, profile=info["profile"])
    assert report.verdict == "none", report.tag
    assert report.psi < 0.01
    assert all(abs(r - 1) < 0.1 for r in report.ratios.values())
    run_id = log_drift_report(report, predictor.source)
    run = mlc.get_run(run_id)
    tags = run.data.tags
    assert tags["drift"].startswith("none: PSI") and "\n" not in tags["drift"]
    assert (tags["model.name"], tags["model.version"]) == (f"{NAME}-sklearn", "1")
    assert tags["model.uri"] == f"models:/{NAME}-sklearn@champion" and tags["model.id"] == predictor.source.model_id
    assert mlc.get_experiment(run.info.experiment_id).name == "drift"  # the model's experiment
    assert [m.model_id for m in run.inputs.model_inputs] == [predictor.source.model_id]
    assert run.data.metrics["drift.psi"] == pytest.approx(report.psi)
    for key in ("drift.distance_p50_ratio", "drift.distance_p95_ratio", "drift.psi.cluster_3",
                "drift.share.cluster_0", "drift.training_share.cluster_0"):
        assert key in run.data.metrics
    names = {a.path for a in mlc.list_artifacts(run_id, "drift")}
    assert names == {"drift/drift.png", "drift/report.json"}


def test_shifted_data_is_major_drift(predictor, tmp_path):
    # Cluster 0's blob doubled in spread and moved; the others lose rows to it.
    moved = _blobs(12, centers=CENTERS + np.array([[1.5, 1.5], [0, 0], [0, 0], [0, 0]]), std=0.9)
    info = score_files(predictor, _parquet(tmp_path / "in", moved), str(tmp_path / "out"))
    report = drift_report(predictor.source, info["drift_stats"], profile=info["profile"])
    assert report.verdict == "major", report.tag
    assert report.ratios["p50"] > 1.5
    # Only population shift: PSI alone decides, and the thresholds come from the config.
    X = _blobs(13, n=8_000)
    skewed = np.concatenate([X[X[:, 0] < 4], X[X[:, 0] < 4][:2_000]])
    info = score_files(predictor, _parquet(tmp_path / "skew", skewed), str(tmp_path / "skew-out"))
    stats = info["drift_stats"]
    loose = compare(stats, info["profile"], MonitoringConfig(psi_moderate=50, psi_major=100))
    strict = compare(stats, info["profile"], MonitoringConfig())
    assert loose.psi == strict.psi > 0.25
    assert (loose.verdict, strict.verdict) == ("none", "major")


def test_scoring_reads_the_input_once(predictor, tmp_path):
    """The write and the statistics come from one graph: one read (and one predict) per file."""
    import dask.dataframe as dd

    X = _blobs(14, n=3_000)
    ddf = dd.read_parquet(_parquet(tmp_path / "in", X))
    _, plan = scoring_plan(predictor, ddf, ["x0", "x1"], str(tmp_path / "tmp"))
    graph = dask.base.collections_to_expr([plan.write, plan.stats_parts]).optimize().__dask_graph__()
    groups = Counter((k if isinstance(k, str) else k[0]).rsplit("-", 1)[0] for k in graph)
    reads = [n for g, n in groups.items() if "read" in g and "parquet" in g]
    predicts = [n for g, n in groups.items() if "predict" in g]
    assert reads == [ddf.npartitions] and predicts == [ddf.npartitions], groups
    # And the statistics equal a single pass over the same rows with the same labels.
    _, parts = dask.compute(plan.write, plan.stats_parts)
    labels = predictor.model.predict(X)
    single = partial_stats(X, labels, np.asarray(centers_of(predictor.model)), plan.edges)
    assert np.array_equal(stats_from_frame(parts, plan.edges, 4).counts, single.counts)


# -- a model registered before profiles were kept -----------------------------------------------


@pytest.fixture(scope="module")
def legacy(store, registered):
    """A scikit-learn model logged and registered as before this change: no profile."""
    X, _ = registered
    km = KMeans(n_clusters=4, n_init=1, random_state=0).fit(X)
    c = MlflowClient()
    run = c.create_run(c.get_experiment_by_name("drift").experiment_id, run_name="legacy")
    ref = integrity.log_model_dir(run.info.run_id, "native_model",
                                  lambda local, mlmodel: flavor.save_model(km, local, backend="sklearn",
                                                                           mlflow_model=mlmodel),
                                  model_type="kmeans_native")
    c.set_terminated(run.info.run_id)
    c.create_registered_model("drift-legacy")
    c.create_model_version("drift-legacy", ref.uri, run.info.run_id, model_id=ref.model_id,
                           tags={"kind": "native", **ref.tags})
    c.set_registered_model_alias("drift-legacy", "champion", "1")
    return "models:/drift-legacy@champion"


def test_model_without_profile_scores_and_says_so(legacy, client, tmp_path, mlc):
    predictor = load_predictor(legacy, client=client)
    try:
        assert PROFILE_FILE not in predictor.source.verified.manifest
        info = score_files(predictor, _parquet(tmp_path / "in", _blobs(15)), str(tmp_path / "out"))
    finally:
        predictor.close()
    assert info["profile"] is None and info["drift_stats"].rows == 8_000
    report = drift_report(predictor.source, info["drift_stats"])
    assert report.verdict == "unknown" and report.psi is None
    assert "no training profile" in report.tag and "no PSI" in report.tag
    run = mlc.get_run(log_drift_report(report, predictor.source))
    assert run.data.tags["drift"].startswith("unknown: the model has no training profile")
    assert "drift.psi" not in run.data.metrics
    assert {"drift.share.cluster_0", "drift.distance_p50", "drift.distance_p95"} <= set(run.data.metrics)


# -- the predict entry point --------------------------------------------------------------------


def test_predict_entry_point_logs_drift_into_its_run(registered, client, tmp_path, monkeypatch, capsys, mlc):
    from mlproject import predict
    from mlproject._cli import run_main

    path = _parquet(tmp_path / "in", _blobs(16, n=2_000), n_files=2)
    monkeypatch.setattr(sys, "argv", ["predict", "--model-uri", f"models:/{NAME}@champion", "--input", path,
                                      "--output", str(tmp_path / "out"), "--scheduler-address",
                                      client.scheduler.address])
    with pytest.raises(SystemExit) as exit_info:
        run_main(predict.main)
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert "drift report" in out and "none: PSI" in out
    runs = mlc.search_runs([mlc.get_experiment_by_name("drift").experiment_id],
                           filter_string="tags.entry_point = 'predict' and tags.`model.name` = 'drift-blobs'")
    assert len(runs) == 1 and runs[0].data.tags["drift.verdict"] == "none"
    assert "drift.psi" in runs[0].data.metrics
