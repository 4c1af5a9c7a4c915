"""The upgrade suite: a store written by the earlier release 9634933 (0.1.0) itself, used by this one.

The fixture (``tests/fixtures/upgrade-9634933``, built by ``tests/fixtures/build_upgrade_fixtures.py``
from that commit in a temporary venv) holds ``blobs-kmeans`` / ``blobs-kmeans-sklearn`` v1
(champion, from a search) and v2 (challenger, from a training run): pickled native models and
skops twins saved as run artifacts, registered without checksums or signatures, and the search's
study in ``./optuna.log``.  Each test unpacks it into its own folder (the absolute artifact paths
MLflow recorded are rewritten to that folder) and acts as an upgraded user would: list, load,
predict, promote with and without force (through the API and the entry point), migrate, resume,
search into the same name.  The tests marked by the ``release`` fixture run against the store of
each later format too (``tests/fixtures/upgrade-b5a04b5``, the checksum era); the signed format
as 0.2.0 first wrote it (``tests/fixtures/upgrade-733e5ed``: twins without the cast step) loads as
it is, migrate rewrites only its twins, and it has a test of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tarfile
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from toolkit.config import load_experiment
from toolkit.errors import ModelError

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "upgrade-9634933"
#: The last release before signatures (b5a04b5): LoggedModels with the store's checksums, no model.sig.
CHECKSUM_ERA = REPO / "tests" / "fixtures" / "upgrade-b5a04b5"
#: Signed format 1 as release 0.2.0 first wrote it (733e5ed): model.sig, twins without the cast step.
SIGNED_ERA = REPO / "tests" / "fixtures" / "upgrade-733e5ed"
NATIVE, TWIN = "blobs-kmeans", "blobs-kmeans-sklearn"
#: Each earlier format's store, by the commit that wrote it.
RELEASES = {"9634933": FIXTURE, "b5a04b5": CHECKSUM_ERA}
#: Why each is refused, and the trust its migration needs (0.1.0 pickled its native models).
REFUSED = {"9634933": ("registered by an older kmeans-lifecycle", "pickle"), "b5a04b5": ("is not signed", "unsigned")}
BLOBS = REPO / "experiments" / "blobs.yaml"
#: The entry points' ``--set`` for the fixture's tiny settings.
SMALL = "data.n_samples=1500 metrics.silhouette_sample=500 tracking.log_plot=false"


def unpack_store(dst: Path, fixture: Path = FIXTURE) -> str:
    """Unpack a fixture into ``dst`` and point its recorded artifact paths there; its sqlite URI."""
    record = json.loads((fixture / "fixture.json").read_text())
    with tarfile.open(fixture / "store.tar.gz") as tar:
        tar.extractall(dst, filter="data")
    old, new = record["root"], str(dst)
    with sqlite3.connect(dst / "mlflow.db") as db:
        # Every text column that names the old folder (experiments' artifact_location, runs'
        # artifact_uri, model versions' source and storage_location, tags): MLflow keeps absolute paths.
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for _, col, kind, *_ in db.execute(f'PRAGMA table_info("{table}")').fetchall():
                if any(word in kind.upper() for word in ("CHAR", "TEXT")):
                    db.execute(f'UPDATE "{table}" SET "{col}" = replace("{col}", ?, ?) WHERE instr("{col}", ?) > 0',
                               (old, new, old))
    return f"sqlite:///{dst / 'mlflow.db'}"


@pytest.fixture()
def upgraded(tmp_path, monkeypatch):
    """The earlier release's store, unpacked into ``tmp_path/store``, as tracking and registry
    URI; the working directory is that folder (where the release kept ``optuna.log``)."""
    yield from _opened(tmp_path, monkeypatch, FIXTURE)


@pytest.fixture()
def checksum_era(tmp_path, monkeypatch):
    """The same for the store release b5a04b5 wrote (unsigned LoggedModels, journal beside the store)."""
    yield from _opened(tmp_path, monkeypatch, CHECKSUM_ERA)


@pytest.fixture(params=sorted(RELEASES))
def release(request, tmp_path, monkeypatch):
    """Each earlier format's store in turn, opened as ``upgraded`` is: ``(commit, folder)``."""
    for folder in _opened(tmp_path, monkeypatch, RELEASES[request.param]):
        yield request.param, folder


@pytest.fixture()
def signed_era(tmp_path, monkeypatch):
    """The store 733e5ed wrote, its signer's public key trusted beside a key of this session's
    (which signs what this release registers), as a user who keeps signing would set it."""
    from toolkit.registry import signing

    private, public = signing.write_key_pair(tmp_path / "keys")
    for folder in _opened(tmp_path, monkeypatch, SIGNED_ERA):
        monkeypatch.setenv(signing.SIGNING_KEY_ENV, str(private))
        monkeypatch.setenv(signing.TRUSTED_KEYS_ENV, os.pathsep.join([str(SIGNED_ERA / "signer.pub.pem"), str(public)]))
        yield folder


def _opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixture: Path):
    from _mlflow_store import mlflow_pointed_at

    from toolkit.registry import signing

    folder = tmp_path / "store"
    folder.mkdir()
    uri = unpack_store(folder, fixture)
    for var in (signing.ALLOW_UNSIGNED_ENV, signing.ALLOW_PICKLE_ENV, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(folder)
    with mlflow_pointed_at(uri, monkeypatch):
        yield folder


def _cfg(*overrides: str):
    """The quick start's experiment on the fixture's tiny settings (the release's own were these)."""
    return load_experiment(BLOBS, [
        "data.n_samples=1500", "metrics.silhouette_sample=500", "search.n_trials=2", "search.sampler=random",
        "tracking.log_plot=false", "search.baseline_sample=0", *overrides])


def _one_line(err: pytest.ExceptionInfo, *wanted: str) -> str:
    line = str(err.value)
    assert "\n" not in line, line
    for w in wanted:
        assert w in line, line
    return line


def _entry(module: str, *argv: str) -> int:
    """Run entry point ``mlproject.<module>`` in this process, as its command line would; its exit status."""
    import importlib
    import sys

    from mlproject._cli import run_main

    entry = importlib.import_module(f"mlproject.{module}")
    saved = sys.argv
    sys.argv = [module, *argv]
    try:
        with pytest.raises(SystemExit) as done:
            run_main(entry.main)
        return int(done.value.code)
    finally:
        sys.argv = saved


def _aliases(name: str) -> dict[str, str]:
    c = MlflowClient()
    return {a: str(c.get_model_version_by_alias(name, a).version) for a in ("champion", "challenger")}


def _digests(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in folder.rglob("*") if p.is_file()}


def _old_pickle(folder: Path, version: str):
    """The release's own native model of ``version``, read straight from its files (the reference)."""
    import cloudpickle

    source = MlflowClient().get_model_version(NATIVE, version).source
    with open(Path(source) / "model.pkl", "rb") as fh:
        return cloudpickle.load(fh)


def test_the_old_store_lists_and_refuses_its_models_in_one_line_naming_migrate(release):
    from toolkit.registry.flavor import load_model
    from toolkit.serving import load_predictor

    why, trust = REFUSED[release[0]]
    c = MlflowClient()
    assert sorted(m.name for m in c.search_registered_models()) == [NATIVE, TWIN]
    for name in (NATIVE, TWIN):
        assert sorted(int(v.version) for v in c.search_model_versions(f"name='{name}'")) == [1, 2]
        assert _aliases(name) == {"champion": "1", "challenger": "2"}
    for uri in (f"models:/{NATIVE}@champion", f"models:/{TWIN}/2"):
        with pytest.raises(ModelError) as err:
            load_model(uri)
        _one_line(err, why, "-e migrate -P model_name=blobs-kmeans")
    with pytest.raises(ModelError) as err:
        load_predictor(f"models:/{NATIVE}@champion")
    _one_line(err, f"-e migrate -P model_name=blobs-kmeans -P trust={trust}")


def test_a_new_search_registers_into_the_old_name_and_force_moves_the_champion(release, client):
    """The unloadable v1 champion: promote refuses in one line naming migrate and force; with
    force the alias moves without loading it."""
    from toolkit.data import load_dataset
    from toolkit.registry import promote
    from toolkit.search import search

    cfg = _cfg()
    out = search(cfg, client=client, register=True)
    new = out.registered.native_version
    assert new == "3" and _aliases(NATIVE) == {"champion": "1", "challenger": "3"}
    data = load_dataset(cfg.data)
    with pytest.raises(ModelError) as err:
        promote(NATIVE, data.X, data.y, metric="silhouette")
    _one_line(err, "champion v1 of 'blobs-kmeans' cannot be loaded", "force", "-e migrate -P model_name=blobs-kmeans")
    res = promote(NATIVE, data.X, data.y, metric="silhouette", force=True)
    assert res.promoted and "cannot be loaded, not compared; forced" in res.reason
    assert _aliases(NATIVE)["champion"] == "3" and _aliases(TWIN)["champion"] == out.registered.sklearn_version


def test_migrate_rewrites_old_versions_as_new_signed_ones_then_promote_works(upgraded, capsys):
    from toolkit import __version__
    from toolkit.convert import predict_labels
    from toolkit.data import load_dataset
    from toolkit.registry import promote
    from toolkit.registry.flavor import load_model
    from toolkit.registry.migrate import migrate

    c = MlflowClient()
    old_files = _digests(upgraded / "mlruns")
    run = c.create_run(c.get_experiment_by_name("blobs").experiment_id, run_name="migrate").info.run_id
    # Too little trust for a pickle: refused before anything is written.
    with pytest.raises(ModelError) as err:
        migrate(NATIVE, "unsigned", run_id=run)
    _one_line(err, "needs trust 'pickle'", "nothing was migrated")
    assert len(c.search_model_versions(f"name='{NATIVE}'")) == 2

    results = migrate(NATIVE, "pickle", run_id=run)
    assert {(r.name, r.version, r.new_version) for r in results} == {
        (NATIVE, "1", "3"), (TWIN, "1", "3"), (NATIVE, "2", "4"), (TWIN, "2", "4")}
    for name in (NATIVE, TWIN):
        assert _aliases(name) == {"champion": "3", "challenger": "4"}
    now = _digests(upgraded / "mlruns")  # the old files are untouched (the new versions' are added)
    assert {k: now.get(k) for k in old_files} == old_files

    # The UI-facing record: where it came from, under which trust, by which toolkit; the old
    # version's tags carried over; the pair linked again; the old version points at the new one.
    new = c.get_model_version(NATIVE, "3").tags
    old = c.get_model_version(NATIVE, "1").tags
    assert new["migrated_from"] == f"models:/{NATIVE}/1"
    assert (new["migration.trust"], new["migration.toolkit_version"]) == ("pickle", __version__)
    assert new["migration.source_format"] == "run-artifacts" and new["migration.run_id"] == run
    assert new["integrity.format"] == "kmeans-npy" and new["integrity.signer"]
    for key in ("source_run_id", "search_parent_run_id", "backend", "kind", "promotion.reason"):
        assert new[key] == old[key], key
    assert (new["twin.name"], new["twin.version"]) == (TWIN, "3")
    assert c.get_model_version(TWIN, "3").tags["twin.version"] == "3"
    assert old["migration.migrated_to"] == "3"
    # What wrote them is signed into both: the signature's format version and the toolkit's.
    from toolkit.registry import signing
    from toolkit.registry.integrity import fetch_verified

    for name in (NATIVE, TWIN):
        with fetch_verified(f"models:/{name}/3") as verified:
            info = verified.signature.info
        assert (info["format_version"], info["toolkit_version"]) == (str(signing.FORMAT_VERSION), __version__)

    # The migrated models load, signed, and predict exactly what the release's pickles predicted.
    data = load_dataset(_cfg().data)
    X = np.asarray(data.X, dtype=np.float32)
    for ver in ("1", "2"):
        expected = _old_pickle(upgraded, ver).predict(X)
        new_ver = str(int(ver) + 2)
        for name in (NATIVE, TWIN):
            assert (np.asarray(predict_labels(load_model(f"models:/{name}/{new_ver}"), X)) == expected).all(), name

    capsys.readouterr()
    again = migrate(NATIVE, "pickle", run_id=run, say=print)
    assert not any(r.new_version for r in again)
    said = capsys.readouterr().out
    assert "blobs-kmeans v1: skipped, already migrated to v3" in said
    assert "blobs-kmeans v3: skipped, it is signed and loads as it is" in said
    assert len(c.search_model_versions(f"name='{NATIVE}'")) == 4

    res = promote(NATIVE, data.X, data.y, metric="silhouette")  # no force needed any more
    assert res.champion_version == "3" and res.challenger_version == "4"


def test_the_old_study_in_optuna_log_is_found_and_resumed(release, client, capsys):
    """0.1.0's study in ``./optuna.log`` (named as where earlier releases kept it), the checksum
    era's in ``mlflow.optuna.log`` beside the store: found, resumed into the release's parent run."""
    from toolkit.search import search
    from toolkit.search.study import locate_study

    commit, folder = release
    journal = folder / json.loads((RELEASES[commit] / "fixture.json").read_text())["study_journals"][0]
    where = locate_study(_cfg("search.resume=true"))
    assert (where.storage, where.name) == (str(journal), "blobs-sklearn")
    if commit == "9634933":
        assert "where releases before this one kept their studies" in where.found
    c = MlflowClient()
    parent = c.get_model_version(NATIVE, "1").run_id  # the release's search registered its best as v1
    before = journal.stat().st_size
    out = search(_cfg("search.resume=true", "search.n_trials=4", "registry.register_best=false"), client=client)
    assert out.resumed and out.parent_run_id == parent
    assert journal.stat().st_size > before  # the trial went into the release's journal
    children = [r for r in c.search_runs([c.get_experiment_by_name("blobs").experiment_id])
                if r.data.tags.get("mlflow.parentRunId") == out.parent_run_id]
    assert len(children) == 4  # the release's 3 trials and 1 more


def test_the_entry_point_migrates_and_says_what_it_made(upgraded, capsys):
    assert _entry("migrate", "--model-name", NATIVE, "--trust", "maybe") == 2
    assert "error: trust must be unsigned or pickle, got 'maybe'" in capsys.readouterr().err
    assert _entry("migrate", "--model-name", TWIN, "--trust", "pickle", "--version", "2") == 0
    out = capsys.readouterr().out
    assert "made:" in out and "look:" in out
    assert f"{NATIVE} v3: migrated from v2, run-artifacts (aliases challenger moved to it)" in out
    assert _aliases(NATIVE) == {"champion": "1", "challenger": "3"}
    c = MlflowClient()
    record = [r for r in c.search_runs([c.get_experiment_by_name("blobs").experiment_id])
              if r.info.run_name == f"migrate {TWIN}"]
    assert len(record) == 1 and record[0].info.status == "FINISHED"
    assert record[0].data.params["migrate.trust"] == "pickle"
    assert os.environ.get("KMEANS_LIFECYCLE_ALLOW_UNSIGNED") is None  # the decision did not leak

    # Finding 1 as the user met it: the promote entry point with 0.1.0's v1 still champion and a
    # challenger this release loads.  Without force: one line naming force and migrate, the
    # record FAILED, no alias moved; with force: the alias moves without loading v1.
    promote = ("--model-name", NATIVE, "--config", str(BLOBS), "--set", SMALL)
    assert _entry("promote", *promote) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: champion v1 of 'blobs-kmeans' cannot be loaded"), err
    assert "--force true" in err[0] and "-e migrate -P model_name=blobs-kmeans" in err[0], err
    assert _aliases(NATIVE) == {"champion": "1", "challenger": "3"}
    assert _entry("promote", *promote, "--force", "true") == 0
    assert f"alias champion: {NATIVE} v3 and {TWIN} v3 (was v1)" in capsys.readouterr().out
    assert _aliases(NATIVE)["champion"] == _aliases(TWIN)["champion"] == "3"
    decided = sorted((r.info.status, r.data.tags.get("promotion.outcome")) for r in c.search_runs(
        [c.get_experiment_by_name("blobs").experiment_id]) if r.info.run_name == f"promote {NATIVE} v3")
    assert decided == [("FAILED", None), ("FINISHED", "promoted")]


def test_migrate_then_promote_through_the_entry_points(upgraded, capsys):
    """The other way out: ``-e migrate`` rewrites v1 (champion) and v2 (challenger) as v3 and v4,
    then ``-e promote`` without force compares the two and decides in one line."""
    assert _entry("migrate", "--model-name", NATIVE, "--trust", "pickle") == 0
    assert _aliases(NATIVE) == _aliases(TWIN) == {"champion": "3", "challenger": "4"}
    capsys.readouterr()
    assert _entry("promote", "--model-name", NATIVE, "--config", str(BLOBS), "--set", SMALL) == 0
    said = capsys.readouterr()
    assert "error:" not in said.err, said.err
    decision = next(ln for ln in said.out.splitlines() if ln.startswith(f"{NATIVE} v4 "))
    assert ("promoted to champion" in decision or "kept as challenger" in decision) and "silhouette" in decision
    assert "cannot be loaded" not in decision


def test_the_version_comes_from_the_package_metadata_and_heads_the_changelog(tmp_path):
    """``toolkit.__version__``: the source tree's pyproject (this checkout), else the installed
    distribution's metadata; semantic, and the newest release of CHANGELOG.md."""
    import re
    import tomllib
    from importlib.metadata import version

    import toolkit
    from toolkit._version import package_version

    with open(REPO / "pyproject.toml", "rb") as fh:
        declared = tomllib.load(fh)["project"]["version"]
    assert toolkit.__version__ == declared and re.fullmatch(r"\d+\.\d+\.\d+", declared)
    (tmp_path / "toolkit").mkdir()  # a package folder with no pyproject beside it: the metadata's
    assert package_version(str(tmp_path / "toolkit")) == version("kmeans-lifecycle")
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert releases[0] == declared and "0.1.0" in releases


def test_the_checksum_era_store_is_refused_then_migrated_with_trust_unsigned(checksum_era, client, monkeypatch):
    """Release b5a04b5 logged unsigned LoggedModels (kmeans-npy + skops, checksums in the store):
    refused naming migrate with trust=unsigned, which suffices (no pickle is read); the labels
    stay those the store's checksummed files give; promote then works; its study is found."""
    from toolkit.convert import predict_labels
    from toolkit.data import load_dataset
    from toolkit.registry import promote, signing
    from toolkit.registry.flavor import load_model
    from toolkit.registry.migrate import migrate
    from toolkit.search.study import locate_study

    with pytest.raises(ModelError) as err:
        load_model(f"models:/{NATIVE}@champion")
    _one_line(err, "is not signed", "-e migrate -P model_name=blobs-kmeans -P trust=unsigned")
    data = load_dataset(_cfg().data)
    X = np.asarray(data.X, dtype=np.float32)
    with monkeypatch.context() as mp:  # the reference: the old files, on the store's checksums
        mp.setenv(signing.ALLOW_UNSIGNED_ENV, "1")
        expected = {v: predict_labels(load_model(f"models:/{NATIVE}/{v}"), X) for v in ("1", "2")}
        # ... but the CI/CD gate fails closed: the store's checksums are not a signature.
        from mlproject.verify import check

        reason = check(f"models:/{NATIVE}/1")
        assert reason is not None and "is not signed" in reason and "-e migrate" in reason, reason
    c = MlflowClient()
    run = c.create_run(c.get_experiment_by_name("blobs").experiment_id, run_name="migrate").info.run_id
    results = migrate(NATIVE, "unsigned", run_id=run)
    assert {(r.name, r.version, r.new_version, r.source_format) for r in results} == {
        (n, v, str(int(v) + 2), "unsigned") for n in (NATIVE, TWIN) for v in ("1", "2")}
    assert _aliases(NATIVE) == _aliases(TWIN) == {"champion": "3", "challenger": "4"}
    for v, labels in expected.items():
        for name in (NATIVE, TWIN):
            assert (predict_labels(load_model(f"models:/{name}/{int(v) + 2}"), X) == labels).all(), (name, v)
    # The UI-facing record, as for 0.1.0's store: where it came from, the trust, the old tags kept.
    new, old = c.get_model_version(NATIVE, "3").tags, c.get_model_version(NATIVE, "1").tags
    assert (new["migrated_from"], old["migration.migrated_to"]) == (f"models:/{NATIVE}/1", "3")
    assert (new["migration.trust"], new["migration.source_format"]) == ("unsigned", "unsigned")
    assert new["integrity.format"] == "kmeans-npy" and new["integrity.signer"]
    for key in ("source_run_id", "search_parent_run_id", "backend", "kind", "promotion.reason"):
        assert new[key] == old[key], key
    assert (new["twin.name"], new["twin.version"]) == (TWIN, "3")
    res = promote(NATIVE, data.X, data.y, metric="silhouette")
    assert res.champion_version == "3" and res.challenger_version == "4"
    where = locate_study(_cfg("search.resume=true"))
    assert (where.storage, where.name) == (str(checksum_era / "mlflow.optuna.log"), "blobs-sklearn")


def test_the_signed_format_store_loads_as_it_is_and_the_name_goes_on(signed_era, client, monkeypatch):
    """Release 733e5ed signed its models (format 1) and registered twins without the cast step:
    listed, loaded and predicted as they are (native == twin); stock ``mlflow.sklearn`` predicts
    only float32 rows with those twins (finding 3's limit), so migrate rewrites the twins alone
    (``signed-no-cast``), after which both widths give the same labels; promote compares without
    force; its study (recorded on the parent run) resumes; a new search registers into the name,
    renumbered to the champion's IDs, and force promotes it."""
    import mlflow

    from toolkit.convert import cast_dtype, predict_labels
    from toolkit.data import load_dataset
    from toolkit.registry import promote
    from toolkit.registry.flavor import load_model
    from toolkit.registry.migrate import migrate
    from toolkit.search import search
    from toolkit.search.study import locate_study
    from toolkit.serving import load_predictor

    c = MlflowClient()
    assert sorted(m.name for m in c.search_registered_models()) == [NATIVE, TWIN]
    for name in (NATIVE, TWIN):
        assert sorted(int(v.version) for v in c.search_model_versions(f"name='{name}'")) == [1, 2]
        assert _aliases(name) == {"champion": "1", "challenger": "2"}
    data = load_dataset(_cfg().data)
    X = np.asarray(data.X, dtype=np.float32)
    for ver in ("1", "2"):
        native, twin = load_model(f"models:/{NATIVE}/{ver}"), load_model(f"models:/{TWIN}/{ver}")
        assert cast_dtype(twin) is None  # the twin as that release wrote it
        labels = np.asarray(predict_labels(native, X))
        np.testing.assert_array_equal(np.asarray(predict_labels(twin, X)), labels)
        np.testing.assert_array_equal(np.asarray(load_predictor(f"models:/{TWIN}/{ver}").predict(X)), labels)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # stock mlflow.sklearn's opt-in
    with pytest.raises(ValueError, match="Buffer dtype mismatch"):
        mlflow.sklearn.load_model(f"models:/{TWIN}/1").predict(X.astype(np.float64))
    run = c.create_run(c.get_experiment_by_name("blobs").experiment_id, run_name="migrate").info.run_id
    results = migrate(NATIVE, "unsigned", run_id=run)
    assert {(r.name, r.version, r.new_version, r.source_format) for r in results} == {
        (NATIVE, "1", None, "current"), (NATIVE, "2", None, "current"),
        (TWIN, "1", "3", "signed-no-cast"), (TWIN, "2", "4", "signed-no-cast")}
    assert _aliases(NATIVE) == {"champion": "1", "challenger": "2"}
    assert _aliases(TWIN) == {"champion": "3", "challenger": "4"}
    assert c.get_model_version(NATIVE, "1").tags["twin.version"] == "3"
    stock = mlflow.sklearn.load_model(f"models:/{TWIN}/3")
    expected = np.asarray(predict_labels(load_model(f"models:/{NATIVE}/1"), X))
    for dtype in (np.float32, np.float64):
        np.testing.assert_array_equal(stock.predict(X.astype(dtype)), expected)
    res = promote(NATIVE, data.X, data.y, metric="silhouette")  # both load: compared, no force needed
    assert res.champion_score is not None and "cannot be loaded" not in res.reason

    where = locate_study(_cfg("search.resume=true"))
    assert (where.storage, where.name) == (str(signed_era / "mlflow.optuna.log"), "blobs-sklearn")
    parent = c.get_model_version(NATIVE, "1").run_id
    out = search(_cfg("search.resume=true", "search.n_trials=4", "registry.register_best=false"), client=client)
    assert out.resumed and out.parent_run_id == parent

    champion = _aliases(NATIVE)["champion"]
    out = search(_cfg(), client=client, register=True)
    assert out.registered.native_version == "3" and _aliases(NATIVE)["challenger"] == "3"
    tags = c.get_model_version(NATIVE, "3").tags
    # Matched to the old champion's cluster IDs: its signed files, reference sample included, load.
    assert (tags["stable.status"], tags["stable.champion_version"]) == ("matched to champion", champion), tags
    forced = promote(NATIVE, data.X, data.y, metric="silhouette", force=True)
    assert forced.promoted and _aliases(NATIVE)["champion"] == "3"
    assert _aliases(TWIN)["champion"] == out.registered.sklearn_version == "5"
