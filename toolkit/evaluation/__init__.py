"""Evaluation of registered k-means models: the ``clustering`` evaluator of ``mlflow.models.evaluate``.

* :mod:`toolkit.evaluation.evaluator` -- :class:`ClusteringEvaluator`, the MLflow plugin
  (entry point ``mlflow.model_evaluator`` ``clustering``), and :func:`verified_pyfunc`.
* :mod:`toolkit.evaluation.figures` -- the cluster-size chart and the centroid plot.

The scores it reports are computed in :mod:`toolkit.stats.scores` (no MLflow), which promotion
gates on too; this package sits on top of the registry and serving and nothing of the toolkit
imports it.
"""

from __future__ import annotations

from toolkit.evaluation.evaluator import EVALUATOR_NAME, MODEL_TYPE, ClusteringEvaluator, verified_pyfunc
from toolkit.stats.scores import score_clustering

__all__ = ["EVALUATOR_NAME", "MODEL_TYPE", "ClusteringEvaluator", "score_clustering", "verified_pyfunc"]
