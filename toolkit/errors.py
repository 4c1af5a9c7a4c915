"""User-facing errors.

Every problem a user can fix (bad config, bad data, missing GPU package) is raised as a
:class:`ToolkitError` whose message is one line naming the problem and the fix.  Entry points
print that line, mark the MLflow run FAILED with it and exit non-zero.
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
