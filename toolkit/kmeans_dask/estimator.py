"""The scikit-learn-style estimator of the Dask k-means: :class:`DaskKMeans`."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClusterMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from toolkit.kmeans_dask.engines import Engine, make_engine
from toolkit.kmeans_dask.kernels import as_f32, kernel_centers, labels_block, labels_of, new_centers
from toolkit.kmeans_dask.lloyd import (
    check_init_array,
    fit_one,
    init_kmeans_parallel,
    init_kmeanspp,
    init_random,
    moments,
    origin,
    tolerance,
)
from toolkit.kmeans_dask.watch import PAUSED_GRACE_S

__all__ = ["DaskKMeans"]

_F32 = np.float32
_F64 = np.float64


class _Passes:
    """Counts a fit's passes over the data and reports each to ``on_pass`` (see :meth:`DaskKMeans.fit`).

    A Lloyd pass's inertia comes from its own ``[sums | counts]``: ``sum ||x - o||^2`` (from the
    column moments) ``- 2 sum_c c . S_c + sum_c n_c ||c||^2`` -- no extra pass, float64, exact up
    to the cancellation of that difference (a progress figure; the final inertia is computed
    row by row).
    """

    def __init__(self, report: Callable[[dict[str, Any]], None], t0: float) -> None:
        self.report, self.t0 = report, t0
        self.n = self.iteration = 0
        self._ss = 0.0

    def start(self, engine: Engine, mean: np.ndarray, var: np.ndarray, o: np.ndarray) -> None:
        """Learn ``sum ||x - o||^2`` and watch the engine's driver-side Lloyd passes."""
        dev = np.asarray(mean, dtype=_F64) - o.astype(_F64)
        self._ss = float(engine.n_rows * np.sum(np.asarray(var, dtype=_F64) + dev * dev))
        engine.on_pass = self.lloyd

    def lloyd(self, centers: np.ndarray, total: np.ndarray) -> None:
        d = centers.shape[1]
        sums, counts = total[:, :d], total[:, d]
        inertia = self._ss - 2.0 * float(np.sum(centers * sums)) + float(counts @ np.sum(centers * centers, axis=1))
        shift = float(np.sum((new_centers(sums, counts) - centers) ** 2))
        self.iteration += 1
        self("lloyd", inertia=max(inertia, 0.0), shift=shift)

    def __call__(
        self, phase: str, inertia: float | None = None, shift: float | None = None, iterations: int | None = None
    ) -> None:
        if iterations is not None and iterations > self.iteration:  # a loop the workers ran
            self.n += iterations - self.iteration
            self.iteration = iterations
        self.n += 1
        self.report({"pass": self.n, "phase": phase, "iteration": self.iteration, "inertia": inertia,
                     "shift": shift, "elapsed": time.perf_counter() - self.t0})


class DaskKMeans(ClusterMixin, BaseEstimator):
    """Data-parallel k-means on Dask arrays, following scikit-learn's estimator conventions.

    The data stays on the workers that hold it; every pass runs one small kernel per block there
    and combines the ``k x d`` results in block order, so a fit is reproducible bit for bit
    whichever worker ran what.  Results follow scikit-learn's Lloyd ``KMeans`` (same tolerance,
    stopping rule, empty-cluster rule and final E-step).  NumPy input runs the same kernels in
    this process.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters ``k``.
    init : {"k-means||", "k-means++", "random"} or ndarray of shape (k, d), default="k-means||"
        Initialisation: scalable k-means++ on the workers, k-means++ on a seeded sample of
        rows, ``k`` distinct seeded rows, or explicit centers.
    max_iter : int, default=300
        Most Lloyd iterations per run.
    tol : float, default=1e-4
        Relative tolerance: a run stops after the iteration whose squared center shift is at
        most ``tol * mean(var(X, axis=0))`` (scikit-learn's definition).
    n_init : int, default=1
        Runs from different seeds; the one with the lowest inertia is kept (1 when ``init`` is
        an array).
    oversampling_factor : float, default=2.0
        k-means|| expects ``oversampling_factor * k`` candidates per round.
    random_state : int or None, default=None
        Seed of every random choice (None: fresh entropy).
    lloyd_loop : {"auto", "gathered", "peers", "driver"}, default="auto"
        Where the Lloyd iterations run when the data is persisted on actors: on one worker
        given copies of every block, on every worker exchanging partial sums with its peers,
        or from the driver (one round trip per iteration).  ``"auto"`` gathers small data
        (at most 2**22 values) and uses peers otherwise.  The fit is the same bit for bit;
        only the speed differs.  Ignored by the other engines (they iterate from the driver).
    actor_kernels : {"auto", "event_loop", "thread"}, default="auto"
        Where an actor runs a pass: on the worker's event loop (one thread hand-off less) or
        in its thread; ``"auto"``: the event loop while a worker holds at most 2**24 values.
        Same results either way.
    paused_grace_s : float, default=30.0
        Data read block by block every pass (not persisted): how long a worker may stay paused
        for memory while it holds a pass before the fit is given up with ``MemoryError`` (a
        short pause, while memory is spilled or collected, is waited out).

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (k, d), float64
        Final centers.
    labels_ : ndarray or dask.array.Array of shape (n,), int32
        Cluster of every training row: NumPy for NumPy input, a lazy Dask array for Dask input
        (not pickled: it refers to data on the cluster).
    inertia_ : float
        Sum of squared distances of the rows to their closest center.
    n_iter_ : int
        Lloyd iterations of the kept run.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Column names, when fitted on a pandas DataFrame with string column names.
    fit_info_ : dict
        How the fit ran: engine, block count, timings, clusters re-seeded.

    See Also
    --------
    sklearn.cluster.KMeans : the single-machine estimator whose results this one reproduces.
    toolkit.kmeans_dask.lloyd_fit : one Lloyd run from given centers, as a function.

    Examples
    --------
    >>> import numpy as np
    >>> from toolkit.kmeans_dask import DaskKMeans
    >>> X = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]], dtype=np.float32)
    >>> km = DaskKMeans(n_clusters=2, init=X[[0, 2]]).fit(X)
    >>> km.predict(X).tolist()
    [0, 0, 1, 1]
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        init: str | np.ndarray = "k-means||",
        max_iter: int = 300,
        tol: float = 1e-4,
        n_init: int = 1,
        oversampling_factor: float = 2.0,
        random_state: int | None = None,
        lloyd_loop: str = "auto",
        actor_kernels: str = "auto",
        paused_grace_s: float = PAUSED_GRACE_S,
    ) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.oversampling_factor = oversampling_factor
        self.random_state = random_state
        self.lloyd_loop = lloyd_loop
        self.actor_kernels = actor_kernels
        self.paused_grace_s = paused_grace_s

    # -- fitting ------------------------------------------------------------------------------
    def _seeds(self, n: int) -> list[int]:
        ss = np.random.SeedSequence(self.random_state)
        return [int(s.generate_state(1)[0]) for s in ss.spawn(n)]

    def _initial_centers(self, engine: Engine, seed: int, o: np.ndarray, note: Any = None) -> np.ndarray:
        k = int(self.n_clusters)
        if not isinstance(self.init, str):
            return check_init_array(self.init, k, engine.n_features)
        if self.init == "k-means||":
            return init_kmeans_parallel(engine, k, seed, o, self.oversampling_factor, note=note)
        if self.init == "k-means++":
            return init_kmeanspp(engine, k, seed)
        if self.init == "random":
            return init_random(engine, k, seed)
        raise ValueError(
            f"init must be 'k-means||', 'k-means++', 'random' or an array, got {self.init!r}"
        )

    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        client: Any = None,
        engine: str = "auto",
        on_pass: Callable[[dict[str, Any]], None] | None = None,
    ) -> DaskKMeans:
        """Compute the clusters of ``X``.

        Parameters
        ----------
        X : dask.array.Array or array-like of shape (n_samples, n_features)
            The data.  Persisted Dask arrays are iterated where their blocks live, lazy ones
            are re-read block by block every pass; anything else is validated like
            scikit-learn's input and computed in this process.
        y : Ignored
            Not used, present for API consistency.
        client : distributed.Client, optional
            Default: the client holding ``X``'s blocks, then the default client.
        engine : {"auto", "actors", "futures", "graph"}, default="auto"
            How kernels reach the blocks: ``"auto"`` takes actors, else pinned tasks, for
            persisted data; ``"graph"`` re-reads blocks each pass.  A benchmarking aid.
        on_pass : callable, optional
            Called after every pass over the data the driver sees (column moments, each
            k-means|| round, each Lloyd iteration, the final inertia) with a dict: ``pass``
            (1, 2, ...), ``phase``, ``iteration`` (Lloyd iterations so far), ``inertia`` (that
            pass's, or None), ``shift`` (squared centre shift of a Lloyd iteration, or None) and
            ``elapsed`` (seconds since the fit started).  A Lloyd loop run on the workers
            (persisted data, actors) is reported once, when it returns.

        Returns
        -------
        self : DaskKMeans
            The fitted estimator.
        """
        if not hasattr(X, "dask"):
            X = validate_data(self, X, accept_sparse=False, dtype=[np.float32, np.float64])
        k = int(self.n_clusters)
        if k < 1:
            raise ValueError(f"n_clusters must be >= 1, got {k}")
        n_init = int(self.n_init)
        if not isinstance(self.init, str) and n_init != 1:
            warnings.warn(
                f"Explicit initial center position passed: performing only one init in "
                f"{type(self).__name__} instead of n_init={n_init}.",
                RuntimeWarning,
                stacklevel=2,
            )
            n_init = 1
        eng, Xd = make_engine(
            X, client, engine, lloyd_loop=self.lloyd_loop, actor_kernels=self.actor_kernels,
            paused_grace_s=self.paused_grace_s,
        )
        with eng:
            if k > eng.n_rows:
                raise ValueError(f"n_samples={eng.n_rows} should be >= n_clusters={k}")
            t0 = time.perf_counter()
            passes = None if on_pass is None else _Passes(on_pass, t0)
            mean, var = moments(eng)
            o = origin(mean, var)
            if passes is not None:
                passes.start(eng, mean, var, o)
                passes("moments")
            tol_abs = tolerance(var, float(self.tol))
            best: tuple[float, np.ndarray, int, int] | None = None
            t_init = t_lloyd = 0.0
            for seed in self._seeds(max(1, n_init)):
                t1 = time.perf_counter()
                C0 = self._initial_centers(eng, seed, o, passes)
                t2 = time.perf_counter()
                if passes is not None:
                    passes.iteration = 0
                centers, inertia, n_iter, relocated = fit_one(
                    eng, C0, o, int(self.max_iter), tol_abs, passes
                )
                t_init += t2 - t1
                t_lloyd += time.perf_counter() - t2
                if best is None or inertia < best[0]:
                    best = (inertia, centers, n_iter, relocated)
            assert best is not None
            inertia, centers, n_iter, relocated = best
            self.cluster_centers_ = centers
            self.inertia_ = float(inertia)
            self.n_iter_ = int(n_iter)
            self.n_features_in_ = eng.n_features
            self._origin = o  # distances are computed on x - o; keeps labels_ == predict
            self.fit_info_ = {
                "engine": eng.kind,
                "n_blocks": eng.n_blocks,
                "n_samples": eng.n_rows,
                "init_seconds": t_init,
                "lloyd_seconds": t_lloyd,
                "total_seconds": time.perf_counter() - t0,
                "relocated_clusters": relocated,
            }
        self.labels_ = self._predict(Xd if Xd is not None else X)
        return self

    # -- prediction ---------------------------------------------------------------------------
    def _predict(self, X: Any) -> Any:
        o = getattr(self, "_origin", np.zeros(self.n_features_in_, dtype=_F32))
        C2, cn = kernel_centers(self.cluster_centers_ - o.astype(_F64))
        if hasattr(X, "dask"):
            if X.ndim != 2 or X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has shape {X.shape}, expected (n, {self.n_features_in_})")
            if X.numblocks[1] != 1:
                X = X.rechunk({1: -1})
            return X.map_blocks(
                labels_block, o, C2, cn, drop_axis=1, dtype=np.int32, meta=np.empty(0, np.int32)
            )
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {X.shape}, expected (n, {self.n_features_in_})")
        return labels_of(as_f32(X), o, C2, cn)

    def predict(self, X: Any) -> Any:
        """Closest center of every row (the lowest center index on ties).

        Parameters
        ----------
        X : dask.array.Array or array-like of shape (n_samples, n_features)
            Rows to label; anything but a Dask array is validated like scikit-learn's input.

        Returns
        -------
        labels : dask.array.Array or ndarray of shape (n_samples,), int32
            A lazy Dask array for Dask input, NumPy otherwise.
        """
        check_is_fitted(self, "cluster_centers_")
        if not hasattr(X, "dask"):
            X = validate_data(self, X, accept_sparse=False, dtype=[np.float32, np.float64], reset=False)
        return self._predict(X)

    def fit_predict(self, X: Any, y: Any = None, *, client: Any = None) -> Any:
        """Fit on ``X``, then return ``labels_``.

        Parameters
        ----------
        X : dask.array.Array or array-like of shape (n_samples, n_features)
            The data (see :meth:`fit`).
        y : Ignored
            Not used, present for API consistency.
        client : distributed.Client, optional
            See :meth:`fit`.

        Returns
        -------
        labels : dask.array.Array or ndarray of shape (n_samples,), int32
            ``labels_``.
        """
        return self.fit(X, client=client).labels_

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if "labels_" in state and not isinstance(state["labels_"], np.ndarray):
            state = dict(state)
            del state["labels_"]  # a Dask graph over blocks on a cluster: not portable
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Models saved before these parameters existed take their defaults.
        super().__setstate__({"lloyd_loop": "auto", "actor_kernels": "auto", "paused_grace_s": PAUSED_GRACE_S,
                              **state})
