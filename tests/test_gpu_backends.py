"""GPU backends: importable and clearly unavailable without RAPIDS; correct where a GPU is."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from toolkit.backends import get_backend, make_backend
from toolkit.backends.cuml_dask import CumlDaskBackend, host_dask
from toolkit.backends.cuml_single import CUML_INIT, CumlBackend
from toolkit.config import DataConfig, ModelConfig, load_experiment
from toolkit.errors import BackendUnavailableError, ConfigError

REPO = Path(__file__).resolve().parents[1]

_RAPIDS = ("cuml", "cupy", "cudf", "dask_cudf", "dask_cuda", "raft_dask", "rmm")

_IMPORT_BLOCKED = f"""
import sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {_RAPIDS!r}:
            raise ImportError("blocked " + name)
        return None

sys.meta_path.insert(0, _Block())
from sklearn.cluster import KMeans
import numpy as np
from toolkit.backends import get_backend
from toolkit.convert import to_sklearn, assert_equivalent
for name in ("cuml", "cuml-dask"):
    cls = get_backend(name)
    print(cls.name, cls.device, cls.parallelism)
X = np.random.default_rng(0).random((50, 2)).astype(np.float32)
km = KMeans(2, n_init=1, random_state=0).fit(X)
assert_equivalent(to_sklearn(km), km, X)
print(sorted(m for m in sys.modules if m.split(".")[0] in {_RAPIDS!r}))
"""


# -- CPU: importable, validated, clearly unavailable -------------------------------------------
def test_gpu_backend_modules_import_without_rapids():
    """Even with every RAPIDS package made unimportable, the modules and the table load."""
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_BLOCKED], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["cuml gpu trial", "cuml-dask gpu data", "[]"]


def test_backend_classes_describe_themselves():
    assert get_backend("cuml") is CumlBackend and get_backend("cuml-dask") is CumlDaskBackend
    assert CumlBackend.inits == ("k-means||", "k-means++", "random")
    assert CumlBackend.requires == ("cuml", "cupy")
    assert CumlDaskBackend.inits == ("k-means||", "k-means++", "random")
    assert CumlDaskBackend.requires == ("cuml", "cupy", "dask_cudf", "dask_cuda")
    assert CUML_INIT["k-means||"] == "scalable-k-means++"


def test_cuml_dask_fits_kmeanspp_as_its_scalable_form():
    """Multi-GPU cuML has no exact k-means++: every shipped experiment (init k-means++) runs on
    cuml-dask, as k-means||, and loads without a refusal."""
    from toolkit.backends.cuml_dask import MULTI_GPU_INIT

    assert MULTI_GPU_INIT == {"k-means++": "k-means||"}
    backend = CumlDaskBackend(client=None)
    for init in ("k-means++", "k-means||", "random"):
        backend.validate(ModelConfig(n_clusters=3, init=init), 100)
    with pytest.raises(ConfigError, match="larger than"):
        backend.validate(ModelConfig(n_clusters=300, init="random"), 100)
    for path in sorted(Path(REPO / "experiments").glob("*.yaml")):
        assert load_experiment(path, {"backend": "cuml-dask"}).backend == "cuml-dask"


@pytest.mark.skipif(importlib.util.find_spec("cuml") is not None, reason="cuML is installed")
@pytest.mark.parametrize("name", ["cuml", "cuml-dask"])
def test_make_backend_without_cuml_names_the_package(name):
    with pytest.raises(BackendUnavailableError) as err:
        make_backend(name)
    msg = str(err.value)
    assert "'cuml'" in msg and "not installed" in msg
    assert "sklearn" in msg and "\n" not in msg


def _fake_cupy(get_count):
    runtime = types.SimpleNamespace(getDeviceCount=get_count, runtimeGetVersion=lambda: 12080)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


def _no_driver():
    raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient\nmore")


def test_missing_driver_is_named_separately_from_missing_packages(monkeypatch):
    monkeypatch.setattr("toolkit.env.require_packages", lambda *a: None)
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(_no_driver))
    with pytest.raises(BackendUnavailableError) as err:
        CumlBackend.check_available()
    msg = str(err.value)
    assert "GPU" in msg and "cudaErrorInsufficientDriver" in msg
    assert "CPU backend" in msg and "\n" not in msg

    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(lambda: 0))
    with pytest.raises(BackendUnavailableError, match="no CUDA device is visible"):
        CumlBackend.check_available()


@pytest.mark.skipif(importlib.util.find_spec("raft_dask") is not None, reason="raft_dask installed")
def test_cuml_dask_names_the_dask_extra(monkeypatch):
    monkeypatch.setattr("toolkit.env.require_packages", lambda *a: None)
    with pytest.raises(BackendUnavailableError, match=r"'raft_dask'.*cuml-cu13\[dask\] or cuml-cu12\[dask\]"):
        CumlDaskBackend.check_available()


def test_host_view_aligns_labels_with_data(client):
    """host_view's collection handling, exercised on pandas-backed collections."""
    import dask.dataframe as dd
    import pandas as pd

    X = np.arange(40, dtype=np.float32).reshape(20, 2)
    ddf = dd.from_pandas(pd.DataFrame(X, columns=["a", "b"]), npartitions=3)
    labels = ddf["a"].map_partitions(lambda s: (s // 10).astype("int32"), meta=("a", "int32"))
    Xh, lh = CumlDaskBackend(client).host_view(ddf, labels)
    assert Xh.chunks[0] == lh.chunks[0]
    np.testing.assert_array_equal(Xh.compute(), X)
    np.testing.assert_array_equal(lh.compute(), (X[:, 0] // 10).astype(np.int32))
    arr = host_dask(Xh)  # Dask arrays are copied block by block
    np.testing.assert_array_equal(arr.compute(), X)
    unknown = lh.map_blocks(lambda b: b[b >= 0], chunks=((np.nan,) * lh.numblocks[0],))
    assert host_dask(unknown).chunks[0] == lh.chunks[0]  # unknown row chunks get computed


def test_distributed_from_single_checks_datatype_first():
    from toolkit.backends.cuml_dask import distributed_from_single

    with pytest.raises(ConfigError, match="'pandas'"):
        distributed_from_single(object(), None, datatype="pandas")


def test_cuml_dask_fit_validates_a_lazy_dataframe(client, monkeypatch):
    """A Dask DataFrame's shape[0] is lazy: fit must still check n_clusters against the rows."""
    import dask.dataframe as dd
    import pandas as pd

    from toolkit.backends.base import FitResult

    ddf = dd.from_pandas(pd.DataFrame(np.zeros((20, 2), dtype=np.float32)), npartitions=2)
    backend = CumlDaskBackend(client)
    done = FitResult(
        model=None, centers=np.zeros((3, 2)), inertia=0.0, n_iter=1, fit_seconds=0.0, labels=None
    )
    monkeypatch.setattr(backend, "_fit", lambda X, params: done)
    assert backend.fit(ddf, ModelConfig(n_clusters=3, init="random")) is done
    with pytest.raises(ConfigError, match="larger than the 20 samples"):
        backend.fit(ddf, ModelConfig(n_clusters=30, init="random"))


# -- GPU: real fits ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blobs_ds():
    from toolkit.data import load_dataset

    return load_dataset(
        DataConfig(n_samples=20_000, n_features=4, centers=5, cluster_std=0.2, random_state=0)
    )


def _sklearn_reference(X):
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=5, n_init=10, random_state=0).fit(np.asarray(X, dtype=np.float64))


@pytest.mark.gpu
@pytest.mark.parametrize("init", ["k-means||", "k-means++", "random"])
def test_cuml_matches_sklearn(blobs_ds, init):
    import cuml
    from sklearn.metrics import adjusted_rand_score

    from toolkit.convert import assert_equivalent, to_sklearn

    backend = make_backend("cuml")
    X = backend.prepare(blobs_ds)
    result = backend.fit(X, ModelConfig(n_clusters=5, init=init, n_init=10))
    Xh, labels = backend.host_view(X, result.labels)
    ref = _sklearn_reference(Xh)
    assert adjusted_rand_score(ref.labels_, labels) == 1.0
    assert result.inertia == pytest.approx(ref.inertia_, rel=1e-3)
    assert result.centers.dtype == np.float64 and result.centers.shape == (5, 4)
    native = backend.native_model(result)
    assert type(native) is cuml.KMeans
    np.testing.assert_array_equal(backend.predict(native, X), labels)
    assert_equivalent(to_sklearn(native), native, Xh[:2000])
    assert "cuda-runtime" in backend.library_versions()


@pytest.mark.gpu
def test_cuml_dask_matches_sklearn_and_round_trips(gpu_client, blobs_ds):
    import cuml
    from sklearn.metrics import adjusted_rand_score

    from toolkit.backends.cuml_dask import distributed_from_single
    from toolkit.convert import assert_equivalent, to_numpy, to_sklearn

    backend = make_backend("cuml-dask", gpu_client)
    X = backend.prepare(blobs_ds)
    result = backend.fit(X, ModelConfig(n_clusters=5, init="k-means||", n_init=3))
    Xh, labels = backend.host_view(X, result.labels)
    Xn, ln = Xh.compute(), labels.compute()
    assert ln.shape == (blobs_ds.n_samples,)
    ref = _sklearn_reference(Xn)
    assert adjusted_rand_score(ref.labels_, ln) == 1.0
    assert result.inertia == pytest.approx(ref.inertia_, rel=1e-3)  # global, not worker 0's

    native = backend.native_model(result)
    assert type(native) is cuml.KMeans  # plain single-GPU, not KMeansMG
    assert native.inertia_ == pytest.approx(result.inertia)
    np.testing.assert_array_equal(to_numpy(native.predict(Xn)), ln)
    assert_equivalent(to_sklearn(result.model), native, Xn[:2000])

    dist = distributed_from_single(native, gpu_client)
    served = host_dask(dist.predict(X)).compute()
    np.testing.assert_array_equal(served, to_numpy(native.predict(Xn)))


@pytest.mark.gpu
def test_gpu_backends_read_files(gpu_client, blobs_ds, tmp_path):
    import pandas as pd

    from toolkit.data import load_dataset

    frame = pd.DataFrame(blobs_ds.X, columns=blobs_ds.feature_names)
    frame["y"] = blobs_ds.y
    frame.iloc[:10_000].to_csv(tmp_path / "a.csv", index=False)
    frame.iloc[10_000:].to_csv(tmp_path / "b.csv", index=False)
    ds = load_dataset(DataConfig(source="file", path=str(tmp_path / "*.csv"), label_column="y"))

    X1 = make_backend("cuml").prepare(ds)
    assert X1.shape == (20_000, 4) and str(X1.dtype) == "float32"
    X2 = make_backend("cuml-dask", gpu_client).prepare(ds)
    assert list(X2.columns) == blobs_ds.feature_names
    np.testing.assert_allclose(host_dask(X2).compute(), blobs_ds.X, rtol=1e-6)
