"""Model integrity: every logged model has its own storage and recorded checksums; every load
path refuses changed, missing, extra or swapped files before reading any of them.

Everything runs for real against a temporary sqlite MLflow store (one per module).  The stored
files are found the way an attacker with write access to the artifact store would find them:
through the registered version's source and its LoggedModel's ``artifact_location``.  Malicious
pickles would create a marker file; each test asserts the marker was never created.
"""

from __future__ import annotations

import hashlib
import pickle
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from _payloads import Boom as _Boom
from mlflow import MlflowClient
from sklearn.cluster import KMeans

from toolkit.convert import to_numpy, to_sklearn
from toolkit.errors import ModelError
from toolkit.registry import CHAMPION, Registration, flavor, log_and_register, promote
from toolkit.serving import load_predictor
from toolkit.tracking import tracked_run

FEATURES = ["x0", "x1"]


@pytest.fixture(scope="module")
def mlc(store):
    return MlflowClient(tracking_uri=store, registry_uri=store)



class _Untrusted:
    """A type no trusted-type list names."""

    def __init__(self) -> None:
        self.payload = "not a model"


def _fit(X: np.ndarray, k: int = 6, seed: int = 0) -> KMeans:
    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit(X)


def _log(model, X, name: str, run_id: str, **kwargs):
    return log_and_register(model, to_sklearn(model), X[:500], Registration(
        run_id=run_id, backend="sklearn", native_name=name, sklearn_name=f"{name}-sklearn",
        feature_names=FEATURES, **kwargs))


def _register(name: str, X: np.ndarray, k: int = 6, seed: int = 0, **kwargs):
    model = _fit(X, k, seed)
    with tracked_run("integrity", name) as run_id:
        return _log(model, X, name, run_id, **kwargs), model


def _storage(mlc, name: str, version: str = "1") -> Path:
    """The stored files of a registered version: its source -> LoggedModel -> artifact location."""
    mv = mlc.get_model_version(name, version)
    assert mv.source.startswith("models:/m-")
    location = mlc.get_logged_model(mv.source[len("models:/"):]).artifact_location
    return Path(location.removeprefix("file://"))


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _refused(call, *needles: str) -> str:
    with pytest.raises(ModelError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and " -- fix: " in message, message
    for needle in needles:
        assert needle in message, message
    return message


def _every_path_refuses(name: str, uri: str, X: np.ndarray, marker: Path, *needles: str) -> None:
    """load_predictor, flavor.load_model and promote all refuse; nothing was executed."""
    _refused(lambda: load_predictor(uri), *needles)
    _refused(lambda: flavor.load_model(uri), *needles)
    _refused(lambda: promote(name, X), *needles)
    assert not marker.exists()


def _predict_entry_point(monkeypatch, capsys, uri: str, tmp_path: Path) -> tuple[int, str]:
    """``mlflow run . -e predict``'s main, as test_serving runs it (it resolves before any cluster)."""
    from mlproject import predict
    from mlproject._cli import run_main

    out = tmp_path / "out.parquet"
    monkeypatch.setattr(sys, "argv", ["predict", "--model-uri", uri, "--input", str(tmp_path / "none.csv"),
                                      "--output", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        run_main(predict.main)
    assert not out.exists()
    return exit_info.value.code, capsys.readouterr().err


# -- (a) a tampered native model --------------------------------------------------------------


@pytest.mark.parametrize("target", ["kmeans/centers.npy", "kmeans/model.json"])
def test_tampered_native_file_is_refused_everywhere(store, mlc, blobs_small, tmp_path, target):
    X, _ = blobs_small
    name = f"tamper-native-{Path(target).stem}"
    _, model = _register(name, X)
    native = _storage(mlc, name)
    # A clean local copy loads (matched to its LoggedModel by the MLmodel's model_id).
    copy = tmp_path / "copy"
    shutil.copytree(native, copy)
    assert np.array_equal(flavor.load_model(str(copy)).predict(X), model.predict(X))

    if target.endswith(".npy"):  # other centres, same shape and dtype: a model that mislabels
        np.save(native / target, np.roll(model.cluster_centers_, 1, axis=0), allow_pickle=False)
    else:
        text = (native / target).read_text().replace('"max_iter": 300', '"max_iter": 1')
        assert text != (native / target).read_text()
        (native / target).write_text(text)
    _every_path_refuses(name, f"models:/{name}@{CHAMPION}", X, tmp_path / "marker", target, "integrity check")
    run_id = mlc.get_model_version(name, "1").run_id
    _refused(lambda: load_predictor(f"runs:/{run_id}/native_model"), target)
    # A tampered local copy is refused as well.
    shutil.copyfile(native / target, copy / target)
    _refused(lambda: flavor.load_model(str(copy)), target)


def test_opted_in_pickle_loads_verified_and_a_malicious_one_never_runs(
    store, mlc, blobs_small, tmp_path, monkeypatch, capsys
):
    X, _ = blobs_small
    name = "tamper-pickle"
    _, model = _register(name, X, native_serialization="pickle")
    native = _storage(mlc, name)
    assert sorted(p.name for p in (native / "kmeans").iterdir()) == ["model.pkl"]
    assert mlc.get_model_version(name, "1").tags["integrity.format"] == "pickle"
    # The caller's own pickle, signed and checked first, loads once the caller opts in.
    loaded = flavor.load_model(f"models:/{name}/1", allow_pickle=True)
    assert np.array_equal(loaded.predict(X), model.predict(X))

    marker = tmp_path / "pwned"
    (native / "kmeans" / "model.pkl").write_bytes(pickle.dumps(_Boom(marker)))
    uri = f"models:/{name}@{CHAMPION}"
    _every_path_refuses(name, uri, X, marker, "kmeans/model.pkl", "integrity check")
    code, err = _predict_entry_point(monkeypatch, capsys, uri, tmp_path)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "kmeans/model.pkl" in lines[0], err
    # MLflow's pyfunc face of the native flavor goes through the same check.
    with pytest.raises(ModelError, match=r"kmeans/model\.pkl"):
        mlflow.pyfunc.load_model(f"models:/{name}/1")
    assert not marker.exists()


# -- (b) a tampered scikit-learn twin ---------------------------------------------------------


@pytest.mark.parametrize("replacement", ["other-model", "untrusted-type"])
def test_tampered_skops_twin_is_refused_everywhere(store, mlc, blobs_small, tmp_path, replacement):
    import skops.io

    X, _ = blobs_small
    name = f"tamper-twin-{replacement}"
    _register(name, X)
    twin = _storage(mlc, f"{name}-sklearn")
    obj = _fit(X, 6, seed=5) if replacement == "other-model" else _Untrusted()
    skops.io.dump(obj, twin / "model.skops")
    _every_path_refuses(name, f"models:/{name}-sklearn@{CHAMPION}", X, tmp_path / "marker", "model.skops")


def test_twin_reader_trusts_only_the_projects_types(tmp_path, blobs_small):
    """Behind the checksums, the skops reader itself refuses untrusted types."""
    import skops.io

    skops.io.dump(_Untrusted(), tmp_path / "model.skops")
    _refused(lambda: flavor._read_twin(str(tmp_path)), "untrusted types")
    X, _ = blobs_small
    skops.io.dump(_fit(X), tmp_path / "model.skops")
    assert isinstance(flavor._read_twin(str(tmp_path)), KMeans)


# -- (c) an edited MLmodel --------------------------------------------------------------------


def test_twin_mlmodel_claiming_pickle_is_refused(store, mlc, blobs_small, tmp_path):
    X, _ = blobs_small
    name = "edit-twin-mlmodel"
    _register(name, X)
    twin = _storage(mlc, f"{name}-sklearn")
    marker = tmp_path / "pwned"
    conf = yaml.safe_load((twin / "MLmodel").read_text())
    conf["flavors"]["sklearn"].update(serialization_format="pickle", pickled_model="model.pkl")
    conf["flavors"]["python_function"]["model_path"] = "model.pkl"
    (twin / "MLmodel").write_text(yaml.safe_dump(conf))
    (twin / "model.pkl").write_bytes(pickle.dumps(_Boom(marker)))
    _every_path_refuses(name, f"models:/{name}-sklearn/1", X, marker, "MLmodel")


def test_native_mlmodel_with_changed_flavor_conf_is_refused(store, mlc, blobs_small, tmp_path):
    X, _ = blobs_small
    name = "edit-native-mlmodel"
    _register(name, X)
    native = _storage(mlc, name)
    conf = yaml.safe_load((native / "MLmodel").read_text())
    conf["flavors"][flavor.FLAVOR_NAME].update(serialization="pickle", device="cpu", backend="dask")
    (native / "MLmodel").write_text(yaml.safe_dump(conf))
    _every_path_refuses(name, f"models:/{name}/1", X, tmp_path / "marker", "MLmodel")


def test_extra_and_missing_files_are_refused(store, mlc, blobs_small, tmp_path):
    X, _ = blobs_small
    name = "extra-missing"
    _register(name, X)
    native = _storage(mlc, name)
    marker = tmp_path / "pwned"
    (native / "kmeans" / "model.pkl").write_bytes(pickle.dumps(_Boom(marker)))
    _every_path_refuses(name, f"models:/{name}/1", X, marker, "unexpected file kmeans/model.pkl")
    (native / "kmeans" / "model.pkl").unlink()
    (native / "requirements.txt").unlink()
    _every_path_refuses(name, f"models:/{name}/1", X, marker, "requirements.txt is missing")


def test_edited_registry_record_is_refused(store, mlc, blobs_small, tmp_path):
    """The version's copy of the manifest must agree with its LoggedModel's."""
    X, _ = blobs_small
    name = "edit-record"
    _register(name, X)
    mlc.set_model_version_tag(name, "1", "integrity.sha256", '{"MLmodel": "' + "0" * 64 + '"}')
    _every_path_refuses(name, f"models:/{name}/1", X, tmp_path / "marker", "integrity.sha256")


# -- (d) a file of another registered version swapped in --------------------------------------


@pytest.mark.parametrize("which, target", [("native", "kmeans/centers.npy"), ("twin", "model.skops")])
def test_file_swapped_from_another_version_is_refused(store, mlc, blobs_small, tmp_path, which, target):
    X, _ = blobs_small
    name = f"swap-{which}"
    _register(name, X, seed=0)
    # Same k, other centres: a plausible-looking swap.  IDs as fitted: matched to v1's (stable
    # labels) the same blobs would give v1's very bytes, and there would be nothing to swap.
    _register(name, X, seed=3, stable_labels=False)
    reg_name = name if which == "native" else f"{name}-sklearn"
    v1, v2 = _storage(mlc, reg_name, "1"), _storage(mlc, reg_name, "2")
    assert v1 != v2 and (v1 / target).read_bytes() != (v2 / target).read_bytes()
    shutil.copyfile(v2 / target, v1 / target)
    # v2 (the challenger) is intact; promote refuses when it reaches v1 (the champion).
    assert flavor.load_model(f"models:/{reg_name}/2") is not None
    _every_path_refuses(name, f"models:/{reg_name}/1", X, tmp_path / "marker", target)


# -- (e) immutability -------------------------------------------------------------------------


def test_registering_again_on_the_same_run_changes_no_registered_file(store, mlc, blobs_small):
    X, y = blobs_small
    name = "immutable"
    with tracked_run("integrity", name) as run_id:
        first = _log(_fit(X, 3), X, name, run_id)
        stores = {(n, "1"): _storage(mlc, n, "1") for n in (name, f"{name}-sklearn")}
        before = {key: _hashes(folder) for key, folder in stores.items()}
        second = _log(_fit(X, 6), X, name, run_id)  # as a resumed search reuses its parent run
    assert (first.native_version, second.native_version) == ("1", "2")
    for n in (name, f"{name}-sklearn"):
        stores[(n, "2")] = _storage(mlc, n, "2")
    before.update({key: _hashes(stores[key]) for key in stores if key[1] == "2"})
    assert len({str(p) for p in stores.values()}) == 4  # four LoggedModels, four folders
    assert len({first.native_model_id, first.sklearn_model_id, second.native_model_id,
                second.sklearn_model_id}) == 4

    res = promote(name, X, y)
    assert res.promoted and res.challenger_version == "2"
    for uri in (f"models:/{name}/1", f"models:/{name}-sklearn/1", f"models:/{name}@{CHAMPION}",
                f"runs:/{run_id}/native_model", f"runs:/{run_id}/sklearn_model"):
        load_predictor(uri).predict(X[:10])
        flavor.load_model(uri)
    after = {key: _hashes(folder) for key, folder in stores.items()}
    assert after == before
    for hashes in after.values():
        assert hashes and "registered_model_meta" not in hashes
    # runs:/ names the run's newest model of that name.
    assert load_predictor(f"runs:/{run_id}/native_model").source.model_id == second.native_model_id


# -- models from older versions ----------------------------------------------------------------


def test_model_registered_from_run_artifacts_by_an_older_version_is_refused(store, mlc, blobs_small, tmp_path):
    """The old layout (a cloudpickle under the run's artifacts) is never unpickled."""
    import cloudpickle

    X, _ = blobs_small
    name = "old-layout"
    marker = tmp_path / "pwned"
    old = tmp_path / "native_model"
    flavor.save_model(_fit(X), str(old), backend="sklearn")
    shutil.rmtree(old / "kmeans")
    (old / "model.pkl").write_bytes(cloudpickle.dumps(_Boom(marker)))
    with tracked_run("integrity", name) as run_id:
        mlc.log_artifacts(run_id, str(old), "native_model")
    mlc.create_registered_model(name)
    artifact_uri = mlc.get_run(run_id).info.artifact_uri
    mlc.create_model_version(name, f"{artifact_uri}/native_model", run_id, tags={"kind": "native"})
    mlc.set_registered_model_alias(name, CHAMPION, "1")
    mlc.set_registered_model_alias(name, "challenger", "1")
    _every_path_refuses(name, f"models:/{name}@{CHAMPION}", X, marker, "older kmeans-lifecycle", "re-register")
    _refused(lambda: load_predictor(f"runs:/{run_id}/native_model"), "older kmeans-lifecycle", "re-register")
    assert not marker.exists()


# -- the native flavor rebuilds every backend's model exactly ----------------------------------


@pytest.mark.parametrize("kind", ["sklearn", "dask", "dask-ml"])
def test_native_model_rebuilt_from_files_predicts_the_fitted_labels(store, mlc, blobs_small, kind, request):
    X, _ = blobs_small
    X = X + np.float32(40.0)  # far from 0: DaskKMeans centres rows on its mean (stored origin)
    if kind == "sklearn":
        fitted = _fit(X)
    elif kind == "dask":
        from toolkit.backends.dask_lloyd import DaskKMeans

        fitted = DaskKMeans(n_clusters=6, init="k-means++", random_state=0).fit(X)
        assert np.any(fitted._origin != 0)
    else:
        import dask.array as da
        from dask_ml.cluster import KMeans as DaskMLKMeans

        client = request.getfixturevalue("client")
        fitted = DaskMLKMeans(n_clusters=6, init="random", random_state=0).fit(
            client.persist(da.from_array(X, chunks=(500, 2)))
        )
        fitted.labels_ = None  # as Backend.native_model leaves it: lazy labels are not stored
    name = f"rebuild-{kind}"
    with tracked_run("integrity", name) as run_id:
        _log(fitted, X, name, run_id)
    loaded = flavor.load_model(f"models:/{name}/1")
    assert type(loaded) is type(fitted)
    assert np.array_equal(to_numpy(loaded.predict(X)), to_numpy(fitted.predict(X)))
    np.testing.assert_array_equal(to_numpy(loaded.cluster_centers_), to_numpy(fitted.cluster_centers_))
    files = sorted(str(p.relative_to(_storage(mlc, name))) for p in (_storage(mlc, name) / "kmeans").iterdir())
    assert not any(f.endswith(".pkl") for f in files)
