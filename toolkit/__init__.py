"""kmeans-lifecycle: k-means experiments from one CPU to multi-node multi-GPU, tracked in MLflow.

Imports run one way, layer by layer, as the README's layer table ("Layout") states and
``tests/test_import_graph.py`` enforces:
``errors``/``names``/``_metric_kernels``/``_version``/``_compat``/``_speedups``
<- ``config``/``redact``/``env``/``faults``/``convert``/``metrics``/``workers``
<- ``console``/``data``/``cluster``/``tracking``/``kmeans_dask``/``stats``
<- ``backends``/``registry`` <- ``train``/``serving``/``monitoring`` <- ``search``/``evaluation``/``refresh``;
this package face (the public API below), ``mlproject/`` and ``benchmarks/`` sit on top.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from toolkit._version import __version__ as __version__  # package metadata, or the source tree's pyproject

#: The public API, name -> the module that defines it.  Imported on first use (PEP 562): an
#: entry point's ``--help`` or a config check must not pay for NumPy, scikit-learn or MLflow.
_PUBLIC = {
    "BACKENDS": "toolkit.backends",
    "FitResult": "toolkit.backends",
    "KMeansBackend": "toolkit.backends",
    "get_backend": "toolkit.backends",
    "make_backend": "toolkit.backends",
    "ExperimentConfig": "toolkit.config",
    "load_experiment": "toolkit.config",
    "Dataset": "toolkit.data",
    "load_dataset": "toolkit.data",
    "BackendUnavailableError": "toolkit.errors",
    "ConfigError": "toolkit.errors",
    "DataError": "toolkit.errors",
    "ModelError": "toolkit.errors",
    "ToolkitError": "toolkit.errors",
    "cluster_metrics": "toolkit.metrics",
    "TrainOutcome": "toolkit.train",
    "fit_and_score": "toolkit.train",
    "train": "toolkit.train",
}

if TYPE_CHECKING:
    from toolkit.backends import BACKENDS, FitResult, KMeansBackend, get_backend, make_backend
    from toolkit.config import ExperimentConfig, load_experiment
    from toolkit.data import Dataset, load_dataset
    from toolkit.errors import BackendUnavailableError, ConfigError, DataError, ModelError, ToolkitError
    from toolkit.metrics import cluster_metrics
    from toolkit.train import TrainOutcome, fit_and_score, train


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (PEP 562)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """This package, whose attribute ``train`` stays the function :func:`toolkit.train.train`.

    Importing the submodule ``toolkit.train`` sets the package's ``train`` to the module; when
    the API was imported eagerly the function replaced it at once, so ``from toolkit import
    train`` always meant the function.  It still does: the module is not kept as the attribute,
    and :func:`__getattr__` answers with the function.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PUBLIC and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "ConfigError",
    "DataError",
    "Dataset",
    "ExperimentConfig",
    "FitResult",
    "KMeansBackend",
    "ModelError",
    "ToolkitError",
    "TrainOutcome",
    "cluster_metrics",
    "fit_and_score",
    "get_backend",
    "load_dataset",
    "load_experiment",
    "make_backend",
    "train",
]
