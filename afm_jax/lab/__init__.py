"""Benchmark and paper-table drivers behind `afm-jax bench|experiment` (not part of the library API)."""
