"""Test beds that run the project's deployments for real on one machine (see docs/testbed.md)."""
