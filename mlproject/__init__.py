"""Command-line faces of the toolkit, one module per MLproject entry point."""
