"""Evaluation of registered k-means models: the ``clustering`` evaluator of ``mlflow.models.evaluate``.

* :mod:`toolkit.evaluation.scores` -- the metric computation (pure: NumPy, scikit-learn and
  :mod:`toolkit.metrics`); promotion gates on the same function.
* :mod:`toolkit.evaluation.figures` -- the cluster-size chart and the centroid plot.
* :mod:`toolkit.evaluation.evaluator` -- :class:`ClusteringEvaluator`, the MLflow plugin
  (entry point ``mlflow.model_evaluator`` ``clustering``), and :func:`verified_pyfunc`.

The evaluator is imported on first use only: the registry imports ``scores`` through this
package and must not pull in MLflow's evaluation machinery or the serving loaders with it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EVALUATOR_NAME", "MODEL_TYPE", "ClusteringEvaluator", "score_clustering", "verified_pyfunc"]

_LAZY = {"EVALUATOR_NAME", "MODEL_TYPE", "ClusteringEvaluator", "verified_pyfunc"}


def __getattr__(name: str) -> Any:
    # PEP 562: MLflow's entry point "toolkit.evaluation:ClusteringEvaluator" resolves through here.
    if name in _LAZY:
        from toolkit.evaluation import evaluator

        return getattr(evaluator, name)
    if name == "score_clustering":
        from toolkit.evaluation.scores import score_clustering

        return score_clustering
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
