"""The toolkit's version: ``toolkit.__version__``, as recorded with every model it signs.

Read from where the running code came from, importing nothing of the toolkit (layer 0):

1. a source checkout (an editable install, or the folder on ``sys.path``): the ``version`` of
   the ``pyproject.toml`` beside the package, when that file is this project's -- an editable
   install's metadata is written once, at install time, and goes stale when the version is
   bumped (``pip install -e .`` again refreshes it);
2. otherwise the installed distribution's metadata (``importlib.metadata``), i.e. a wheel;
3. ``0+unknown`` when neither exists (a copied folder with no metadata).
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

__all__ = ["DISTRIBUTION", "__version__", "package_version"]

#: The distribution name (``pip install kmeans-lifecycle``).
DISTRIBUTION = "kmeans-lifecycle"
_UNKNOWN = "0+unknown"


def _source_tree_version(package_dir: str) -> str | None:
    """The version in ``<package_dir>/../pyproject.toml`` if that file is this project's."""
    path = os.path.join(os.path.dirname(os.path.abspath(package_dir)), "pyproject.toml")
    try:
        import tomllib

        with open(path, "rb") as fh:
            project = tomllib.load(fh).get("project") or {}
    except (OSError, ValueError):
        return None
    if project.get("name") != DISTRIBUTION or not isinstance(project.get("version"), str):
        return None
    return project["version"]


def package_version(package_dir: str | None = None) -> str:
    """The version of the toolkit at ``package_dir`` (default: this one)."""
    found = _source_tree_version(package_dir or os.path.dirname(__file__))
    if found:
        return found
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return _UNKNOWN


__version__ = package_version()
