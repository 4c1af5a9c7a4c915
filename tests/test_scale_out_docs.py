"""The scaling page's commands are the lines of the script that tests/test_stack.py runs.

``docs/scaling-out.md`` gives the single-host stack step by step; ``docs/scripts/scale_out_local.sh``
does the same in one go, and tests/test_stack.py starts, uses and stops its stack through that
script.  A command block of the page marked ``<!-- not-run: docs/scripts/scale_out_local.sh runs
these lines ... -->`` must consist of lines of the script (continuations joined, spaces
collapsed, comments dropped), so that the page cannot drift from what is run.
"""

from __future__ import annotations

import re
from pathlib import Path

from test_docs import examples, pages

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "scripts" / "scale_out_local.sh"
MARK = "docs/scripts/scale_out_local.sh runs these lines"


def _logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined and whitespace collapsed; no comments."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = " ".join(line.split())
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _checked_blocks() -> list[tuple[str, list[str]]]:
    found = []
    for name, text in pages().items():
        for ex in examples(name, text):
            if ex.not_run and MARK in ex.not_run:
                found.append((ex.id, _logical_lines(ex.code)))
    return found


def test_logical_lines_join_continuations():
    assert _logical_lines("a \\\n    b  c\n# note\n\n  d\n") == ["a b c", "d"]


def test_scaling_page_blocks_are_lines_of_the_script():
    blocks = _checked_blocks()
    # Every step of the stack: PATH, ports, password, PostgreSQL, settings, server, Dask, search, predict.
    assert len(blocks) >= 9, f"only {len(blocks)} blocks of the page are checked against the script"
    script = set(_logical_lines(SCRIPT.read_text()))
    missing = [f"{where}: {line}" for where, lines in blocks for line in lines if line not in script]
    assert not missing, "page lines the script does not run (edit both together):\n" + "\n".join(missing)
