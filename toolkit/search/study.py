"""Optuna studies in persistent storage: naming, resuming, cleaning up after a crash.

A fresh search gets a new study ``<base>`` (or ``<base>-2``, ``-3``... when that name is taken),
so running the same command twice never mixes two searches; ``resume`` continues the newest
study of that base name.  The study remembers its MLflow parent run in a user attribute.

Storage: by default an append-only journal file (Optuna's ``JournalStorage``) *beside the
tracking store it belongs to*: ``mlflow.optuna.log`` next to ``sqlite:///mlflow.db``, or
``optuna-<host>-<hash>.log`` in this user's data folder (``${XDG_DATA_HOME:-~/.local/share}/
kmeans-lifecycle/studies``) for a server or database store.  Two tracking stores never share
studies, so a resume can only pick up a study of its own store.  The parent run records its
study's storage and name; a resume reads them there (:func:`locate_study`).
The driver keeps the whole study in memory, so ``ask`` and ``tell`` cost a fraction of what
an RDB storage costs (an order of magnitude less than ``sqlite:///optuna.db``, which would be
most of a tiny trial's overhead).  Killing the driver loses nothing: each operation is one
appended line, written before the call returns.  Unlike Optuna's own file backend it does not
``fsync`` every line (a disk sync per ask and tell, far slower on a network disk); like the
MLflow store in WAL mode, only an operating-system crash can lose the last lines.
``KMEANS_LIFECYCLE_JOURNAL_FSYNC=1`` restores the fsync.  Any SQLAlchemy URL
(``sqlite:///optuna.db``, ``postgresql://...``) is used as an RDB storage; ``${VAR}`` in it is
read from the environment when it connects, so a password never has to be written in a param.

A study is run by one driver at a time (:mod:`toolkit.search.lease`); creating one is race-free
(two searches started together get two studies).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from toolkit.config import ExperimentConfig, env_flag
from toolkit.errors import ConfigError, first_line, option_hint
from toolkit.redact import expand_env, redact
from toolkit.search.fidelity import make_pruner
from toolkit.search.lease import DriverLease

__all__ = [
    "LEGACY_STORAGE",
    "PARENT_ATTR",
    "STORAGE_TAG",
    "StudyLocation",
    "data_dir",
    "default_storage",
    "is_journal",
    "journal_path",
    "locate_study",
    "open_study",
    "stale_trials",
    "study_storage",
]

PARENT_ATTR = "mlflow_parent_run_id"
#: The tracking store a study belongs to (redacted), checked on resume.
STORE_ATTR = "mlflow_tracking_uri"


def default_storage(tracking_uri: str | None = None) -> str:
    """The journal file that holds the studies of ``tracking_uri`` (default: the current store).

    Beside a file store (``sqlite:///dir/mlflow.db`` -> ``dir/mlflow.optuna.log``, a file store
    folder ``mlruns`` -> ``mlruns.optuna.log``); for a server or database store, a file in this
    user's data folder (:func:`data_dir`, ``studies/``) keyed by the store's address without
    credentials.
    """
    from toolkit.tracking._sqlite import sqlite_file
    from toolkit.tracking.runs import tracking_uri as current

    uri = tracking_uri or current()
    db = sqlite_file(uri)
    if db is not None:
        return os.path.splitext(db)[0] + ".optuna.log"
    if "://" not in uri or uri.startswith("file:"):
        folder = os.path.abspath(uri.removeprefix("file://").removeprefix("file:"))
        return folder.rstrip(os.sep) + ".optuna.log"
    bare = re.sub(r"//[^/@]*@", "//", uri)  # the same store whoever logs in
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", bare.split("://", 1)[1].split("/", 1)[0]).strip("-") or "store"
    # Not the working directory: a resume started from another one would not find it.
    return os.path.join(data_dir(), "studies", f"optuna-{host}-{hashlib.sha1(bare.encode()).hexdigest()[:8]}.log")


def data_dir() -> str:
    """This user's data folder of the toolkit: ``${XDG_DATA_HOME:-~/.local/share}/kmeans-lifecycle``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "kmeans-lifecycle")


#: Where earlier releases kept every study: ``optuna.log`` in the working directory.
LEGACY_STORAGE = "optuna.log"
#: Parent-run tag: the Optuna storage of the search's study (credentials masked, ``${VAR}`` kept).
STORAGE_TAG = "search.study_storage"
#: Parent-run tag: the study's name.
STUDY_TAG = "search.study_name"


@dataclass
class StudyLocation:
    """Where the study of a search is: its storage, its name when already known (a resume), and
    how it was found (said to the user)."""

    storage: str
    name: str | None = None
    found: str = ""


def locate_study(cfg: ExperimentConfig) -> StudyLocation:
    """The storage (and, for a resume, the study) of this search.

    ``search.storage`` when given.  A resume (``search.resume`` true or auto) otherwise reads the
    newest parent run of this search in the tracking store: the storage and study it recorded
    (:data:`STORAGE_TAG`), from whatever directory it runs; a parent made by an earlier release
    recorded no storage, so its study is looked for in the default storage, then in
    ``./optuna.log`` (the earlier releases' default), and named.
    """
    if cfg.search.storage:
        return StudyLocation(cfg.search.storage)
    default = default_storage()
    if not cfg.search.resume:
        return StudyLocation(default)
    base = cfg.search.study_name or f"{cfg.name}-{cfg.backend}"
    parent = _recorded_parent(cfg, base)
    if parent is not None and parent.data.tags.get(STORAGE_TAG):
        from toolkit.redact import MASK

        storage = parent.data.tags[STORAGE_TAG]
        if MASK in storage:
            raise ConfigError(
                f"the storage of study {parent.data.tags[STUDY_TAG]!r} was recorded with its password masked "
                f"({storage})",
                f"pass it with the password as a ${{VAR}} reference, e.g. "
                f"{option_hint('storage', storage.replace(MASK, '${PGPASSWORD}'))}",
            )
        return StudyLocation(storage, parent.data.tags[STUDY_TAG],
                             f"recorded on its parent run {parent.info.run_id}")
    wanted = parent.data.tags[STUDY_TAG] if parent is not None else None
    legacy = os.path.abspath(LEGACY_STORAGE)
    for storage, how in ((default, "in the default storage"),
                         (legacy, f"in {legacy}, where releases before this one kept their studies")):
        if is_journal(storage) and not os.path.exists(storage):
            continue
        names = [n for _, n in _names(study_storage(storage), base)]
        if wanted in names or (wanted is None and names):
            return StudyLocation(storage, wanted or names[-1], how)
    return StudyLocation(default)


def _recorded_parent(cfg: ExperimentConfig, base: str) -> Any:
    """The newest parent run of a search of study ``base`` (or ``base-N``) in the tracking store."""
    from toolkit.tracking.runs import client

    c = client()
    ids = []
    exp = c.get_experiment_by_name(cfg.experiment_name)
    if exp is not None:
        ids.append(exp.experiment_id)
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if launcher:  # under mlflow run --experiment-name, the parent is in mlflow run's experiment
        with contextlib.suppress(Exception):
            ids.append(c.get_run(launcher).info.experiment_id)
    if not ids:
        return None
    pattern = re.compile(rf"^{re.escape(base)}(?:-\d+)?$")
    runs = c.search_runs(sorted(set(ids)), filter_string="tags.entry_point = 'search'",
                         order_by=["attributes.start_time DESC"], max_results=200)
    return next((r for r in runs if pattern.match(r.data.tags.get(STUDY_TAG, ""))
                 and "mlflow.parentRunId" not in r.data.tags), None)


def journal_path(url: str) -> str:
    """``url`` as it is recorded: a journal file's absolute path, a database URL as written."""
    return os.path.abspath(url) if is_journal(url) else url


def is_journal(url: str) -> bool:
    """A journal file path (no ``scheme://``) rather than a database URL."""
    return "://" not in url


def study_storage(url: str | None) -> Any:
    """The Optuna storage for ``url``: a journal file for a plain path (default ``optuna.log``),
    an RDB storage for a SQLAlchemy URL."""
    import optuna

    url = url or default_storage()
    try:
        if is_journal(url):
            from optuna.storages.journal import JournalFileBackend

            folder = os.path.dirname(os.path.abspath(url))
            if folder.startswith(data_dir()):  # the per-user default of a server store
                os.makedirs(folder, exist_ok=True)
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"folder {folder} does not exist")
            backend = JournalFileBackend(url) if env_flag(_FSYNC_ENV, default=False) else _unsynced_journal()(url)
            return optuna.storages.JournalStorage(backend)
        return optuna.storages.RDBStorage(expand_env(url), engine_kwargs={"pool_pre_ping": True})
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            redact(f"cannot open Optuna storage {url!r}: {first_line(exc)}"),
            "set search.storage to a journal file path (optuna.log) or a SQLAlchemy URL "
            "(sqlite:///optuna.db)",
        ) from None


#: ``1`` makes the journal fsync every appended line, as Optuna's own file backend does.
_FSYNC_ENV = "KMEANS_LIFECYCLE_JOURNAL_FSYNC"


@functools.cache
def _unsynced_journal() -> type:
    """Optuna's journal file backend, appending without an ``fsync`` per line.

    Same file format and the same lock file as Optuna's, so Optuna (and another driver
    resuming the study) reads and writes the file as usual.
    """
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    class UnsyncedJournalFile(JournalFileBackend):
        def __init__(self, file_path: str) -> None:
            lock = JournalFileSymlinkLock(file_path)
            super().__init__(file_path, lock_obj=lock)
            self._append_path, self._append_lock = file_path, lock

        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
            self._append_lock.acquire()
            try:
                with open(self._append_path, "ab") as fh:
                    fh.write(text)  # closed before the lock is released: the line is in the file
            finally:
                self._append_lock.release()

    return UnsyncedJournalFile


def _sampler(cfg: ExperimentConfig, offset: int) -> Any:
    import optuna

    from toolkit.search.space import grid_values

    seed = cfg.search.seed + offset  # a resumed study must not replay the first run's draws
    kind = "grid" if cfg.search.strategy == "grid" else cfg.search.sampler
    if cfg.search.strategy == "random":
        kind = "random"
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=5)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return _ask_tell_grid_sampler()(grid_values(cfg.search), seed=seed)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    return optuna.samplers.QMCSampler(seed=seed)


def _ask_tell_grid_sampler() -> type:
    """``GridSampler`` for the ask/tell loop.

    Optuna's ``GridSampler.after_trial`` calls ``study.stop()`` once the grid is covered, which
    raises ``RuntimeError`` outside ``study.optimize``; here the loop itself counts trials (and
    caps them at the grid size), so that stop is not wanted.
    """
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return AskTellGridSampler


def _names(storage: Any, base: str) -> list[tuple[int, str]]:
    import optuna

    pattern = re.compile(rf"^{re.escape(base)}(?:-(\d+))?$")
    found = []
    for name in optuna.get_all_study_names(storage):
        m = pattern.match(name)
        if m:
            found.append((int(m.group(1) or 1), name))
    return sorted(found)


def open_study(cfg: ExperimentConfig, direction: str | list[str],
               where: StudyLocation | None = None) -> tuple[Any, bool, DriverLease]:
    """Create a new study, or with ``search.resume`` load the one to resume.

    ``where`` is :func:`locate_study`'s answer (found here when not given).  Returns ``(study,
    resumed, lease)``: the caller holds ``lease`` (one driver per study) until the search ends and
    must :meth:`~toolkit.search.lease.DriverLease.release` it.

    Raises:
        ConfigError: ``resume=true`` found no study to resume; the study to resume is run by
            another live driver, or was made for another objective direction.
    """
    import optuna

    from toolkit.console import say
    from toolkit.redact import redact

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    where = where or locate_study(cfg)
    storage = study_storage(where.storage)
    base = cfg.search.study_name or f"{cfg.name}-{cfg.backend}"
    existing = _names(storage, base)
    name = where.name or (existing[-1][1] if existing else None)
    if cfg.search.resume and name is not None and name not in {n for _, n in existing}:
        raise ConfigError(f"study {name!r} is not in {redact(where.storage)} ({where.found})",
                          f"pass the storage that holds it ({option_hint('storage')}), or start a new "
                          f"search ({option_hint('resume', 'false')})")
    if cfg.search.resume is True and name is None:
        raise ConfigError(
            f"there is no study {base!r} to resume: none in {redact(where.storage)} nor on a parent run of "
            f"experiment {cfg.experiment_name!r}",
            f"start a new search ({option_hint('resume', 'false')}, or {option_hint('resume', 'auto')} to resume "
            f"when there is one), or pass the storage that holds it ({option_hint('storage')})",
        )
    if cfg.search.resume == "auto" and name is None:
        say(f"resume=auto: no study {base!r} to resume in {redact(where.storage)}; starting a new one")
    if cfg.search.resume and name is not None:
        say(f"resuming study {name} from {redact(where.storage)}" + (f" ({where.found})" if where.found else ""))
        return _resume_study(cfg, storage, name, direction)
    return _new_study(cfg, storage, (base, existing), direction)


def _resume_study(cfg: ExperimentConfig, storage: Any, name: str, direction: str | list[str]) -> tuple[Any, bool, Any]:
    """The study ``name`` loaded, under its lease; refused if its directions differ from ``direction``."""
    import optuna

    lease = DriverLease(storage, name).acquire()
    try:
        n_done = len(optuna.load_study(study_name=name, storage=storage).trials)
        study = optuna.load_study(study_name=name, storage=storage, sampler=_sampler(cfg, n_done),
                                  pruner=make_pruner(cfg.search.fidelity))
        if len(study.directions) > 1:  # made by search.objectives: its trials have no one value
            raise ConfigError(
                f"study {name!r} is a multi-objective study (search.objectives); resuming one is "
                "not supported",
                f"start a new search ({option_hint('resume', 'false')})",
            )
        if study.direction.name.lower() != direction:
            raise ConfigError(
                f"study {name!r} was created to {study.direction.name.lower()} but the objective "
                f"{cfg.search.objective} needs {direction}",
                f"resume with the same objective, or start a new search ({option_hint('resume', 'false')})",
            )
    except BaseException:
        lease.release()
        raise
    return study, True, lease


def _new_study(cfg: ExperimentConfig, storage: Any, names: tuple[str, list[tuple[int, str]]],
               direction: str | list[str]) -> tuple[Any, bool, Any]:
    """A new study named ``base`` (or ``base-N``: ``names`` is ``(base, existing names)``), under its lease."""
    import optuna
    from optuna.exceptions import DuplicatedStudyError

    base, existing = names
    # Two searches started together both see the same free name; study names are unique in
    # the storage, so the loser of the race takes the next number.
    for _ in range(50):
        name = base if not existing else f"{base}-{existing[-1][0] + 1}"
        try:
            # A list: one direction per objective, an Optuna multi-objective study
            # (search.objectives; the config refuses to resume one).
            how = {"directions": direction} if isinstance(direction, list) else {"direction": direction}
            study = optuna.create_study(study_name=name, storage=storage, **how,
                                        sampler=_sampler(cfg, 0), pruner=make_pruner(cfg.search.fidelity))
        except DuplicatedStudyError:
            existing = _names(storage, base)
            continue
        lease = DriverLease(storage, name).acquire()
        return study, False, lease
    raise ConfigError(f"could not create a new study named {base}-N (50 tries lost a race)",
                      "set search.study_name to a name of its own")


def stale_trials(study: Any) -> list[Any]:
    """Trials left RUNNING by a driver that died (no other driver runs this study)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
