"""``dask`` backend: the toolkit's own data-parallel Lloyd k-means on Dask; the fast CPU cluster path.

A thin adaptor, like :mod:`toolkit.backends.daskml`: the algorithm is the standalone package
:mod:`toolkit.kmeans_dask` (block kernels, engines, the Lloyd driver and the estimator
:class:`~toolkit.kmeans_dask.DaskKMeans`); this module places the data and maps a
:class:`~toolkit.config.ModelConfig` onto the estimator.  Its scikit-learn twin comes from
:func:`toolkit.convert.to_sklearn`, like every backend's.

``DaskKMeans`` and ``lloyd_fit`` stay importable from here: models pickled (opt-in) before the
package existed name ``toolkit.backends.dask_lloyd.DaskKMeans``, and older scripts import both.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import numpy as np

from toolkit import _speedups
from toolkit.backends.base import FitResult, KMeansBackend
from toolkit.backends.daskml import to_dask_array, warm_workers
from toolkit.config import ModelConfig
from toolkit.data import Dataset
from toolkit.errors import ConfigError
from toolkit.kmeans_dask import DaskKMeans, lloyd_fit
from toolkit.kmeans_dask.kernels import aligned_f32, warm_kernels
from toolkit.kmeans_dask.preload import load_on_workers, process_workers, settled_memory
from toolkit.kmeans_dask.watch import PAUSED_GRACE_S, WorkerMemoryError

__all__ = ["READ_FACTOR", "DaskBackend", "DaskKMeans", "check_worker_memory", "lloyd_fit"]

#: Peak bytes a task holds while reading one partition from files, per byte of its float32
#: block.  With the direct Parquet reader (toolkit.data._read_parquet_block) the file's bytes,
#: Arrow's table and the block are alive together, so the peak follows the file's column type:
#: a float32 file ~2-4x, a float64 file (pandas' default) up to 6x, in the float64 statistics
#: pass with the system allocator (the worst case; measured on a 1M x 16 file, steady state,
#: peak RSS growth).  6x bounds every case; a fresh worker's first read adds one-time buffers,
#: which the baseline (the worker's memory now) does not hold yet.
READ_FACTOR = 6.0
#: Fraction of ``memory_limit`` at which Dask pauses a worker (``distributed.worker.memory.pause``).
_PAUSE = 0.8
_MiB = 1 << 20


def _mib(n: float) -> str:
    return f"{n / _MiB:,.0f} MiB"


def check_worker_memory(client: Any, X: Any, persist: bool) -> dict[str, float] | None:
    """Refuse, before any pass, data whose partitions cannot fit the workers' memory limit.

    A worker reading one partition at a time per thread needs about ``baseline + threads *
    READ_FACTOR * block`` below its pause fraction (``block``: the largest partition as float32,
    ``baseline``: the memory a worker process holds now with the kernels loaded, measured on it,
    or the heartbeat's figure, whichever is larger); persisted data also needs all its blocks to
    fit the workers' total limit.  Workers without a limit, or no client, pass.  Returns what
    was computed (for the out-of-memory line of a fit that fails later) or None.

    Raises:
        ConfigError: one line naming the partition size, the limit it needs and the fix.
    """
    if client is None or not getattr(X, "chunks", None):
        return None
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    limited = {a: w for a, w in workers.items() if w.get("memory_limit")}
    if not limited:
        return None
    rows = max((int(c) for c in X.chunks[0] if c == c), default=0)  # NaN: unknown chunk
    block = rows * int(X.shape[1]) * 4
    limit = min(int(w["memory_limit"]) for w in limited.values())
    threads = max(int(w.get("nthreads") or 1) for w in limited.values())
    baseline = max(float((w.get("metrics") or {}).get("memory") or 0) for w in limited.values())
    processes = process_workers(limited)
    if processes:  # measured now, kernels loaded: what a worker holds before it reads a partition
        with contextlib.suppress(Exception):  # a worker that does not answer is the fit's to report
            baseline = max(baseline, *map(float, client.run(settled_memory, workers=processes).values()))
    need = (baseline + threads * READ_FACTOR * block) / _PAUSE
    needs = {"block": float(block), "limit": float(limit), "need": need, "rows": float(rows)}
    if need > limit:
        # Rounded up to a 256 MiB step: a value the user can type.
        advice = -(-need // (256 * _MiB)) * 256
        raise ConfigError(
            f"a data partition of {rows:,} rows x {int(X.shape[1])} columns ({_mib(block)} as float32, "
            f"~{_mib(READ_FACTOR * block)} while read) does not fit a worker memory limit of {_mib(limit)}: "
            f"with {threads} thread(s) and {_mib(baseline)} in use a worker needs >= {_mib(need)}",
            f"set cluster.memory_limit={advice:.0f}MiB or more, or write the data in smaller files "
            f"(or Parquet row groups)",
        )
    total = sum(int(w["memory_limit"]) for w in limited.values())
    data = int(X.shape[0]) * int(X.shape[1]) * 4
    if persist and data > 0.6 * total:  # Dask starts spilling at 60% of managed memory
        raise ConfigError(
            f"the data ({_mib(data)} as float32) does not fit in the workers' memory ({_mib(total)} in all) "
            f"to be persisted",
            "set data.persist=false to read it block by block every pass (out of core), or add workers/memory",
        )
    return needs


def _warm_dask_driver(n_features: int) -> None:
    """Compile (or load from Numba's disk cache) the Lloyd kernels in the driver, which runs
    the initialisation (scikit-learn's k-means++ on a sample) and small fits itself.

    A tiny in-process fit and predict on float32 rows of the data's width run the same
    compiled functions, with the same argument types, as the fit's tasks.  The workers run
    :func:`~toolkit.kmeans_dask.kernels.warm_kernels` instead: they never import scikit-learn.
    """
    import sklearn.cluster  # noqa: F401 - k-means++ seeding imports it (~2 s on a cold process)

    rows = np.arange(8 * n_features, dtype=np.float32).reshape(8, n_features)
    DaskKMeans(n_clusters=2, n_init=1, max_iter=2, random_state=0).fit(rows).predict(rows)


class DaskBackend(KMeansBackend):
    """Our data-parallel Lloyd k-means on Dask (persisted float32 blocks on the workers)."""

    name: ClassVar[str] = "dask"
    requires = ("dask", "distributed")
    #: The Lloyd kernels are Numba ``nogil`` functions and the rest is BLAS/NumPy: a local
    #: cluster for in-memory data runs on threads (:func:`toolkit.train.backend_session`).
    releases_gil: ClassVar[bool] = True

    def __init__(self, client: Any = None, *, paused_grace_s: float = PAUSED_GRACE_S, **kwargs: Any) -> None:
        """``paused_grace_s``: see :class:`~toolkit.kmeans_dask.DaskKMeans` (data not persisted)."""
        super().__init__(client, **kwargs)
        self.paused_grace_s = paused_grace_s
        # A head start: worker processes load the kernels while the caller loads and places the data.
        _speedups.warm(load_on_workers, client)

    def prepare(self, dataset: Dataset) -> Any:
        """The data as a float32 Dask array, persisted on the workers unless ``persist=False``."""
        in_memory = isinstance(dataset.X, np.ndarray)
        if not in_memory:  # before any pass: a partition that cannot fit fails now, in one line
            self._memory_needs = check_worker_memory(self.client, dataset.X, self.persist)
        # NumPy data is persisted by to_dask_array itself: scattered evenly, already aligned.
        X = to_dask_array(dataset, self.client, self.persist and in_memory, self.chunk_rows)
        if self.persist and not in_memory:
            # Blocks read by tasks can sit at odd addresses, which keeps NumPy and BLAS off
            # their fast paths every iteration: persist them aligned (and float32), in one
            # pass.  Already aligned float32 blocks are kept as they are, not copied.
            X = X.map_blocks(aligned_f32, dtype=np.float32)
            X = self.client.persist(X) if self.client is not None else X.persist()
        elif X.dtype != np.float32:  # Dataset promises float32
            X = X.astype(np.float32)
        return X

    def _out_of_memory(self, exc: BaseException) -> ConfigError:
        """The one line for a fit that a worker's memory stopped (paused too long, or killed)."""
        needs = getattr(self, "_memory_needs", None) or {}
        what = "paused for memory" if isinstance(exc, MemoryError) else "killed (out of memory, most likely)"
        size = f" (partitions of {_mib(needs['block'])} as float32, limit {_mib(needs['limit'])})" if needs else ""
        return ConfigError(
            f"a Dask worker was {what} during the fit{size}: {' '.join(str(exc).split())[:160]}",
            "raise cluster.memory_limit (or use fewer threads per worker), or write the data in smaller files",
        )

    def warm_up(self, X: Any) -> None:
        # The kernels' own module, so a worker imports NumPy and Numba for it, not this adaptor
        # (pydantic, scikit-learn, SciPy, pandas: ~150 MiB more per worker).
        warm_workers(self.client, X, warm_kernels, int(X.shape[1]))
        _warm_dask_driver(int(X.shape[1]))  # the driver runs kernels too (initialisation)

    def estimator(self, params: ModelConfig) -> DaskKMeans:
        """An unfitted :class:`DaskKMeans` for ``params``."""
        return DaskKMeans(
            n_clusters=params.n_clusters,
            init=params.init,
            max_iter=params.max_iter,
            tol=params.tol,
            n_init=params.n_init,
            oversampling_factor=params.oversampling_factor,
            random_state=params.random_state,
            paused_grace_s=self.paused_grace_s,
        )

    def _fit(self, X: Any, params: ModelConfig, init_centers: np.ndarray | None = None) -> FitResult:
        km = self.estimator(params)
        if init_centers is not None:  # DaskKMeans takes explicit centres as its init
            km.set_params(init=init_centers, n_init=1)
        # One-shot: the metrics' resampled fits that follow are not the run's progress.
        on_pass, self.on_pass = getattr(self, "on_pass", None), None
        try:
            km = km.fit(X, client=self.client, on_pass=on_pass)
        except (WorkerMemoryError, MemoryError) as exc:
            raise self._out_of_memory(exc) from None
        except Exception as exc:
            if type(exc).__name__ != "KilledWorker" or self.persist:
                raise  # persisted data: a lost worker is an infrastructure failure (placed again)
            raise self._out_of_memory(exc) from None
        return FitResult(
            model=km,
            centers=np.asarray(km.cluster_centers_, dtype=np.float64),
            inertia=float(km.inertia_),
            n_iter=int(km.n_iter_),
            fit_seconds=0.0,
            labels=km.labels_,  # lazy Dask array for Dask input
            extra=dict(km.fit_info_),
        )
