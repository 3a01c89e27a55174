"""Benchmarks: each prints a side-by-side table with ratios measured in the same run."""
