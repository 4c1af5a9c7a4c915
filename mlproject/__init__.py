"""Command-line faces of the toolkit, one module per MLproject entry point."""

# First, before any library registers its own exit handlers: see mlproject/_exit.py.
from mlproject import _exit  # noqa: F401
