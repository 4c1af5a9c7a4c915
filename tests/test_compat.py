"""Every private reach into MLflow, Optuna, Dask/distributed/tornado and the standard library
(:mod:`toolkit._compat`) still exists with the shape the toolkit relies on, on the installed
versions; a release that renames or reshapes one fails here, naming the entry.  And no module
outside ``toolkit/_compat.py`` reaches into those libraries' private names itself."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from toolkit import _compat

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("reach", [r for r in _compat.REACHES if r.probe is not None], ids=lambda r: r.name)
def test_private_reach_still_holds(reach):
    _compat.check([reach.name])  # CompatError names the entry, library, version and range


def test_every_entry_is_documented_and_exported():
    names = {r.name for r in _compat.REACHES}
    assert names <= set(_compat.__all__)
    for reach in _compat.REACHES:
        doc = getattr(_compat, reach.name).__doc__ or ""
        assert "Private:" in doc and "Checked:" in doc and "fallback" in doc, reach.name
        assert reach.checked and reach.public, reach.name


def test_a_changed_private_fails_naming_the_entry(monkeypatch):
    from mlflow.tracking._tracking_service import utils

    monkeypatch.delattr(utils, "_tracking_uri")  # what a release renaming it would look like
    with pytest.raises(_compat.CompatError, match=r"toolkit\._compat\.mlflow_process_tracking_uri: mlflow 3\."):
        _compat.check(["mlflow_process_tracking_uri"])


# Library-private names the toolkit may only touch in toolkit/_compat.py.
_PRIVATE = re.compile(
    r"\b(?:_trial_id|_study_id|_storage\.|_tracking_uri|_init_modules_to_packages_map|_to_mlflow_entity"
    r"|_model_impl|_logging_step|_save_example|_broken|_actions|_meta|_sockets|_set_internal_model)\b"
    r"|_openmp_effective_n_threads|\b_n_threads\b|\b_n_features_out\b|[\"']sklearn\.[\w.]*\._\w+"
    r"|\._load\(|\bactor_execute\b|[\"'](?:_broken|_sockets|_model_impl)[\"']|UPDATE params"
)


def test_no_private_reach_outside_compat():
    hits = []
    for path in sorted([*(REPO / "toolkit").rglob("*.py"), *(REPO / "mlproject").rglob("*.py")]):
        if path.name == "_compat.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PRIVATE.search(code) and not code.lstrip().startswith(('"', "'", "``")):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not hits, "private library names outside toolkit/_compat.py:\n" + "\n".join(hits)


def test_params_rewrite_only_on_a_checked_schema(store):
    from mlflow import MlflowClient

    from toolkit.tracking._sqlite import sqlite_file

    c = MlflowClient(store)
    run = c.create_run(c.create_experiment("compat-params")).info.run_id
    c.log_param(run, "storage", "postgresql://u:Zq81-tok@h/db")
    db = sqlite_file(store)
    assert _compat.mlflow_sqlite_rewrite_params(db, run, {"storage": "postgresql://u:***@h/db"})
    assert c.get_run(run).data.params["storage"] == "postgresql://u:***@h/db"
    assert b"Zq81-tok" not in Path(db).read_bytes()
    # A store at a revision nobody checked is left alone (the caller warns instead).
    with sqlite3.connect(db) as con:
        (rev,) = con.execute("SELECT version_num FROM alembic_version").fetchone()
        con.execute("UPDATE alembic_version SET version_num = 'unchecked'")
    try:
        assert not _compat.mlflow_sqlite_rewrite_params(db, run, {"storage": "x"})
        assert c.get_run(run).data.params["storage"] == "postgresql://u:***@h/db"
    finally:
        with sqlite3.connect(db) as con:
            con.execute("UPDATE alembic_version SET version_num = ?", (rev,))
