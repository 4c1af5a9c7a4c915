"""Compiled (Numba) per-cluster reductions behind :mod:`toolkit.metrics`.

Each metric pass reads a block once, row by row, accumulating in float64, with no temporaries
of the block's size.  The NumPy versions they replace made a float64 copy of the block, a
gathered ``means[labels]`` copy and one strided pass per feature: ~0.2 s per 200k x 16 block,
a third of a small trial, and memory traffic that slowed two trials running side by side.

Rows are added in row order, as ``numpy.bincount`` adds its weights, so results match the
NumPy versions to rounding.  Labels must lie in ``[0, k)``; :mod:`toolkit.metrics` checks.

:func:`kernel` is the toolkit's one Numba decorator (this module's kernels and
:mod:`toolkit.kmeans_dask._numba`'s): ``nogil`` and cached on disk, so a fresh process (a new Dask
worker, the next ``train``) loads the machine code in milliseconds instead of compiling for
seconds.  The cache goes where Numba puts it (the package's ``__pycache__``) when that is
writable, else -- a package installed read-only -- under
``${XDG_CACHE_HOME:-~/.cache}/kmeans-lifecycle/numba`` (then a per-user folder of the temp dir),
set as ``NUMBA_CACHE_DIR`` before any kernel is decorated; a ``NUMBA_CACHE_DIR`` the user set is
kept.  With no writable place the kernels compile per process, as without a cache.  A corrupt
cache file is ignored and rewritten (Numba itself would fail the call); a stale one (other
source, Numba version or CPU) Numba already ignores.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CACHE_DIR_ENV", "assigned_moments", "cache_dir", "cluster_moments", "distance_sums", "kernel",
           "pair_cluster_sums"]

#: Numba's own setting of where cached kernels go (read when it is imported and when a kernel
#: is decorated).
CACHE_DIR_ENV = "NUMBA_CACHE_DIR"


def _writable(folder: Path) -> bool:
    """Whether ``folder`` exists or can be made, and takes a file (Numba's own test)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def _user_cache_dirs() -> list[Path]:
    """Where the kernels' cache may go when the package's folder is read-only, best first."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    return [Path(base) / "kmeans-lifecycle" / "numba",
            Path(tempfile.gettempdir()) / f"kmeans-lifecycle-{uid}" / "numba"]


def cache_dir() -> str | None:
    """The folder the kernels are cached in (``NUMBA_CACHE_DIR`` set here when needed), or None
    when there is no writable one.  Idempotent; call before any kernel is decorated."""
    own = os.environ.get(CACHE_DIR_ENV)
    if own:  # the user's (or this process's earlier) choice
        return own
    # Numba's default: __pycache__ beside the source (one check serves both kernel modules,
    # which are installed together).
    in_tree = Path(__file__).resolve().parent / "__pycache__"
    if _writable(in_tree):
        return str(in_tree)
    for folder in _user_cache_dirs():
        if _writable(folder):
            os.environ[CACHE_DIR_ENV] = str(folder)  # Dask workers started later inherit it
            import sys

            if "numba" in sys.modules:  # imported before us: its config read the env already
                import numba

                numba.config.CACHE_DIR = str(folder)
            return str(folder)
    return None


_CACHE_DIR = cache_dir()

from numba import njit  # noqa: E402 - after NUMBA_CACHE_DIR is settled, which Numba reads on import


def _guarded_cache(py_func: Callable[..., Any]) -> Any:
    """A Numba on-disk cache for ``py_func`` that treats an unreadable entry as a miss.

    Numba's ``FunctionCache`` (``numba.core.caching``, the class ``cache=True`` installs as the
    dispatcher's ``_cache``; checked on Numba 0.60-0.68) raises from the kernel's first call when
    an index or data file is corrupt (``UnpicklingError``); here that is a miss, the kernel is
    compiled, and the save rewrites the entry (a corrupt index is emptied first).  Public
    fallback: ``cache=True`` (corrupt files then fail the call).  ``tests/test_numba_cache.py``
    checks the shape relied on.
    """
    from numba.core.caching import FunctionCache

    class _GuardedCache(FunctionCache):
        def load_overload(self, sig: Any, target_context: Any) -> Any:
            try:
                return super().load_overload(sig, target_context)
            except Exception:  # any unreadable entry: compile instead
                return None

        def save_overload(self, sig: Any, data: Any) -> None:
            try:
                super().save_overload(sig, data)
            except Exception:  # a corrupt index: start it again
                try:
                    self.flush()
                    super().save_overload(sig, data)
                except Exception:  # the cache is only a speed-up; the kernel runs
                    pass

    return _GuardedCache(py_func)


def kernel(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(nogil=True, cache=True, **options)`` with the cache of :func:`cache_dir` and
    corrupt entries recompiled (:func:`_guarded_cache`); uncached where no folder is writable."""

    def decorate(py_func: Callable[..., Any]) -> Any:
        dispatcher = njit(nogil=True, **options)(py_func)
        if _CACHE_DIR is not None:
            # What cache=True's enable_caching sets; RuntimeError: no locator can write after all.
            with contextlib.suppress(RuntimeError, OSError):
                dispatcher._cache = _guarded_cache(py_func)
        return dispatcher

    return decorate


@kernel()
def cluster_moments(x, labels, k):  # pragma: no cover - compiled
    """Per cluster: ``[count, sum of x (d values), sum of ||x||^2]`` as one ``(k, d + 2)`` array."""
    n, d = x.shape
    out = np.zeros((k, d + 2))
    for i in range(n):
        c = labels[i]
        out[c, 0] += 1.0
        sq = 0.0
        for j in range(d):
            v = np.float64(x[i, j])
            out[c, 1 + j] += v
            sq += v * v
        out[c, d + 1] += sq
    return out


@kernel()
def distance_sums(x, labels, means):  # pragma: no cover - compiled
    """Per cluster: the sum of the Euclidean distances of its rows to its mean."""
    n, d = x.shape
    out = np.zeros(means.shape[0])
    for i in range(n):
        c = labels[i]
        sq = 0.0
        for j in range(d):
            diff = np.float64(x[i, j]) - means[c, j]
            sq += diff * diff
        out[c] += np.sqrt(sq)
    return out


@kernel()
def _nearest(x, i, centers, c_sq):  # pragma: no cover - compiled
    """The centre closest to row ``i`` (the first of equals, as ``numpy.argmin``)."""
    k, d = centers.shape
    best, best_c = np.inf, 0
    for c in range(k):
        dot = 0.0
        for j in range(d):
            dot += np.float64(x[i, j]) * centers[c, j]
        dist = c_sq[c] - 2.0 * dot  # ||x - c||^2 less ||x||^2, the same for every centre
        if dist < best:
            best, best_c = dist, c
    return best_c


@kernel()
def assigned_moments(x, centers, means):  # pragma: no cover - compiled
    """One pass over a block, each row labelled by its nearest centre on the way (no labels array).

    Returns ``(k, d + 3)``: per cluster ``[count, sum of x (d), sum of ||x||^2, sum of ||x - mean||]``;
    the last column only when ``means`` (``(k, d)``) is given non-empty, else 0.  What
    Calinski-Harabasz needs (the moments) and what Davies-Bouldin adds (the distance sums to
    the cluster means, known after a first call) come from the same kernel.
    """
    n, d = x.shape
    k = centers.shape[0]
    c_sq = np.zeros(k)
    for c in range(k):
        for j in range(d):
            c_sq[c] += centers[c, j] * centers[c, j]
    with_means = means.shape[0] == k
    out = np.zeros((k, d + 3))
    for i in range(n):
        c = _nearest(x, i, centers, c_sq)
        out[c, 0] += 1.0
        sq = 0.0
        dist = 0.0
        for j in range(d):
            v = np.float64(x[i, j])
            out[c, 1 + j] += v
            sq += v * v
            if with_means:
                t = v - means[c, j]
                dist += t * t
        out[c, d + 1] += sq
        if with_means:
            out[c, d + 2] += np.sqrt(dist)
    return out


@kernel()
def pair_cluster_sums(x, codes, k):  # pragma: no cover - compiled
    """Per row: the summed Euclidean distance to the rows of each cluster, an ``(n, k)`` array.

    Each pair is measured once and added to both rows' sums, so the silhouette's O(n^2 d)
    work is halved and no n-by-chunk distance block is materialised (the BLAS version spent
    most of its time in passes over that block, not in the product).
    """
    n, d = x.shape
    sums = np.zeros((n, k))
    for i in range(n):
        ci = codes[i]
        for j in range(i + 1, n):
            sq = 0.0
            for f in range(d):
                t = x[i, f] - x[j, f]
                sq += t * t
            dist = np.sqrt(sq)
            sums[i, codes[j]] += dist
            sums[j, ci] += dist
    return sums

