"""Imports a search will need, done on a thread while the driver creates its store.

A fresh driver spends seconds importing: scikit-learn's dataset generators, Dask, skops (which
enumerates scikit-learn's estimators) and MLflow's map of installed distributions (read from
every package's metadata when a model is saved).  While the tracking store is created (sqlite
writes and fsyncs that release the GIL) one core sits idle; this thread uses it.  A module the
main thread needs first is simply imported by whichever thread gets there first (Python's
import lock makes the other wait), so nothing runs twice and nothing is skipped.
"""

from __future__ import annotations

import importlib
import threading

from toolkit.config import ExperimentConfig

__all__ = ["warm_imports"]


def _modules(register: bool, source: str | None) -> list[str]:
    mods = ["distributed", "dask.array", "sklearn.cluster", "optuna.importance"]
    if source in (None, "blobs", "sklearn"):
        mods.insert(0, "sklearn.datasets")
    if register:
        mods += ["mlflow.sklearn", "skops.io"]
    return mods


def _warm(mods: list[str], register: bool) -> None:
    for mod in mods:
        try:
            importlib.import_module(mod)
        except Exception:
            return
    if register:
        try:
            # MLflow reads every installed distribution's metadata once per process when it
            # checks a model's requirements; a private helper, so only tried.
            from mlflow.utils.requirements_utils import _init_modules_to_packages_map

            _init_modules_to_packages_map()
        except Exception:
            pass


_started: threading.Thread | None = None
_lock = threading.Lock()


def warm_imports(cfg: ExperimentConfig | None = None, register: bool = True) -> threading.Thread:
    """Start (once per process) and return the thread importing what a search will use.

    ``cfg`` (when known) leaves out what it will not need (no generated data: no dataset
    generators); ``register=False`` leaves out the model-saving imports.
    """
    global _started
    with _lock:
        if _started is None:
            mods = _modules(register, cfg.data.source if cfg is not None else None)
            _started = threading.Thread(target=_warm, args=(mods, register), name="search-warm-imports")
            _started.start()
        return _started
