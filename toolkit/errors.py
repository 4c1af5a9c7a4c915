"""User-facing errors.

Every problem a user can fix (bad config, bad data, missing GPU package) is raised as a
:class:`ToolkitError` whose message is one line naming the problem and the fix.  Entry points
print that line, mark the MLflow run FAILED with it and exit non-zero.  A fix that names a
command-line option names it through :func:`option_hint`, the way the user gives it:
``-P overwrite=true`` under ``mlflow run``, ``--overwrite true`` run directly.
"""

from __future__ import annotations

from collections.abc import Sequence


def first_line(error: BaseException | str, limit: int | None = None) -> str:
    """The first line of an error's message, cut to ``limit`` characters ("" when it has none:
    ``str(exc).splitlines()[0]`` fails on an exception raised without a message)."""
    line = (str(error).splitlines() or [""])[0]
    return line if limit is None else line[:limit]


class ToolkitError(Exception):
    """A problem the user can fix; ``str(err)`` is a single line: problem, then the fix."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = " ".join(str(problem).split())
        self.fix = " ".join(str(fix).split()) if fix else None
        super().__init__(self.problem + (f" -- fix: {self.fix}" if self.fix else ""))


class ConfigError(ToolkitError):
    """An experiment config or command-line override is invalid."""


class DataError(ToolkitError):
    """Input data is missing, empty, non-numeric or not finite."""


class BackendUnavailableError(ToolkitError):
    """A backend's package or device is missing on this machine."""


class ModelError(ToolkitError):
    """A model URI, alias or flavor cannot be served as asked."""


# -- naming a command-line option the way the user gave it -----------------------------------

#: Set by every ``MLproject`` command to its entry point's name: the process was started by
#: ``mlflow run`` (the CLI or ``mlflow.projects.run``), so the user typed ``-P name=value``.
#: ``MLFLOW_RUN_ID`` cannot tell: a user may export it to resume a run, and tests set it.
LAUNCHER_ENV = "KMEANS_LIFECYCLE_ENTRY_POINT"

#: MLproject parameters whose command-line flag is not ``--`` + the name with dashes.
_FLAG_OF = {"overrides": "set"}


def launched_entry_point() -> str | None:
    """The ``mlflow run`` entry point that started this process, or None when run directly."""
    import os

    return os.environ.get(LAUNCHER_ENV) or None


def option_hint(name: str, value: object = None) -> str:
    """Option ``name`` (its MLproject parameter name, e.g. ``"overwrite"``) as the user writes it.

    Under ``mlflow run``: ``-P overwrite=true``; run directly: ``--overwrite true`` (and
    ``overrides`` is ``--set``).  ``value`` is shell-quoted when it needs to be; without one only
    the option is named.
    """
    import shlex

    shown = None if value is None else shlex.quote(str(value))
    if launched_entry_point():
        return f"-P {name}" if shown is None else f"-P {name}={shown}"
    flag = "--" + _FLAG_OF.get(name, name).replace("_", "-")
    return flag if shown is None else f"{flag} {shown}"


# -- a full disk -----------------------------------------------------------------------------

def disk_full(error: BaseException, candidates: Sequence[str] = ()) -> ToolkitError | None:
    """The one-line error for ``error`` when a full disk caused it, else None.

    A full disk (``ENOSPC``, a quota: ``EDQUOT``, a file-size limit: ``EFBIG``) surfaces as an
    ``OSError`` deep in MLflow's artifact copy or SQLAlchemy's commit, often wrapped in another
    exception; its chain is searched.  The line names the path being written, the mount that is
    full and what to do.  An error written through an open file names no path: then the first of
    ``candidates`` (local folders the failed work wrote to: the run's artifact folder, the
    store's) whose file system has (almost) no room left is named.
    """
    import errno

    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        exc = stack.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            # shutil.copy names (source, destination): the destination is on the full disk.
            path = exc.filename2 or exc.filename or _fullest(candidates)
            return _full(str(path) if path else None, exc.errno == errno.EFBIG, exc.strerror or str(exc))
        if "database or disk is full" in str(exc):  # sqlite's own word for ENOSPC
            return _full(None, False, "database or disk is full", "the tracking store's database")
        stack += [exc.__cause__, exc.__context__]
    return None


def _fullest(folders: Sequence[str]) -> str | None:
    """The first of ``folders`` on a file system with less than 1 MiB left (even for root)."""
    import os

    for folder in folders:
        while folder and not os.path.exists(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)  # not made yet: its file system is its parent's
        try:
            st = os.statvfs(folder)
        except OSError:
            continue
        if st.f_bfree * st.f_frsize < 2**20:
            return folder
    return None


def _full(path: str | None, too_large: bool, why: str,
          what: str = "an artifact or the tracking store") -> ToolkitError:
    import os

    rerun = f"then rerun (a search continues where it stopped with {option_hint('resume', 'true')})"
    if path is None:  # written through an open file: the path is not in the error
        return ToolkitError(f"the disk is full ({why}) while writing {what}",
                            f"free space on the disks of the artifact store and the tracking store (df -h), {rerun}")
    mount = os.path.dirname(os.path.abspath(path))
    while not os.path.ismount(mount) and os.path.dirname(mount) != mount:
        mount = os.path.dirname(mount)
    if too_large:
        return ToolkitError(f"file size limit reached writing {path} ({why})",
                            f"raise this process's file size limit (ulimit -f), {rerun}")
    return ToolkitError(
        f"no space left on {mount} (full while writing {path})",
        f"free space on {mount} (df -h {mount}) or point the artifact store at a disk with room "
        f"(the experiment's artifact location, or the server's --artifacts-destination), {rerun}",
    )
