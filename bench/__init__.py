"""Benchmarks of the genjobs pipeline, each figure measured next to its baseline."""
