"""The attack every tampering test plants: a pickle whose loading runs a command."""

from __future__ import annotations

import os
from pathlib import Path


class Boom:
    """Unpickling this runs ``touch <marker>``: the marker file's existence proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
