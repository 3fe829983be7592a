"""Benchmark pieces behind jobs/benchmark_*.py (timing, synthetic indexes, reports)."""
