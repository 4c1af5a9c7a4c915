"""``DaskKMeans`` is a scikit-learn estimator: scikit-learn's own estimator checks pass on it.

The checks feed NumPy (and pandas, sparse, list...) input, which runs the same kernels in this
process as Dask input runs on the workers.  No check is expected to fail.  scikit-learn skips
one by itself: ``check_array_api_input`` raises SkipTest unless ``SCIPY_ARRAY_API=1`` is set
(``DaskKMeans`` does not declare array-API support, so the check has nothing to test anyway).
"""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from toolkit.kmeans_dask import DaskKMeans


@parametrize_with_checks(
    # The default init ("k-means||") and a seed, so every check's fit is deterministic.
    [DaskKMeans(n_clusters=3, random_state=0)],
    expected_failed_checks=lambda est: {},
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
