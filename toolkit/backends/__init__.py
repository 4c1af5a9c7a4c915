"""K-means backends, chosen by name and imported lazily.

``get_backend("sklearn")`` imports only ``toolkit.backends.scikit``; cuML, cuDF and dask-cuda
are imported by the GPU backends' modules alone, so a CPU run never loads them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from toolkit.backends.base import FitResult, KMeansBackend, Parallelism
from toolkit.errors import BackendUnavailableError, ConfigError

__all__ = [
    "BACKENDS",
    "FitResult",
    "KMeansBackend",
    "Parallelism",
    "get_backend",
    "make_backend",
    "require_packages",
]

#: name -> "module:Class"; the one place a backend is registered.
BACKENDS: dict[str, str] = {
    "sklearn": "toolkit.backends.scikit:SklearnBackend",
    "dask-ml": "toolkit.backends.daskml:DaskMLBackend",
    "dask": "toolkit.backends.dask_lloyd:DaskBackend",
    "cuml": "toolkit.backends.cuml_single:CumlBackend",
    "cuml-dask": "toolkit.backends.cuml_dask:CumlDaskBackend",
}

# Install hint per import name, for the error a missing package gives.
_PIP_NAMES = {
    "dask_ml": "dask-ml",
    "cuml": 'cuml-cu12[dask] (pip install ".[gpu]")',
    "cudf": 'cudf-cu12 (pip install ".[gpu]")',
    "dask_cudf": 'dask-cudf-cu12 (pip install ".[gpu]")',
    "dask_cuda": 'dask-cuda (pip install ".[gpu]")',
    "cupy": "cupy-cuda12x",
}


def require_packages(backend: str, modules: tuple[str, ...]) -> None:
    """Raise :class:`BackendUnavailableError` if any of ``modules`` cannot be imported."""
    for mod in modules:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):  # a blocked or half-installed package
            found = False
        if not found:
            raise BackendUnavailableError(
                f"backend {backend!r} needs the Python package {mod!r}, which is not installed",
                f"install {_PIP_NAMES.get(mod, mod)} or choose a CPU backend (sklearn, dask, dask-ml)",
            )


def get_backend(name: str) -> type[KMeansBackend]:
    """The backend class registered under ``name`` (imports its module now)."""
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ConfigError(
            f"unknown backend {name!r}", f"use one of {', '.join(BACKENDS)}"
        ) from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def make_backend(name: str, client: Any = None, **options: Any) -> KMeansBackend:
    """Check the backend can run here, then build it around ``client``.

    ``options`` are the placement options every backend takes (``persist``, ``chunk_rows``).
    """
    cls = get_backend(name)
    cls.check_available()
    return cls(client=client, **options)
