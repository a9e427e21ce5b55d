"""Load tests and benchmarks (not part of the test suite; see BENCHMARKS.md)."""
