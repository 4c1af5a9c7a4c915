"""What a person sees: progress lines when the output is piped, nothing with KMEANS_QUIET=1."""

from __future__ import annotations

import subprocess
import sys

PROGRAM = """
from toolkit.console import progress
bar = progress(20, "search demo")
for i in range(20):
    bar.set_postfix(best=f"{i / 20:.3f}", refresh=False)
    bar.update(1)
bar.close()
"""


def _run(env_extra: dict[str, str]) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k != "KMEANS_QUIET"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_piped_output_gets_progress_lines():
    lines = _run({}).strip().splitlines()
    assert len(lines) == 10, lines  # one line per tenth of the work
    assert lines[0].startswith("search demo: 2/20 done, best=0.050, ")
    assert lines[-1].startswith("search demo: 20/20 done, best=0.950, ") and lines[-1].endswith(" s")


def test_quiet_means_silent():
    assert _run({"KMEANS_QUIET": "1"}) == ""
