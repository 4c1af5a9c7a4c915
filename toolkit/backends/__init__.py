"""K-means backends, chosen by name and imported lazily.

``get_backend("sklearn")`` imports only ``toolkit.backends.scikit``; cuML, cuDF and dask-cuda
are imported by the GPU backends' modules alone, so a CPU run never loads them.
"""

from __future__ import annotations

import importlib
from typing import Any

from toolkit.backends.base import FitResult, KMeansBackend, Parallelism
from toolkit.env import require_packages  # re-exported: part of this package's API
from toolkit.errors import ConfigError

# The registry (name -> "module:Class") is declared with each backend's facts in the bottom
# layer, toolkit.names, so the config can check names and hyperparameters without importing
# this package; re-exported here as the same dict (tests stand a class in for a name in it).
from toolkit.names import BACKENDS

__all__ = [
    "BACKENDS",
    "FitResult",
    "KMeansBackend",
    "Parallelism",
    "get_backend",
    "make_backend",
    "require_packages",
]


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
