"""Fresh sqlite MLflow stores without paying for MLflow's schema migrations each time.

Creating a sqlite store runs every MLflow migration (seconds on a slow machine, more inside a
subprocess that must also import MLflow first).  ``init_store(path)`` lets MLflow create one
real store per test process, then copies that file to ``path``: each copy is an ordinary,
independent, fully migrated MLflow database.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_template: Path | None = None


def _make_template() -> Path:
    from mlflow import MlflowClient

    folder = Path(tempfile.mkdtemp(prefix="kmeans-mlflow-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    db = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # creates the tables
    return db


def init_store(path: str | Path) -> str:
    """Put an initialised MLflow sqlite store at ``path`` (a file or a ``sqlite:///`` URI); a store
    already there (e.g. the ``tracking_uri`` fixture's) is left as it is."""
    global _template
    target = Path(str(path).removeprefix("sqlite:///"))
    if target.exists():
        return f"sqlite:///{target}"
    if _template is None:
        _template = _make_template()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template, target)
    return f"sqlite:///{target}"


@contextlib.contextmanager
def mlflow_pointed_at(uri: str, mp: pytest.MonkeyPatch) -> Iterator[str]:
    """Point MLflow at ``uri`` as tracking and registry store (environment, through ``mp``, and
    MLflow's own module state), with no run or experiment inherited; MLflow's state is restored
    on exit (``mp`` restores the environment)."""
    import mlflow
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id)
    # An experiment another test set (mlflow.set_experiment) is an id in another store: in this
    # one it names nothing, or the wrong experiment, so runs start in the default one instead.
    fluent._active_experiment_id = None
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("MLFLOW_REGISTRY_URI", uri)
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        mp.delenv(var, raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri, fluent._active_experiment_id = saved
