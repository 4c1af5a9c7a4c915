"""Benchmark suite (figures, not tests): ``python -m benchmarks.run``."""
