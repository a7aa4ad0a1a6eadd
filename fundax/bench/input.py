"""Benchmarks, reported as medians of repeated timed runs after a warm-up.

    python -m fundax.bench input --data_dir=DIR [--dataset=fundus_findings/synthetic]
        [--threads=1,2,4] [--batch_size=32] [--batches=20] [--repeats=3] [--json_out=FILE]

``input``: how fast one host turns prepared records into training batches (read,
decode, pick the finding's labels, batch) with the real pipeline, by thread count;
images/s per core tells how many host cores an accelerator needs at its step rate.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from typing import Any

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Where the prepared dataset is.")
flags.DEFINE_string("dataset", "fundus_findings/synthetic", "TFDS name/config.")
flags.DEFINE_string("finding", "macular_hole", "The finding whose labels are picked.")
flags.DEFINE_list("threads", ["1", "2"], "Loader thread counts to measure.")
flags.DEFINE_integer("batch_size", 32, "Images a batch.")
flags.DEFINE_integer("batches", 20, "Timed batches a run.")
flags.DEFINE_integer("warmup_batches", 2, "Untimed batches first.")
flags.DEFINE_integer("repeats", 3, "Timed runs; the median is reported.")
flags.DEFINE_string("json_out", None, "Also write the results here as JSON.")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import jax

    return {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count(),
            "jax": jax.__version__, "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.devices()]}


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


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] != "input":
        raise app.UsageError("usage: python -m fundax.bench input --data_dir=DIR [...]")
    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required")
    from fundax.data import pipeline

    try:
        source = pipeline.open_split(FLAGS.dataset, FLAGS.data_dir, "train")
    except pipeline.DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    size = source[0]["image"].shape[0]
    results = [input_throughput(source, FLAGS.finding, int(t), FLAGS.batch_size, FLAGS.batches,
                                FLAGS.warmup_batches, FLAGS.repeats) for t in FLAGS.threads]
    print(f"host input pipeline, {FLAGS.dataset} at {size} px, batch {FLAGS.batch_size}, "
          f"median of {FLAGS.repeats} runs of {FLAGS.batches} batches")
    print("threads  images/s  images/s per core")
    for r in results:
        print(f"{r['threads']:>7}  {r['images_per_s']:>8.1f}  {r['images_per_s_per_core']:>17.1f}")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump({"benchmark": "input", "image_size_px": int(size), "batch_size": FLAGS.batch_size,
                       "machine": machine(), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    app.run(main)
