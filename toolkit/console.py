"""The one place the toolkit talks to a person: status lines and progress bars.

Quiet when stdout is not a terminal (progress bars) and when ``KMEANS_QUIET=1`` (everything).
Every line passes through :func:`toolkit.redact.redact`: no credential reaches the console.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from toolkit.redact import redact

__all__ = ["progress", "say"]


def say(message: str) -> None:
    """Print one status line for the user (to stdout)."""
    if os.environ.get("KMEANS_QUIET") != "1":
        print(redact(message), flush=True)


def progress(total: int, desc: str) -> Any:
    """A tqdm progress bar on a terminal; a silent stand-in elsewhere."""
    from tqdm.auto import tqdm

    disable = not sys.stderr.isatty() or os.environ.get("KMEANS_QUIET") == "1"
    return tqdm(total=total, desc=desc, disable=disable, leave=True, dynamic_ncols=True)
