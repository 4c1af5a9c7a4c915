"""A scikit-learn backend that fails on purpose, for the search's failed-trial tests.

Registered by monkeypatching ``toolkit.backends.BACKENDS["sklearn"]`` to
``"flaky_backend:SklearnBackend"``; used with ``search.parallelism=data`` so trials fit on
the driver (the Dask workers never need to import this module).
"""

from __future__ import annotations

from typing import Any

from toolkit.backends.scikit import SklearnBackend as _RealSklearnBackend
from toolkit.config import ModelConfig

FAIL_AT = 3


class SklearnBackend(_RealSklearnBackend):
    """scikit-learn KMeans, except that ``n_clusters == 3`` raises ``RuntimeError("boom")``."""

    def _fit(self, X: Any, params: ModelConfig) -> Any:
        if params.n_clusters == FAIL_AT:
            raise RuntimeError("boom")
        return super()._fit(X, params)
