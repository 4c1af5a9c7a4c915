"""Hyperparameter search over any backend: Optuna (ask/tell) or scikit-learn CV on joblib-dask.

Trials run trial-parallel (one per Dask worker) or data-parallel (one fit over the cluster);
child runs are written by one writer process of the driver (never by the workers); studies
persist in an Optuna journal file (or any RDB) and can be resumed.
"""

from __future__ import annotations

from toolkit.search.runner import SearchOutcome, search

__all__ = ["SearchOutcome", "search"]
