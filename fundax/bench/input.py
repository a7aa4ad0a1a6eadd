"""The host input benchmark: prepared records → batches with the real pipeline, by thread count,
and how far lossy records are from lossless ones.

Images/s per core tells how many host cores an accelerator needs at its step rate. It is
given twice: wall-clock images/s over the cores the threads can use, and images per
CPU-second of the process (user + system time of all its threads over the timed
batches). Other processes taking turns on the cores do not inflate the second (their use
of caches and memory bandwidth still does), so it is the one to trust on a shared host;
the first shows what threading adds or loses.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

STREAMS = ("train", "eval")


def _batches(source: Any, example: Any, stream: str, threads: int, batch_size: int,
             seed: int) -> Iterator[dict[str, Any]]:
    from fundax.data import pipeline

    if stream == "eval":
        return pipeline.eval_batches(source, example, global_batch=batch_size, threads=threads, prefetch_batches=2)
    return iter(pipeline.train_dataset(source, example, global_batch=batch_size, seed=seed, threads=threads,
                                       prefetch_batches=2))


def input_throughput(source: Any, finding: str, threads: int, batch_size: int, batches: int,
                     warmup: int, repeats: int, stream: str = "train") -> dict[str, Any]:
    """Images/s of the host pipeline with ``threads`` loader threads: median over repeats.

    ``stream``: ``train`` (:func:`pipeline.train_dataset`, shuffled and endless) or
    ``eval`` (:func:`pipeline.eval_batches`, every record once in order, so the split
    must hold ``warmup + batches`` batches).
    """
    from fundax.data import pipeline

    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    needed = (warmup + batches) * batch_size
    if stream == "eval" and needed > len(source):
        raise ValueError(f"the eval stream reads each record once: {warmup} + {batches} batches of {batch_size} "
                         f"need {needed} records and the split holds {len(source)}; ask for fewer batches")
    example = pipeline.FindingExample(finding, 2)
    rates, cpu_rates = [], []
    for repeat in range(repeats):
        it = _batches(source, example, stream, threads, batch_size, seed=repeat)
        for _ in range(warmup):
            next(it)
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(it)
        cpu_rates.append(batches * batch_size / (time.process_time() - cpu_start))
        rates.append(batches * batch_size / (time.perf_counter() - wall_start))
    cores = min(threads, os.cpu_count() or 1)
    median = statistics.median(rates)
    return {"stream": stream, "threads": threads, "images_per_s": median, "images_per_s_per_core": median / cores,
            "images_per_cpu_s": statistics.median(cpu_rates), "runs": rates, "runs_per_cpu_s": cpu_rates}


def image_error(lossy: Any, lossless: Any, field_level: int = 10) -> dict[str, float]:
    """How far the photographs of a prepared split are from the same split prepared losslessly.

    Absolute error in 8-bit levels (mean over every pixel and channel, and the largest)
    and PSNR per photograph, summarised by the median and the worst photograph; also
    over the camera's field alone (pixels of the lossless photograph brighter than
    ``field_level`` in some channel), since the black surround is easy to compress.
    """
    import numpy as np

    if len(lossy) != len(lossless):
        raise ValueError(f"the two splits differ: {len(lossy)} and {len(lossless)} photographs")
    mean, field_mean, largest, psnr, field_psnr = [], [], [], [], []
    for i in range(len(lossy)):
        a, b = lossy[i], lossless[i]
        if a.get("image_id") != b.get("image_id"):
            raise ValueError(f"record {i} is {a.get('image_id')!r} in one split and {b.get('image_id')!r} in the other")
        error = np.abs(np.asarray(a["image"], np.float64) - np.asarray(b["image"], np.float64))
        field = np.asarray(b["image"]).max(axis=-1) > field_level
        field = field if field.any() else np.ones_like(field)
        mean.append(error.mean())
        field_mean.append(error[field].mean())
        largest.append(error.max())
        # A photograph reproduced exactly has an infinite PSNR; it stays out of the worst case.
        with np.errstate(divide="ignore"):
            psnr.append(10 * np.log10(255.0**2 / np.mean(error**2)))
            field_psnr.append(10 * np.log10(255.0**2 / np.mean(error[field] ** 2)))
    return {"photographs": len(mean), "mean_abs": float(np.mean(mean)), "mean_abs_field": float(np.mean(field_mean)),
            "max_abs": float(np.max(largest)), "max_abs_median": float(np.median(largest)),
            "psnr_db_median": float(np.median(psnr)), "psnr_db_worst": float(np.min(psnr)),
            "psnr_field_db_median": float(np.median(field_psnr)), "psnr_field_db_worst": float(np.min(field_psnr))}
