"""Benchmarks of fundax, reported as medians of repeated timed runs after a warm-up.

``python -m fundax.bench {train,torch,eval,input}``; see :mod:`fundax.bench.__main__`.
"""

from fundax.bench.input import input_throughput

__all__ = ["input_throughput"]
