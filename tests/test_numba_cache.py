"""The Numba kernels are cached on disk (toolkit._metric_kernels.kernel): a second process loads
what the first compiled; a read-only install caches in the user's cache folder; a corrupt cache
is recompiled and rewritten; no writable folder at all still runs.  Each case runs fresh
interpreters (the cache is about process start), on tiny data; no timing is asserted.

The package under test is copied into a temp folder for the read-only cases: as root, file modes
do not stop writes, so a ``__pycache__`` that is a *file* is what makes the folder unusable.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

#: One call of the smallest kernel (a compile of ~0.3 s, not the Lloyd step's seconds) and what
#: Numba's dispatcher says about its cache.
_PROBE = """
import json, numpy as np
from toolkit.kmeans_dask._numba import _sq_to
d = _sq_to(np.array([[3, 4]], np.float32), 0, np.zeros(2))
s = _sq_to.stats
print(json.dumps({"d": d, "hits": sum(s.cache_hits.values()), "misses": sum(s.cache_misses.values()),
                  "path": s.cache_path}))
"""


def _probe(env: dict[str, str], pythonpath: Path = REPO) -> dict:
    env = {**{k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "TMPDIR")},
           "PYTHONPATH": str(pythonpath), "PYTHONDONTWRITEBYTECODE": "1", **env}
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300,
                          cwd=str(pythonpath))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["d"] == 25.0
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    """A cache folder (the user's own NUMBA_CACHE_DIR) filled by one process that compiled."""
    cache = tmp_path_factory.mktemp("numba-cache")
    first = _probe({"NUMBA_CACHE_DIR": str(cache)})
    assert first["misses"] >= 1 and first["hits"] == 0, first
    assert Path(first["path"]).is_relative_to(cache), first  # the user's setting is kept
    assert list(cache.rglob("*.nbi")), "nothing written to the cache"
    return cache


def test_a_second_process_loads_the_compiled_kernels(compiled):
    second = _probe({"NUMBA_CACHE_DIR": str(compiled)})
    assert second["hits"] >= 1 and second["misses"] == 0, second


def test_a_corrupt_cache_is_recompiled_and_rewritten(compiled, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(compiled, cache)
    for index in cache.rglob("*.nbi"):  # the right Numba version, then garbage: what unpickling trips on
        index.write_bytes(pickle.dumps(numba.__version__) + b"\x80garbage")
    for data in cache.rglob("*.nbc"):
        data.write_bytes(b"garbage")
    again = _probe({"NUMBA_CACHE_DIR": str(cache)})
    assert again["hits"] == 0 and again["misses"] >= 1, again
    assert _probe({"NUMBA_CACHE_DIR": str(cache)})["hits"] >= 1  # the entry was rewritten


def _read_only_copy(root: Path) -> Path:
    """The kernel modules in a package whose folders cannot hold a ``__pycache__``."""
    for rel in ("toolkit/_metric_kernels.py", "toolkit/kmeans_dask/_numba.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    for pkg in (root / "toolkit", root / "toolkit" / "kmeans_dask"):
        (pkg / "__init__.py").write_text("")
        (pkg / "__pycache__").write_text("a file where the cache folder would go")
    return root


def test_a_read_only_install_caches_in_the_user_cache_folder(tmp_path):
    pkg = _read_only_copy(tmp_path / "site")
    xdg = tmp_path / "xdg"
    first = _probe({"XDG_CACHE_HOME": str(xdg)}, pkg)
    assert Path(first["path"]).is_relative_to(xdg / "kmeans-lifecycle" / "numba"), first
    second = _probe({"XDG_CACHE_HOME": str(xdg)}, pkg)
    assert second["hits"] >= 1 and second["misses"] == 0, second


def test_no_writable_folder_anywhere_still_runs(tmp_path):
    pkg = _read_only_copy(tmp_path / "site")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file: nothing can be made under it")
    out = _probe({"XDG_CACHE_HOME": str(blocked / "xdg"), "TMPDIR": str(blocked / "tmp"),
                  "HOME": str(blocked / "home")}, pkg)
    assert out["hits"] == 0, out  # compiled in the process, as without a cache


def test_kmeans_plusplus_kernel_matches_scikit_learn_on_float64():
    """The GIL-free k-means++ picks scikit-learn's rows from the same seed (float64 data: no
    float32 BLAS sums to differ in rounding)."""
    from sklearn.cluster import kmeans_plusplus

    from toolkit.backends.scikit import kmeans_plusplus_centers

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(c, 0.3, size=(300, 3)) for c in range(6)])
    for seed in range(5):
        expected, _ = kmeans_plusplus(X, 6, random_state=seed)
        np.testing.assert_array_equal(kmeans_plusplus_centers(X, 6, seed), expected)
