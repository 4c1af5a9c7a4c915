"""What this machine offers: installed packages and their versions, and a usable GPU.

The one place the toolkit asks these questions; backends, the registry, the benchmarks and the
test suite import the answers from here.  Bottom layer: imports nothing of the toolkit but
:mod:`toolkit.errors`, and CuPy only inside the GPU probe, so a CPU run never loads it.
"""

from __future__ import annotations

import functools
import importlib.util
import platform
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, packages_distributions, version

from toolkit.errors import BackendUnavailableError, first_line

__all__ = [
    "cuda_version_text",
    "cuda_versions",
    "distribution_versions",
    "gpu_available",
    "gpu_problem",
    "gpu_requirements",
    "gpu_versions",
    "importable",
    "installed_versions",
    "pinned_requirements",
    "python_version",
    "require_packages",
]

# Install hint per import name, for the error a missing package gives.
# RAPIDS wheels are built per CUDA major version: the extra ".[gpu-cu13]" for CUDA 13 drivers,
# ".[gpu]" for CUDA 12.
_GPU_EXTRAS = 'pip install ".[gpu-cu13]" on CUDA 13, ".[gpu]" on CUDA 12'
_PIP_NAMES = {
    "dask_ml": "dask-ml",
    "cuml": f"cuml-cu13[dask] or cuml-cu12[dask] ({_GPU_EXTRAS})",
    "cudf": f"cudf-cu13 or cudf-cu12 ({_GPU_EXTRAS})",
    "dask_cudf": f"dask-cudf-cu13 or dask-cudf-cu12 ({_GPU_EXTRAS})",
    "dask_cuda": f"dask-cuda ({_GPU_EXTRAS})",
    "cupy": "cupy-cuda13x or cupy-cuda12x",
}


# -- packages ---------------------------------------------------------------------------------
def importable(module: str) -> bool:
    """Whether the import name ``module`` can be found, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked or half-installed package
        return False


def require_packages(backend: str, modules: tuple[str, ...]) -> None:
    """Raise :class:`BackendUnavailableError` if any of ``modules`` cannot be imported."""
    for mod in modules:
        if not importable(mod):
            raise BackendUnavailableError(
                f"backend {backend!r} needs the Python package {mod!r}, which is not installed",
                f"install {_PIP_NAMES.get(mod, mod)} or choose a CPU backend (sklearn, dask, dask-ml)",
            )


def python_version() -> str:
    """The running interpreter's version, e.g. ``"3.11.7"``."""
    return platform.python_version()


def installed_versions(distributions: Iterable[str]) -> dict[str, str]:
    """``{distribution: version}`` of those of ``distributions`` that are installed."""
    out: dict[str, str] = {}
    for dist in distributions:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def pinned_requirements(distributions: Iterable[str], *, keep_missing: bool = False) -> list[str]:
    """``["name==version", ...]`` for the installed ``distributions``.

    Args:
        distributions: distribution names, in the order wanted.
        keep_missing: list a distribution that is not installed unpinned (``"name"``) instead of
            leaving it out.
    """
    found = installed_versions(distributions)
    out = []
    for dist in distributions:
        if dist in found:
            out.append(f"{dist}=={found[dist]}")
        elif keep_missing:
            out.append(dist)
    return out


def distribution_versions(modules: Iterable[str]) -> dict[str, str]:
    """``{distribution: version}`` of the distributions that provide the import names ``modules``.

    RAPIDS wheels are named per CUDA version (``cuml-cu12``, ``cupy-cuda13x``), so their
    versions are found through the import name, not a fixed distribution name.
    """
    out: dict[str, str] = {}
    for mod in modules:
        # The usual distribution names first: scanning every installed distribution's files
        # (what packages_distributions does) takes ~0.6 s, once per process.
        found = installed_versions(_LIKELY_DISTRIBUTIONS.get(mod, (mod, mod.replace("_", "-"))))
        out.update(found or installed_versions(_provided().get(mod, [])))
    return out


#: Distribution names an import name usually comes from (RAPIDS: one per CUDA major).
_LIKELY_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "sklearn": ("scikit-learn",),
    "dask_ml": ("dask-ml",),
    "cuml": ("cuml-cu13", "cuml-cu12", "cuml"),
    "cudf": ("cudf-cu13", "cudf-cu12", "cudf"),
    "dask_cudf": ("dask-cudf-cu13", "dask-cudf-cu12", "dask-cudf"),
    "dask_cuda": ("dask-cuda",),
    "cupy": ("cupy-cuda13x", "cupy-cuda12x", "cupy"),
    "rmm": ("rmm-cu13", "rmm-cu12", "rmm"),
}


@functools.cache
def _provided() -> dict[str, list[str]]:
    return packages_distributions()


# -- GPU --------------------------------------------------------------------------------------
def gpu_problem(packages: tuple[str, ...] = ()) -> str | None:
    """Why no CUDA GPU can be used here, or ``None`` when one can.

    Args:
        packages: import names that must be installed too (checked first, without importing).

    There is no CPU mode for cuML's KMeans, and a machine without a GPU (or with too old a
    driver) fails only when CUDA is first called: so a device is looked for by asking CuPy.
    """
    for mod in packages:
        if not importable(mod):
            return f"the Python package {mod!r} is not installed"
    try:
        import cupy

        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as exc:  # no driver, driver too old, CUDA libraries missing
        detail = first_line(exc)
        return f"the CUDA runtime failed ({type(exc).__name__}{': ' + detail if detail else ''})"
    if count == 0:
        return "no CUDA device is visible (check CUDA_VISIBLE_DEVICES)"
    return None


def gpu_available(packages: tuple[str, ...] = ()) -> bool:
    """Whether a CUDA GPU can be used here (and ``packages`` are installed)."""
    return gpu_problem(packages) is None


def cuda_version_text(code: int) -> str:
    """CUDA's integer version (``12090``) as people write it (``"12.9"``)."""
    return f"{code // 1000}.{code % 1000 // 10}"


def gpu_versions(modules: Iterable[str]) -> dict[str, str]:
    """What a GPU model or run records: ``{distribution: version}`` of the packages providing
    the import names ``modules`` (``cuml-cu13``, ``cupy-cuda13x``...), and ``cuda-runtime`` /
    ``cuda-driver`` as ``"13.0"``-style text (empty of those without a GPU)."""
    out = distribution_versions(modules)
    out.update({f"cuda-{part}": cuda_version_text(code) for part, code in cuda_versions().items()})
    return out


def gpu_requirements(modules: Iterable[str], extras: Mapping[str, str] | None = None) -> list[str]:
    """Pinned requirements for the distributions providing ``modules``: a GPU model loads only
    with the same cuML (its CUDA flavour, ``-cu12``/``-cu13``, included).

    Args:
        modules: import names, e.g. ``("cuml", "cupy")``.
        extras: import name -> extra to add to its requirement (``{"cuml": "dask"}``).
    """
    provided = packages_distributions()
    out = []
    for mod in modules:
        for dist in provided.get(mod, []):
            try:
                ver = version(dist)
            except PackageNotFoundError:
                continue
            extra = f"[{extras[mod]}]" if extras and mod in extras else ""
            out.append(f"{dist}{extra}=={ver}")
    return out


def cuda_versions() -> dict[str, int]:
    """``{"runtime": 12080, "driver": 12040}`` as CUDA reports them; empty without a GPU."""
    out: dict[str, int] = {}
    try:
        import cupy

        out["runtime"] = int(cupy.cuda.runtime.runtimeGetVersion())
        out["driver"] = int(cupy.cuda.runtime.driverGetVersion())
    except Exception:  # no GPU: the library versions are still worth recording
        pass
    return out
