"""Dask workers checked before the first task: same toolkit, same backend libraries as the driver.

Workers import ``toolkit`` from their own Python environment, not from the driver: a worker
without the package fails on its first task, and one with another commit installed runs other
code without a word.  :func:`check_workers` asks every worker, before any task is sent, which
toolkit it would import and which versions of the backend's libraries it has, and raises a
one-line :class:`~toolkit.errors.ToolkitError` naming the first worker that differs.

* The toolkit "version" is :func:`toolkit_version`: the package's ``__version__`` plus a hash
  of its ``*.py`` sources, so two commits of an editable install differ even at one version.
* The question a worker answers is a plain function sent by value (see :func:`_make_probe`):
  it needs nothing of the toolkit on the worker, and finds the package with
  ``importlib.util.find_spec`` without importing it, so a worker without the toolkit answers
  "not installed" instead of failing to unpickle the question.
* :func:`ship_toolkit` (``cluster.ship_package: true``) uploads the driver's sources to every
  worker's nanny with ``distributed``'s ``UploadDirectory``, puts them first on the path and
  restarts the workers, since a worker that already imported ``toolkit`` keeps the old modules.

Workers that join after the check are not checked (a shipped package does reach them: the
upload is registered with the scheduler, which hands it to every nanny that joins later).
Layer 1, below :mod:`toolkit.cluster`: imports nothing of the toolkit but :mod:`toolkit.errors`.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError

__all__ = [
    "CPU_DISTRIBUTIONS",
    "GPU_DISTRIBUTIONS",
    "GPU_MODULES",
    "PACKAGE",
    "check_workers",
    "local_facts",
    "ship_toolkit",
    "toolkit_version",
    "worker_differences",
    "worker_error",
]

log = logging.getLogger(__name__)

#: The import name checked on every worker.
PACKAGE = "toolkit"
#: Distributions every backend's tasks run with on a worker.
CPU_DISTRIBUTIONS: tuple[str, ...] = ("numpy", "scikit-learn", "dask", "distributed")
#: Added for GPU backends (fixed distribution names).
GPU_DISTRIBUTIONS: tuple[str, ...] = ("dask-cuda",)
#: Added for GPU backends, by import name: RAPIDS wheels are named per CUDA version
#: (``cuml-cu12``, ``cupy-cuda13x``), and a cu12 worker under a cu13 driver is a mismatch too.
GPU_MODULES: tuple[str, ...] = ("cuml", "cupy")

#: What a worker (or the driver) reports: ``{"toolkit": "0.1.0+<hash>" or None, "toolkit_path":
#: the package folder or None, "packages": {name: version or None}}``.
Facts = dict[str, Any]

_NOT_INSTALLED = "not installed"


def _make_probe() -> Callable[..., Facts]:
    """The function a worker runs to describe itself.

    It is defined inside this factory on purpose: cloudpickle sends a function it cannot find
    by module and name *by value*, so the worker needs no ``toolkit`` to run it.  For the same
    reason it refers to no global of this module (those would be sent by reference) and
    imports what it needs itself.
    """

    def _release(root: str) -> str:
        """The version ``toolkit._version`` gives the package at ``root``: its source tree's
        pyproject.toml, else the installed distribution's metadata."""
        import contextlib
        import os
        import tomllib
        from importlib.metadata import PackageNotFoundError, version

        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(os.path.dirname(root), "pyproject.toml"), "rb") as fh:
                project = tomllib.load(fh).get("project") or {}
            if project.get("name") == "kmeans-lifecycle" and isinstance(project.get("version"), str):
                return str(project["version"])
        try:
            return version("kmeans-lifecycle")
        except PackageNotFoundError:
            return "unknown"

    def probe(package: str, distributions: tuple[str, ...], modules: tuple[str, ...]) -> Facts:
        import ast
        import hashlib
        import importlib.util
        import os
        from importlib.metadata import PackageNotFoundError, packages_distributions, version

        facts: Facts = {"toolkit": None, "toolkit_path": None, "packages": {}}
        try:  # find_spec of a top-level name locates it without importing it
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):  # a blocked or half-installed package
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if locations:
            root = locations[0]
            files = []
            for folder, dirs, names in os.walk(root):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                files += [os.path.join(folder, n) for n in names if n.endswith(".py")]
            # Relative paths with "/" and sorted: the same tree hashes the same on any machine.
            rel = sorted((os.path.relpath(f, root).replace(os.sep, "/"), f) for f in files)
            digest = hashlib.sha256()
            tag = "unknown"
            for name, path in rel:
                with open(path, "rb") as fh:
                    data = fh.read()
                digest.update(f"{name}\0{len(data)}\0".encode())
                digest.update(data)
                if name == "__init__.py":  # __version__, read without running the package
                    for node in ast.parse(data).body:
                        if (
                            isinstance(node, ast.Assign)
                            and isinstance(node.value, ast.Constant)
                            and any(getattr(t, "id", None) == "__version__" for t in node.targets)
                        ):
                            tag = str(node.value.value)
            if tag == "unknown":  # __version__ comes from the metadata (toolkit/_version.py), as there
                tag = _release(root)
            facts["toolkit"] = f"{tag}+{digest.hexdigest()[:12]}"
            facts["toolkit_path"] = root
        found: dict[str, str | None] = {}
        for dist in distributions:
            try:
                found[dist] = version(dist)
            except PackageNotFoundError:
                found[dist] = None
        provided = packages_distributions() if modules else {}
        for mod in modules:
            dists = sorted(provided.get(mod, []))
            pins = []
            for dist in dists:
                try:
                    pins.append(f"{dist}=={version(dist)}")
                except PackageNotFoundError:
                    continue
            found[mod] = ", ".join(pins) or None
        facts["packages"] = found
        return facts

    return probe


def _packages(gpu: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(distributions, import names)`` checked for a CPU or a GPU cluster."""
    if gpu:
        return CPU_DISTRIBUTIONS + GPU_DISTRIBUTIONS, GPU_MODULES
    return CPU_DISTRIBUTIONS, ()


def local_facts(gpu: bool = False) -> Facts:
    """What this process runs, computed by the very function the workers run."""
    return _make_probe()(PACKAGE, *_packages(gpu))


def toolkit_version() -> str:
    """This process's toolkit: ``"<__version__>+<12 hex digits of its *.py sources>"``."""
    return str(local_facts()["toolkit"])


def worker_differences(driver: Facts, workers: dict[str, Facts]) -> dict[str, list[tuple[str, str, str]]]:
    """``{worker address: [(what, worker's version, driver's version), ...]}`` for every worker
    that differs; ``what`` is ``"toolkit"`` or a package name.  A package the driver does not
    have is not asked of the workers."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for address in sorted(workers):
        facts = workers[address]
        diffs = []
        if facts.get("toolkit") != driver.get("toolkit"):
            diffs.append((PACKAGE, facts.get("toolkit") or _NOT_INSTALLED, str(driver.get("toolkit"))))
        theirs = facts.get("packages", {})
        for name, ours in driver.get("packages", {}).items():
            if ours is not None and theirs.get(name) != ours:
                diffs.append((name, theirs.get(name) or _NOT_INSTALLED, ours))
        if diffs:
            out[address] = diffs
    return out


def _problem(address: str, diffs: list[tuple[str, str, str]], facts: Facts, others: int) -> str:
    """One line: what the first differing worker runs against what the driver runs."""
    parts = []
    for what, theirs, ours in diffs:
        if theirs == _NOT_INSTALLED:
            parts.append(f"has no {what} installed but this driver runs {what} {ours}")
            continue
        # Where the worker's toolkit comes from tells a stale install from a shadowing copy.
        where = f" from {facts['toolkit_path']}" if what == PACKAGE and facts.get("toolkit_path") else ""
        parts.append(f"runs {what} {theirs}{where} but this driver runs {ours}")
    more = f" (and {others} more worker{'s' if others > 1 else ''})" if others else ""
    return f"worker {address} " + ", and ".join(parts) + more


def worker_error(driver: Facts, workers: dict[str, Facts], shipped: bool = False) -> ToolkitError | None:
    """The :class:`ToolkitError` for the workers that differ from the driver, else ``None``.

    One line: the first such worker (by address), each thing it runs differently with both
    versions, how many more workers differ; the fix fits what differs (libraries are not
    shipped, only the toolkit is).  ``shipped``: the toolkit was shipped already.
    """
    differences = worker_differences(driver, workers)
    if not differences:
        return None
    address = next(iter(differences))
    diffs = differences[address]
    problem = _problem(address, diffs, workers[address], len(differences) - 1)
    libraries = sorted({what for d in differences.values() for what, _, _ in d if what != PACKAGE})
    fixes = []
    if libraries:
        # GPU libraries are reported as "dist==version" already (their names vary by CUDA).
        pins = " ".join(v if "==" in (v := str(driver["packages"][name])) else f"{name}=={v}" for name in libraries)
        fixes.append(f"install the driver's libraries on every worker ({pins}) or run workers from the driver's image")
    if any(what == PACKAGE for d in differences.values() for what, _, _ in d):
        if shipped:
            problem += " even after shipping the toolkit"
            fixes.append(
                "start every worker with a nanny (not --no-nanny) so that it can take the "
                "shipped package, or install the same commit on every worker"
            )
        else:
            fixes.append("install the same commit on every worker, or set cluster.ship_package=true")
    return ToolkitError(problem, "; ".join(fixes))


def _ask_workers(client: Any, gpu: bool) -> dict[str, Facts]:
    """``{address: facts}`` from every worker the scheduler knows now."""
    distributions, modules = _packages(gpu)
    return client.run(_make_probe(), PACKAGE, distributions, modules)


def ship_toolkit(client: Any, timeout: float = 120.0) -> None:
    """Upload this process's ``toolkit`` sources to every worker and restart the workers.

    The sources go to each nanny's local directory, in a folder put first on the nanny's
    ``sys.path``; the restarted worker process inherits that path, so it imports the driver's
    copy before any installed one.  The restart is needed: a worker that already imported
    ``toolkit`` keeps the modules it has.  Workers started without a nanny get nothing.

    Every ship uses a new folder name, so the latest one is always first on the path (a name
    already on the path would not move to the front when shipped again).
    """
    from distributed.diagnostics.plugin import UploadDirectory

    ours = local_facts()
    root = Path(ours["toolkit_path"])  # the driver runs from it, so it is there
    before = len(client.scheduler_info().get("workers", {}))
    with tempfile.TemporaryDirectory(prefix="toolkit-ship-") as tmp:
        # UploadDirectory zips the folder it is given and puts <local dir>/<its name> on the path:
        # so the package goes one level down, in a folder named for this version and moment.
        stage = Path(tmp) / f"kmeans-toolkit-{ours['toolkit']}-{time.time_ns():x}"
        shutil.copytree(root, stage / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # skip_words is matched against every component of the absolute path, so Dask's default
        # ("tests", "docs", ...) could drop files for where the temp folder happens to be.
        plugin = UploadDirectory(str(stage), restart_workers=True, update_path=True, skip_words=("__pycache__",))
    log.info("shipping toolkit %s to the workers (they restart)", ours["toolkit"])
    # The nannies of a LocalCluster run in this process, and the upload goes first on *their*
    # process's path: ours.  The driver must go on importing its own toolkit (and clusters it
    # starts later must not inherit the copy), so its path is put back once the workers are up.
    saved = list(sys.path)
    try:
        client.register_plugin(plugin)  # returns once every nanny has extracted and restarted
    finally:
        sys.path[:] = saved
    if before:
        client.wait_for_workers(before, timeout=timeout)


def check_workers(client: Any, gpu: bool = False, ship: bool = False) -> Facts:
    """Check that every worker runs this driver's toolkit and backend libraries.

    Args:
        client: a connected ``distributed.Client``.
        gpu: check cuML, CuPy and Dask-CUDA too.
        ship: when the toolkit differs, ship it (:func:`ship_toolkit`) and check again.

    Returns:
        This driver's facts (``toolkit`` version, ``packages``).

    Raises:
        ToolkitError: a worker differs (and shipping, if asked, did not help): one line naming
            the worker, both versions and the fix.
    """
    driver = local_facts(gpu)
    workers = _ask_workers(client, gpu)
    error = worker_error(driver, workers)
    stale = any(what == PACKAGE for d in worker_differences(driver, workers).values() for what, _, _ in d)
    if error is not None and ship and stale:  # shipping cannot fix libraries: then refuse at once
        ship_toolkit(client)
        driver = local_facts(gpu)  # what was shipped: the sources as they are now
        workers = _ask_workers(client, gpu)
        error = worker_error(driver, workers, shipped=True)
    if error is not None:
        raise error
    log.debug("%d workers run toolkit %s", len(workers), driver["toolkit"])
    return driver
