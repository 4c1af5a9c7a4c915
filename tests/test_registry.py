"""Registry: the native model and its scikit-learn twin, linked by tags, promoted by alias.

Everything runs for real against a temporary sqlite MLflow store (one per module, copied from
a migrated template): a small search registers the best model, ``train(register=True)``
registers more, ``promote`` moves ``champion`` only when the metric says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from _mlflow_run import mlflow_run, run_env
from mlflow import MlflowClient
from mlflow.models import Model

from toolkit.config import load_experiment
from toolkit.data import load_dataset
from toolkit.errors import DataError, ModelError
from toolkit.registry import CHALLENGER, CHAMPION, Registration, flavor, log_and_register, promote
from toolkit.train import train

REPO = Path(__file__).resolve().parents[1]
BLOBS = REPO / "experiments" / "blobs.yaml"
SMALL = ["data.n_samples=2000", "tracking.log_plot=false"]


@pytest.fixture(scope="module")
def mlc(store):
    return MlflowClient(tracking_uri=store, registry_uri=store)


@pytest.fixture(scope="module")
def blobs():
    """The evaluation data of every promotion here: blobs.yaml at 2,000 rows (6 blobs)."""
    ds = load_dataset(load_experiment(BLOBS, SMALL).data)
    return ds.X, ds.y


def _train_register(name: str, k: int, backend: str = "sklearn", client=None, extra=()):
    cfg = load_experiment(
        BLOBS,
        [
            *SMALL,
            f"backend={backend}",
            f"model.n_clusters={k}",
            f"registry.native_name={name}",
            f"registry.sklearn_name={name}-sklearn",
            f"tracking.experiment=registry-{name}",
            *extra,
        ],
    )
    return train(cfg, client=client, register=True)


def _aliases(mlc, name: str) -> dict[str, str]:
    return {a: str(v) for a, v in mlc.get_registered_model(name).aliases.items()}


# -- a search registers the best model ------------------------------------------------------


@pytest.fixture(scope="module")
def searched(store, client, tmp_path_factory):
    """A 3-trial search on blobs.yaml with the registration mlproject/search.py hooks in."""
    from toolkit.search import search

    optuna_db = tmp_path_factory.mktemp("optuna") / "optuna.db"
    cfg = load_experiment(
        BLOBS,
        [
            *SMALL,
            "search.n_trials=3",
            f"search.storage=sqlite:///{optuna_db}",
            "tracking.experiment=registry-search",
        ],
    )
    outcome = search(cfg, client=client, register=True)  # as mlproject/search.py asks
    assert outcome.registered is not None
    return cfg, outcome, outcome.registered


def test_search_registers_native_and_twin_linked(searched, mlc):
    cfg, outcome, reg = searched
    assert (reg.native_name, reg.sklearn_name) == ("blobs-kmeans", "blobs-kmeans-sklearn")
    assert (reg.native_version, reg.sklearn_version) == ("1", "1")
    assert reg.agreement == 1.0
    native = mlc.get_model_version(cfg.native_model_name, "1")
    twin = mlc.get_model_version(cfg.sklearn_model_name, "1")
    for mv in (native, twin):
        assert mv.run_id == outcome.parent_run_id
        assert mv.tags["source_run_id"] == outcome.parent_run_id
        assert mv.tags["search_parent_run_id"] == outcome.parent_run_id
        assert mv.tags["equivalence.agreement"] == "1.000000"
        assert mv.tags["backend"] == "sklearn"
    # The two versions point at each other.
    assert (native.tags["twin.name"], native.tags["twin.version"]) == (cfg.sklearn_model_name, "1")
    assert (twin.tags["twin.name"], twin.tags["twin.version"]) == (cfg.native_model_name, "1")
    assert native.tags["kind"] == "native" and twin.tags["kind"] == "sklearn_twin"
    # First registration: challenger and champion at once, on both names.
    for name in (cfg.native_model_name, cfg.sklearn_model_name):
        assert _aliases(mlc, name) == {CHAMPION: "1", CHALLENGER: "1"}
    run = mlc.get_run(outcome.parent_run_id)
    assert run.data.tags["registry.native"] == "blobs-kmeans/1"
    assert run.data.tags["registry.sklearn"] == "blobs-kmeans-sklearn/1"
    assert run.data.metrics["twin_agreement"] == 1.0


def test_search_logs_each_model_as_a_logged_model_of_the_run(searched, mlc):
    """Both models are MLflow 3 LoggedModels: own storage, linked to the run, in the Models tab."""
    cfg, outcome, reg = searched
    run = mlc.get_run(outcome.parent_run_id)
    found = {
        m.model_id: m
        for m in mlc.search_logged_models(experiment_ids=[run.info.experiment_id])
        if m.source_run_id == outcome.parent_run_id
    }
    assert set(found) == {reg.native_model_id, reg.sklearn_model_id}
    assert {o.model_id for o in run.outputs.model_outputs} == set(found)  # the run's "Logged models"
    native, twin = found[reg.native_model_id], found[reg.sklearn_model_id]
    assert (native.name, twin.name) == ("native_model", "sklearn_model")
    assert (native.model_type, twin.model_type) == ("kmeans_native", "sklearn_twin")
    assert native.artifact_location != twin.artifact_location
    for lm, name in ((native, cfg.native_model_name), (twin, cfg.sklearn_model_name)):
        assert str(lm.status).endswith("READY")
        assert {m.key: m.value for m in lm.metrics}["twin_agreement"] == 1.0
        assert lm.params["n_clusters"] == str(outcome.best_params["n_clusters"])
        manifest = json.loads(lm.tags["integrity.sha256"])
        assert "MLmodel" in manifest and all(len(h) == 64 for h in manifest.values())
        mv = mlc.get_model_version(name, "1")
        assert mv.source == f"models:/{lm.model_id}"
        assert mv.tags["integrity.model_id"] == lm.model_id
        for key in ("integrity.sha256", "integrity.format", "integrity.model_class", "integrity.centers_shape"):
            assert mv.tags[key] == lm.tags[key]
    assert native.tags["integrity.format"] == "kmeans-npy" and twin.tags["integrity.format"] == "skops"
    assert sorted(json.loads(native.tags["integrity.sha256"])) == [
        "MLmodel", "input_example.json", "kmeans/centers.npy", "kmeans/model.json", "model.sig",
        "monitoring/profile.json", "reference/sample.npy",
        "requirements.txt", "serving_input_example.json",
    ]
    assert "model.skops" in json.loads(twin.tags["integrity.sha256"])
    assert reg.native_uri == f"models:/{native.model_id}" and reg.sklearn_uri == f"models:/{twin.model_id}"


def _logged_model_files(mlc, model_id: str, dst) -> str:
    """A copy of a LoggedModel's files (its storage is never touched)."""
    return mlflow.artifacts.download_artifacts(
        artifact_uri=mlc.get_logged_model(model_id).artifact_location, dst_path=str(dst)
    )


def test_search_twin_is_skops_with_signature_and_example(searched, mlc, tmp_path, blobs):
    import mlflow.sklearn
    import pandas as pd

    cfg, outcome, reg = searched
    local = _logged_model_files(mlc, reg.sklearn_model_id, tmp_path)
    mlmodel = Model.load(os.path.join(local, "MLmodel"))
    assert mlmodel.flavors["sklearn"]["serialization_format"] == "skops"
    assert mlmodel.model_id == reg.sklearn_model_id
    # Labels out, no MLflow input schema (it would drop extra columns before the pyfunc face
    # refuses them); the columns are the twin's own feature_names_in_ and the example's.
    assert mlmodel.signature is not None and mlmodel.signature.inputs is None
    assert mlmodel.signature.outputs.inputs[0].type == np.dtype(np.int32)
    assert mlmodel.flavors["python_function"]["loader_module"] == "toolkit.registry.flavor"
    example = mlmodel.load_input_example(local)
    assert (
        isinstance(example, pd.DataFrame) and list(example.columns) == ["x0", "x1"] and len(example)
    )

    twin = flavor.load_model(f"models:/{cfg.sklearn_model_name}@{CHAMPION}")  # checked, skops
    # Still a plain mlflow.sklearn model for MLflow's own tools.
    plain = mlflow.sklearn.load_model(f"models:/{cfg.sklearn_model_name}@{CHAMPION}")
    native = flavor.load_model(f"models:/{cfg.native_model_name}@{CHAMPION}")
    X, _ = blobs
    assert list(twin.feature_names_in_) == list(plain.feature_names_in_) == ["x0", "x1"]
    frame = pd.DataFrame(X, columns=["x0", "x1"])
    assert np.array_equal(plain.predict(frame), twin.predict(frame))
    # A Pipeline: the cast step (rows in the centres' float width), then the KMeans.
    assert twin[-1].n_clusters == native.n_clusters == outcome.best_params["n_clusters"]
    assert np.array_equal(twin.predict(frame), native.predict(X))
    ex = example.to_numpy(np.float32)
    assert np.array_equal(twin.predict(example.astype(np.float32)), native.predict(ex))  # JSON: float64
    # A registered model is its centres: not the labels of the rows it was trained on.
    assert not hasattr(twin, "labels_") and not hasattr(plain, "labels_")


def test_search_native_model_flavor(searched, mlc, tmp_path, blobs):
    cfg, _, reg = searched
    local = _logged_model_files(mlc, reg.native_model_id, tmp_path)
    conf = flavor.flavor_conf(local)
    assert conf["backend"] == "sklearn" and conf["device"] == "cpu"
    assert conf["model_class"] == "sklearn.cluster._kmeans.KMeans"
    assert conf["versions"]["scikit-learn"]
    # No executable content: centres as .npy, the rest as JSON.
    assert conf["serialization"] == "kmeans-npy" and conf["data"] == "kmeans"
    assert sorted(os.listdir(os.path.join(local, "kmeans"))) == ["centers.npy", "model.json"]
    state = json.loads(Path(local, "kmeans", "model.json").read_text())
    assert state["model_class"] == conf["model_class"] and state["params"]["n_clusters"] == conf["n_clusters"]
    assert conf["feature_names"] == ["x0", "x1"]  # what the pyfunc face checks requests against
    mlmodel = Model.load(os.path.join(local, "MLmodel"))
    assert mlmodel.signature is not None and mlmodel.saved_input_example_info is not None
    # The flavor's pyfunc face predicts the same labels (it checks the columns by name).
    import pandas as pd

    X, _ = blobs
    pyfunc = mlflow.pyfunc.load_model(f"models:/{cfg.native_model_name}/1")
    labels = pyfunc.predict(pd.DataFrame(X, columns=["x0", "x1"]))
    assert np.array_equal(np.asarray(labels), flavor.load_model(local).predict(X))


# -- data-parallel backends: the native model is the Dask one ---------------------------------


@pytest.mark.parametrize(
    "backend, model_class",
    [
        ("dask-ml", "dask_ml.cluster.k_means.KMeans"),
        ("dask", "toolkit.kmeans_dask.estimator.DaskKMeans"),
    ],
)
def test_dask_backends_register_native_and_equal_twin(
    store, mlc, client, blobs, backend, model_class
):
    import mlflow.sklearn

    from toolkit.convert import to_numpy

    name = f"reg-{backend}"
    out = _train_register(name, 6, backend=backend, client=client, extra=["data.chunk_rows=500"])
    native_mv = mlc.get_model_version(name, "1")
    assert native_mv.tags["backend"] == backend and native_mv.tags["device"] == "cpu"
    assert native_mv.tags["source_run_id"] == out.run_id
    assert "search_parent_run_id" not in native_mv.tags
    assert (native_mv.tags["twin.name"], native_mv.tags["twin.version"]) == (f"{name}-sklearn", "1")
    assert mlc.get_model_version(f"{name}-sklearn", "1").tags["twin.version"] == "1"

    local = mlflow.artifacts.download_artifacts(f"models:/{name}/1")
    assert flavor.flavor_conf(local)["model_class"] == model_class
    native = flavor.load_model(f"models:/{name}@{CHAMPION}")
    assert flavor.FLAVOR_NAME == "kmeans_native"
    assert f"{type(native).__module__}.{type(native).__qualname__}" == model_class
    twin = mlflow.sklearn.load_model(f"models:/{name}-sklearn@{CHAMPION}")
    X, _ = blobs
    native_labels = to_numpy(native.predict(X)).ravel()
    # Rebuilt from centres and JSON, the native model predicts exactly the fitted one's labels.
    assert np.array_equal(native_labels, to_numpy(out.result.model.predict(X)).ravel())
    # The twin's cast step gives rows its centres' float width (float64 for the dask twin): any works.
    import pandas as pd

    for dtype in (np.float32, np.float64):
        assert np.array_equal(native_labels, twin.predict(pd.DataFrame(X.astype(dtype), columns=["x0", "x1"])))
    # ...so its pyfunc face (what `mlflow models serve` runs) casts requests to that width.
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}-sklearn/1")
    assert np.array_equal(pyfunc.predict(pd.DataFrame(X, columns=["x0", "x1"])), native_labels)
    # ...and the serving predictor takes float32 rows for either.
    from toolkit.serving import load_predictor

    assert np.array_equal(
        load_predictor(f"models:/{name}-sklearn@{CHAMPION}").predict(X), native_labels
    )
    assert (
        _aliases(mlc, name) == _aliases(mlc, f"{name}-sklearn") == {CHAMPION: "1", CHALLENGER: "1"}
    )


# -- a twin that disagrees is not registered --------------------------------------------------


def test_disagreeing_twin_is_not_registered(store, mlc, blobs):
    import copy

    from sklearn.cluster import KMeans

    from toolkit.tracking import tracked_run

    X, _ = blobs
    native = KMeans(n_clusters=6, n_init=1, random_state=0).fit(X)
    twin = copy.deepcopy(native)
    twin.cluster_centers_ = np.roll(native.cluster_centers_, 1, axis=0)  # same centers, other ids
    with tracked_run("registry-mismatch", "mismatch") as run_id, \
            pytest.raises(ModelError, match="twin agrees with the native model on only") as err:
            log_and_register(native, twin, X[:500], Registration(
                run_id=run_id, backend="sklearn", native_name="mismatch", sklearn_name="mismatch-sklearn",
                feature_names=["x0", "x1"]))
    assert "\n" not in str(err.value)
    mv = mlc.get_model_version("mismatch", "1")
    assert "twin.rejected" in mv.tags and "not registered" in mv.tags["twin.rejected"]
    assert mv.tags["equivalence.agreement"] == "0.000000"
    assert mlc.search_model_versions("name='mismatch-sklearn'") == []
    run = mlc.get_run(run_id)
    assert run.data.tags["twin.equivalent"] == "False"
    assert run.data.tags["registry.sklearn"] == "not registered"
    # The native model was logged (as a LoggedModel of the run), the twin was not.
    logged = mlc.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [m.name for m in logged if m.source_run_id == run_id] == ["native_model"]
    assert mv.source == f"models:/{mv.tags['integrity.model_id']}"
    assert mlc.list_artifacts(run_id) == []  # nothing of the models among the run's artifacts


# -- aliases and promotion ------------------------------------------------------------------


def test_challenger_then_promote_rejects_worse_and_force_promotes(store, mlc, blobs):
    name = "promo-good-first"
    X, y = blobs
    _train_register(name, 6)
    assert _aliases(mlc, name) == {CHAMPION: "1", CHALLENGER: "1"}
    _train_register(name, 3)
    # The new registration is the challenger; the first stays champion.
    for n in (name, f"{name}-sklearn"):
        assert _aliases(mlc, n) == {CHAMPION: "1", CHALLENGER: "2"}

    res = promote(name, X, y, metric="silhouette")
    assert not res.promoted
    assert (res.challenger_version, res.champion_version) == ("2", "1")
    assert res.challenger_score < res.champion_score
    for n in (name, f"{name}-sklearn"):
        assert _aliases(mlc, n)[CHAMPION] == "1"
    tags = mlc.get_model_version(name, "2").tags
    assert tags["promotion.outcome"] == "rejected"
    assert tags["promotion.metric"] == "silhouette"
    assert tags["promotion.champion_version"] == "1"
    assert "does not beat" in tags["promotion.reason"]
    assert "promotion.replaced_by" not in mlc.get_model_version(name, "1").tags

    forced = promote(name, X, y, metric="silhouette", force=True)
    assert forced.promoted and forced.reason.endswith("; forced")
    for n in (name, f"{name}-sklearn"):
        assert _aliases(mlc, n) == {CHAMPION: "2", CHALLENGER: "2"}
        assert mlc.get_model_version(n, "2").tags["promotion.outcome"] == "promoted"
        assert mlc.get_model_version(n, "2").tags["promotion.replaced_version"] == "1"
        assert mlc.get_model_version(n, "1").tags["promotion.replaced_by"] == "2"

    again = promote(name, X, y)
    assert not again.promoted and again.reason == "challenger already is the champion"


def test_promote_moves_champion_when_challenger_wins(store, mlc, blobs):
    name = "promo-bad-first"
    X, y = blobs
    _train_register(name, 3)
    _train_register(name, 6)
    res = promote(name, X, y, metric="silhouette")
    assert res.promoted and "beats champion v1" in res.reason
    assert res.challenger_score > res.champion_score
    for n in (name, f"{name}-sklearn"):  # the twin's name moves in step
        assert _aliases(mlc, n) == {CHAMPION: "2", CHALLENGER: "2"}
        new, old = mlc.get_model_version(n, "2").tags, mlc.get_model_version(n, "1").tags
        assert new["promotion.outcome"] == "promoted"
        assert new["promotion.replaced_version"] == "1"
        assert old["promotion.replaced_by"] == "2"
        assert "beats" in old["promotion.replaced_reason"]
    # A lower-is-better metric agrees.
    assert (
        promote(name, X, y, metric="davies_bouldin").reason == "challenger already is the champion"
    )


def test_promote_does_not_compare_versions_of_other_columns(store, mlc, blobs):
    """A challenger trained on the champion's columns in another order would be scored on rows
    read in the wrong order: not compared, not promoted (unless forced), the reason recorded."""
    from sklearn.cluster import KMeans

    from toolkit.convert import to_sklearn
    from toolkit.tracking import tracked_run

    name = "promo-columns"
    X, y = blobs
    for columns, data in ((["x0", "x1"], X), (["x1", "x0"], X[:, ::-1].copy())):
        native = KMeans(n_clusters=6, n_init=1, random_state=0).fit(data)
        with tracked_run("promo-columns", "fit") as run_id:
            log_and_register(native, to_sklearn(native), data[:500], Registration(
                run_id=run_id, backend="sklearn", native_name=name, sklearn_name=f"{name}-sklearn",
                feature_names=columns))
    res = promote(name, X, y, metric="silhouette")
    assert not res.promoted
    assert res.reason == "the challenger's columns (x1, x0) are not champion v1's (x0, x1): not compared"
    assert mlc.get_model_version(name, "2").tags["promotion.outcome"] == "rejected"
    assert _aliases(mlc, name)[CHAMPION] == "1"
    forced = promote(name, X, y, force=True)
    assert forced.promoted and forced.reason.endswith("not compared; forced")
    # Evaluation data whose columns are not the challenger's is refused before any score.
    with pytest.raises(DataError, match=r"the evaluation data's columns \(x0, x1\) are not those challenger v2 "
                                        r"of 'promo-columns' was trained on \(x1, x0\) -- fix: .*data\.columns"):
        promote(name, X, y, columns=["x0", "x1"])
    assert promote(name, X[:, ::-1], y, columns=["x1", "x0"]).reason == "challenger already is the champion"


def test_promote_unknown_model_is_a_one_line_error(store, blobs):
    X, y = blobs
    with pytest.raises(ModelError, match="registered model 'no-such-model' does not exist") as err:
        promote("no-such-model", X, y)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_mlflow_run_promote_entry_point(store, mlc):
    name = "promo-cli"
    _train_register(name, 3)
    _train_register(name, 6)
    proc = mlflow_run(
        "promote",
        {"model_name": name, "config": "experiments/blobs.yaml", "overrides": "data.n_samples=2000"},
        env=run_env(store, store),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{name} v2 promoted to champion" in proc.stdout + proc.stderr
    for n in (name, f"{name}-sklearn"):
        assert _aliases(mlc, n)[CHAMPION] == "2"
    # Recorded beside the model (its training run's experiment), not in Default where this
    # `mlflow run` (no --experiment-name) put its own run: that one is named alike and links to it.
    home = mlc.get_experiment_by_name(f"registry-{name}").experiment_id
    runs = mlc.search_runs([home], "tags.entry_point = 'promote'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.run_name == f"promote {name} v2"
    (outer,) = mlc.search_runs(["0"], f"tags.`kmeans.record_run_id` = '{runs[0].info.run_id}'")
    assert outer.info.run_name == f"promote {name} v2" and outer.info.status == "FINISHED"
    assert runs[0].data.tags["promotion.outcome"] == "promoted"
    assert runs[0].data.params["eval.metric"] == "silhouette"  # -P metric was left empty
    assert runs[0].data.metrics["challenger_score"] > runs[0].data.metrics["champion_score"]


def test_warm_up_does_registrations_one_time_work_ahead():
    # In a fresh interpreter: what the search's tail thread runs leaves skops imported and
    # MLflow's distribution index built, so registering the best model pays neither.
    code = (
        "import sys\n"
        "from mlflow.utils import requirements_utils as r\n"
        "from toolkit.registry.register import warm_up\n"
        "assert 'skops.io' not in sys.modules and not r._MODULES_TO_PACKAGES\n"
        "warm_up()\n"
        "assert 'skops.io' in sys.modules and r._MODULES_TO_PACKAGES\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_an_unloadable_champion_blocks_promotion_in_one_line_and_force_moves_it(store, mlc, blobs):
    """An upgraded store's champion may be a model this release refuses to load (here: a stock
    ``mlflow.sklearn`` model with no checksums or signature, as an older release or a user by hand
    registered it).  Without force, promotion names the cause and ``force``; with force, the alias
    moves without the old champion being loaded, and its files are left as they were."""
    from sklearn.cluster import KMeans

    name = "promo-unloadable-champion"
    X, y = blobs
    mlflow.set_experiment(f"registry-{name}")
    with mlflow.start_run():
        mlflow.sklearn.log_model(KMeans(3, n_init=1, random_state=0).fit(X), name="model",
                                 registered_model_name=name, serialization_format="skops")
    mlc.set_registered_model_alias(name, CHAMPION, "1")
    old = mlc.get_model_version(name, "1")
    _train_register(name, 6)
    assert _aliases(mlc, name) == {CHAMPION: "1", CHALLENGER: "2"}

    with pytest.raises(ModelError) as err:
        promote(name, X, y, metric="silhouette")
    line = str(err.value)
    assert "champion v1" in line and "cannot be loaded" in line and "force" in line.split(" -- fix: ")[1]
    assert _aliases(mlc, name)[CHAMPION] == "1"

    forced = promote(name, X, y, metric="silhouette", force=True)
    assert forced.promoted and "cannot be loaded, not compared; forced" in forced.reason
    assert _aliases(mlc, name)[CHAMPION] == "2"
    assert mlc.get_model_version(name, "1").tags["promotion.replaced_by"] == "2"
    assert mlc.get_model_version(name, "1").source == old.source
