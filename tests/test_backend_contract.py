"""The backend contract: every registered backend, on the same small blobs, keeps the base promises.

One test class, parametrized over every name in :data:`toolkit.names.BACKEND_FACTS` (so a new
backend is tested by registering it).  GPU backends carry the ``gpu`` marker and are skipped
where cuML or a GPU is missing (``tests/conftest.py``); data-parallel CPU backends run on the
shared 2-worker ``client``.  What is asserted:

* ``prepare`` -> ``fit`` -> ``host_view`` gives NumPy-able data and one label per row, each
  row's label its closest centre, and the ground truth found (ARI 1 on tight blobs);
* ``inertia`` is global: the sum over *all* rows of the squared distance to the assigned
  centre, recomputed here with NumPy; ``predict`` on the same data gives the fit's labels;
* ``native_model`` pickles, and ``to_sklearn`` of it predicts like the fit on a sample;
* every hyperparameter the backend declares it honours changes what it should (n_clusters
  the number of centres, max_iter and tol the iterations run, random_state the random init,
  n_init the inertia kept, oversampling_factor the k-means|| init, each accepted init runs),
  and the config refuses what it does not honour, or an init it does not accept.

Besides, every registry entry resolves to a class of that name (GPU ones without importing
cuML when it is missing).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from toolkit.backends import BACKENDS, get_backend, make_backend
from toolkit.config import ClusterConfig, ExperimentConfig, ModelConfig
from toolkit.convert import input_dtype, split_centered
from toolkit.data import Dataset
from toolkit.errors import ConfigError
from toolkit.names import BACKEND_FACTS, HYPERPARAMETERS, INIT_SPECIFIC, INITS

K = 4
CENTRES = np.array([[-5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [5.0, 5.0]])
_NEEDS_GPU = {name for name, facts in BACKEND_FACTS.items() if facts.device == "gpu"}

_PARAMS = [
    pytest.param(name, marks=[pytest.mark.gpu] if name in _NEEDS_GPU else [], id=name)
    for name in BACKEND_FACTS
]


def _host(a: Any) -> np.ndarray:
    return np.asarray(a.compute() if hasattr(a, "compute") else a)


def _dataset(X: np.ndarray, y: np.ndarray | None = None) -> Dataset:
    return Dataset(name="contract", X=X, y=y, feature_names=["x0", "x1"], source="test")


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """3,000 x 2, four tight, far apart centres."""
    X, y = make_blobs(n_samples=3000, n_features=2, centers=CENTRES, cluster_std=0.1, random_state=0)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def gpu_client():
    from toolkit.cluster import dask_client

    with dask_client(ClusterConfig(), gpu=True) as c:
        yield c


class Contract:
    """One backend, its prepared blobs, and a cache of fits (each setting fitted once)."""

    def __init__(self, name: str, client: Any, blobs: tuple[np.ndarray, np.ndarray]) -> None:
        self.name, self.facts = name, BACKEND_FACTS[name]
        # chunk_rows: several blocks per worker even on 3,000 rows, as on real data.
        self.backend = make_backend(name, client=client, chunk_rows=500)
        self.Xh, self.y = blobs
        self.X = self.backend.prepare(_dataset(self.Xh, self.y))
        self._fits: dict[tuple, Any] = {}
        self._uniform: Any = None

    def init(self, *preferred: str) -> str:
        """The first of ``preferred`` this backend accepts."""
        return next(i for i in preferred if i in self.facts.inits)

    def fit(self, data: str = "blobs", **params: Any) -> Any:
        key = (data, *sorted(params.items()))
        if key not in self._fits:
            X = self.X if data == "blobs" else self.uniform()
            self._fits[key] = self.backend.fit(X, ModelConfig(**{"n_clusters": K, "random_state": 0, **params}))
        return self._fits[key]

    def uniform(self) -> Any:
        """Structureless data: every initialisation ends in its own local optimum."""
        if self._uniform is None:
            U = np.random.default_rng(0).uniform(size=(3000, 2)).astype(np.float32)
            self._uniform = self.backend.prepare(_dataset(U))
        return self._uniform

    def labels(self, result: Any) -> np.ndarray:
        return _host(self.backend.host_view(self.X, result.labels)[1])

    @property
    def baseline(self) -> Any:
        # k-means++ (or its scalable form where exact k-means++ is not offered) finds 4 blobs.
        return self.fit(init=self.init("k-means++", "k-means||"))


@pytest.fixture(scope="class")
def contract(request, name, blobs) -> Contract:
    facts = BACKEND_FACTS[name]
    client = None
    if facts.parallelism == "data":
        client = request.getfixturevalue("gpu_client" if facts.device == "gpu" else "client")
    return Contract(name, client, blobs)


def _refused(name: str, **model: Any) -> str:
    with pytest.raises(ConfigError) as err:
        ExperimentConfig(name="contract", backend=name, model=model)
    msg = str(err.value)
    assert "\n" not in msg and repr(name) in msg and "fix:" in msg, msg
    return msg


@pytest.mark.parametrize("name", _PARAMS, scope="class")
class TestBackendContract:
    def test_class_takes_its_facts_from_the_registry(self, contract, name):
        cls = type(contract.backend)
        assert cls.name == name and cls.facts is BACKEND_FACTS[name]
        for attr in ("device", "parallelism", "inits", "honours"):
            assert getattr(cls, attr) == getattr(BACKEND_FACTS[name], attr)

    def test_fit_labels_every_row_on_the_host(self, contract):
        result = contract.baseline
        assert result.centers.shape == (K, 2) and result.centers.dtype == np.float64
        assert result.n_iter >= 1 and result.fit_seconds > 0
        Xh, labels = contract.backend.host_view(contract.X, result.labels)
        Xh, labels = _host(Xh), _host(labels)
        np.testing.assert_allclose(Xh, contract.Xh, rtol=1e-6)  # row for row, on the host
        assert labels.shape == (len(contract.Xh),)
        assert adjusted_rand_score(contract.y, labels) == 1.0
        # Each row's label is its closest centre.
        d2 = ((contract.Xh[:, None, :].astype(np.float64) - result.centers[None]) ** 2).sum(axis=2)
        np.testing.assert_array_equal(labels, d2.argmin(axis=1))

    def test_inertia_is_global(self, contract):
        result = contract.baseline
        labels = contract.labels(result)
        X64 = contract.Xh.astype(np.float64)
        total = float(((X64 - result.centers[labels]) ** 2).sum())
        assert result.inertia == pytest.approx(total, rel=1e-3)
        # Not a part's: worker 0's rows alone would give about half of it.
        assert result.inertia > 0.9 * total

    def test_predict_gives_the_fit_labels(self, contract):
        result = contract.baseline
        predicted = _host(contract.backend.host_view(contract.X, contract.backend.predict(result.model, contract.X))[1])
        np.testing.assert_array_equal(predicted, contract.labels(result))

    def test_native_model_pickles_and_its_sklearn_twin_predicts_alike(self, contract):
        from sklearn.cluster import KMeans

        result = contract.baseline
        native = contract.backend.native_model(result)
        pickle.loads(pickle.dumps(native))  # safe to register
        twin = contract.backend.to_sklearn(native)
        assert isinstance(twin, KMeans)
        idx = np.random.default_rng(1).choice(len(contract.Xh), size=500, replace=False)
        # Rows in the twin's float width: scikit-learn's predict refuses another one.
        sample = contract.Xh[idx].astype(input_dtype(twin))
        np.testing.assert_array_equal(twin.predict(sample), contract.labels(result)[idx])

    def test_registered_twin_predicts_float32_and_float64_alike_under_stock_mlflow(self, contract, name, store,
                                                                                   monkeypatch):
        """The twin as registered, loaded by stock MLflow (``mlflow.sklearn`` and ``mlflow.pyfunc``),
        keeps the fitted centres' dtype and gives the fit's labels to float32 and float64 rows,
        NumPy and pandas alike (scikit-learn's own predict refused the other float width)."""
        import warnings

        import mlflow
        import pandas as pd

        from toolkit.registry import Registration, log_and_register
        from toolkit.tracking import tracked_run

        monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # stock mlflow.sklearn's opt-in
        result = contract.baseline
        native = contract.backend.native_model(result)
        twin = contract.backend.to_sklearn(native)
        fitted = input_dtype(twin)
        model_name = f"contract-{name}"
        with tracked_run("contract-twins", name) as run_id:
            reg = log_and_register(native, twin, contract.Xh[:500], Registration(
                run_id=run_id, backend=name, native_name=model_name, sklearn_name=f"{model_name}-sklearn",
                feature_names=["x0", "x1"]))
        uri = f"models:/{model_name}-sklearn/{reg.sklearn_version}"
        plain, pyfunc = mlflow.sklearn.load_model(uri), mlflow.pyfunc.load_model(uri)
        assert split_centered(plain)[0].cluster_centers_.dtype == fitted  # the fitted width is kept
        expected = contract.labels(result)
        for dtype in (np.float32, np.float64):
            X = contract.Xh.astype(dtype)
            for rows in (X, pd.DataFrame(X, columns=["x0", "x1"])):
                for loaded in (plain, pyfunc):
                    with warnings.catch_warnings():  # an array has no column names: scikit-learn says so
                        warnings.simplefilter("ignore", UserWarning)
                        labels = np.asarray(loaded.predict(rows)).ravel()
                    np.testing.assert_array_equal(labels, expected, err_msg=f"{type(loaded).__name__} {dtype}")

    # -- every honoured hyperparameter does what it says -------------------------------------
    def test_n_clusters_sets_the_number_of_centres(self, contract):
        result = contract.fit(n_clusters=3, init=contract.init("random"))
        assert result.centers.shape == (3, 2)
        assert set(np.unique(contract.labels(result))) == {0, 1, 2}

    def test_max_iter_and_tol_bound_the_iterations(self, contract):
        rand = contract.init("random")
        # A random init starts from data rows, away from the blob means: >1 iteration to converge.
        assert contract.fit(init=rand).n_iter > 1
        assert contract.fit(init=rand, max_iter=1).n_iter == 1
        # A huge tolerance stops after the first iteration.
        assert contract.fit(init=rand, tol=1e3).n_iter == 1

    def test_random_state_seeds_the_init(self, contract):
        rand = contract.init("random")
        a = contract.fit(init=rand, max_iter=1).centers
        again = contract.backend.fit(contract.X, ModelConfig(n_clusters=K, init=rand, max_iter=1, random_state=0))
        np.testing.assert_array_equal(again.centers, a)  # same seed, same fit
        b = contract.fit(init=rand, max_iter=1, random_state=1).centers
        assert not np.allclose(np.sort(a, axis=0), np.sort(b, axis=0))

    def test_every_accepted_init_runs_and_others_are_refused(self, contract, name):
        for init in contract.facts.inits:
            result = contract.fit(init=init)
            assert result.centers.shape == (K, 2) and np.isfinite(result.inertia)
        for init in set(INITS) - set(contract.facts.inits):
            assert f"model.init={init!r}" in _refused(name, init=init)
            with pytest.raises(ConfigError, match=repr(name)):
                contract.backend.validate(ModelConfig(init=init), 100)

    def test_n_init_keeps_the_best_of_several_inits(self, contract, name):
        rand = contract.init("random")
        if "n_init" not in contract.facts.honours:
            assert "model.n_init=3" in _refused(name, init=rand, n_init=3)
            ExperimentConfig(name="contract", backend=name, model={"init": rand, "n_init": 1})
            return
        # On structureless data every init ends in its own optimum; n_init=3 keeps the best of
        # three, the first of which is the n_init=1 run (same seed): never worse, and with this
        # seed strictly better on every backend (the fits are deterministic).  Ten iterations are
        # enough to tell the runs apart (uniform data converges slowly; dask-ml pays a round trip
        # each, which is why one seed, not two).
        common = {"n_clusters": 8, "init": rand, "max_iter": 10, "random_state": 0}
        one = contract.fit("uniform", **common).inertia
        best = contract.fit("uniform", **common, n_init=3).inertia
        assert best < one * (1 - 1e-6)

    def test_oversampling_factor_shapes_the_scalable_init(self, contract, name):
        param = "oversampling_factor"
        if param not in contract.facts.honours:
            assert f"model.{param}=5.0" in _refused(name, init=contract.facts.inits[0], oversampling_factor=5.0)
            return
        acting = [i for i in INIT_SPECIFIC[param] if i in contract.facts.inits]
        others = [i for i in contract.facts.inits if i not in acting]
        if others:  # ignored by the other inits, so refused with them
            assert f"model.{param}=5.0" in _refused(name, init=others[0], oversampling_factor=5.0)
        a = contract.fit("uniform", n_clusters=8, init=acting[0], max_iter=1, oversampling_factor=0.5)
        b = contract.fit("uniform", n_clusters=8, init=acting[0], max_iter=1, oversampling_factor=4.0)
        assert not np.allclose(np.sort(a.centers, axis=0), np.sort(b.centers, axis=0))

    def test_what_is_not_honoured_is_refused_unless_left_at_its_default(self, contract, name):
        init = contract.init("k-means||", "k-means++", "random")  # one oversampling acts with
        for param in set(HYPERPARAMETERS) - set(contract.facts.honours):
            default = ModelConfig.model_fields[param].default
            ExperimentConfig(name="contract", backend=name, model={"init": init, param: default})
            value = default * 2 + 1
            assert f"model.{param}=" in _refused(name, init=init, **{param: value})


# -- the registry ---------------------------------------------------------------------------------
def _class_in_source(module: str, cls: str) -> str | None:
    """The ``name`` the class ``cls`` of ``module`` declares, read from its source (no import)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"module {module} not found"
    tree = ast.parse(Path(spec.origin).read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for stmt in node.body:
                target = getattr(stmt, "target", None) or (getattr(stmt, "targets", None) or [None])[0]
                if isinstance(target, ast.Name) and target.id == "name":
                    return ast.literal_eval(stmt.value)
    return None


@pytest.mark.parametrize("name", list(BACKEND_FACTS))
def test_registry_entry_resolves_to_a_class_of_that_name(name):
    module, _, cls = BACKENDS[name].partition(":")
    assert BACKENDS[name] == BACKEND_FACTS[name].target
    assert _class_in_source(module, cls) == name
    if name in _NEEDS_GPU and importlib.util.find_spec("cuml") is None:
        return  # the source says it; the class itself is imported where cuML is
    got = get_backend(name)
    assert got is getattr(importlib.import_module(module), cls)
    assert got.name == name and got.facts is BACKEND_FACTS[name]
