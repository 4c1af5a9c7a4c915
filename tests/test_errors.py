"""One-line error text: the first line of any exception's message, even an empty one."""

from __future__ import annotations

from toolkit.errors import first_line


def test_first_line_of_any_error():
    assert first_line(ValueError("bad value\nTraceback noise")) == "bad value"
    assert first_line(RuntimeError()) == ""  # raised without a message: no IndexError
    assert first_line(OSError("x" * 500), 300) == "x" * 300
    assert first_line("plain text") == "plain text"
