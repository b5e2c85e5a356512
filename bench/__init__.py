"""Benchmarks. Run from the repository root as modules (``python3 -m bench.hostile``), or through the
wrappers bench/qps, bench/forward and bench/scale, which put the root on PYTHONPATH first."""
