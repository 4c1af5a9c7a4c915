"""What a fitted k-means model does to data, in numbers -- pure computation, no MLflow.

* :mod:`toolkit.stats.scores` -- the clustering scores of a model on evaluation data: what the
  ``clustering`` evaluator (:mod:`toolkit.evaluation`) reports and what promotion
  (:mod:`toolkit.registry.promote`) gates on.
* :mod:`toolkit.stats.profile` -- per-cluster shares and distance-to-centre histograms on fixed
  edges, reducible partition by partition; the training profile stored with each model.
* :mod:`toolkit.stats.drift` -- scoring statistics against the training profile: PSI, distance
  shift and a verdict (:class:`~toolkit.stats.drift.DriftReport`); :mod:`toolkit.monitoring` logs it as a run.

These modules import NumPy, scikit-learn, Dask and the toolkit's lower layers only
(``convert``, ``metrics``, ``config``, ``errors``), so the registry, serving and the MLflow-facing
packages above can all use them.  This package face imports nothing: ``import toolkit.stats.scores``
does not load the profile's pandas/Dask code.
"""
