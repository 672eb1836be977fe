"""Benchmarks: dfs measured side by side with its baselines in one interleaved run."""
