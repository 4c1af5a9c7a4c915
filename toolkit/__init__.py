"""kmeans-lifecycle: k-means experiments from one CPU to multi-node multi-GPU, tracked in MLflow.

Imports run one way, layer by layer, as the README's layer table ("Layout") states and
``tests/test_import_graph.py`` enforces:
``errors``/``names``/``_metric_kernels``/``_version``/``_compat``/``_speedups``/``_lazy``
<- ``config``/``redact``/``env``/``faults``/``convert``/``metrics``/``workers``
<- ``console``/``data``/``cluster``/``tracking``/``kmeans_dask``/``stats``
<- ``backends``/``registry`` <- ``train``/``serving``/``monitoring`` <- ``search``/``evaluation``/``refresh``;
this package face (the public API below), ``mlproject/`` and ``benchmarks/`` sit on top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toolkit._lazy import export_lazily
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


export_lazily(__name__, _PUBLIC)

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
