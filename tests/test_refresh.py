"""Refresh from the champion: a fit on new data started from the champion's centres.

Everything is real: blobs with known centres are trained and registered into the module's sqlite
store, then the same blobs moved by a known amount per cluster are refreshed from the champion
(scikit-learn in-process, ``dask`` on the session's LocalCluster).  The refresh must keep every
cluster ID, measure each centre's shift close to the true one, register a challenger and leave
the champion as it was.  Array initialisation is checked on every CPU backend.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from _mlflow_run import mlflow_run, run_env
from mlflow import MlflowClient
from sklearn.datasets import make_blobs

from toolkit.backends import get_backend
from toolkit.config import ModelConfig, load_experiment
from toolkit.errors import ConfigError, ModelError
from toolkit.refresh import center_shifts, refresh
from toolkit.registry import CHALLENGER, CHAMPION, flavor, integrity
from toolkit.train import train

#: Five well separated centres, and how far each one moves in the new data (cluster 3 stays).
CENTERS = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0], [4.0, 14.0]])
SHIFT = np.array([[0.4, 0.0], [0.0, -0.3], [0.15, 0.15], [0.0, 0.0], [-0.5, 0.5]])
TRUE_SHIFT = np.linalg.norm(SHIFT, axis=1)


def _blobs(centers: np.ndarray, seed: int, n: int = 5_000) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=n, centers=centers, cluster_std=0.4, random_state=seed)
    return X.astype(np.float32), y


def _write(path, X: np.ndarray) -> str:
    pd.DataFrame(X, columns=["x0", "x1"]).to_parquet(path)
    return str(path)


def _cfg(path: str, name: str, backend: str = "sklearn", seed: int = 0):
    return load_experiment(None, [
        "data.source=file", f"data.path={path}", f"backend={backend}", "model.n_clusters=5",
        f"model.random_state={seed}", f"registry.native_name={name}", f"registry.sklearn_name={name}-sklearn",
        "tracking.log_plot=false", "tracking.experiment=refresh", "data.chunk_rows=2000",
    ])


@pytest.fixture(scope="module")
def mlc(store):
    return MlflowClient(tracking_uri=store, registry_uri=store)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Training blobs, and new blobs with every centre moved by SHIFT (rows shuffled)."""
    folder = tmp_path_factory.mktemp("refresh")
    old, _ = _blobs(CENTERS, 0)
    new, y_new = _blobs(CENTERS + SHIFT, 1)
    return _write(folder / "old.parquet", old), _write(folder / "new.parquet", new), new, y_new


def _hashes(mlc: MlflowClient, model_id: str, dst) -> dict[str, str]:
    lm = mlc.get_logged_model(model_id)
    return integrity.manifest_of(mlflow.artifacts.download_artifacts(artifact_uri=lm.artifact_location,
                                                                     dst_path=str(dst)))


@pytest.mark.parametrize("backend", ["sklearn", "dask"])
def test_refresh_keeps_ids_measures_shift_and_registers_a_challenger(store, mlc, files, client, backend,
                                                                     tmp_path):
    old_path, new_path, X_new, y_new = files
    name = f"refresh-{backend}"
    first = train(_cfg(old_path, name, backend), client=client if backend == "dask" else None, register=True)
    v1 = first.registered
    before = _hashes(mlc, v1.native_model_id, tmp_path / "before")
    champion = flavor.load_model(f"models:/{name}@{CHAMPION}")
    old_ids = champion.predict(CENTERS.astype(np.float32))  # the champion's ID of each true blob

    # The config's own k and seed do not matter: k comes from the champion, the start from its centres.
    out = refresh(_cfg(new_path, name, backend, seed=5), name, client=client if backend == "dask" else None)

    reg = out.registered
    assert (reg.native_name, reg.native_version, reg.sklearn_version) == (name, "2", "2")
    assert out.champion_version == "1" and out.model_name == name
    # Every ID kept: each moved blob is labelled with the ID its old self had under the champion.
    challenger = flavor.load_model(f"models:/{name}@{CHALLENGER}")
    assert np.array_equal(challenger.predict((CENTERS + SHIFT).astype(np.float32)), old_ids)
    new_labels = challenger.predict(X_new.astype(np.float32))
    assert np.array_equal(new_labels, old_ids[y_new])
    tags = mlc.get_model_version(name, "2").tags
    assert tags["stable.status"] == "matched to champion"
    assert json.loads(tags["stable.mapping"]) == {str(i): i for i in range(5)}
    assert tags["refresh.from_champion_version"] == "1"

    # The shift measured per champion ID is the true one, to sampling noise (std 0.4, 1,000 rows).
    np.testing.assert_allclose(out.shifts, TRUE_SHIFT[np.argsort(old_ids)], atol=0.05)
    assert out.shift_max == pytest.approx(TRUE_SHIFT.max(), abs=0.05)
    assert out.shift_mean == pytest.approx(TRUE_SHIFT.mean(), abs=0.03)
    run = mlc.get_run(out.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["refresh.champion_version"] == "1"
    assert run.data.metrics["refresh.center_shift_max"] == pytest.approx(out.shift_max)
    assert run.data.metrics["refresh.center_shift_mean"] == pytest.approx(out.shift_mean)
    assert run.data.metrics["n_iter"] <= 10  # started next to the answer
    assert sorted(k for k in run.data.metrics if k.startswith("refresh.center_shift.cluster_")) == [
        f"refresh.center_shift.cluster_{i}" for i in range(5)]

    # The champion is untouched: alias, tags and files.
    for n in (name, f"{name}-sklearn"):
        aliases = mlc.get_registered_model(n).aliases
        assert (str(aliases[CHAMPION]), str(aliases[CHALLENGER])) == ("1", "2")
    assert "promotion.replaced_by" not in mlc.get_model_version(name, "1").tags
    assert _hashes(mlc, v1.native_model_id, tmp_path / "after") == before
    flavor.load_model(f"models:/{name}/1")  # still passes its integrity check


def test_center_shifts_follow_the_registry_matching():
    old = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    new = np.array([[0.0, 10.5], [0.2, 0.0], [10.0, -0.1]])  # permuted and moved
    np.testing.assert_allclose(center_shifts(new, old), [0.2, 0.1, 0.5])


def test_refresh_without_champion_or_with_other_features_is_refused(store, files, tmp_path):
    old_path, _, _, _ = files
    with pytest.raises(ModelError, match="no champion"):
        refresh(_cfg(old_path, "refresh-none"), "refresh-none")
    name = "refresh-features"
    train(_cfg(old_path, name), register=True)
    wide = str(tmp_path / "wide.parquet")
    pd.DataFrame(np.zeros((50, 3), np.float32), columns=["x0", "x1", "x2"]).to_parquet(wide)
    wide_cfg = load_experiment(None, ["data.source=file", f"data.path={wide}", "tracking.log_plot=false",
                                      "tracking.experiment=refresh"])
    with pytest.raises(ConfigError, match="3 feature"):
        refresh(wide_cfg, name)
    # The champion's columns in another order: its centres would start the fit transposed.
    swapped = str(tmp_path / "swapped.parquet")
    pd.read_parquet(old_path)[["x1", "x0"]].to_parquet(swapped)
    sets = ["data.source=file", f"data.path={swapped}", "tracking.log_plot=false", "tracking.experiment=refresh"]
    with pytest.raises(ConfigError, match=r"the data's columns \(x1, x0\) are not those champion v1 of "
                                          r"'refresh-features' was trained on \(x0, x1\) -- fix: .*data\.columns"):
        refresh(load_experiment(None, sets), name)
    out = refresh(load_experiment(None, [*sets, "data.columns=[x0,x1]"]), name)  # the fix it names
    assert out.shift_max < 0.01  # the same rows, in the champion's order: nothing moved


@pytest.mark.parametrize("backend", ["sklearn", "dask", "dask-ml"])
def test_every_cpu_backend_starts_from_given_centres(client, backend):
    import dask.array as da

    X, _ = _blobs(CENTERS, 2, n=3_000)
    start = CENTERS + SHIFT
    cls = get_backend(backend)
    b = cls(client=client if cls.parallelism == "data" else None)
    data = X if backend == "sklearn" else da.from_array(X, chunks=(1_000, 2))
    params = ModelConfig(n_clusters=5, n_init=3, random_state=9, max_iter=1)
    res = b.fit(data, params, init_centers=start)
    # One Lloyd step from `start`: the centres are the means of the rows nearest each start.
    nearest = np.argmin(((X[:, None, :] - start[None]) ** 2).sum(-1), axis=1)
    expected = np.array([X[nearest == j].mean(axis=0) for j in range(5)])
    np.testing.assert_allclose(res.centers, expected, atol=1e-3)
    with pytest.raises(ConfigError, match="shape"):
        b.fit(data, params, init_centers=start[:4])
    with pytest.raises(ConfigError, match="NaN"):
        b.fit(data, params, init_centers=np.full((5, 2), np.nan))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuml", "cuml-dask"])
def test_gpu_backends_start_from_given_centres(request, backend):
    """cuML's ``init=ndarray``, single- and multi-GPU: the fit converges where scikit-learn does
    from the same centres, cluster for cluster (the order of ``init`` is kept)."""
    from sklearn.cluster import KMeans

    from toolkit.backends import make_backend
    from toolkit.data import Dataset

    X, _ = _blobs(CENTERS, 2, n=3_000)
    start = CENTERS + SHIFT
    client = request.getfixturevalue("gpu_client") if backend == "cuml-dask" else None
    b = make_backend(backend, client)
    data = b.prepare(Dataset(name="blobs", X=X, y=None, feature_names=["x0", "x1"], source="test"))
    res = b.fit(data, ModelConfig(n_clusters=5, n_init=3), init_centers=start)
    ref = KMeans(n_clusters=5, init=start, n_init=1).fit(X.astype(np.float64))
    np.testing.assert_allclose(res.centers, ref.cluster_centers_, atol=1e-3)
    assert "init_fitted" not in res.extra


@pytest.mark.slow
def test_mlflow_run_refresh_entry_point(store, mlc, files, tmp_path):
    old_path, new_path, _, _ = files
    name = "refresh-entry"
    train(_cfg(old_path, name), register=True)
    overrides = f"data.source=file data.path={new_path} tracking.log_plot=false tracking.experiment=refresh"
    proc = mlflow_run("refresh", {"model_name": name, "overrides": overrides}, env=run_env(store, store))
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = [line for line in proc.stdout.splitlines() if line.strip()][-1]  # mlflow's own lines go to stderr
    assert "refresh finished" in last and "centre shift max" in last, proc.stdout[-2000:]
    assert str(mlc.get_registered_model(name).aliases[CHAMPION]) == "1"
    assert str(mlc.get_registered_model(name).aliases[CHALLENGER]) == "2"
