"""Serving: model URI -> local or distributed predictor, batch scoring, and bad input.

Models are registered for real (``train(register=True)``) into a temporary sqlite store; the
distributed predictor runs on the session's 2-worker LocalCluster.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

import dask.array as da
import dask.dataframe as dd
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from _mlflow_run import mlflow_run, run_env
from mlflow import MlflowClient

from toolkit.config import load_experiment
from toolkit.data import load_dataset
from toolkit.errors import DataError, ModelError
from toolkit.registry import flavor
from toolkit.serving import DistributedPredictor, LocalPredictor, load_predictor, score_files
from toolkit.train import train

REPO = Path(__file__).resolve().parents[1]
BLOBS = REPO / "experiments" / "blobs.yaml"
NAME = "serve-blobs"
TWIN = "serve-blobs-sklearn"


@pytest.fixture(scope="module")
def registered(store):
    """blobs.yaml at 2,000 rows, trained and registered: (run id, data, reference twin)."""
    import mlflow.sklearn

    cfg = load_experiment(
        BLOBS,
        [
            "data.n_samples=2000",
            "tracking.log_plot=false",
            f"registry.native_name={NAME}",
            f"registry.sklearn_name={TWIN}",
            "tracking.experiment=serving",
        ],
    )
    out = train(cfg, client=None, register=True)
    X = load_dataset(cfg.data).X
    return out.run_id, X, mlflow.sklearn.load_model(f"models:/{TWIN}@champion")


@pytest.fixture(scope="module")
def local(registered) -> LocalPredictor:
    return load_predictor(f"models:/{TWIN}@champion")


@pytest.fixture(scope="module")
def distributed(registered, client):
    predictor = load_predictor(f"models:/{TWIN}@champion", client=client)
    try:
        yield predictor
    finally:
        predictor.close()


# -- local predictor ------------------------------------------------------------------------


def test_local_predictor_from_alias_equals_sklearn(registered, local):
    _, X, twin = registered
    assert isinstance(local, LocalPredictor)
    assert (local.source.name, local.source.version) == (TWIN, "1")
    labels = local.predict(X)
    assert labels.dtype == np.int32 and labels.shape == (len(X),)
    frame = pd.DataFrame(X, columns=["x0", "x1"])
    assert np.array_equal(labels, twin.predict(frame))  # the twin knows its columns' names
    assert np.array_equal(local.predict(frame), labels)
    assert np.array_equal(local.predict(X.astype(np.float64)), labels)  # any float width


@pytest.mark.parametrize(
    "uri",
    [
        f"models:/{TWIN}/1",
        f"models:/{TWIN}/latest",
        f"models:/{NAME}@champion",  # the native model (scikit-learn here) through its flavor
        "runs:/{run_id}/sklearn_model",
        "runs:/{run_id}/native_model",
    ],
)
def test_every_uri_form_predicts_the_same(registered, local, uri):
    run_id, X, _ = registered
    predictor = load_predictor(uri.format(run_id=run_id))
    assert np.array_equal(predictor.predict(X), local.predict(X))


# -- column names -----------------------------------------------------------------------------


def test_twin_knows_its_columns_and_predicts_frames_without_warnings(registered, local):
    """The twin carries the training columns (``x0``, ``x1``): DataFrames predict silently
    through every loader, and so do the toolkit's own NumPy paths (rows named for it)."""
    import warnings

    import mlflow.pyfunc
    import mlflow.sklearn

    _, X, _ = registered
    frame = pd.DataFrame(X[:200], columns=["x0", "x1"])
    expected = local.predict(X[:200])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin = mlflow.sklearn.load_model(f"models:/{TWIN}@champion")
        assert list(twin.feature_names_in_) == ["x0", "x1"] and twin.n_features_in_ == 2
        np.testing.assert_array_equal(twin.predict(frame), expected)
        checked = flavor.load_model(f"models:/{TWIN}@champion")
        np.testing.assert_array_equal(checked.predict(frame), expected)
        pyfunc = mlflow.pyfunc.load_model(f"models:/{TWIN}@champion")
        np.testing.assert_array_equal(pyfunc.predict(frame), expected)
        np.testing.assert_array_equal(local.predict(frame), expected)
        np.testing.assert_array_equal(local.predict(X[:200]), expected)


@pytest.mark.parametrize("name", [TWIN, NAME])
def test_pyfunc_refuses_other_columns_in_one_line(registered, local, name):
    """Extra or missing columns are refused by name (MLflow's own schema check would drop
    extras silently); the right columns, in any order, and bare rows still score."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    _, X, _ = registered
    frame = pd.DataFrame(X[:100], columns=["x0", "x1"])
    expected = local.predict(X[:100])
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert pyfunc.metadata.get_input_schema() is None  # MLflow would drop extras before us
    np.testing.assert_array_equal(pyfunc.predict(frame), expected)
    np.testing.assert_array_equal(pyfunc.predict(frame[["x1", "x0"]]), expected)  # by name
    np.testing.assert_array_equal(pyfunc.predict(X[:100]), expected)  # unnamed: in order
    with pytest.raises(MlflowException) as err:
        pyfunc.predict(frame.assign(zz=1.0))
    msg = err.value.message
    assert "unexpected column(s) zz" in msg and "expects exactly the columns x0, x1" in msg
    assert "\n" not in msg
    with pytest.raises(MlflowException, match=r"missing column\(s\) x1"):
        pyfunc.predict(frame[["x0"]])
    with pytest.raises(MlflowException, match="rows of 2 columns"):
        pyfunc.predict(np.zeros((3, 3), dtype=np.float32))


def test_twin_logged_before_column_names_still_loads_and_predicts(registered, local):
    """A twin logged as before (no feature_names_in_, MLflow's named input schema, MLflow's own
    pyfunc loader) loads through every path as it did; registered files are never rewritten."""
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from toolkit.convert import centers_of, sklearn_from_centers, split_centered
    from toolkit.registry import integrity
    from toolkit.tracking import tracked_run

    _, X, twin = registered
    # no names and no cast step, as twins were
    old = sklearn_from_centers(centers_of(twin), params=split_centered(twin)[0])
    frame = pd.DataFrame(X[:50], columns=["x0", "x1"])
    shape = "x".join(map(str, old.cluster_centers_.shape))

    def save(local_dir: str, mlmodel: object) -> dict[str, str]:
        mlflow.sklearn.save_model(old, local_dir, mlflow_model=mlmodel, serialization_format="skops",
                                  signature=infer_signature(frame, np.zeros(50, np.int32)),
                                  input_example=frame[:5], pip_requirements=["scikit-learn"])
        return {integrity.FORMAT_TAG: flavor.SKOPS, integrity.CLASS_TAG: "sklearn.cluster._kmeans.KMeans",
                integrity.SHAPE_TAG: shape}

    with tracked_run("legacy-twin", "twin-before-names") as run_id:
        ref = integrity.log_model_dir(run_id, "sklearn_model", save, model_type="sklearn_twin")
    expected = local.predict(X[:50])
    assert not hasattr(flavor.load_model(ref.uri), "feature_names_in_")
    np.testing.assert_array_equal(load_predictor(ref.uri).predict(X[:50]), expected)
    np.testing.assert_array_equal(load_predictor(ref.uri).predict(frame), expected)
    pyfunc = mlflow.pyfunc.load_model(ref.uri)  # MLflow's loader and schema, as before
    assert pyfunc.metadata.flavors["python_function"]["loader_module"] == "mlflow.sklearn"
    with pytest.warns(UserWarning, match="fitted without feature names"):  # what new twins fix
        np.testing.assert_array_equal(pyfunc.predict(frame), expected)


# -- distributed predictor ------------------------------------------------------------------


def test_distributed_predictor_matches_local_on_1m_rows(distributed, local, client):
    X = np.random.default_rng(7).normal(0.0, 6.0, size=(1_000_000, 2)).astype(np.float32)
    dX = da.from_array(X, chunks=(125_000, 2))
    lazy = distributed.predict(dX)
    assert isinstance(lazy, da.Array) and lazy.numblocks == (8,)
    labels = client.compute(lazy).result()
    assert labels.dtype == np.int32
    assert np.array_equal(labels, local.predict(X))


def test_distributed_predictor_ships_the_model_once_per_worker(distributed, local, client):
    """The model reaches each worker once and stays: no worker ever fetches it from another.

    ``client.scatter(model, broadcast=True)`` (the first design) fails this: the Active Memory
    Manager drops the extra replicas as soon as no task waits on them, and the next prediction
    transfers the model between workers again.  ``amm.run_once()`` forces that pass now.
    """
    name = distributed.plugin_name
    X = np.random.default_rng(8).normal(0.0, 6.0, size=(40_000, 2)).astype(np.float32)
    dX = da.from_array(X, chunks=(5_000, 2))

    def installed(dask_worker):
        plugin = dask_worker.plugins[name]
        return plugin.worker_address, id(plugin), id(plugin.model)

    before = client.run(installed)
    for _ in range(2):
        assert np.array_equal(client.compute(distributed.predict(dX)).result(), local.predict(X))
        client.amm.run_once()
    after = client.run(installed)
    workers = set(client.scheduler_info()["workers"])
    assert set(after) == workers and len(workers) == 2
    assert after == before  # the same model object on each worker throughout
    assert all(addr == w for w, (addr, _, _) in after.items())  # set up by that worker itself

    # Tasks carry the plugin's name, never the model, and no worker fetched anything model-like.
    def model_transfers(dask_worker):
        return [
            k
            for t in dask_worker.transfer_incoming_log
            for k in t["keys"]
            if "KMeans" in str(k) or name in str(k)
        ]

    assert client.run(model_transfers) == {w: [] for w in workers}
    graph = dict(distributed.predict(dX).__dask_graph__())
    assert not any(type(local.model).__name__ in repr(task) for task in graph.values())


def test_distributed_predictor_dataframe_keeps_index(distributed, local, client, registered):
    _, X, _ = registered
    index = pd.Index(np.arange(len(X))[::-1] * 3 + 1_000, name="row_id")  # not a default index
    pdf = pd.DataFrame(X, columns=["x0", "x1"], index=index)
    ddf = dd.from_pandas(pdf, npartitions=4, sort=False)
    lazy = distributed.predict(ddf)
    assert isinstance(lazy, dd.Series) and lazy.name == "label"
    out = client.compute(lazy).result()
    assert out.index.equals(pdf.index)
    assert np.array_equal(out.to_numpy(), local.predict(X))


def test_distributed_predictor_numpy_input_and_bad_input(distributed, local, client, registered):
    _, X, _ = registered
    assert np.array_equal(client.compute(distributed.predict(X)).result(), local.predict(X))
    with pytest.raises(DataError, match="3 feature column"):
        distributed.predict(da.ones((10, 3), chunks=5))
    bad = dd.from_pandas(pd.DataFrame({"x0": [1.0, 2.0], "x1": ["a", "b"]}), npartitions=1)
    with pytest.raises(DataError, match=r"non-numeric column.*x1"):
        distributed.predict(bad)


def test_predictors_put_named_frames_in_the_models_order_or_refuse_them(registered, local, distributed, client):
    """A frame with the model's columns in another order is put in order; other names are
    refused in one line, by the local and the distributed predictor alike (the pyfunc face
    refuses them too); unnamed columns are still read by position."""
    _, X, _ = registered
    expected = local.predict(X[:200])
    swapped = pd.DataFrame({"x1": X[:200, 1], "x0": X[:200, 0]})
    assert not np.array_equal(local.predict(X[:200, ::-1].copy()), expected)  # by position it would differ
    np.testing.assert_array_equal(local.predict(swapped), expected)
    got = client.compute(distributed.predict(dd.from_pandas(swapped, npartitions=2))).result()
    np.testing.assert_array_equal(got.to_numpy(), expected)
    renamed = pd.DataFrame(X[:200], columns=["a", "b"])
    said = (r"input has unexpected column\(s\) a, b; missing column\(s\) x0, x1; "
            r"the model was trained on the columns x0, x1")
    with pytest.raises(DataError, match=said):
        local.predict(renamed)
    with pytest.raises(DataError, match=said):
        distributed.predict(dd.from_pandas(renamed, npartitions=1))
    np.testing.assert_array_equal(local.predict(pd.DataFrame(X[:200])), expected)


def test_closed_distributed_predictor_says_so(registered, client):
    predictor = load_predictor(f"models:/{TWIN}/1", client=client)
    assert isinstance(predictor, DistributedPredictor)
    name = predictor.plugin_name
    predictor.close()
    loaded = client.run(lambda dask_worker: name in dask_worker.plugins)
    assert loaded == dict.fromkeys(client.scheduler_info()["workers"], False)
    with pytest.raises(ModelError, match="closed"):
        predictor.predict(np.zeros((4, 2), np.float32))


# -- batch scoring --------------------------------------------------------------------------


def _parquet_inputs(folder: Path, X: np.ndarray, n_files: int = 3) -> pd.DataFrame:
    folder.mkdir()
    rng = np.random.default_rng(3)
    index = pd.Index(rng.permutation(len(X)) + 50_000, name="row_id")  # shuffled, not 0..n-1
    frame = pd.DataFrame(X, columns=["x0", "x1"], index=index)
    for i, part in enumerate(np.array_split(np.arange(len(X)), n_files)):
        frame.iloc[part].to_parquet(folder / f"part-{i}.parquet")
    return frame


def _read_output(path: str) -> pd.DataFrame:
    files = sorted(
        glob.glob(os.path.join(path, "*.parquet")), key=lambda f: int(Path(f).name.split(".")[1])
    )  # part.0, part.1, ... part.10
    return pd.concat([pd.read_parquet(f) for f in files])


def test_score_parquet_glob_keeps_order_and_index(distributed, local, registered, tmp_path):
    _, X, _ = registered
    frame = _parquet_inputs(tmp_path / "in", X)
    out = tmp_path / "scored.parquet"
    info = score_files(distributed, str(tmp_path / "in" / "part-*.parquet"), str(out))
    assert info["files"] == 3 and info["output"] == str(out)
    got = _read_output(str(out))
    assert got.index.equals(frame.index)  # same rows, same order, same index
    assert list(got.columns) == ["x0", "x1", "label"]
    np.testing.assert_array_equal(got[["x0", "x1"]].to_numpy(), frame.to_numpy())
    assert np.array_equal(got["label"].to_numpy(), local.predict(X))
    assert not list(tmp_path.glob(".scoring-*"))


def test_score_csv_glob_with_feature_columns_keeps_other_columns(
    distributed, local, registered, tmp_path
):
    _, X, _ = registered
    (tmp_path / "in").mkdir()
    ids = np.arange(len(X)) * 7 + 3
    frame = pd.DataFrame({"id": ids, "x0": X[:, 0], "x1": X[:, 1], "note": "row"})
    for i, part in enumerate(np.array_split(np.arange(len(X)), 2)):
        frame.iloc[part].to_csv(tmp_path / "in" / f"batch-{i}.csv", index=False)
    out = tmp_path / "scored"
    score_files(distributed, str(tmp_path / "in" / "*.csv"), str(out), columns=["x0", "x1"])
    got = _read_output(str(out))
    assert list(got.columns) == ["id", "x0", "x1", "note", "label"]
    assert np.array_equal(got["id"].to_numpy(), ids)  # rows in input order
    assert np.array_equal(got["label"].to_numpy(), local.predict(X))


def test_score_files_failures_write_nothing(distributed, registered, tmp_path):
    _, X, _ = registered
    _parquet_inputs(tmp_path / "in", X, n_files=1)
    pd.DataFrame({"a": [1.0], "b": [2.0], "c": [3.0]}).to_parquet(tmp_path / "three.parquet")
    out = tmp_path / "never"
    with pytest.raises(DataError, match=r"no column\(s\) x0, x1 of the 2 the model was trained on"):
        score_files(distributed, str(tmp_path / "three.parquet"), str(out))
    with pytest.raises(DataError, match=r"3 feature column\(s\) picked \(a, b, c\) but the model was trained on 2"):
        score_files(distributed, str(tmp_path / "three.parquet"), str(out), columns=["a", "b", "c"])
    with pytest.raises(DataError, match="no column"):
        score_files(distributed, str(tmp_path / "in"), str(out), columns=["x0", "nope"])
    assert not out.exists() and not list(tmp_path.glob(".scoring-*"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(DataError, match="already exists"):
        score_files(distributed, str(tmp_path / "in"), str(tmp_path / "taken"))
    assert list((tmp_path / "taken").iterdir()) == []


def test_score_files_reads_the_models_columns_by_name(distributed, local, registered, tmp_path):
    """The model's columns are found by name, in any order, beside other columns; an input
    without them is refused before anything is written, unless the caller picks its features
    (in the model's order) with ``columns``.  Read by position, either would be labelled wrong
    without a word."""
    _, X, _ = registered
    expected = local.predict(X)
    pd.DataFrame({"x1": X[:, 1], "id": np.arange(len(X)), "x0": X[:, 0]}).to_csv(tmp_path / "swapped.csv", index=False)
    score_files(distributed, str(tmp_path / "swapped.csv"), str(tmp_path / "by-name"))
    got = _read_output(str(tmp_path / "by-name"))
    assert list(got.columns) == ["x1", "id", "x0", "label"]
    np.testing.assert_array_equal(got["label"].to_numpy(), expected)

    pd.DataFrame(X, columns=["a", "b"]).to_csv(tmp_path / "renamed.csv", index=False)
    with pytest.raises(DataError, match=r"no column\(s\) x0, x1 of the 2 the model was trained on \(x0, x1\); "
                                        r"it has a, b -- fix: .* --columns"):
        score_files(distributed, str(tmp_path / "renamed.csv"), str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()
    score_files(distributed, str(tmp_path / "renamed.csv"), str(tmp_path / "by-position"), columns=["a", "b"])
    np.testing.assert_array_equal(_read_output(str(tmp_path / "by-position"))["label"].to_numpy(), expected)
    score_files(distributed, str(tmp_path / "swapped.csv"), str(tmp_path / "named"), columns=["x1", "x0"])
    np.testing.assert_array_equal(_read_output(str(tmp_path / "named"))["label"].to_numpy(), expected)


def test_an_input_with_a_label_column_is_refused_or_labelled_beside_it(distributed, local, registered, tmp_path):
    """Ground truth (or an earlier scoring) in a ``label`` column is never overwritten: refused
    before anything is written, or kept beside the labels' own column when it is named."""
    _, X, _ = registered
    truth = np.arange(len(X)) % 7
    pd.DataFrame({"x0": X[:, 0], "x1": X[:, 1], "label": truth}).to_parquet(tmp_path / "labelled.parquet")
    with pytest.raises(DataError, match=r"already has a column named 'label', which the labels would overwrite "
                                        r"-- fix: rename that column, or name the labels' column with "
                                        r"--label-column cluster"):
        score_files(distributed, str(tmp_path / "labelled.parquet"), str(tmp_path / "never"))
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".scoring-*"))
    info = score_files(distributed, str(tmp_path / "labelled.parquet"), str(tmp_path / "out"), label="cluster")
    got = _read_output(str(tmp_path / "out"))
    assert list(got.columns) == ["x0", "x1", "label", "cluster"]
    np.testing.assert_array_equal(got["label"].to_numpy(), truth)
    np.testing.assert_array_equal(got["cluster"].to_numpy(), local.predict(X))
    assert info["drift_stats"] is not None  # gathered on the labels' own column


def test_overwrite_replaces_a_file_and_never_the_input(distributed, local, registered, tmp_path):
    """``overwrite`` replaces an earlier output that is a single file, and refuses an output
    that is, or holds, the input being read: replacing it would delete the input."""
    _, X, _ = registered
    _parquet_inputs(tmp_path / "in", X, n_files=2)
    (tmp_path / "old.parquet").write_bytes(b"an earlier output, written as one file")
    score_files(distributed, str(tmp_path / "in"), str(tmp_path / "old.parquet"), overwrite=True)
    np.testing.assert_array_equal(_read_output(str(tmp_path / "old.parquet"))["label"].to_numpy(), local.predict(X))
    before = sorted(p.name for p in (tmp_path / "in").iterdir())
    for output in (tmp_path / "in", tmp_path / "in" / "part-0.parquet", tmp_path):
        with pytest.raises(DataError, match=r"holds the input it is read from .*; overwriting it would delete the "
                                            r"input -- fix: write the output to another path"):
            score_files(distributed, str(tmp_path / "in"), str(output), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == before and not list(tmp_path.glob(".scoring-*"))


def test_score_files_drops_nan_rows_when_asked(distributed, local, registered, tmp_path):
    _, X, _ = registered
    frame = _parquet_inputs(tmp_path / "in", X)
    frame.iloc[[0, len(X) - 1], 0] = np.nan  # the first row of the first file, the last of the last
    frame.to_parquet(tmp_path / "holes.parquet")
    out = tmp_path / "scored"
    info = score_files(distributed, str(tmp_path / "holes.parquet"), str(out), on_nan="drop")
    got = _read_output(str(out))
    assert info["rows_dropped"] == 2 and len(got) == len(X) - 2
    assert np.array_equal(got["label"].to_numpy(), local.predict(X[1:-1]))


# -- bad model URIs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri, message",
    [
        ("models:/nope@champion", "registered model 'nope' does not exist"),
        (f"models:/{TWIN}/99", f"version '99' of registered model '{TWIN}' does not exist"),
        (f"models:/{TWIN}@staging", f"alias 'staging' is not set on registered model '{TWIN}'"),
        ("runs:/0123456789abcdef0123456789abcdef/sklearn_model", "cannot load model"),
    ],
)
def test_bad_model_uri_is_a_one_line_model_error(registered, uri, message):
    with pytest.raises(ModelError) as err:
        load_predictor(uri)
    assert message in str(err.value)
    assert "\n" not in str(err.value) and " -- fix: " in str(err.value)


@pytest.fixture(scope="module")
def gpu_model_dir(registered, tmp_path_factory):
    """A native model whose MLmodel says cuML on a GPU, also registered, linked to the twin.

    No GPU (and no cuML) exists here, so no real cuML model can be made: this saves a
    scikit-learn model with the kmeans_native flavor, rewrites its MLmodel to the metadata a
    GPU model has (device: gpu, model_class: cuml.cluster.kmeans.KMeans) and logs that folder
    as a LoggedModel with its checksums, as register.py does.  Returns a local copy of it.
    """
    from toolkit.env import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present: a cuML model would load")
    from toolkit.registry import integrity

    _, _, twin = registered

    def save(local, mlmodel):
        info = flavor.save_model(twin, local, backend="cuml", mlflow_model=mlmodel)
        path = Path(local) / "MLmodel"
        conf = yaml.safe_load(path.read_text())
        conf["flavors"][flavor.FLAVOR_NAME].update(device="gpu", model_class="cuml.cluster.kmeans.KMeans")
        path.write_text(yaml.safe_dump(conf))
        return info

    c = MlflowClient()
    run = c.create_run(c.get_experiment_by_name("serving").experiment_id, run_name="gpu-metadata")
    ref = integrity.log_model_dir(run.info.run_id, "native_model", save, model_type="kmeans_native")
    c.set_terminated(run.info.run_id)
    c.create_registered_model("gpu-kmeans")
    c.create_model_version(
        "gpu-kmeans",
        ref.uri,
        run.info.run_id,
        model_id=ref.model_id,
        tags={"kind": "native", "device": "gpu", "twin.name": TWIN, "twin.version": "1", **ref.tags},
    )
    c.set_registered_model_alias("gpu-kmeans", "champion", "1")
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=ref.artifact_location, dst_path=str(tmp_path_factory.mktemp("gpu"))
        )
    )


def test_gpu_native_model_without_gpu_names_the_twin(gpu_model_dir):
    with pytest.raises(ModelError, match="needs a CUDA GPU") as err:
        load_predictor("models:/gpu-kmeans@champion")
    assert f"models:/{TWIN}/1" in str(err.value) and "scikit-learn twin" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="scikit-learn twin"):
        load_predictor(str(gpu_model_dir))  # an unregistered copy: the generic hint
    with pytest.raises(ModelError, match=r"cuml\.cluster\.kmeans\.KMeans"):
        flavor.load_model("models:/gpu-kmeans/1")


def test_local_predictor_bad_data(local):
    with pytest.raises(DataError, match=r"3 feature column.*expects 2"):
        local.predict(np.zeros((5, 3), np.float32))
    with pytest.raises(DataError, match=r"non-numeric column.*x1"):
        local.predict(pd.DataFrame({"x0": [1.0], "x1": ["a"]}))
    with pytest.raises(DataError, match="2-D"):
        local.predict(np.zeros(4, np.float32))


# -- the predict entry point ----------------------------------------------------------------


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    from mlproject import predict
    from mlproject._cli import run_main

    monkeypatch.setattr(sys, "argv", ["predict", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run_main(predict.main)
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture()
def bad_inputs(tmp_path, registered):
    _, X, _ = registered
    three = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "c": [5.0, 6.0]})
    three.to_csv(tmp_path / "three.csv", index=False)
    pd.DataFrame({"x0": [1.0, 2.0], "x1": ["a", "b"]}).to_csv(tmp_path / "text.csv", index=False)
    pd.DataFrame(X[:100], columns=["x0", "x1"]).to_csv(tmp_path / "good.csv", index=False)
    holes = pd.DataFrame(X[:100], columns=["x0", "x1"])
    holes.iloc[[2, 6], 1] = np.nan  # data rows 3 and 7
    holes.to_csv(tmp_path / "nan.csv", index=False)
    pd.DataFrame(X[:100], columns=["x0", "x1"]).assign(label=1).to_csv(tmp_path / "labelled.csv", index=False)
    pd.DataFrame(columns=["x0", "x1"]).to_csv(tmp_path / "header-only.csv", index=False)
    (tmp_path / "mixed").mkdir()
    pd.DataFrame(X[:50], columns=["x0", "x1"]).to_csv(tmp_path / "mixed" / "a.csv", index=False)
    pd.DataFrame(X[50:100], columns=["x0", "x1"]).to_parquet(tmp_path / "mixed" / "b.parquet")
    return tmp_path


@pytest.mark.parametrize(
    "uri, data, message",
    [
        ("models:/nope@champion", "good.csv", "registered model 'nope' does not exist"),
        (f"models:/{TWIN}/99", "good.csv", "version '99'"),
        (f"models:/{TWIN}@staging", "good.csv", "alias 'staging' is not set"),
        ("models:/gpu-kmeans@champion", "good.csv", f"scikit-learn twin models:/{TWIN}/1"),
        (f"models:/{TWIN}@champion", "three.csv", "has no column(s) x0, x1 of the 2 the model was trained on"),
        (f"models:/{TWIN}@champion", "text.csv", "non-numeric column(s): x1"),
        (f"models:/{TWIN}@champion", "nan.csv", "2 row(s) of"),
        (f"models:/{TWIN}@champion", "labelled.csv", "already has a column named 'label'"),
        (f"models:/{TWIN}@champion", "header-only.csv", "header-only.csv holds no rows"),
        (f"models:/{TWIN}@champion", "mixed", "files (.csv, .parquet) -- fix: point the input at CSV files or"),
    ],
)
def test_predict_entry_point_bad_input(
    monkeypatch, capsys, client, bad_inputs, gpu_model_dir, uri, data, message
):
    def models_on_workers(dask_worker):
        return sorted(p for p in dask_worker.plugins if p.startswith("kmeans-model-"))

    before = client.run(models_on_workers)
    out = bad_inputs / "out.parquet"
    code, err = _main(
        monkeypatch,
        capsys,
        "--model-uri",
        uri,
        "--input",
        str(bad_inputs / data),
        "--output",
        str(out),
        "--scheduler-address",
        client.scheduler.address,
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    if data == "nan.csv":  # how many, where, and the way out
        assert "row(s) 3, 7 " in lines[0] and "--on-nan drop" in lines[0]
    assert not out.exists() and not list(bad_inputs.glob(".scoring-*"))
    # The session client still works and the shared workers hold no leftover model.
    assert client.run(models_on_workers) == before


@pytest.mark.slow
def test_mlflow_run_predict_entry_point(store, registered, local, client, tmp_path):
    _, X, _ = registered
    frame = _parquet_inputs(tmp_path / "in", X)
    out = tmp_path / "predictions.parquet"
    proc = mlflow_run(
        "predict",
        {"model_uri": f"models:/{TWIN}@champion", "input": f"{tmp_path / 'in'}/*.parquet",
         "output": out, "scheduler_address": client.scheduler.address},
        env=run_env(store, store),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scored 3 file(s)" in proc.stdout + proc.stderr
    got = _read_output(str(out))
    assert got.index.equals(frame.index)
    assert np.array_equal(got["label"].to_numpy(), local.predict(X))


def test_gpu_model_is_refused_before_a_cluster_starts(monkeypatch, capsys, bad_inputs, gpu_model_dir):
    # No --scheduler-address: the entry point would start a LocalCUDACluster for a GPU model;
    # without a GPU the model is refused first, naming its twin.
    code, err = _main(monkeypatch, capsys, "--model-uri", "models:/gpu-kmeans@champion",
                      "--input", str(bad_inputs / "good.csv"), "--output", str(bad_inputs / "o.parquet"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "needs a CUDA GPU" in lines[0] and f"models:/{TWIN}/1" in lines[0] and "LocalCUDACluster" not in err


def test_gpu_labels_come_back_on_the_inputs_index(client):
    """cuML's distributed predict returns each partition's labels with an index of its own;
    batch scoring assigns them to the input frame, whose index came from the files."""
    import dask.dataframe as dd

    from toolkit.serving.loader import aligned_labels

    frame = pd.DataFrame({"x0": np.arange(10.0), "x1": np.arange(10.0)}, index=pd.Index(range(100, 110), name="id"))
    ddf = dd.from_pandas(frame, npartitions=3)
    sizes = ddf.map_partitions(len).compute().tolist()
    # What a GPU predict hands back: labels per partition, each on a fresh RangeIndex.
    parts = [pd.Series(np.arange(n, dtype=np.int64) + 10 * i, name="label") for i, n in enumerate(sizes)]
    labels = dd.concat([dd.from_pandas(p, npartitions=1) for p in parts])
    scored = ddf.assign(label=aligned_labels(ddf, labels)).compute()
    expected = np.concatenate([np.arange(n) + 10 * i for i, n in enumerate(sizes)])
    assert list(scored.index) == list(range(100, 110))
    np.testing.assert_array_equal(scored["label"].to_numpy(), expected)
    assert scored["label"].dtype == np.int32
    with pytest.raises(DataError, match="partitions"):
        aligned_labels(ddf, dd.from_pandas(pd.Series(np.zeros(10, np.int32)), npartitions=1))
