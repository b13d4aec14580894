"""The benchmark suite (see README.md here). Each module runs as a script (`python benchmarks/latency.py`)
and imports its siblings as `benchmarks.<name>`; tests/test_benchmarks_smoke.py imports them the same way."""
