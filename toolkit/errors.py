"""User-facing errors.

Every problem a user can fix (bad config, bad data, missing GPU package) is raised as a
:class:`ToolkitError` whose message is one line naming the problem and the fix.  Entry points
print that line, mark the MLflow run FAILED with it and exit non-zero.  A fix that names a
command-line option names it through :func:`option_hint`, the way the user gives it:
``-P overwrite=true`` under ``mlflow run``, ``--overwrite true`` run directly.
"""

from __future__ import annotations


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
