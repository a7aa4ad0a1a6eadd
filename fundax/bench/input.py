"""The host input benchmark: prepared records → batches with the real pipeline, by thread count.

Images/s per core tells how many host cores an accelerator needs at its step rate.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any


def input_throughput(source: Any, finding: str, threads: int, batch_size: int, batches: int,
                     warmup: int, repeats: int) -> dict[str, Any]:
    """Images/s of the host pipeline with ``threads`` loader threads: median over repeats."""
    from fundax.data import pipeline

    example = pipeline.FindingExample(finding, 2)
    rates = []
    for repeat in range(repeats):
        stream = iter(pipeline.train_dataset(source, example, global_batch=batch_size, seed=repeat,
                                             threads=threads, prefetch_batches=2))
        for _ in range(warmup):
            next(stream)
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        rates.append(batches * batch_size / (time.perf_counter() - start))
    cores = min(threads, os.cpu_count() or 1)
    median = statistics.median(rates)
    return {"threads": threads, "images_per_s": median, "images_per_s_per_core": median / cores,
            "runs": rates}
