"""Write-ahead logging for a local sqlite tracking store.

In its default rollback-journal mode sqlite syncs the disk on every commit (an MLflow child run
makes six), and a reader such as ``mlflow ui`` blocks the writer.  In WAL mode with
``synchronous=NORMAL`` a commit appends to the log without a sync, readers and the one writer
no longer block each other, and the database still cannot be corrupted by a crash (a power cut
may lose the last commits).  MLflow uses the same two pragmas for its own bulk imports.

WAL needs every process on one host (it uses shared memory beside the file), so a store on a
network file system should opt out: ``KMEANS_LIFECYCLE_SQLITE_WAL=0``.

Only the sqlite files of the stores this toolkit opens are touched, not every sqlite database
the process happens to use.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sqlite3
import threading
from typing import Any

from toolkit.config import env_flag

_LOCK = threading.Lock()
_FILES: set[str] = set()
_LISTENING = False

ENV = "KMEANS_LIFECYCLE_SQLITE_WAL"


def enabled() -> bool:
    """WAL is on unless ``KMEANS_LIFECYCLE_SQLITE_WAL`` is 0/false/no/off."""
    return env_flag(ENV, default=True)


PREFIX = "sqlite:///"


def file_part(uri: str | None) -> tuple[str, str] | None:
    """``(path as written, "?query" or "")`` of a file-backed ``sqlite:///`` URI, else None
    (a server, another database, an in-memory store)."""
    if not uri or not uri.startswith(PREFIX):
        return None
    path, sep, query = uri[len(PREFIX):].partition("?")
    if not path or path == ":memory:":
        return None
    return path, sep + query


def sqlite_file(uri: str | None) -> str | None:
    """The absolute path of a ``sqlite:///`` URI's file, else None (server, other databases, memory)."""
    part = file_part(uri)
    return os.path.realpath(part[0]) if part else None


@contextlib.contextmanager
def first_use_lock(db: str) -> Any:
    """Hold an exclusive lock on the folder of sqlite file ``db`` (one process at a time).

    MLflow creates and migrates a new store's tables, and its ``Default`` experiment, in whichever
    process opens it first, without a lock of its own (its tracking store): two processes opening
    a new store together both migrate it and one fails (``duplicate column name``,
    ``AttributeError: dimension_attributes``).  An ``flock`` of the folder leaves no file behind.
    """
    import fcntl

    folder = os.path.dirname(db)
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def use_wal(*uris: str | None) -> None:
    """Put the sqlite stores among ``uris`` in WAL mode as the process connects to them."""
    global _LISTENING
    if not enabled():
        return
    files = {f for f in map(sqlite_file, uris) if f}
    if not files or files <= _FILES:
        return
    with _LOCK:
        _FILES.update(files)
        if not _LISTENING:
            from sqlalchemy import event
            from sqlalchemy.engine import Engine

            event.listen(Engine, "connect", _on_connect)
            atexit.register(_checkpoint_all)
            _LISTENING = True


def _checkpoint_all() -> None:
    """At exit: copy each store's write-ahead log into its file and empty the log.

    Closing a database's last connection does this too, but a process may end without
    closing them (the entry points skip the interpreter's teardown: mlproject/_exit.py);
    afterwards the database file alone holds every commit, for whoever copies it.
    """
    for path in sorted(_FILES):
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=5)) as con:
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # busy or gone: the log stays beside the file, and sqlite replays it on open


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection) or not enabled():
        return
    cur = dbapi_connection.cursor()
    try:
        main = next((row[2] for row in cur.execute("PRAGMA database_list") if row[1] == "main"), "")
        if main and os.path.realpath(main) in _FILES:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.OperationalError:
        # Best effort: a store that cannot switch (locked, read-only) keeps its journal mode.
        pass
    finally:
        cur.close()
