"""Data-parallel Lloyd k-means on Dask arrays, as a scikit-learn estimator (:class:`DaskKMeans`).

A self-contained package: it needs NumPy, Numba, scikit-learn and Dask, and knows nothing of
MLflow or of the toolkit's configs and backends (the ``dask`` backend,
:mod:`toolkit.backends.dask_lloyd`, adapts it).  Its modules, bottom up:

* :mod:`~toolkit.kmeans_dask._numba` -- the compiled inner loops of a Lloyd step;
* :mod:`~toolkit.kmeans_dask.kernels` -- *block kernels*: plain functions of one row block that
  run on the worker holding it and return results of size ``k x d`` at most;
* :mod:`~toolkit.kmeans_dask.engines` -- how one kernel reaches every block (actors, pinned
  tasks, a task graph, or in-process), results in block order;
* :mod:`~toolkit.kmeans_dask.lloyd` -- the driver: moments, initialisations, Lloyd iterations,
  the empty-cluster rule, and :func:`lloyd_fit`;
* :mod:`~toolkit.kmeans_dask.estimator` -- :class:`DaskKMeans`.

Design
------
The data stays where it is: float32 row blocks persisted on the workers (or, with
``persist=False``, a lazy Dask array that is re-read block by block every pass, so memory stays
bounded by a few blocks).  Every pass over the data runs one small *kernel* per block on the
worker that holds it; a kernel returns a result of size ``k x d`` at most, and the driver
combines the per-block results **in block order** (so results are bit-for-bit reproducible
whichever worker ran what).  Nothing of size ``n_samples`` crosses the network.

How kernels reach the blocks (an "engine"):

* persisted Dask array -> one Dask *actor* per worker holds that worker's blocks (references,
  no copy); each pass is one direct call per worker, no scheduler round trip (~1-5 ms instead
  of ~10-40 ms per pass on a busy machine).  While a worker holds at most
  :data:`_INLINE_VALUES` values the call runs on the worker's event loop, saving a thread
  hand-off.  If actors cannot be created: one task per worker per pass, pinned to the worker
  holding its blocks ("futures").  The Lloyd iterations themselves run on the workers: one call per actor runs them all,
  each worker sending its blocks' partial sums (``k x (d + 1)``) straight to its peers and
  taking the same M-step from all of them in block order, so no driver or scheduler round
  trip is paid per iteration (:meth:`~toolkit.kmeans_dask.engines.Engine.iterate`).  Small
  data (at most ``_GATHER_VALUES`` values) is gathered on one worker for the fit: there a
  single core's pass costs no more than an exchange between workers.  ``DaskKMeans``'s
  ``lloyd_loop`` and ``actor_kernels`` parameters choose these paths explicitly (same fit).
* lazy Dask array -> one delayed task per block per pass, computed on the client's cluster;
  blocks stream from their source.
* NumPy array -> the same kernels in-process (handy for tests and small data).

Lloyd iteration kernel (per block): a compiled Numba loop (:func:`toolkit.kmeans_dask._numba.lloyd_stats`)
runs, per tile of 1024 rows, one float32 BLAS GEMM for ``-2 x c^T``, then per row the closest
center (strict ``<``: a tie goes to the lowest index, as in scikit-learn) fused with adding the
row to that center's sums and count (float32 within a tile, float64 across tiles and blocks).
No labels are materialised.  Data whose mean is far from 0 (farther than one standard
deviation) is centred tile by tile first, as scikit-learn centres ``X``, so float32 products
stay small.  Single-threaded the kernel is faster per core than scikit-learn's Cython Lloyd
step (``benchmarks/run.py`` compares both).

Semantics (scikit-learn's ``_kmeans_single_lloyd``)
---------------------------------------------------
* ``tol`` is relative: ``tol_abs = tol * mean(var(X, axis=0))``; the run stops after the
  iteration whose squared Frobenius center shift is ``<= tol_abs``; ``n_iter`` counts that
  iteration; ``max_iter`` bounds the loop.
* scikit-learn also stops when the labels did not change ("strict convergence").  Here the sums
  are deterministic, so unchanged labels give exactly the same centers, a shift of exactly 0
  and the same stop at the same iteration -- without keeping ``n_samples`` labels anywhere.
* Inertia and labels are always computed against the final centers (scikit-learn's final
  E-step), in float64 from ``x - c`` (no cancellation).
* Empty clusters (scikit-learn's rule): when ``m`` clusters get no point, the ``m`` points
  farthest from their assigned center (ties: lower row index first) are taken, in decreasing
  distance, and the ``j``-th one becomes the sole member of the ``j``-th empty cluster (by
  increasing cluster index); it is removed from its donor cluster's sums.  Deterministic for
  given data and centers; identical to scikit-learn for a single empty cluster.

Initialisation: ``"k-means||"`` (Bahmani et al., scalable k-means++: ``oversampling_factor * k``
expected candidates per round, :data:`_PAR_ROUNDS` rounds, one pass each, then weighted
k-means++ and a weighted Lloyd refinement of the candidates on the driver), ``"k-means++"``
(scikit-learn's ``kmeans_plusplus`` on a seeded sample of up to :data:`_KPP_SAMPLE` rows),
``"random"`` (``k`` distinct seeded rows), or an explicit ``(k, d)`` array.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toolkit._lazy import export_lazily

__all__ = ["DaskKMeans", "lloyd_fit"]

#: The public names, imported on first use (PEP 562).  A Dask worker unpickling a block kernel
#: imports this package first; eagerly importing the estimator would load scikit-learn (and with
#: it SciPy, pandas, PyArrow: ~150 MiB per worker) into processes that only run the kernels.
_PUBLIC = {"DaskKMeans": "toolkit.kmeans_dask.estimator", "lloyd_fit": "toolkit.kmeans_dask.lloyd"}

if TYPE_CHECKING:
    from toolkit.kmeans_dask.estimator import DaskKMeans
    from toolkit.kmeans_dask.lloyd import lloyd_fit


export_lazily(__name__, _PUBLIC)
