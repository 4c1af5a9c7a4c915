"""A package's public names, imported from their modules on first use (PEP 562).

Importing a package then costs only its own file: ``--help`` of an entry point does not load
MLflow or NumPy, and a Dask worker that unpickles a kernel of :mod:`toolkit.kmeans_dask` does not
load scikit-learn.  A name that is also a submodule (``toolkit.train``, ``toolkit.registry.promote``)
keeps meaning the function after the submodule is imported, as it did when the names were
imported eagerly.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any

__all__ = ["export_lazily"]

_TABLE = "_lazy_exports"


class _LazyPackage(types.ModuleType):
    """A package module whose lazily exported names are never replaced by a submodule."""

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing submodule ``pkg.name`` sets ``pkg.name`` to the module: keep the function.
        if isinstance(value, types.ModuleType) and name in self.__dict__.get(_TABLE, ()):
            return
        super().__setattr__(name, value)


def export_lazily(package: str, table: Mapping[str, str]) -> None:
    """Give ``package`` (already in :data:`sys.modules`) the names of ``table`` lazily.

    Args:
        package: The package's ``__name__``.
        table: Public name -> the module that defines it.
    """
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        source = table.get(name)
        if source is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        setattr(module, name, value)
        return value

    module.__dict__[_TABLE] = dict(table)
    module.__dict__["__getattr__"] = __getattr__
    module.__class__ = _LazyPackage
