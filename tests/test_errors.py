"""One-line error text: the first line of any exception's message, even an empty one; options
named the way the user gives them."""

from __future__ import annotations

import pytest

from toolkit.errors import LAUNCHER_ENV, ToolkitError, first_line, launched_entry_point, option_hint


def test_first_line_of_any_error():
    assert first_line(ValueError("bad value\nTraceback noise")) == "bad value"
    assert first_line(RuntimeError()) == ""  # raised without a message: no IndexError
    assert first_line(OSError("x" * 500), 300) == "x" * 300
    assert first_line("plain text") == "plain text"


@pytest.mark.parametrize("launched, register, overrides, storage", [
    (None, "--register", "--set 'model.max_iter=50 data.n_samples=1000'", "--storage optuna.log"),
    ("train", "-P register", "-P overrides='model.max_iter=50 data.n_samples=1000'", "-P storage=optuna.log"),
])
def test_option_hint_per_launch_mode(monkeypatch, launched, register, overrides, storage):
    if launched:
        monkeypatch.setenv(LAUNCHER_ENV, launched)
    else:
        monkeypatch.delenv(LAUNCHER_ENV, raising=False)
    assert launched_entry_point() == launched
    assert option_hint("register") == register
    assert option_hint("overrides", "model.max_iter=50 data.n_samples=1000") == overrides
    assert option_hint("storage", "optuna.log") == storage
    given = "--register true" if launched is None else "-P register=true"
    assert str(ToolkitError("bad", f"pass {option_hint('register', 'true')}")) == f"bad -- fix: pass {given}"
