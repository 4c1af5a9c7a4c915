"""MLflow run lifecycle: create or resume runs, nest children, never leave a run RUNNING.

Everything goes through ``MlflowClient`` with explicit run ids, so the same code writes the
top-level run of ``train``, the parent of a search and its child trial runs, and works
unchanged against sqlite or a tracking server.  Under ``mlflow run`` the top-level run already
exists (``MLFLOW_RUN_ID``) and is resumed rather than created.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

from toolkit.errors import disk_full, first_line
from toolkit.redact import redact
from toolkit.tracking.retry import configure_mlflow_http

configure_mlflow_http()

__all__ = [
    "DEFAULT_TRACKING_URI",
    "check_store",
    "client",
    "end_run",
    "get_or_create_experiment",
    "mark_failed",
    "registry_uri",
    "run_url",
    "scrub_credentials",
    "start_run",
    "tracked_run",
    "tracking_uri",
    "using_store",
]

#: MLflow 3's own default; set explicitly so every process agrees on it.
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


#: Stores pinned for the current thread/task by :func:`using_store` (the background writer).
_PINNED: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar(
    "kmeans_lifecycle_store", default=None
)


def tracking_uri() -> str:
    """The pinned store (:func:`using_store`), else ``MLFLOW_TRACKING_URI``, else
    ``sqlite:///mlflow.db`` in the working directory."""
    pinned = _PINNED.get()
    if pinned is not None:
        return pinned[0]
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def registry_uri() -> str:
    """The pinned registry, else ``MLFLOW_REGISTRY_URI``, else the tracking store."""
    pinned = _PINNED.get()
    if pinned is not None:
        return pinned[1] or pinned[0]
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri()


@contextlib.contextmanager
def using_store(tracking: str, registry: str | None = None) -> Iterator[None]:
    """Within the block, :func:`client` in this thread talks to these stores (the environment
    of the process is left alone)."""
    token = _PINNED.set((tracking, registry))
    try:
        yield
    finally:
        _PINNED.reset(token)


def client() -> Any:
    """An ``MlflowClient`` on the current tracking URI (registry on the same store), whose calls
    are retried on transient failures within a bounded time (:mod:`toolkit.tracking.retry`)."""
    from mlflow import MlflowClient

    from toolkit.tracking._sqlite import use_wal
    from toolkit.tracking.retry import RetryingClient

    tracking, registry = tracking_uri(), registry_uri()
    use_wal(tracking, registry)
    if (tracking, registry) not in _OPENED:
        _open_first(tracking, registry)
    return RetryingClient(MlflowClient(tracking_uri=tracking, registry_uri=registry), tracking)


#: ``(tracking, registry)`` pairs this process has opened (their tables and Default exist).
_OPENED: set[tuple[str, str]] = set()


def _open_first(tracking: str, registry: str) -> None:
    """Open a local sqlite store for the first time in this process under a lock of its folder,
    so that searches started together on a new store do not all create its tables at once."""
    from mlflow import MlflowClient

    from toolkit.tracking._sqlite import first_use_lock, sqlite_file

    # One file per folder: the lock is the folder's (two locks of one folder would deadlock).
    files = sorted({os.path.dirname(f): f for f in (sqlite_file(tracking), sqlite_file(registry)) if f}.values())
    if files:
        with contextlib.ExitStack() as stack:
            for db in files:
                stack.enter_context(first_use_lock(db))
            inner = MlflowClient(tracking_uri=tracking, registry_uri=registry)  # opens the tracking store
            inner.search_experiments(max_results=1)  # the tracking tables and experiment Default
            inner.search_registered_models(max_results=1)  # the registry's
    _OPENED.add((tracking, registry))


def check_store() -> None:
    """Fail early, in one line naming the cause, when the tracking store cannot be used.

    Without this an unwritable store surfaced as several MLflow/SQLAlchemy tracebacks deep in
    the first write (or, for a sqlite file in a read-only folder, only at the first commit).
    """
    import uuid

    from toolkit.errors import ToolkitError
    from toolkit.tracking._sqlite import sqlite_file

    uri = tracking_uri()
    fix = ("set MLFLOW_TRACKING_URI to a store this user can write (e.g. sqlite:///mlflow.db in a writable "
           "folder) or fix the store's permissions")
    try:
        db = sqlite_file(uri)
        if db is not None:
            # Before MLflow opens it: MLflow retries creating the engine of a sqlite file it cannot
            # open for ~50 s, once for the tracking and once for the registry store (110 s).
            # sqlite writes a journal (or WAL) file beside the database: the folder must take files.
            os.makedirs(os.path.dirname(db), exist_ok=True)  # as MLflow would
            probe = os.path.join(os.path.dirname(db), f".kmeans-write-probe-{uuid.uuid4().hex}")
            with open(probe, "w"):
                pass
            os.remove(probe)
            if os.path.exists(db) and not os.access(db, os.W_OK):
                raise PermissionError(f"{db} is read-only")
        client().inner.search_experiments(max_results=1)  # creates (and migrates) a new sqlite store
    except ToolkitError:
        raise
    except Exception as exc:
        cause = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ToolkitError(redact(f"cannot use the MLflow tracking store {uri}: {type(exc).__name__}: {cause}"),
                           fix) from None


def get_or_create_experiment(name: str) -> str:
    """The id of experiment ``name``, created (or restored from deleted) if needed."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(name)
        except Exception:
            # Another process created it between the two calls (two searches started together:
            # "UNIQUE constraint failed: experiments.name"): use theirs.
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        c.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def start_run(
    experiment: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
) -> str:
    """Create a run and return its id.

    A top-level run (no ``parent_run_id``) resumes ``resume_run_id`` or, under ``mlflow run``,
    the run named by ``MLFLOW_RUN_ID``.  A child run carries the ``mlflow.parentRunId`` tag,
    which is what links it under its parent in the UI.
    """
    c = client()
    tags = dict(tags or {})
    resume = resume_run_id or (None if parent_run_id else os.environ.get("MLFLOW_RUN_ID"))
    if resume:
        c.update_run(resume, status="RUNNING", name=run_name)
        _clear_error_tags(c, resume)
        for key, value in tags.items():
            c.set_tag(resume, key, redact(str(value)))
        return resume
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    exp_id = get_or_create_experiment(experiment)
    run = c.create_run(exp_id, run_name=run_name, tags=tags)
    return run.info.run_id


#: Tags :func:`mark_failed` writes; a run resumed and ended FINISHED must not keep them.
ERROR_TAGS = ("error", "error.type", "error.traceback")


def _clear_error_tags(c: Any, run_id: str) -> None:
    stale = [k for k in ERROR_TAGS if k in c.get_run(run_id).data.tags]
    for key in stale:
        c.delete_tag(run_id, key)
    if stale:
        c.set_tag(run_id, "resumed.previous_error", "cleared when the run was resumed")


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Terminate a run with ``status`` (FINISHED, FAILED or KILLED)."""
    client().set_terminated(run_id, status=status)


def mark_failed(run_id: str, error: BaseException | str) -> None:
    """End ``run_id`` as FAILED and record the one-line reason as the ``error`` tag."""
    c = client()
    if isinstance(error, BaseException):
        error = disk_full(error) or error  # the run says which disk is full, as the console does
    line = redact(first_line(error) or type(error).__name__)
    if isinstance(error, BaseException):
        c.set_tag(run_id, "error.type", type(error).__name__)
        if not _is_user_error(error):
            c.set_tag(run_id, "error.traceback", redact("".join(traceback.format_exception(error)))[-4000:])
    c.set_tag(run_id, "error", line[:4000])
    c.set_terminated(run_id, status="FAILED")


def _is_user_error(error: BaseException) -> bool:
    from toolkit.errors import ToolkitError

    return isinstance(error, ToolkitError)


@contextlib.contextmanager
def tracked_run(
    experiment: str,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    resume_run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[str]:
    """Start a run, yield its id, end it FINISHED, or FAILED (with the reason) on error.

    With ``system_metrics``, MLflow's CPU/memory/GPU samples are logged on the run while the
    block runs (:mod:`toolkit.tracking.system`); the sampler is stopped before the run ends,
    on every path.
    """
    from toolkit.tracking.system import monitored

    resumed = bool(resume_run_id or (not parent_run_id and os.environ.get("MLFLOW_RUN_ID")))
    run_id = start_run(experiment, run_name, tags, parent_run_id, resume_run_id)
    try:
        # Inside the try: the sampler stops (and has written its last step) before the run
        # is ended below, so it never writes to an ended run nor outlives it.
        with monitored(run_id, tracking_uri(), enabled=system_metrics, resume=resumed):
            yield run_id
    except BaseException as exc:
        status_error = exc if not isinstance(exc, KeyboardInterrupt) else "interrupted (KeyboardInterrupt)"
        full = disk_full(exc, _local_folders(run_id)) if isinstance(exc, Exception) else None
        # Best effort: when the store itself is what failed (down, read-only), the error that
        # stopped the run is the one to report, not a second one from marking it.
        with contextlib.suppress(Exception):
            mark_failed(run_id, full or status_error)
        if full is not None:
            raise full from exc  # one line naming the full disk, for every caller
        raise
    else:
        end_run(run_id, "FINISHED")


def _local_folders(run_id: str) -> list[str]:
    """Local folders a run writes to: its artifact folder, the sqlite store's, the temp dir."""
    import tempfile

    from toolkit.tracking._sqlite import sqlite_file

    folders = []
    with contextlib.suppress(Exception):
        art = client().get_run(run_id).info.artifact_uri
        if art.startswith("file:") or "://" not in art:
            folders.append(art.removeprefix("file://").removeprefix("file:"))
    db = sqlite_file(tracking_uri())
    return [*folders, *([os.path.dirname(db)] if db else []), tempfile.gettempdir()]


def scrub_credentials(run_id: str) -> list[str]:
    """Mask credentials in the params ``mlflow run`` logged for ``run_id`` from its ``-P`` values.

    ``mlflow run`` records every ``-P`` value as a param before the entry point starts, so a
    ``-P storage=postgresql://u:secret@host/db`` would stay in the record.  MLflow's API cannot
    change a param, so on a local sqlite store whose schema was checked the row is rewritten in
    place (masked: :func:`toolkit._compat.mlflow_sqlite_rewrite_params`); on any other store
    that is not possible and the keys are returned for a warning.
    """
    from toolkit._compat import mlflow_sqlite_rewrite_params
    from toolkit.redact import has_credentials
    from toolkit.tracking._sqlite import sqlite_file

    params = client().get_run(run_id).data.params
    leaked = {k: v for k, v in params.items() if has_credentials(v)}
    db = sqlite_file(tracking_uri())
    if not leaked or db is None:
        return sorted(leaked)
    # The secret's bytes leave the file now, not only what a query returns: the store's other
    # connections may stay open to the end of the process, and the entry points end without
    # closing them (mlproject/_exit.py).
    if mlflow_sqlite_rewrite_params(db, run_id, {k: redact(v) for k, v in leaked.items()}):
        return []
    return sorted(leaked)


def run_url(run_id: str) -> str:
    """Where a person finds the run: the server URL for http(s) stores, else a hint."""
    c = client()
    run = c.get_run(run_id)
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return redact(f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}")
    return redact(f"mlflow ui --backend-store-uri {uri}  (experiment {run.info.experiment_id}, run {run_id})")
