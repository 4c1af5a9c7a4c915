"""Stock MLflow paths against an attacker who can write only the artifact store (issue finding 1).

Each tampering is made the way such an attacker would make it: in the files of a registered
version's LoggedModel (its ``artifact_location``) in a real sqlite store.

(a) the twin's MLmodel says ``loader_module: mlflow.sklearn``, ``serialization_format:
    cloudpickle``, ``pickled_model: model.pkl``, and a planted ``model.pkl`` runs ``touch <marker>``;
(b) the native model's MLmodel gets an ``sklearn`` flavor (and pyfunc loader) naming a planted pickle;
(c) a pickle in ``model.skops``, its MLmodel saying ``serialization_format: pickle``;
(d) ``model.skops`` swapped in from another version of the same twin;
(e) the ``loader_module`` redirect that ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` does not cover:
    the native model's pyfunc flavor names a module planted in a ``code`` folder of the model.

What stock MLflow (3.x) does, asserted as it is: ``mlflow.pyfunc.load_model`` and
``mlflow.sklearn.load_model`` run (a)-(c) and load (d) by default; with
``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`` they refuse (a)-(c), ``mlflow.sklearn.load_model``
refuses every model (skops included, the untampered twin too), and (e) still runs its code.
(``mlflow models serve`` loads through ``mlflow.pyfunc.load_model`` in its server process.)
Where the project's paths are used -- ``load_predictor``, the native flavor, ``promote``, the
``predict``, ``serve`` and ``verify`` entry points -- every tampering is refused in one line and
the marker never appears; ``serve`` starts no server.  One real server (``python -m
mlproject.serve``, as ``mlflow run . -e serve`` runs it) serves an untampered twin.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from _mlflow_run import REPO, run_env
from _payloads import Boom as _Boom
from _servers import free_port, stop, wait_ready
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sklearn.cluster import KMeans

from mlproject._cli import run_main
from toolkit.convert import centers_of, to_sklearn
from toolkit.errors import ToolkitError
from toolkit.registry import Registration, flavor, log_and_register, promote
from toolkit.serving import load_predictor
from toolkit.tracking import tracked_run

FEATURES = ["x0", "x1"]
PICKLE_FLAG = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
TAMPERINGS = ("a", "b", "c", "d", "e")



@dataclass
class Tampered:
    """A registered model whose stored files were changed: the URI to load it by, the native
    registered model ``promote`` works on, the marker its payload would create."""

    key: str
    uri: str
    registered: str  # the registered model the URI names (what verify -P model_name checks)
    native: str
    marker: Path
    files: tuple[str, ...]  # the changed files: a refusal names one of them


def _fit(X: np.ndarray, seed: int = 0) -> KMeans:
    return KMeans(n_clusters=6, n_init=1, random_state=seed).fit(X)


def _register(name: str, X: np.ndarray, seed: int = 0, **kwargs) -> None:
    model = _fit(X, seed)
    with tracked_run("stock-paths", name) as run_id:
        log_and_register(model, to_sklearn(model), X[:500], Registration(
            run_id=run_id, backend="sklearn", native_name=name, sklearn_name=f"{name}-sklearn",
            feature_names=FEATURES, **kwargs))


def _storage(mlc: MlflowClient, name: str, version: str = "1") -> Path:
    """A registered version's files: its source -> LoggedModel -> artifact location."""
    mv = mlc.get_model_version(name, version)
    assert mv.source.startswith("models:/m-")
    return Path(mlc.get_logged_model(mv.source[len("models:/"):]).artifact_location.removeprefix("file://"))


def _edit(folder: Path, change) -> None:
    conf = yaml.safe_load((folder / "MLmodel").read_text())
    change(conf)
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))


@pytest.fixture(scope="module")
def mlc(store):
    return MlflowClient(tracking_uri=store, registry_uri=store)


@pytest.fixture(scope="module")
def tampered(store, mlc, blobs_small, tmp_path_factory) -> dict[str, Tampered]:
    """The five tampered models, and an untampered one (``clean``), in the module's store."""
    X, _ = blobs_small
    markers = tmp_path_factory.mktemp("markers")
    out: dict[str, Tampered] = {}
    for key in (*TAMPERINGS, "clean"):
        _register(f"stock-{key}", X)
    _register("stock-d", X, seed=3, stable_labels=False)  # v2: other centres, its skops to swap in

    twin = _storage(mlc, "stock-a-sklearn")
    marker = markers / "a"

    def loader_to_cloudpickle(conf):
        conf["flavors"]["python_function"].update(loader_module="mlflow.sklearn", model_path="model.pkl")
        conf["flavors"]["sklearn"].update(serialization_format="cloudpickle", pickled_model="model.pkl")

    _edit(twin, loader_to_cloudpickle)
    (twin / "model.pkl").write_bytes(pickle.dumps(_Boom(marker)))
    out["a"] = Tampered("a", "models:/stock-a-sklearn/1", "stock-a-sklearn", "stock-a", marker,
                        ("MLmodel", "model.pkl"))

    native = _storage(mlc, "stock-b")
    marker = markers / "b"

    def sklearn_flavor(conf):
        conf["flavors"]["python_function"] = {"loader_module": "mlflow.sklearn", "model_path": "model.pkl",
                                              "python_version": "3.11"}
        conf["flavors"]["sklearn"] = {"pickled_model": "model.pkl", "serialization_format": "cloudpickle",
                                      "sklearn_version": "1.0"}

    _edit(native, sklearn_flavor)
    (native / "model.pkl").write_bytes(pickle.dumps(_Boom(marker)))
    out["b"] = Tampered("b", "models:/stock-b/1", "stock-b", "stock-b", marker, ("MLmodel", "model.pkl"))

    twin = _storage(mlc, "stock-c-sklearn")
    marker = markers / "c"

    def skops_is_pickle(conf):
        conf["flavors"]["python_function"].update(loader_module="mlflow.sklearn")
        conf["flavors"]["sklearn"].update(serialization_format="pickle")

    _edit(twin, skops_is_pickle)
    (twin / "model.skops").write_bytes(pickle.dumps(_Boom(marker)))
    out["c"] = Tampered("c", "models:/stock-c-sklearn/1", "stock-c-sklearn", "stock-c", marker,
                        ("MLmodel", "model.skops"))

    v1, v2 = _storage(mlc, "stock-d-sklearn", "1"), _storage(mlc, "stock-d-sklearn", "2")
    assert (v1 / "model.skops").read_bytes() != (v2 / "model.skops").read_bytes()
    shutil.copyfile(v2 / "model.skops", v1 / "model.skops")
    out["d"] = Tampered("d", "models:/stock-d-sklearn/1", "stock-d-sklearn", "stock-d", markers / "d",
                        ("model.skops",))

    native = _storage(mlc, "stock-e")
    marker = markers / "e"

    def planted_loader(conf):
        conf["flavors"]["python_function"].update(loader_module="stock_e_loader", code="code")

    _edit(native, planted_loader)
    (native / "code").mkdir()
    (native / "code" / "stock_e_loader.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n\n"
        "def _load_pyfunc(path, model_config=None):\n    raise RuntimeError('planted loader ran')\n")
    out["e"] = Tampered("e", "models:/stock-e/1", "stock-e", "stock-e", marker,
                        ("MLmodel", "code/stock_e_loader.py"))
    return out


@pytest.fixture()
def stock_env(monkeypatch):
    """MLflow's default (pickle allowed); a planted module never stays importable afterwards."""
    monkeypatch.delenv(PICKLE_FLAG, raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield monkeypatch
    sys.modules.pop("stock_e_loader", None)


def _ran(t: Tampered) -> bool:
    """Whether the payload ran (and reset for the next try)."""
    ran = t.marker.exists()
    t.marker.unlink(missing_ok=True)
    return ran


# -- stock MLflow: what MLFLOW_ALLOW_PICKLE_DESERIALIZATION stops, and what it does not ---------------


@pytest.mark.parametrize("key", ["a", "b", "c"])
@pytest.mark.parametrize("loader", ["pyfunc", "sklearn"])
def test_stock_loaders_run_a_planted_pickle_unless_pickle_is_off(tampered, stock_env, key, loader):
    t = tampered[key]
    load = mlflow.pyfunc.load_model if loader == "pyfunc" else mlflow.sklearn.load_model
    _ran(t)
    load(t.uri)  # MLflow's default: the pickle the MLmodel names is unpickled
    assert _ran(t), f"stock mlflow.{loader}.load_model no longer runs tampering ({key})"

    stock_env.setenv(PICKLE_FLAG, "false")
    with pytest.raises(MlflowException, match=PICKLE_FLAG):
        load(t.uri)
    assert not _ran(t)


def test_stock_sklearn_loader_takes_a_swapped_skops_file_and_pickle_off_refuses_every_twin(
    tampered, stock_env, mlc, blobs_small
):
    X, _ = blobs_small
    t = tampered["d"]
    swapped = mlflow.sklearn.load_model(t.uri)  # no check: v2's centres under v1's name
    other = mlflow.sklearn.load_model("models:/stock-d-sklearn/2")
    assert np.array_equal(centers_of(swapped), centers_of(other))
    # Through pyfunc the twin names the project's loader (unless the MLmodel is edited: (a)).
    with pytest.raises(ToolkitError, match=r"model\.skops"):
        mlflow.pyfunc.load_model(t.uri)

    stock_env.setenv(PICKLE_FLAG, "false")
    # MLflow 3.x gates skops too: mlflow.sklearn.load_model loads no model at all, the intact twin
    # included; the project's pyfunc loader still serves it.
    for uri in (t.uri, "models:/stock-clean-sklearn/1"):
        with pytest.raises(MlflowException, match=PICKLE_FLAG):
            mlflow.sklearn.load_model(uri)
    served = mlflow.pyfunc.load_model("models:/stock-clean-sklearn/1")
    assert np.array_equal(served.predict(X[:50]), load_predictor("models:/stock-clean-sklearn/1").predict(X[:50]))


def test_pickle_off_does_not_stop_a_loader_module_redirect(tampered, stock_env):
    t = tampered["e"]
    stock_env.setenv(PICKLE_FLAG, "false")
    with pytest.raises(RuntimeError, match="planted loader ran"):
        mlflow.pyfunc.load_model(t.uri)
    assert _ran(t), "the planted loader_module no longer runs under MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false"


# -- the project's paths: every tampering refused in one line, nothing run ---------------------------


def _one_line(message: str, t: Tampered) -> None:
    assert "\n" not in message.strip() and " -- fix: " in message, message
    assert any(f in message for f in t.files), message


def _entry(module: str, monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """``python -m mlproject.<module> argv...`` in-process: (exit status, stdout, stderr)."""
    import importlib

    main = importlib.import_module(f"mlproject.{module}").main
    monkeypatch.setattr(sys, "argv", [f"mlproject.{module}", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_main(main)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _servers() -> dict[int, str]:
    import psutil

    procs = {p.pid: " ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)}
    return {pid: c for pid, c in procs.items() if "models serve" in c or "uvicorn" in c}


def _no_server_started(before: dict[int, str]) -> None:
    """No server process among this process's children but those running before the call (a
    session fixture's tracking server is one)."""
    started = {pid: c for pid, c in _servers().items() if pid not in before}
    assert not started, started


@pytest.mark.parametrize("key", TAMPERINGS)
def test_project_paths_refuse_every_tampering(tampered, stock_env, blobs_small, tmp_path, capsys, key):
    X, _ = blobs_small
    t = tampered[key]
    for call in (lambda: load_predictor(t.uri), lambda: flavor.load_model(t.uri),
                 lambda: promote(t.native, X)):
        with pytest.raises(ToolkitError) as err:
            call()
        _one_line(str(err.value), t)
        assert not _ran(t)  # after each load path, not only at the end

    private = tmp_path / "tmp"
    private.mkdir()
    stock_env.setattr(tempfile, "tempdir", str(private))
    stock_env.delenv("KMEANS_LIFECYCLE_ENTRY_POINT", raising=False)
    out = tmp_path / "out.parquet"
    code, _, err = _entry("predict", stock_env, capsys, "--model-uri", t.uri, "--input", str(tmp_path / "in.csv"),
                          "--output", str(out))
    assert code == 2 and not out.exists(), err
    _one_line(err, t)
    assert not _ran(t)

    before = _servers()
    code, said, err = _entry("serve", stock_env, capsys, "--model-uri", t.uri, "--port", str(free_port()))
    assert code == 2 and "serving it" not in said, said
    _one_line(err, t)
    _no_server_started(before)
    assert list(private.iterdir()) == []  # no verified copy left behind
    assert not _ran(t)

    code, _, err = _entry("verify", stock_env, capsys, "--model-name", t.registered)
    lines = err.strip().splitlines()
    assert code == 2 and lines[0].startswith(f"FAILED {t.uri}: ") and lines[-1].startswith("error: "), err
    _one_line(lines[0], t)
    assert not _ran(t)


def test_verify_checks_every_version_for_a_ci_gate(tampered, monkeypatch, capsys):
    monkeypatch.delenv("KMEANS_LIFECYCLE_ENTRY_POINT", raising=False)
    code, said, err = _entry("verify", monkeypatch, capsys, "--model-name", "stock-d-sklearn")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 2, err  # v1 swapped, v2 intact
    assert lines[0].startswith("FAILED models:/stock-d-sklearn/1: ") and "model.skops" in lines[0]
    assert lines[1].startswith("error: 1 of 2 model(s) failed verification")

    code, said, err = _entry("verify", monkeypatch, capsys, "--model-name", "stock-clean")
    assert code == 0 and "verified 1 version(s) of registered model 'stock-clean': 1 passed, 0 failed" in said, err
    code, said, err = _entry("verify", monkeypatch, capsys, "--model-uri", "models:/stock-clean-sklearn/1")
    assert code == 0 and "1 passed" in said, err
    for argv in ((), ("--model-uri", "models:/stock-clean/1", "--model-name", "stock-clean")):
        code, _, err = _entry("verify", monkeypatch, capsys, *argv)
        assert code == 2 and err.count("\n") == 1 and "give one model URI or one registered model name" in err
    code, _, err = _entry("verify", monkeypatch, capsys, "--model-name", "no-such-model")
    assert code == 2 and err.startswith("error: registered model 'no-such-model' does not exist"), err


def test_serve_refuses_bad_options_and_models_it_would_not_serve(store, monkeypatch, capsys, tmp_path):
    from mlproject import serve
    from toolkit.errors import ModelError

    monkeypatch.delenv("KMEANS_LIFECYCLE_ENTRY_POINT", raising=False)
    for argv, said in ((["--port", "70000"], "port='70000' is not a whole number from 1 to 65535"),
                       (["--workers", "0"], "workers='0'"), (["--host", " "], "host=' '")):
        code, _, err = _entry("serve", monkeypatch, capsys, "--model-uri", "models:/x/1", *argv)
        assert code == 2 and err.count("\n") == 1 and said in err, err
    with socket.socket() as taken:  # checked before the model is: nothing starts to fail later
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = _entry("serve", monkeypatch, capsys, "--model-uri", "models:/x/1", "--port", str(port))
    assert code == 2 and err == f"error: port {port} on 127.0.0.1 is in use -- fix: pass another, e.g. " \
                                f"--port {port + 1}\n", err
    # A model that names another loader (a twin logged by an older release) is not served.
    (tmp_path / "MLmodel").write_text(yaml.safe_dump(
        {"flavors": {"python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.skops"}}}))
    with pytest.raises(ModelError, match=r"names the pyfunc loader 'mlflow\.sklearn'"):
        serve._check_servable(str(tmp_path), "m")
    env = serve.server_env()
    assert env[PICKLE_FLAG] == "false"
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)


# -- the serve entry point, for real ---------------------------------------------------------------


def _serve_env(store: str, tmp: Path) -> dict[str, str]:
    env = run_env(store, store)
    env["TMPDIR"] = str(tmp)
    env["KMEANS_LIFECYCLE_ENTRY_POINT"] = "serve"  # as `mlflow run . -e serve` starts it
    env.pop(PICKLE_FLAG, None)
    return env


def test_serve_entry_point_refuses_a_tampered_model_before_any_server(tampered, stock_env, capsys, tmp_path):
    """As ``mlflow run . -e serve`` starts it (in-process: the launch is the entry-point tests' subject)."""
    t = tampered["a"]
    private = tmp_path / "tmp"
    private.mkdir()
    stock_env.setattr(tempfile, "tempdir", str(private))
    stock_env.setenv("KMEANS_LIFECYCLE_ENTRY_POINT", "serve")
    before = _servers()
    code, said, err = _entry("serve", stock_env, capsys, "--model-uri", t.uri, "--port", str(free_port()))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    _one_line(lines[0], t)
    assert "serving it" not in said and "mlflow.pyfunc.backend" not in said + err
    _no_server_started(before)
    assert list(private.iterdir()) == [] and not _ran(t)


def _post(base: str, data: list[list[float]]) -> tuple[int, str]:
    body = json.dumps({"dataframe_split": {"columns": FEATURES, "data": data}}).encode()
    request = urllib.request.Request(f"{base}/invocations", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _alive(procs: list) -> list[int]:
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
@pytest.mark.server
def test_serve_entry_point_serves_the_verified_copy_and_stops_cleanly(tampered, store, blobs_small, tmp_path):
    import psutil

    X, _ = blobs_small
    uri = "models:/stock-clean-sklearn@champion"
    expected = load_predictor(uri).predict(X[:200])
    private = tmp_path / "tmp"
    private.mkdir()
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mlproject.serve", "--model-uri", uri, "--port", str(port)],
                                cwd=REPO, env=_serve_env(store, private), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, f"{base}/ping", log, "python -m mlproject.serve")
        status, answer = _post(base, X[:200].astype(float).tolist())
        assert status == 200, answer
        assert np.array_equal(json.loads(answer)["predictions"], expected)

        server = psutil.Process(proc.pid).children(recursive=True)
        assert server, "no server process under the serve entry point"
        (copy,) = [p for p in private.iterdir() if p.name.startswith("kmeans-serve-")]
        assert oct(copy.stat().st_mode & 0o777) == "0o700"
        for p in server:
            assert p.environ().get(PICKLE_FLAG) == "false", p.cmdline()
        (models_serve,) = [p for p in server if "models" in p.cmdline() and "serve" in p.cmdline()]
        assert models_serve.cmdline()[models_serve.cmdline().index("-m", 3) + 1] == str(copy / "model")
        listening = {c.laddr.ip for p in server for c in p.net_connections("inet") if c.status == "LISTEN"}
        assert listening == {"127.0.0.1"}, listening

        os.kill(proc.pid, signal.SIGTERM)  # the entry point only: it forwards the signal
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        deadline = time.monotonic() + 10
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(server)
    finally:
        stop(proc)
    text = log.read_text()
    assert "server stopped by SIGTERM with status 0; the verified copy is removed" in text, text[-3000:]
    assert "made:\n  served registered model stock-clean-sklearn v1" in text and "\nlook: " in text
    assert list(private.iterdir()) == []
