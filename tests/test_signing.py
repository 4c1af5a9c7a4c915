"""Signed models: a model's files are trusted because a trusted key signed them, not because the
tracking store's tags say so (issue 22, finding 2).

Everything runs against a real sqlite MLflow store; the attacker edits the artifact store and
the store's tags directly, as someone with write access to both would.  A malicious pickle
would create a marker file; every test asserts it never appears.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import stat
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from _payloads import Boom as _Boom
from mlflow import MlflowClient
from sklearn.cluster import KMeans

from toolkit.errors import ConfigError, ModelError
from toolkit.registry import Registration, flavor, integrity, log_and_register, promote, signing
from toolkit.serving import load_predictor
from toolkit.tracking import tracked_run

REPO = Path(__file__).resolve().parents[1]
FEATURES = ["x0", "x1"]


@pytest.fixture(scope="module")
def mlc(store):
    return MlflowClient(tracking_uri=store, registry_uri=store)



def _keys(tmp_path: Path, name: str, algorithm: str = "ecdsa-p256") -> tuple[Path, Path]:
    return signing.write_key_pair(tmp_path / name, algorithm)


def _register(name: str, X: np.ndarray, **kwargs):
    model = KMeans(n_clusters=6, n_init=1, random_state=0).fit(X)
    with tracked_run("signing", name) as run_id:
        reg = log_and_register(model, model, X[:300], Registration(
            run_id=run_id, backend="sklearn", native_name=name, sklearn_name=f"{name}-sklearn",
            feature_names=FEATURES, **kwargs))
    return reg, model


def _storage(mlc, name: str, version: str = "1") -> Path:
    mv = mlc.get_model_version(name, version)
    return Path(mlc.get_logged_model(mv.source[len("models:/"):]).artifact_location.removeprefix("file://"))


def _refused(call, *needles: str) -> str:
    with pytest.raises(ModelError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and " -- fix: " in message, message
    for needle in needles:
        assert needle in message, message
    return message


def _predict_cli(uri: str, tmp_path: Path, monkeypatch, capsys) -> tuple[int, str]:
    """``python -m mlproject.predict`` on this store, in-process (``run_main`` with ``sys.argv``
    patched, as the program runs it): (exit status, stderr).  The launch itself is covered by the
    entry-point tests."""
    from mlproject import predict
    from mlproject._cli import run_main

    (tmp_path / "in.csv").write_text("x0,x1\n0.0,0.0\n")
    monkeypatch.setattr(sys, "argv", ["mlproject.predict", "--model-uri", uri, "--input", str(tmp_path / "in.csv"),
                                      "--output", str(tmp_path / "out")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        run_main(predict.main)
    return done.value.code, capsys.readouterr().err


def _serve_cli(uri: str, tmp_path: Path, monkeypatch, capsys) -> tuple[int, str]:
    """``python -m mlproject.serve`` in-process, its temporary folder private: (exit status, stderr)."""
    import socket
    import tempfile

    from mlproject import serve
    from mlproject._cli import run_main

    (tmp_path / "tmp").mkdir(exist_ok=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.delenv("KMEANS_LIFECYCLE_ENTRY_POINT", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(sys, "argv", ["mlproject.serve", "--model-uri", uri, "--port", str(port)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        run_main(serve.main)
    return done.value.code, capsys.readouterr().err


# -- the layout: OpenSSF model-signing ----------------------------------------------------------


@pytest.fixture(scope="module")
def layout(store, mlc, blobs_small, tmp_path_factory) -> tuple[Path, Path]:
    """One model registered with an ECDSA key pair, read (never changed) by the layout and interop
    tests: (the native model's folder, the public key)."""
    private, public = _keys(tmp_path_factory.mktemp("layout-keys"), "k")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(signing.SIGNING_KEY_ENV, str(private))
        mp.setenv(signing.TRUSTED_KEYS_ENV, str(public))
        _register("layout", blobs_small[0])
    return _storage(mlc, "layout"), public


def test_signature_is_a_model_signing_bundle_over_every_file(layout, mlc):
    public = layout[1]
    for reg_name, fmt in (("layout", "kmeans-npy"), ("layout-sklearn", "skops")):
        folder = _storage(mlc, reg_name)
        bundle = json.loads((folder / "model.sig").read_text())
        assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
        envelope = bundle["dsseEnvelope"]
        assert envelope["payloadType"] == "application/vnd.in-toto+json"
        statement = json.loads(base64.b64decode(envelope["payload"]))
        assert statement["_type"] == "https://in-toto.io/Statement/v1"
        assert statement["predicateType"] == "https://model_signing/signature/v1.0"
        predicate = statement["predicate"]
        signed = {r["name"]: r["digest"] for r in predicate["resources"]}
        on_disk = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in folder.rglob("*") if p.is_file() and p.name != "model.sig"}
        assert signed == on_disk and "MLmodel" in signed
        facts = predicate["kmeans_lifecycle"]
        assert facts["format"] == fmt and facts["centers_shape"] == "6x2" and facts["model_id"].startswith("m-")
        assert facts["format_version"] == "1" and facts["toolkit_version"]
        assert bundle["verificationMaterial"]["publicKey"]["hint"] == hashlib.sha256(public.read_bytes()).hexdigest()


def test_the_real_model_signing_package_verifies_our_signature(layout, tmp_path):
    """Interop: ``model_signing`` (the OpenSSF reference) verifies a logged model's folder with
    the public key, and refuses it once a file changes."""
    import shutil

    model_signing = pytest.importorskip("model_signing")
    folder, public = tmp_path / "model", layout[1]
    shutil.copytree(layout[0], folder)  # a copy: the shared model stays as registered
    verifier = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public)
    verifier.verify(folder, folder / "model.sig")
    np.save(folder / "kmeans" / "centers.npy", np.zeros((6, 2), np.float32), allow_pickle=False)
    with pytest.raises(ValueError, match=r"centers\.npy"):
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public).verify(
            folder, folder / "model.sig")


# -- finding 2: write access to artifacts AND tags ------------------------------------------------


def _plant_pickle(mlc, name: str, folder: Path, marker: Path) -> None:
    """The attack of finding 2: a pickle in place of the model's files, the MLmodel saying
    pickle, and the checksum manifest and format rewritten on the LoggedModel and the version."""
    for f in (folder / "kmeans").iterdir():
        f.unlink()
    (folder / "kmeans" / "model.pkl").write_bytes(pickle.dumps(_Boom(marker)))
    conf = yaml.safe_load((folder / "MLmodel").read_text())
    conf["flavors"][flavor.FLAVOR_NAME]["serialization"] = "pickle"
    (folder / "MLmodel").write_text(yaml.safe_dump(conf))
    _forge_tags(mlc, name, folder)


def _forge_tags(mlc, name: str, folder: Path) -> None:
    """The checksums of the folder as it is now, and format pickle, on the LoggedModel and version."""
    manifest = integrity.manifest_of(str(folder))
    forged = {integrity.MANIFEST_TAG: json.dumps(manifest, sort_keys=True, separators=(",", ":")),
              integrity.FORMAT_TAG: "pickle"}
    mv = mlc.get_model_version(name, "1")
    mlc.set_logged_model_tags(mv.source[len("models:/"):], forged)
    for key, value in forged.items():
        mlc.set_model_version_tag(name, "1", key, value)


def test_rewritten_manifest_and_format_tags_with_a_planted_pickle_are_refused(
    store, mlc, blobs_small, tmp_path, monkeypatch, capsys
):
    X, _ = blobs_small
    name = "finding-2"
    _register(name, X)
    folder = _storage(mlc, name)
    marker = tmp_path / "pwned"
    _plant_pickle(mlc, name, folder, marker)
    uri = f"models:/{name}/1"
    # The attacker even opts the user in to pickles: the signature still decides.
    monkeypatch.setenv(signing.ALLOW_PICKLE_ENV, "1")
    _refused(lambda: load_predictor(uri), "integrity check")
    _refused(lambda: flavor.load_model(uri, allow_pickle=True), "integrity check")
    code, err = _predict_cli(uri, tmp_path, monkeypatch, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "integrity check" in lines[0], err
    assert not marker.exists()
    # promote and the serve entry point (before any copy or server) refuse it too.
    _refused(lambda: promote(name, X), "integrity check")
    code, err = _serve_cli(uri, tmp_path, monkeypatch, capsys)
    assert code == 2 and err.count("\n") == 1 and "integrity check" in err, err
    assert list((tmp_path / "tmp").iterdir()) == []  # no verified copy made
    assert not marker.exists()

    # Without the signature the model is unsigned: refused, and even trusted as unsigned it
    # never unpickles (pickle needs a signature).
    (folder / "model.sig").unlink()
    _forge_tags(mlc, name, folder)
    _refused(lambda: flavor.load_model(uri), "not signed", signing.ALLOW_UNSIGNED_ENV)
    monkeypatch.setenv(signing.ALLOW_UNSIGNED_ENV, "1")
    _refused(lambda: load_predictor(uri), "unsigned pickle")
    _refused(lambda: flavor.load_model(uri, allow_pickle=True), "unsigned pickle")
    assert not marker.exists()
    # Stock pyfunc: the MLmodel still names the project's loader, which refuses.  (Last: for a
    # local store MLflow writes registered_model_meta into the model's own folder.)
    with pytest.raises(ModelError, match="unsigned pickle"):
        mlflow.pyfunc.load_model(uri)
    assert not marker.exists()


def test_a_model_re_signed_with_an_untrusted_key_is_refused(store, mlc, blobs_small, tmp_path, monkeypatch):
    X, _ = blobs_small
    name = "untrusted"
    ours, ours_pub = _keys(tmp_path, "ours", "ed25519")
    theirs, _ = _keys(tmp_path, "theirs")
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, str(ours))
    monkeypatch.setenv(signing.TRUSTED_KEYS_ENV, str(ours_pub.parent))  # a folder of trusted keys
    _register(name, X)
    uri = f"models:/{name}/1"
    assert flavor.load_model(uri) is not None  # Ed25519, trusted through the folder
    folder = _storage(mlc, name)
    marker = tmp_path / "pwned"
    _plant_pickle(mlc, name, folder, marker)
    # The attacker signs the planted files with a key of their own.
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(theirs.read_bytes(), None)
    mv = mlc.get_model_version(name, "1")
    signing.sign_dir(str(folder), integrity.manifest_of(str(folder)),
                     {"format": "pickle", "model_class": "sklearn.cluster._kmeans.KMeans", "centers_shape": "6x2",
                      "model_id": mv.source[len("models:/"):]}, key)
    monkeypatch.setenv(signing.ALLOW_PICKLE_ENV, "1")
    for call in (lambda: load_predictor(uri), lambda: flavor.load_model(uri)):
        _refused(call, "not trusted here", signing.TRUSTED_KEYS_ENV)
    assert not marker.exists()


# -- pickle: signed AND opted in ----------------------------------------------------------------


def test_a_signed_pickle_model_loads_only_when_the_user_opts_in(store, mlc, blobs_small, monkeypatch):
    X, _ = blobs_small
    name = "signed-pickle"
    _, model = _register(name, X, native_serialization="pickle")
    uri = f"models:/{name}/1"
    monkeypatch.delenv(signing.ALLOW_PICKLE_ENV, raising=False)
    _refused(lambda: flavor.load_model(uri), "pickle", signing.ALLOW_PICKLE_ENV)
    _refused(lambda: load_predictor(uri), "pickle", signing.ALLOW_PICKLE_ENV)
    assert np.array_equal(load_predictor(uri, allow_pickle=True).predict(X), model.predict(X))
    monkeypatch.setenv(signing.ALLOW_PICKLE_ENV, "1")
    assert np.array_equal(flavor.load_model(uri).predict(X), model.predict(X))
    _refused(lambda: flavor.load_model(uri, allow_pickle=False), signing.ALLOW_PICKLE_ENV)


# -- unsigned models of the previous release ------------------------------------------------------


def test_an_unsigned_model_is_refused_unless_the_user_trusts_the_stores_checksums(
    store, mlc, blobs_small, monkeypatch, capsys
):
    X, _ = blobs_small
    name = "unsigned"
    with monkeypatch.context() as mp:  # as the previous release logged: checksums in tags, no model.sig
        mp.setattr(signing, "sign_dir", lambda *a, **k: "")
        _, model = _register(name, X)
    folder = _storage(mlc, name)
    assert not (folder / "model.sig").exists()
    uri = f"models:/{name}@champion"
    _refused(lambda: load_predictor(uri), "not signed", f"{signing.ALLOW_UNSIGNED_ENV}=1")
    monkeypatch.setenv(signing.ALLOW_UNSIGNED_ENV, "1")
    capsys.readouterr()
    assert np.array_equal(load_predictor(uri).predict(X), model.predict(X))
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "unsigned" in out, out
    # Still checked against the store's checksums.
    (folder / "requirements.txt").write_text("evil\n")
    _refused(lambda: flavor.load_model(uri), "requirements.txt", "integrity check")


# -- keys: where they live, who sees them ---------------------------------------------------------


def test_without_keys_the_store_gets_a_private_key_of_its_own(store, mlc, blobs_small, monkeypatch, capsys):
    X, _ = blobs_small
    folder = signing.store_key_dir()
    assert str(folder).startswith(os.environ["XDG_DATA_HOME"])  # never the real home in tests
    _register("store-key", X)
    private = folder / "signing-key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert not str(folder).startswith(str(Path(store.removeprefix("sqlite:///")).parent))
    monkeypatch.setattr(signing, "_warned_default_trust", False)
    capsys.readouterr()
    flavor.load_model("models:/store-key/1")
    load_predictor("models:/store-key-sklearn/1")
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if signing.TRUSTED_KEYS_ENV in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and str(folder) in warnings[0], out
    # Another store has another key: its models are not trusted here.
    assert signing.store_key_dir("sqlite:////elsewhere/mlflow.db") != folder


def test_the_private_key_never_reaches_the_store_or_the_console(store, mlc, blobs_small, tmp_path, monkeypatch,
                                                                capfd):
    X, _ = blobs_small
    private, _ = _keys(tmp_path, "secret")
    pem = private.read_text()
    body = "".join(pem.splitlines()[1:-1])
    secrets = [body, *(line for line in pem.splitlines()[1:-1] if len(line) > 20)]
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, str(private))
    name = "no-leak"
    reg, _ = _register(name, X)
    flavor.load_model(f"models:/{name}/1")
    # A key file that is no key: the error names the file, not its contents.
    bad = tmp_path / "bad.pem"
    bad.write_text(pem.replace("PRIVATE KEY-----\n", "PRIVATE KEY-----\n!!"))
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, str(bad))
    with pytest.raises(ConfigError) as err:
        _register(f"{name}-bad", X)
    seen = [str(err.value), *capfd.readouterr()]
    run_id = mlc.get_model_version(name, "1").run_id
    run = mlc.get_run(run_id)
    seen += [json.dumps(run.data.params), json.dumps(run.data.tags)]
    for model_id in (reg.native_model_id, reg.sklearn_model_id):
        lm = mlc.get_logged_model(model_id)
        seen += [json.dumps(lm.tags), json.dumps(lm.params)]
        folder = Path(lm.artifact_location.removeprefix("file://"))
        seen += [p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file()]
    for reg_name in (name, f"{name}-sklearn"):
        seen.append(json.dumps(mlc.get_model_version(reg_name, "1").tags))
    for text in seen:
        for secret in secrets:
            assert secret not in text
    assert "is not a PEM private key" in seen[0]


def test_misconfigured_trusted_keys_are_one_line(store, tmp_path, monkeypatch):
    monkeypatch.setenv(signing.TRUSTED_KEYS_ENV, str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="does not exist"):
        signing.trusted_keys()
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(signing.TRUSTED_KEYS_ENV, str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="names no PEM public key"):
        signing.trusted_keys()


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path, monkeypatch, capsys):
    from mlproject import keygen
    from mlproject._cli import run_main

    out = tmp_path / "keys"
    for algorithm in ("ecdsa-p256", "ed25519"):
        monkeypatch.setattr(sys, "argv", ["keygen", "--out", str(out / algorithm), "--algorithm", algorithm])
        with pytest.raises(SystemExit) as done:
            run_main(keygen.main, uses_store=False)
        assert done.value.code == 0
        private = out / algorithm / "signing-key.pem"
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
        printed = capsys.readouterr().out
        assert private.read_text().splitlines()[1] not in printed
        assert f"{signing.SIGNING_KEY_ENV}={private}" in printed
    with pytest.raises(SystemExit) as done:
        run_main(keygen.main, uses_store=False)  # the same folder again
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exist" in err[0] and "--overwrite true" in err[0]


# -- a signature format this release does not know ----------------------------------------------


def test_a_signature_in_a_newer_format_is_refused_in_one_line(tmp_path, monkeypatch):
    """A model signed by a later release (signature format 2) is refused before any file is read,
    naming the release and the format, instead of being read as if it were format 1."""
    from cryptography.hazmat.primitives import serialization

    private, public = _keys(tmp_path, "k")
    key = serialization.load_pem_private_key(private.read_bytes(), None)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "centers.npy").write_bytes(b"not read")
    info = {"format": "kmeans-npy", "model_class": "sklearn.cluster._kmeans.KMeans", "centers_shape": "6x2",
            "model_id": "m-1"}
    trusted = [signing.TrustedKey(serialization.load_pem_public_key(public.read_bytes()), str(public))]
    signing.sign_dir(str(folder), integrity.manifest_of(str(folder)), info, key)
    assert signing.read_signature(str(folder), "model m-1", trusted).info["format_version"] == "1"
    with monkeypatch.context() as later_release:  # what a release writing format 2 would sign
        later_release.setattr(signing, "FORMAT_VERSION", 2)
        signing.sign_dir(str(folder), integrity.manifest_of(str(folder)), info, key)
    with pytest.raises(ModelError) as err:
        signing.read_signature(str(folder), "model m-1", trusted)
    line = str(err.value)
    assert "signature format 2, which this version does not read" in line and "\n" not in line
