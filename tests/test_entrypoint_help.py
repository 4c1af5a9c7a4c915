"""``--help`` of every entry point answers from the parser alone: exit 0, nothing written, no store.

Each entry point runs as the user runs it (``python -m mlproject.<entry> --help``) in an empty
folder with no ``MLFLOW_TRACKING_URI``, where the first touch of the store would create
``mlflow.db``.  ``-X importtime`` lists every module the process imported: the help must not
pay for MLflow, Dask, scikit-learn, Numba or NumPy (their import is what made it take seconds).
How long it takes is a benchmark's figure (``benchmarks/lean.py``, section ``help_startup``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Top-level packages an entry point's --help must not import.
HEAVY = ("mlflow", "dask", "distributed", "sklearn", "numba", "numpy", "pandas", "scipy", "optuna", "sqlalchemy")


def entry_modules() -> list[str]:
    """``mlproject.<entry>`` for every entry-point module (``mlproject/*.py`` but the private ones)."""
    return sorted(f"mlproject.{p.stem}" for p in (REPO / "mlproject").glob("*.py") if not p.stem.startswith("_"))


def test_help_of_every_entry_point_touches_no_store_and_imports_nothing_heavy(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "KMEANS_LIFECYCLE_ENTRY_POINT"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # nothing written anywhere by the interpreter either
    modules = entry_modules()
    assert {"mlproject.train", "mlproject.search", "mlproject.keygen", "mlproject.serve"} <= set(modules)
    # All at once: each is a short interpreter start, and the test stays cheap.
    procs = {m: subprocess.Popen([sys.executable, "-X", "importtime", "-m", m, "--help"], cwd=tmp_path, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in modules}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{module} --help: {err[-2000:]}"
        assert out.startswith("usage: python -m " + module), out[:200]
        imported = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)$", err, flags=re.M))
        assert imported, err[-500:]  # the scan reads importtime's lines
        heavy = sorted({name.split(".")[0] for name in imported} & set(HEAVY))
        assert heavy == [], f"{module} --help imported {heavy}"
    assert sorted(os.listdir(tmp_path)) == [], "an entry point's --help wrote into the working directory"
