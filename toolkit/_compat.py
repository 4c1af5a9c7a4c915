"""Every reach into a library's private attributes, tables or functions, in one guarded place.

The toolkit uses public API wherever the libraries offer one.  Where they do not, the private
thing is touched *only* here, by a function whose docstring names the library, the private
name, the version range it was checked against and the public fallback (if any).  Each entry is
also listed in :data:`REACHES` with a probe that checks, on the installed versions, that the
private thing still exists with the shape the toolkit relies on; :func:`check` runs every probe
and ``tests/test_compat.py`` runs each one as its own test, so a release that renames or
reshapes one fails loudly, naming the entry, instead of breaking a search silently.

This is the idea MLflow applies to its own patching of other libraries: every autologging patch
goes through one guarded mechanism (``mlflow.utils.autologging_utils.safe_patch``, built on
``gorilla``) instead of ad-hoc monkeypatching scattered through the code.

Nothing here imports MLflow, Optuna, Dask or cuML at module level: each entry imports its
library when called, so importing this module costs nothing and the CPU path never imports cuML.
This module imports no other ``toolkit`` module (it is a leaf of the import graph).

Versions checked (the installed set when each entry was written or re-checked):
MLflow 3.17.2, Optuna 5.1.0, Dask/distributed 2026.8.0, Python 3.11.7, cuML 25.x (see
``shared/RAPIDS_FACTS.md``; GPU-only, not probed on the CPU path).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "REACHES",
    "CompatError",
    "Reach",
    "argparse_actions",
    "check",
    "cuml_set_internal_model",
    "dask_meta",
    "distributed_actor_call",
    "executor_is_broken",
    "mlflow_artifact_progress_bar_off",
    "mlflow_index_installed_packages",
    "mlflow_load_artifact_content",
    "mlflow_monitor_step",
    "mlflow_process_tracking_uri",
    "mlflow_pyfunc_impl",
    "mlflow_save_example",
    "mlflow_sqlite_rewrite_params",
    "optuna_set_trial_user_attr",
    "optuna_study_id",
    "optuna_trial_id",
    "sklearn_set_fit_privates",
    "sklearn_type_path",
    "tornado_listening_sockets",
]


class CompatError(RuntimeError):
    """A private thing the toolkit relies on is gone or changed shape in an installed library."""


@dataclass(frozen=True)
class Reach:
    """One use of a library's private thing.

    Attributes
    ----------
    name:
        The :mod:`toolkit._compat` function that holds the reach.
    library:
        The distribution whose private thing is used (``mlflow``, ``optuna``, ...).
    private:
        The private attribute, table or function used.
    checked:
        The version range of ``library`` it was checked against (PEP 440 specifier).
    public:
        The public fallback, or why there is none.
    probe:
        Raises (any exception) when the private thing is missing or changed shape on the
        installed version; ``None`` for entries that cannot be probed on this machine (GPU).
    """

    name: str
    library: str
    private: str
    checked: str
    public: str
    probe: Callable[[], None] | None


def _installed(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


# ---------------------------------------------------------------------------------------------
# Optuna
# ---------------------------------------------------------------------------------------------


def optuna_trial_id(trial: Any) -> int:
    """The storage id of an Optuna ``Trial`` or ``FrozenTrial`` (unique across studies of a storage).

    Library: Optuna.  Private: ``Trial._trial_id`` / ``FrozenTrial._trial_id``.
    Checked: optuna >=4.0,<6 (5.1.0).  Public fallback: none -- Optuna exposes only ``number``
    (unique within one study); the storage id is what ties an MLflow child run to the row of the
    Optuna storage when several studies share it.
    """
    return int(trial._trial_id)


def optuna_study_id(study: Any) -> int:
    """The storage id of an Optuna ``Study`` or ``FrozenStudy``.

    Library: Optuna.  Private: ``Study._study_id`` / ``FrozenStudy._study_id``.
    Checked: optuna >=4.0,<6 (5.1.0).  Public fallback: ``storage.get_study_id_from_name(name)``
    (``BaseStorage`` is public) -- one storage query per study instead of reading the attribute
    already loaded by ``get_all_studies()``.
    """
    return int(study._study_id)


def optuna_set_trial_user_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    """Set a user attribute on a trial the caller holds only as a ``FrozenTrial`` (e.g. a stale RUNNING one).

    Library: Optuna.  Private: ``Study._storage`` (and the trial's ``_trial_id``); the storage
    method ``BaseStorage.set_trial_user_attr`` itself is public.  Checked: optuna >=4.0,<6 (5.1.0).
    Public fallback: ``Trial.set_user_attr`` works only on a live ``Trial`` handed out by
    ``study.ask()``; a trial left RUNNING by a stopped driver has none.
    """
    study._storage.set_trial_user_attr(optuna_trial_id(trial), key, value)


def _probe_study() -> Any:
    """A study in memory, loaded rather than created (creating one logs a line)."""
    import optuna

    storage = optuna.storages.InMemoryStorage()
    storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "toolkit-compat-probe")
    return optuna.load_study(study_name="toolkit-compat-probe", storage=storage)


def _probe_optuna_ids() -> None:
    from optuna.study._frozen import FrozenStudy

    study = _probe_study()
    trial = study.ask()
    _require(isinstance(trial._trial_id, int), "Trial._trial_id is not an int")
    frozen = study.trials[0]
    _require(isinstance(frozen._trial_id, int) and frozen._trial_id == trial._trial_id,
             "FrozenTrial._trial_id differs from Trial._trial_id")
    _require(isinstance(study._study_id, int), "Study._study_id is not an int")
    summaries = study._storage.get_all_studies()
    _require(all(isinstance(s, FrozenStudy) and isinstance(s._study_id, int) for s in summaries),
             "FrozenStudy._study_id is not an int")
    _require(summaries[0]._study_id == study._study_id, "FrozenStudy._study_id differs from Study._study_id")


def _probe_optuna_storage() -> None:
    import optuna

    study = _probe_study()
    study.ask()
    _require(isinstance(study._storage, optuna.storages.BaseStorage), "Study._storage is not a BaseStorage")
    optuna_set_trial_user_attr(study, study.trials[0], "probe", True)
    _require(study.trials[0].user_attrs.get("probe") is True, "set_trial_user_attr did not reach the trial")


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------

#: Alembic revisions of MLflow's tracking schema whose ``params`` table
#: :func:`mlflow_sqlite_rewrite_params` was checked against (MLflow refuses a store whose schema
#: is not its own head, so a usable store is always at the installed MLflow's head).
SQLITE_SCHEMA_REVISIONS: frozenset[str] = frozenset({"dc11669786a5"})  # MLflow 3.17.2's head

_URI_LOCK = threading.RLock()
_PROGRESS_OFF: contextvars.ContextVar[bool] = contextvars.ContextVar("toolkit_mlflow_progress_off", default=False)
_PATCH_LOCK = threading.Lock()


def mlflow_index_installed_packages() -> bool:
    """Build MLflow's module -> distribution index now (a warm-up; about a second, once per process).

    Library: MLflow.  Private: ``mlflow.utils.requirements_utils._init_modules_to_packages_map``.
    Checked: mlflow >=2.9,<4 (3.17.2).  Public fallback: none; without it the index is built on
    the first model save, so a missing helper only means no warm-up (returns ``False``).
    """
    from mlflow.utils import requirements_utils

    index = getattr(requirements_utils, "_init_modules_to_packages_map", None)
    if not callable(index):
        return False
    index()
    return True


@contextlib.contextmanager
def mlflow_process_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` for the block (one block at a time).

    Library: MLflow.  Private: ``mlflow.tracking._tracking_service.utils._tracking_uri`` (the
    module global ``mlflow.get_tracking_uri`` reads first).  Checked: mlflow >=2.9,<4 (3.17.2).

    Why: MLflow's sqlite model registry resolves a ``models:/<model_id>`` source with a bare
    ``MlflowClient()`` -- the process-wide URI, not the calling client's (a TODO in
    ``SqlAlchemyStore.create_model_version``).  Public fallbacks, both worse:
    ``mlflow.set_tracking_uri`` also rewrites ``MLFLOW_TRACKING_URI`` in ``os.environ`` (the
    environment every later subprocess inherits) and resets the tracer provider; registering
    the artifact location instead of ``models:/<id>`` loses the version's ``model_id`` on a
    sqlite registry (it is parsed back from the source).  MLflow's own
    ``utils._use_tracking_uri`` is private too and goes through ``set_tracking_uri``.
    The swap is serialised by a lock, so two registrations never restore each other's value.
    """
    from mlflow.tracking._tracking_service import utils

    with _URI_LOCK:
        saved = utils._tracking_uri
        utils._tracking_uri = uri
        try:
            yield
        finally:
            utils._tracking_uri = saved


def mlflow_sqlite_rewrite_params(db: str, run_id: str, values: Mapping[str, str]) -> bool:
    """Overwrite param values of ``run_id`` in a local sqlite store's file; ``False`` if not checked.

    Library: MLflow.  Private: the ``params`` table (``key``, ``value``, ``run_uuid``) of the
    sqlite tracking schema, at the alembic revisions in :data:`SQLITE_SCHEMA_REVISIONS`.
    Checked: mlflow 3.17.2 (revision dc11669786a5).  Public fallback: none -- MLflow params are
    immutable (``log_param`` with a new value raises) and there is no ``delete_param``; the one
    use is masking a credential ``mlflow run`` logged from a ``-P`` value before the entry point
    started.  A store at any other revision, or whose ``params`` table has other columns, is not
    touched: the caller warns instead, as for a non-sqlite store.

    The masked value replaces the secret's bytes in the file, not only in what a query returns:
    ``secure_delete`` zeroes the space the old value leaves, and a checkpoint copies the
    rewritten pages from the write-ahead log into the database file now.
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
        try:
            (revision,) = con.execute("SELECT version_num FROM alembic_version").fetchone() or (None,)
            columns = {row[1] for row in con.execute("PRAGMA table_info(params)")}
        except sqlite3.DatabaseError:
            return False
        if revision not in SQLITE_SCHEMA_REVISIONS or not {"key", "value", "run_uuid"} <= columns:
            return False
        con.execute("PRAGMA secure_delete = ON")
        with con:
            con.executemany("UPDATE params SET value = ? WHERE run_uuid = ? AND key = ?",
                            [(v, run_id, k) for k, v in values.items()])
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return True


def _install_progress_gate() -> None:
    from mlflow.utils.file_utils import ArtifactProgressBar

    with _PATCH_LOCK:
        original = ArtifactProgressBar.set_pbar
        if getattr(original, "_toolkit_gate", False):
            return

        def set_pbar(self: Any) -> None:
            if not _PROGRESS_OFF.get():
                original(self)

        set_pbar._toolkit_gate = True  # type: ignore[attr-defined]
        ArtifactProgressBar.set_pbar = set_pbar  # type: ignore[method-assign]


@contextlib.contextmanager
def mlflow_artifact_progress_bar_off() -> Iterator[None]:
    """No MLflow artifact progress bar drawn by this thread (context) within the block.

    Library: MLflow.  Private: ``mlflow.utils.file_utils.ArtifactProgressBar.set_pbar`` (wrapped
    once, guarded by a context variable).  Checked: mlflow >=2.9,<4 (3.17.2).  Public
    fallback: the ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` environment variable -- process-wide,
    so switching it for one download races with every other thread (and restoring it races
    with another download's restore); users may still set it for the whole process.  A bar
    that MLflow creates on one of its own pool threads (chunked HTTP downloads of files over
    its display threshold) does not see the context and is still drawn.
    """
    _install_progress_gate()
    token = _PROGRESS_OFF.set(True)
    try:
        yield
    finally:
        _PROGRESS_OFF.reset(token)


def mlflow_load_artifact_content(artifact: Any, path: str) -> None:
    """Read an evaluation artifact's content from the local file ``path`` now.

    Library: MLflow.  Private: ``mlflow.models.EvaluationArtifact._load(local_artifact_path)``.
    Checked: mlflow >=2.0,<4 (3.17.2).  Public fallback: ``artifact.content`` loads lazily by
    downloading from ``artifact.uri`` (one download per artifact on first access).
    """
    artifact._load(path)


def mlflow_pyfunc_impl(pyfunc: Any) -> Any:
    """The object an ``mlflow.pyfunc.PyFuncModel`` wraps, else ``None``.

    Library: MLflow.  Private: ``PyFuncModel._model_impl`` (documented in MLflow's source as
    "a stable developer API").  Checked: mlflow >=2.0,<4 (3.17.2).  Public fallback:
    ``get_raw_model()`` returns what the wrapped object chooses, not the wrapper itself.
    """
    return getattr(pyfunc, "_model_impl", None)


def mlflow_monitor_step(monitor: Any) -> int:
    """The next step a ``SystemMetricsMonitor`` will log (it grows by one per sample written).

    Library: MLflow.  Private: ``SystemMetricsMonitor._logging_step``.  Checked:
    mlflow >=2.8,<4 (3.17.2).  Public fallback: count the run's ``system/*`` metric history
    (a store query).
    """
    return int(monitor._logging_step)


def mlflow_save_example(mlmodel: Any, example: Any, path: str) -> Any:
    """Save an input example beside a model in a custom flavor's folder, recorded in ``mlmodel``.

    Library: MLflow.  Private: ``mlflow.models.utils._save_example`` (what every built-in flavor's
    ``save_model`` calls).  Checked: mlflow >=2.0,<4 (3.17.2).  Public fallback: none for a
    custom flavor's own ``save_model``.
    """
    from mlflow.models.utils import _save_example

    return _save_example(mlmodel, example, path)


# ---------------------------------------------------------------------------------------------
# The standard library
# ---------------------------------------------------------------------------------------------


def executor_is_broken(pool: Any) -> bool:
    """Whether a ``concurrent.futures`` pool is broken (a worker process died, an initializer failed).

    Library: Python's ``concurrent.futures``.  Private: ``ProcessPoolExecutor._broken`` /
    ``ThreadPoolExecutor._broken`` (``False``, else the reason).  Checked: python >=3.11,<3.15
    (3.11.7).  Public fallback: ``submit`` raises ``BrokenExecutor`` -- only on the next job,
    after the caller has already handed it over.
    """
    return bool(getattr(pool, "_broken", False))


def argparse_actions(parser: Any) -> list[Any]:
    """Every ``argparse.Action`` of ``parser`` (to rewrite a shared option's help text).

    Library: Python's ``argparse``.  Private: ``ArgumentParser._actions``.  Checked:
    python >=3.11,<3.15 (3.11.7).  Public fallback: keep each ``Action`` that ``add_argument``
    returns.
    """
    return list(parser._actions)


# ---------------------------------------------------------------------------------------------
# Dask, distributed and tornado (distributed's HTTP server)
# ---------------------------------------------------------------------------------------------


def dask_meta(frame: Any) -> Any:
    """The empty pandas (or cuDF) object a Dask DataFrame/Series describes its partitions with.

    Library: Dask.  Private: ``dask.dataframe.DataFrame._meta`` (named "meta" throughout Dask's
    docs).  Checked: dask >=2024.12,<2027 (2026.8.0).  Public fallback: ``frame.dtypes`` and
    ``frame.columns`` for the schema; nothing public gives the partition type or the index.
    """
    return frame._meta


def tornado_listening_sockets(server: Any) -> dict[Any, Any] | None:
    """``{fd: socket}`` a tornado ``TCPServer`` (distributed's dashboard) listens on, else ``None``.

    Library: tornado (via distributed's ``Scheduler.http_server``).  Private:
    ``TCPServer._sockets``.  Checked: tornado >=6.2,<7 (6.6.1), distributed 2026.8.0.  Public
    fallback: ``Client.dashboard_link`` names a host, not the address actually bound.
    """
    sockets = getattr(server, "_sockets", None)
    return sockets if isinstance(sockets, dict) else None


def distributed_actor_call(worker: Any, address: str, actor: str, function: str, args: list[Any]) -> Any:
    """Call ``function`` of actor ``actor`` on the worker at ``address``, worker to worker (awaitable).

    Library: distributed.  Private: the worker RPC handler ``actor_execute`` (``Worker.actor_execute``
    with ``actor``, ``function``, ``args``, ``kwargs``).  Checked: distributed >=2024.12,<2027
    (2026.8.0).  Public fallback: an ``Actor`` handle from ``Client.submit(..., actor=True)``
    calls through the client, not directly between workers.
    """
    return worker.rpc(address).actor_execute(actor=actor, function=function, args=args, kwargs={})


# ---------------------------------------------------------------------------------------------
# cuML (GPU only: imported by the caller, never here, so the CPU path never imports cuML)
# ---------------------------------------------------------------------------------------------


def cuml_set_internal_model(wrapper: Any, model: Any) -> None:
    """Give a ``cuml.dask.cluster.KMeans`` a fitted single-GPU model to predict with.

    Library: cuML.  Private: ``BaseEstimator._set_internal_model`` of ``cuml.dask`` (cuML's own
    Dask UMAP does the same).  Checked: cuml 26.10 (``shared/RAPIDS_FACTS.md``; GPU-only, not
    probed here -- tests/test_gpu_backends.py exercises it on a GPU).  Public fallback: none.
    """
    wrapper._set_internal_model(model)


# -- probes -----------------------------------------------------------------------------------


def _probe_packages_index() -> None:
    import inspect

    from mlflow.utils import requirements_utils

    # Not called: building the index costs seconds; a search calls it once per process.
    index = getattr(requirements_utils, "_init_modules_to_packages_map", None)
    _require(callable(index), "requirements_utils._init_modules_to_packages_map is gone")
    _require(not inspect.signature(index).parameters, "_init_modules_to_packages_map now takes arguments")
    _require(hasattr(requirements_utils, "_MODULES_TO_PACKAGES"), "the index it fills (_MODULES_TO_PACKAGES) is gone")


def _probe_tracking_uri() -> None:
    import os

    import mlflow
    from mlflow.tracking._tracking_service import utils

    _require(hasattr(utils, "_tracking_uri"), "utils._tracking_uri is gone")
    env = os.environ.get("MLFLOW_TRACKING_URI")
    before = mlflow.get_tracking_uri()
    with mlflow_process_tracking_uri("sqlite:///toolkit-compat-probe.db"):
        _require(mlflow.get_tracking_uri() == "sqlite:///toolkit-compat-probe.db",
                 "mlflow.get_tracking_uri() does not read utils._tracking_uri first")
    _require(mlflow.get_tracking_uri() == before, "the tracking URI was not restored")
    _require(os.environ.get("MLFLOW_TRACKING_URI") == env, "the environment changed")


def _probe_params_table() -> None:
    import os

    import mlflow
    from alembic.script import ScriptDirectory
    from mlflow.store.tracking.dbmodels.models import SqlParam

    head = ScriptDirectory(os.path.join(os.path.dirname(mlflow.__file__), "store", "db_migrations")).get_current_head()
    _require(head in SQLITE_SCHEMA_REVISIONS,
             f"the tracking schema's head is {head}, not one of {sorted(SQLITE_SCHEMA_REVISIONS)}: re-check the "
             "params table and add the revision")
    _require(SqlParam.__tablename__ == "params", "SqlParam's table is not 'params'")
    _require({"key", "value", "run_uuid"} <= set(SqlParam.__table__.columns.keys()),
             "the params table lost key/value/run_uuid")


def _probe_progress_bar() -> None:
    import os

    from mlflow.utils.file_utils import ArtifactProgressBar

    _require(callable(getattr(ArtifactProgressBar, "set_pbar", None)), "ArtifactProgressBar.set_pbar is gone")
    if os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true").lower() in ("false", "0"):
        return  # the user switched bars off for the process: nothing to observe
    with mlflow_artifact_progress_bar_off():
        bar = ArtifactProgressBar.files(desc="toolkit-compat-probe", total=1)
    _require(bar.pbar is None, "ArtifactProgressBar.files drew a bar inside mlflow_artifact_progress_bar_off")


def _probe_evaluation_artifact() -> None:
    import inspect

    from mlflow.models import EvaluationArtifact

    params = inspect.signature(EvaluationArtifact._load).parameters
    _require("local_artifact_path" in params, "EvaluationArtifact._load takes no local_artifact_path")
    _require(callable(getattr(EvaluationArtifact, "_load_content_from_file", None)),
             "EvaluationArtifact._load_content_from_file is gone")


def _probe_pyfunc_impl() -> None:
    from mlflow.models import Model
    from mlflow.pyfunc import PyFuncModel

    class Impl:
        def predict(self, data: Any, params: Any = None) -> Any:
            return data

    impl = Impl()
    _require(mlflow_pyfunc_impl(PyFuncModel(model_meta=Model(), model_impl=impl)) is impl,
             "PyFuncModel._model_impl is not the wrapped object")


def _probe_monitor_step() -> None:
    import inspect

    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    source = inspect.getsource(SystemMetricsMonitor)
    _require("self._logging_step = " in source and "self._logging_step += 1" in source,
             "SystemMetricsMonitor no longer counts its steps in _logging_step")


def _probe_save_example() -> None:
    import inspect

    from mlflow.models import utils

    params = list(inspect.signature(utils._save_example).parameters)
    _require(params[:3] == ["mlflow_model", "input_example", "path"],
             f"_save_example takes {params}, not (mlflow_model, input_example, path)")


def _probe_executor_broken() -> None:
    import concurrent.futures

    def fail() -> None:
        raise RuntimeError("probe")

    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        _require(pool._broken is False, "ProcessPoolExecutor._broken is not False on a new pool")
    pool = concurrent.futures.ThreadPoolExecutor(1, initializer=fail)
    try:
        with contextlib.suppress(concurrent.futures.BrokenExecutor):
            pool.submit(int).result(timeout=30)
        _require(executor_is_broken(pool), "a pool whose initializer failed is not marked _broken")
    finally:
        pool.shutdown(wait=True)


def _probe_argparse() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    action = parser.add_argument("--probe")
    _require(action in argparse_actions(parser), "ArgumentParser._actions does not hold the added action")


def _probe_dask_meta() -> None:
    import dask.dataframe as dd
    import pandas as pd

    frame = dd.from_pandas(pd.DataFrame({"a": [1.0, 2.0]}), npartitions=1)
    meta = dask_meta(frame)
    _require(isinstance(meta, pd.DataFrame) and len(meta) == 0 and list(meta.columns) == ["a"],
             "DataFrame._meta is not an empty pandas frame of the same columns")


def _probe_tornado_sockets() -> None:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    server = HTTPServer(lambda request: None)
    sockets = bind_sockets(0, "127.0.0.1")
    try:
        server.add_sockets(sockets)
        found = tornado_listening_sockets(server)
        _require(found is not None and set(found.values()) == set(sockets),
                 "TCPServer._sockets is not {fd: listening socket}")
    finally:
        server.stop()


def _probe_actor_execute() -> None:
    import inspect

    from distributed import Worker

    _require(callable(getattr(Worker, "actor_execute", None)), "Worker.actor_execute is gone")
    params = inspect.signature(Worker.actor_execute).parameters
    _require({"actor", "function", "args", "kwargs"} <= set(params),
             f"Worker.actor_execute takes {list(params)}")


# ---------------------------------------------------------------------------------------------
# scikit-learn
# ---------------------------------------------------------------------------------------------


def sklearn_set_fit_privates(model: Any, n_clusters: int) -> None:
    """Give a ``KMeans`` built from centres (not fitted) the private attributes ``fit`` sets.

    Library: scikit-learn.  Private: ``KMeans._n_threads`` (``predict`` reads it) and
    ``_n_features_out`` (``get_feature_names_out`` reads it), and
    ``sklearn.utils._openmp_helpers._openmp_effective_n_threads`` (the value ``fit`` stores).
    Checked: scikit-learn >=1.4,<1.10 (1.9.1).  Public fallback: none (a real ``fit`` would move
    the centres); one thread is always valid if the helper moves.
    """
    try:
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads
    except ImportError:  # moved in a later scikit-learn: one thread is always a valid count
        threads = 1
    else:
        threads = int(_openmp_effective_n_threads())
    model._n_threads = threads
    model._n_features_out = n_clusters


def _probe_sklearn_fit_privates() -> None:
    import numpy as np
    from sklearn.cluster import KMeans
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    X = np.array([[0.0, 0.0], [0.0, 1.0], [5.0, 5.0], [5.0, 6.0]])
    fitted = KMeans(n_clusters=2, n_init=1, random_state=0).fit(X)
    _require(isinstance(getattr(fitted, "_n_threads", None), int), "KMeans.fit no longer sets _n_threads")
    _require(getattr(fitted, "_n_features_out", None) == 2, "KMeans.fit no longer sets _n_features_out")
    _require(int(_openmp_effective_n_threads()) >= 1, "_openmp_effective_n_threads() is not a count")
    built = KMeans(n_clusters=2)
    built.cluster_centers_, built.n_features_in_ = fitted.cluster_centers_, 2
    sklearn_set_fit_privates(built, 2)
    _require((built.predict(X) == fitted.predict(X)).all(), "a KMeans given fit's privates predicts differently")
    _require(list(built.get_feature_names_out()) == ["kmeans0", "kmeans1"], "get_feature_names_out changed")


_SKLEARN_TYPE_PATHS = {
    "KMeans": "sklearn.cluster._kmeans.KMeans",
    "StandardScaler": "sklearn.preprocessing._data.StandardScaler",
    "FunctionTransformer": "sklearn.preprocessing._function_transformer.FunctionTransformer",
    "Pipeline": "sklearn.pipeline.Pipeline",
}


def sklearn_type_path(name: str) -> str:
    """The defining-module path of scikit-learn class ``name`` (as skops and class keys name it).

    Library: scikit-learn.  Private: the private modules the classes are defined in
    (``sklearn.cluster._kmeans``, ``sklearn.preprocessing._data``,
    ``sklearn.preprocessing._function_transformer``).  Checked: scikit-learn >=1.4,<1.10 (1.9.1).
    Public fallback: none (skops trust lists name a type by its defining module, not by the
    public module that re-exports it).
    """
    return _SKLEARN_TYPE_PATHS[name]


def _probe_sklearn_type_paths() -> None:
    import sklearn.cluster
    import sklearn.pipeline
    import sklearn.preprocessing

    for name, path in _SKLEARN_TYPE_PATHS.items():
        cls = next(getattr(m, name) for m in (sklearn.cluster, sklearn.preprocessing, sklearn.pipeline)
                   if hasattr(m, name))
        _require(f"{cls.__module__}.{cls.__qualname__}" == path, f"{name} is now defined in {cls.__module__}")


# ---------------------------------------------------------------------------------------------
# The register and the check
# ---------------------------------------------------------------------------------------------

REACHES: tuple[Reach, ...] = (
    Reach("optuna_trial_id", "optuna", "Trial._trial_id, FrozenTrial._trial_id", ">=4.0,<6",
          "none (Trial.number is unique only within a study)", _probe_optuna_ids),
    Reach("optuna_study_id", "optuna", "FrozenStudy._study_id", ">=4.0,<6",
          "BaseStorage.get_study_id_from_name (one query per study)", _probe_optuna_ids),
    Reach("optuna_set_trial_user_attr", "optuna", "Study._storage", ">=4.0,<6",
          "Trial.set_user_attr (live trials only)", _probe_optuna_storage),
    Reach("mlflow_index_installed_packages", "mlflow", "requirements_utils._init_modules_to_packages_map",
          ">=2.9,<4", "none (the index is built on the first model save)", _probe_packages_index),
    Reach("mlflow_process_tracking_uri", "mlflow", "mlflow.tracking._tracking_service.utils._tracking_uri",
          ">=2.9,<4", "mlflow.set_tracking_uri (also rewrites os.environ)", _probe_tracking_uri),
    Reach("mlflow_sqlite_rewrite_params", "mlflow", "sqlite table params(key, value, run_uuid) at alembic "
          "revisions SQLITE_SCHEMA_REVISIONS", "==3.17.2", "none (params are immutable): warn instead",
          _probe_params_table),
    Reach("mlflow_artifact_progress_bar_off", "mlflow", "mlflow.utils.file_utils.ArtifactProgressBar.set_pbar",
          ">=2.9,<4", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR (process-wide)", _probe_progress_bar),
    Reach("mlflow_load_artifact_content", "mlflow", "EvaluationArtifact._load(local_artifact_path)", ">=2.0,<4",
          "artifact.content (downloads from the uri)", _probe_evaluation_artifact),
    Reach("mlflow_pyfunc_impl", "mlflow", "PyFuncModel._model_impl", ">=2.0,<4",
          "get_raw_model (what the wrapped object returns)", _probe_pyfunc_impl),
    Reach("mlflow_monitor_step", "mlflow", "SystemMetricsMonitor._logging_step", ">=2.8,<4",
          "count the run's system/* metric history", _probe_monitor_step),
    Reach("mlflow_save_example", "mlflow", "mlflow.models.utils._save_example", ">=2.0,<4",
          "none for a custom flavor", _probe_save_example),
    Reach("executor_is_broken", "python", "concurrent.futures Executor._broken", ">=3.11,<3.15",
          "BrokenExecutor from submit (after the job is handed over)", _probe_executor_broken),
    Reach("argparse_actions", "python", "argparse.ArgumentParser._actions", ">=3.11,<3.15",
          "keep the Actions add_argument returns", _probe_argparse),
    Reach("dask_meta", "dask", "dask.dataframe.DataFrame._meta", ">=2024.12,<2027",
          "frame.dtypes / frame.columns (no partition type or index)", _probe_dask_meta),
    Reach("tornado_listening_sockets", "tornado", "tornado.tcpserver.TCPServer._sockets", ">=6.2,<7",
          "Client.dashboard_link (a host name, not the bound address)", _probe_tornado_sockets),
    Reach("distributed_actor_call", "distributed", "Worker.actor_execute (RPC handler)", ">=2024.12,<2027",
          "Client.submit(..., actor=True) handles (through the client)", _probe_actor_execute),
    Reach("sklearn_set_fit_privates", "scikit-learn", "KMeans._n_threads, KMeans._n_features_out, "
          "sklearn.utils._openmp_helpers._openmp_effective_n_threads", ">=1.4,<1.10",
          "none (a real fit would move the centres)", _probe_sklearn_fit_privates),
    Reach("sklearn_type_path", "scikit-learn", "private module paths sklearn.cluster._kmeans.KMeans, "
          "sklearn.preprocessing._data.StandardScaler, ..._function_transformer.FunctionTransformer (skops trust "
          "lists and class keys name them)", ">=1.4,<1.10", "none (skops names a type by its defining module)",
          _probe_sklearn_type_paths),
    Reach("cuml_set_internal_model", "cuml", "cuml.dask BaseEstimator._set_internal_model", ">=26.10,<26.12",
          "none", None),
)


def check(names: list[str] | None = None) -> None:
    """Probe every reach (or those named) on the installed versions.

    Raises
    ------
    CompatError
        For the first reach whose private thing is gone or changed shape; the message names the
        entry, the library and installed version, the private thing and the range checked.
    """
    for reach in REACHES:
        if reach.probe is None or (names is not None and reach.name not in names):
            continue
        try:
            reach.probe()
        except Exception as exc:  # any failure of a probe is the finding
            raise CompatError(
                f"toolkit._compat.{reach.name}: {reach.library} {_installed(reach.library)} changed "
                f"{reach.private} (checked against {reach.library}{reach.checked}): {type(exc).__name__}: {exc} "
                f"-- fix: update toolkit/_compat.py ({reach.public})"
            ) from exc
