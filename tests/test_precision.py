"""Precision (issue 22, finding 8): data far from 0 next to its spread is clustered as well as
the same data near 0.

The same 4 blobs are written as float64 Parquet three times: as they are, shifted by 1e9 (the
float32 step there is 64: the cast alone collapsed the blobs into one cluster) and scaled by
1e-9.  Every CPU backend must find the same clusters in all three (ARI 1 with each other and
with the truth, the same label IDs, the same inertia relative to the data's variance), report
centroids in the data's own coordinates, and hand the registry a native model and a twin that
predict the raw rows alike, also after the native flavor's files are written and read back.
One registered sklearn model is then served end to end (verified load of native and twin,
``mlflow.sklearn.load_model``, batch scoring with drift statistics).  Data float64 itself
cannot resolve is refused in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from toolkit.backends import make_backend
from toolkit.config import DataConfig, ModelConfig
from toolkit.convert import centers_of, predict_labels, split_centered
from toolkit.data import Dataset, load_dataset
from toolkit.errors import DataError
from toolkit.names import BACKEND_FACTS

CENTRES = np.array([[-5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [5.0, 5.0]])
VARIANTS = {"plain": lambda X: X, "shift": lambda X: X + 1e9, "scale": lambda X: X * 1e-9}
CPU = [name for name, facts in BACKEND_FACTS.items() if facts.device == "cpu"]


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    X, y = make_blobs(n_samples=1200, n_features=2, centers=CENTRES, cluster_std=0.5, random_state=0)
    return X, y


@pytest.fixture(scope="module")
def files(blobs, tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """``{variant: (parquet path, raw float64 rows)}``."""
    root = tmp_path_factory.mktemp("precision")
    out = {}
    for name, f in VARIANTS.items():
        Z = f(blobs[0])
        path = root / f"{name}.parquet"
        pd.DataFrame(Z, columns=["a", "b"]).to_parquet(path)
        out[name] = (path, Z)
    return out


def _host(a: Any) -> np.ndarray:
    return np.asarray(a.compute() if hasattr(a, "compute") else a)


def _dataset(path: Path) -> Dataset:
    return load_dataset(DataConfig(source="file", path=str(path)))


def test_the_offset_data_is_centred_and_the_rest_left_as_it_was(files):
    shifted = _dataset(files["shift"][0])
    assert shifted.shift is not None and np.allclose(shifted.shift, 1e9, rtol=1e-9)
    X = _host(shifted.X)
    assert X.dtype == np.float32 and np.abs(X).max() < 20  # centred before the cast
    assert len(np.unique(X, axis=0)) == len(X)  # every row still distinct (float32 at 1e9: 1 value)
    np.testing.assert_allclose(shifted.raw(X), files["shift"][1], rtol=0, atol=1e-5 * 1e9 * 2**-23 * 64)
    for name in ("plain", "scale"):  # near 0 next to their spread: cast as before, bit for bit
        ds = _dataset(files[name][0])
        assert ds.shift is None
        np.testing.assert_array_equal(_host(ds.X), files[name][1].astype(np.float32))


def test_data_float64_cannot_resolve_is_refused_in_one_line(blobs, tmp_path):
    path = tmp_path / "hopeless.parquet"
    # Spread 5e-7 at 1e9, where float64 steps by 1.2e-7: about 4 values per spread.
    pd.DataFrame(blobs[0] * 1e-7 + 1e9, columns=["a", "b"]).to_parquet(path)
    with pytest.raises(DataError) as err:
        _dataset(path)
    msg = str(err.value)
    assert "\n" not in msg and "float64 cannot resolve" in msg and "fix:" in msg


@pytest.fixture(scope="module")
def fits(request, files) -> dict[str, dict[str, Any]]:
    """Per CPU backend, per variant: the dataset, the backend, its prepared data and its fit."""
    out: dict[str, dict[str, Any]] = {}
    client = request.getfixturevalue("client")
    for name in CPU:
        facts = BACKEND_FACTS[name]
        backend = make_backend(name, client=client if facts.parallelism == "data" else None, chunk_rows=400)
        init = "k-means++" if "k-means++" in facts.inits else facts.inits[0]
        params = ModelConfig(n_clusters=4, n_init=1, random_state=0, init=init)
        out[name] = {}
        for variant, (path, _) in files.items():
            ds = _dataset(path)
            X = backend.prepare(ds)
            out[name][variant] = {"dataset": ds, "backend": backend, "X": X, "fit": backend.fit(X, params)}
    return out


@pytest.mark.parametrize("name", CPU)
def test_every_cpu_backend_finds_the_same_clusters_whatever_the_offset_or_scale(fits, files, blobs, name):
    _, y = blobs
    labels, relative = {}, {}
    for variant, (_, Z) in files.items():
        got = fits[name][variant]
        fit, ds = got["fit"], got["dataset"]
        labels[variant] = _host(got["backend"].host_view(got["X"], fit.labels)[1])
        relative[variant] = fit.inertia / (len(Z) * float(np.var(Z, axis=0).sum()))
        assert adjusted_rand_score(y, labels[variant]) == 1.0, (name, variant)
        # The reported centroids are in the data's own coordinates: each near its blob's mean.
        centres = np.asarray(ds.raw(fit.centers))
        means = np.array([Z[labels[variant] == j].mean(axis=0) for j in range(4)])
        np.testing.assert_allclose(centres, means, rtol=0, atol=1e-4 * float(np.abs(Z - Z.mean(0)).max()))
    for variant in ("shift", "scale"):
        np.testing.assert_array_equal(labels[variant], labels["plain"])  # the same IDs, not only ARI 1
        assert relative[variant] == pytest.approx(relative["plain"], rel=1e-4)


@pytest.mark.parametrize("name", CPU)
def test_registered_pair_predicts_raw_rows_alike_after_a_round_trip(fits, files, name, tmp_path):
    from toolkit.registry import _centred_pair, flavor
    from toolkit.registry.integrity import CLASS_TAG, SHAPE_TAG

    got = fits[name]["shift"]
    fit, ds, backend = got["fit"], got["dataset"], got["backend"]
    Z = files["shift"][1]
    expected = _host(backend.host_view(got["X"], fit.labels)[1])
    native = backend.native_model(fit)
    native, twin = _centred_pair(native, backend.to_sklearn(native), ds.shift, fit.inertia / len(Z))
    # 1e9 is far beyond what float64 centres in raw coordinates resolve: the twin centres first.
    assert split_centered(twin)[1] is not None
    np.testing.assert_allclose(centers_of(twin), ds.raw(fit.centers), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(predict_labels(native, Z), expected)
    np.testing.assert_array_equal(predict_labels(twin, Z), expected)
    np.testing.assert_array_equal(twin.predict(pd.DataFrame(Z)), expected)  # scikit-learn's own predict
    # The native flavor stores the shift (and raw centres) and rebuilds a model of raw rows.
    info = flavor.save_model(native, str(tmp_path / "m"), backend=name)
    assert info[CLASS_TAG] == flavor._kind(native) and info[SHAPE_TAG] == "4x2"
    stored = np.load(tmp_path / "m" / "kmeans" / "centers.npy")
    np.testing.assert_allclose(stored, ds.raw(fit.centers), rtol=0, atol=1e-6)
    rebuilt = flavor._check_kmeans(flavor._read_native(str(tmp_path / "m"), info, None), info, "test")
    np.testing.assert_array_equal(predict_labels(rebuilt, Z), expected)


def test_a_registered_model_of_offset_data_serves_raw_rows(store, files, blobs, tmp_path):
    import mlflow.sklearn

    from toolkit.config import load_experiment
    from toolkit.serving import load_predictor, score_files
    from toolkit.train import train

    path, Z = files["shift"]
    cfg = load_experiment(None, {"data.source": "file", "data.path": str(path), "model.n_clusters": 4,
                                 "tracking.log_plot": False, "tracking.experiment": "precision",
                                 "registry.native_name": "precision", "registry.sklearn_name": "precision-sklearn"})
    out = train(cfg, register=True)
    labels = np.asarray(out.result.labels)
    assert adjusted_rand_score(blobs[1], labels) == 1.0
    assert out.metrics["n_clusters_found"] == 4 and out.metrics["silhouette"] > 0.8
    for uri in ("models:/precision@champion", "models:/precision-sklearn@champion"):
        np.testing.assert_array_equal(load_predictor(uri).predict(Z), labels)
    stock = mlflow.sklearn.load_model("models:/precision-sklearn@champion")
    np.testing.assert_array_equal(stock.predict(pd.DataFrame(Z, columns=["a", "b"])), labels)
    # A retrain (another seed) is matched to the champion in raw coordinates and keeps its IDs.
    again = train(cfg.model_copy(update={"model": cfg.model.model_copy(update={"random_state": 7})}), register=True)
    assert again.registered.native_version == "2"
    for uri in ("models:/precision/2", "models:/precision-sklearn/2"):
        np.testing.assert_array_equal(load_predictor(uri).predict(Z), labels)
    # Batch scoring (what -e predict runs): labels and drift statistics on the raw rows.
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        predictor = load_predictor("models:/precision@champion", client=client)
        info = score_files(predictor, str(path), str(tmp_path / "scored"))
        predictor.close()
    scored = pd.read_parquet(tmp_path / "scored")
    np.testing.assert_array_equal(scored["label"].to_numpy(), labels)
    stats = info["drift_stats"]
    assert stats is not None and stats.counts.sum() == len(Z)
    # The same distances as the training profile: nothing lands in the overflow bin.
    assert stats.counts[:, -1].sum() == 0 and stats.max_distance.max() < 3.0
