"""Grid and random search with scikit-learn's ``GridSearchCV`` / ``RandomizedSearchCV``,
run on the Dask cluster through ``joblib.parallel_backend("dask")`` (the Dask-ML tutorial
pattern).  KMeans' own ``score`` (negative inertia) always prefers more clusters, so the
search scores held-out folds with a clustering metric instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from toolkit.config import ExperimentConfig, MetricsConfig
from toolkit.metrics import METRIC_DIRECTIONS, resampling_metrics
from toolkit.names import BACKEND_FACTS, LABEL_METRICS, RESAMPLING_METRICS

__all__ = ["ClusterScorer", "run_cv_search"]


class ClusterScorer:
    """``scorer(estimator, X, y)`` for a clustering objective; greater is better (sklearn's rule).

    Minimised metrics (Davies-Bouldin) are negated; :meth:`natural` undoes that for reporting.
    """

    def __init__(self, objective: str, sample: int = 2_000, seed: int = 0,
                 metrics: MetricsConfig | None = None) -> None:
        self.objective = objective
        self.sample = sample
        self.seed = seed
        self.metrics = metrics or MetricsConfig(seed=seed)
        self.sign = 1.0 if METRIC_DIRECTIONS[objective] == "maximize" else -1.0

    def __call__(self, estimator: Any, X: Any, y: Any = None) -> float:
        from sklearn import metrics as skm

        X = np.asarray(X)
        labels = estimator.predict(X)
        if self.objective in LABEL_METRICS:
            return float(skm.adjusted_rand_score(y, labels))
        if self.objective in RESAMPLING_METRICS:
            return self._resampled(estimator, X)
        if len(np.unique(labels)) < 2:
            return float("nan")
        if self.objective == "silhouette":
            size = min(self.sample, len(X))
            value = skm.silhouette_score(X, labels, sample_size=size, random_state=self.seed)
        elif self.objective == "davies_bouldin":
            value = skm.davies_bouldin_score(X, labels)
        else:
            value = skm.calinski_harabasz_score(X, labels)
        return self.sign * float(value)

    def _resampled(self, estimator: Any, X: np.ndarray) -> float:
        """Stability or prediction strength of the fold's configuration on its held-out rows:
        clones of the estimator refitted with other seeds, as a trial of the Optuna path does."""
        from sklearn.base import clone

        def fit_centers(rows: np.ndarray, seed: int) -> np.ndarray:
            return clone(estimator).set_params(random_state=seed).fit(rows).cluster_centers_

        m = self.metrics
        values = resampling_metrics(X, fit_centers, resamples=m.stability_resamples,
                                    fraction=m.stability_fraction, sample=m.stability_sample,
                                    seed=m.seed, model_seed=int(estimator.get_params()["random_state"] or 0))
        return self.sign * values[self.objective]

    def natural(self, score: float) -> float:
        return self.sign * float(score)


def _distributions(cfg: ExperimentConfig) -> dict[str, Any]:
    from scipy import stats

    from toolkit.config import FloatRange

    space = cfg.search.space
    out: dict[str, Any] = {
        "n_clusters": list(range(space.n_clusters.low, space.n_clusters.high + 1, space.n_clusters.step))
    }
    for key in ("init", "max_iter", "n_init"):
        if getattr(space, key):
            out[key] = list(getattr(space, key))
    for key in ("tol",):
        spec = getattr(space, key)
        if isinstance(spec, FloatRange):
            dist = stats.loguniform if spec.log else stats.uniform
            out[key] = dist(spec.low, spec.high if spec.log else spec.high - spec.low)
        elif spec:
            out[key] = list(spec)
    return out


def run_cv_search(cfg: ExperimentConfig, X: np.ndarray, y: np.ndarray | None, client: Any) -> Any:
    """Fit the CV search on the cluster; return the fitted ``*SearchCV`` (``refit=False``)."""
    import joblib
    from sklearn.model_selection import GridSearchCV, KFold, RandomizedSearchCV

    from toolkit.backends.scikit import sklearn_estimator
    from toolkit.search.space import grid_values

    scorer = ClusterScorer(cfg.search.objective, cfg.metrics.silhouette_sample, cfg.metrics.seed, cfg.metrics)
    cv = KFold(n_splits=cfg.search.cv, shuffle=True, random_state=cfg.search.seed)
    base = sklearn_estimator(cfg.model)
    common = {"scoring": scorer, "cv": cv, "refit": False, "error_score": np.nan, "n_jobs": -1,
              "return_train_score": False}
    if cfg.search.strategy == "grid":
        # Only what scikit-learn's KMeans takes (the config refused the rest for 'sklearn').
        honours = BACKEND_FACTS["sklearn"].honours
        grid = {k: v for k, v in grid_values(cfg.search).items() if k in honours}
        search = GridSearchCV(base, grid, **common)
    else:
        search = RandomizedSearchCV(
            base, _distributions(cfg), n_iter=cfg.search.n_trials, random_state=cfg.search.seed, **common
        )
    with joblib.parallel_backend("dask", client=client) if client is not None else joblib.parallel_backend("loky"):
        search.fit(X, y)
    search.scorer_natural = scorer.natural
    return search
