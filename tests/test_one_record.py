"""One record per model: what a run logs, the registered models and the README agree.

* The centroids a run logs (``centroids/centroids.npy``) label rows exactly as the native model
  and the scikit-learn twin registered from that run do, on every CPU backend, for the first
  registration of a name and for the second (renumbered to the champion's IDs), and the
  version's ``stable.mapping`` is the renumbering applied (fitted id -> registered id).
* Every artifact path the README's "What a run records" names exists in a real run.
* A resumed search's progress line shows the study's best, not the best of its own trials.

Real sqlite store, real fits (small blobs), the session's Dask cluster for the Dask backends.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from toolkit.config import load_experiment
from toolkit.convert import predict_labels
from toolkit.registry import flavor
from toolkit.search import search
from toolkit.train import train

REPO = Path(__file__).resolve().parents[1]
BLOBS = REPO / "experiments" / "blobs.yaml"
# Model seeds whose fits number the same 6 blobs differently (checked below: a precondition).
SEEDS = (0, 3)


def _train_cfg(backend: str, name: str, seed: int):
    return load_experiment(BLOBS, [
        f"backend={backend}", "data.n_samples=2000", "data.chunk_rows=500", "metrics.silhouette_sample=500",
        f"model.random_state={seed}", "model.init=random", f"tracking.experiment=one-record-{backend}",
        f"registry.native_name={name}", f"registry.sklearn_name={name}-sklearn"])


def _nearest(centres: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Labels by the logged centroids: each row's nearest centre (float64)."""
    d2 = ((X.astype(np.float64)[:, None, :] - centres.astype(np.float64)[None]) ** 2).sum(axis=2)
    return d2.argmin(axis=1)


@pytest.mark.parametrize("backend", ["sklearn", "dask-ml", "dask"])
def test_logged_centroids_registered_model_and_twin_use_the_same_ids(tracking_uri, client, tmp_path, backend):
    mlc = MlflowClient(tracking_uri)
    name = f"one-record-{backend}"
    X = None
    for version, seed in enumerate(SEEDS, start=1):
        cfg = _train_cfg(backend, name, seed)
        out = train(cfg, client=client if backend != "sklearn" else None, register=True)
        reg = out.registered
        assert (reg.native_version, reg.sklearn_version) == (str(version), str(version))
        if X is None:
            from toolkit.data import load_dataset

            X = load_dataset(cfg.data).X
        local = Path(mlc.download_artifacts(out.run_id, "centroids", str(tmp_path / f"v{version}")))
        logged = np.load(local / "centroids.npy", allow_pickle=False)
        csv = np.loadtxt(local / "centroids.csv", delimiter=",", skiprows=1)[:, 1:]
        np.testing.assert_allclose(csv, logged, rtol=1e-6)
        by_centroids = _nearest(logged, X)
        native = predict_labels(flavor.load_model(f"models:/{name}/{version}"), X)
        twin = predict_labels(flavor.load_model(f"models:/{name}-sklearn/{version}"), X)
        np.testing.assert_array_equal(native, by_centroids)
        np.testing.assert_array_equal(twin, by_centroids)
        tags = mlc.get_model_version(name, str(version)).tags
        fitted = np.asarray(out.result.centers)
        if version == 1:
            assert "stable.mapping" not in tags
            np.testing.assert_allclose(logged, fitted, rtol=1e-6)
            continue
        applied = {int(k): v for k, v in json.loads(tags["stable.mapping"]).items()}
        # The precondition: this fit numbered the blobs otherwise than the champion.
        assert applied != {i: i for i in range(6)}, "pick SEEDS whose fits number the blobs differently"
        assert sorted(applied.values()) == list(range(6))
        # The mapping applied: fitted cluster i is registered (and logged) as applied[i].
        for i, j in applied.items():
            np.testing.assert_allclose(logged[j], fitted[i], rtol=1e-6)
        run_tags = mlc.get_run(out.run_id).data.tags
        assert json.loads(run_tags["stable.mapping"]) == json.loads(tags["stable.mapping"])
        assert f"{name} v2" in run_tags["centroids.numbering"]


# -- the README's artifact paths --------------------------------------------------------------


def _readme_section(title: str) -> str:
    text = (REPO / "docs" / "records.md").read_text()  # the README's user guide moved to docs/
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _named_paths(paragraph: str) -> list[str]:
    """The artifact paths a README paragraph names in backticks (folders end with '/')."""
    names = re.findall(r"`([^`\s]+)`", paragraph)
    return [n for n in names if re.fullmatch(r"[\w.-]+/[\w./-]*|[\w-]+\.(csv|npy|png|json)", n)]


def test_readme_artifact_paths_exist_in_a_real_train_and_search(tracking_uri, client):
    section = _readme_section("What a run records")
    train_par = section.split("\n\n")[1]
    search_par = next(p for p in section.split("\n\n") if p.startswith("A search adds"))
    named_train, named_search = _named_paths(train_par), _named_paths(search_par)
    assert "centroids/centroids.npy" in named_train and "search/trials.csv" in named_search  # the parse works
    mlc = MlflowClient(tracking_uri)
    common = ["data.n_samples=600", "metrics.silhouette_sample=300", "tracking.log_plot=true",
              "registry.register_best=false", "search.baseline_sample=0"]
    run = train(load_experiment(BLOBS, common)).run_id
    searched = search(load_experiment(BLOBS, [*common, "search.n_trials=2", "search.sampler=random"]),
                      client=client).parent_run_id
    grid = search(load_experiment(BLOBS, [*common, "search.strategy=grid", "search.cv=2", "search.space.init=null",
                                          "search.space.n_clusters.low=5", "search.space.n_clusters.high=6"]),
                  client=client).parent_run_id

    def exists(run_id: str, path: str) -> bool:
        if path.startswith("system/"):  # a metric, not a file
            return path in mlc.get_run(run_id).data.metrics
        folder = path.rstrip("/").rpartition("/")[0]
        listed = {f.path for f in mlc.list_artifacts(run_id, folder or None)}
        return path.rstrip("/") in listed

    for path in named_train:
        assert exists(run, path), f"README names {path} for a run; the run has no such artifact"
    for path in named_search:
        if "cv_results" in path:  # grid/random only
            assert exists(grid, path), f"README names {path} for a grid search; it has none"
        else:
            assert exists(searched, path), f"README names {path} for a search; its parent run has none"


# -- a resume's progress line -----------------------------------------------------------------


def test_resumed_search_progress_shows_the_study_best(tracking_uri, client, tmp_path, monkeypatch, capsys):
    """The first search finds the six blobs (k fixed at 6); the resume's trials may only try k=2.
    Its progress line must show the study's best (the first search's), not its own trials'."""
    import optuna

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KMEANS_QUIET", "0")
    common = ["data.n_samples=600", "metrics.silhouette_sample=600", "search.sampler=random",
              "tracking.log_plot=false", "registry.register_best=false", "search.baseline_sample=0",
              "search.storage=studies.log", "search.space.init=[k-means++]"]
    six = ["search.space.n_clusters.low=6", "search.space.n_clusters.high=6"]
    first = search(load_experiment(BLOBS, [*common, "search.n_trials=2", *six]), client=client)
    capsys.readouterr()
    two = ["search.space.n_clusters.low=2", "search.space.n_clusters.high=2"]
    again = search(load_experiment(BLOBS, [*common, "search.n_trials=3", "search.resume=true", *two]), client=client)
    out = capsys.readouterr().out
    assert again.resumed
    study = optuna.load_study(study_name=first.study_name,
                              storage=optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(str(tmp_path / "studies.log"))))
    values = [t.value for t in study.trials if t.value is not None]
    own = [r["value"] for r in again.trials if r["value"] is not None]
    assert len(own) == 1 and max(own) < max(values)  # the precondition: the resume's trial is worse
    lines = [ln for ln in out.splitlines() if ln.startswith(f"search {first.study_name}:") and "best=" in ln]
    assert lines, out
    assert f"best={max(values):.4g}" in lines[-1], lines


def test_search_best_model_centroids_follow_the_registered_ids(tracking_uri, client, tmp_path):
    """A search registering into a name with a champion: its parent's ``best_model/`` centroids
    are written again in the registered IDs (after the writer's first write of them)."""
    mlc = MlflowClient(tracking_uri)
    name = "one-record-search"
    train(_train_cfg("sklearn", name, SEEDS[1]), register=True)  # the search fits with seed 0
    cfg = load_experiment(BLOBS, [
        "data.n_samples=2000", "metrics.silhouette_sample=500", "search.n_trials=2", "search.sampler=random",
        "search.space.n_clusters.low=6", "search.space.n_clusters.high=6", "search.space.init=[random]",
        "search.baseline_sample=0", f"registry.native_name={name}", f"registry.sklearn_name={name}-sklearn",
        f"search.storage={tmp_path / 'studies.log'}"])
    out = search(cfg, client=client, register=True)
    assert out.registered.native_version == "2"
    local = Path(mlc.download_artifacts(out.parent_run_id, "best_model", str(tmp_path / "best")))
    logged = np.load(local / "centroids.npy", allow_pickle=False)
    from toolkit.data import load_dataset

    X = load_dataset(cfg.data).X
    by_centroids = _nearest(logged, X)
    for uri in (f"models:/{name}/2", f"models:/{name}-sklearn/2"):
        np.testing.assert_array_equal(predict_labels(flavor.load_model(uri), X), by_centroids)
    applied = json.loads(mlc.get_model_version(name, "2").tags["stable.mapping"])
    assert applied != {str(i): i for i in range(6)}, "pick a search whose best fit numbers the blobs differently"
    assert json.loads(mlc.get_run(out.parent_run_id).data.tags["stable.mapping"]) == applied
    assert "best_model.numbering" in mlc.get_run(out.parent_run_id).data.tags
