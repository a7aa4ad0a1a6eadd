"""What every benchmark shares: medians of timed repeats, the machine, the device's peak."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def timed_repeats(run: Callable[[], Any], sync: Callable[[Any], Any], *, iterations: int, repeats: int,
                  warmup: int = 1) -> list[float]:
    """Seconds per iteration of ``run``, one figure per repeat, after ``warmup`` untimed iterations.

    ``sync`` waits for what ``run`` returned (``jax.block_until_ready``, a CUDA sync),
    once at the end of each repeat, so the device's queue is drained inside the timing
    and the host never waits between iterations.
    """
    if iterations < 1 or repeats < 1:
        raise ValueError(f"iterations and repeats must be >= 1, got {iterations} and {repeats}")
    out = None
    for _ in range(warmup):
        out = run()
    sync(out)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            out = run()
        sync(out)
        seconds.append((time.perf_counter() - start) / iterations)
    return seconds


def summary(seconds_per_iteration: list[float], items_per_iteration: int) -> dict[str, Any]:
    """Median ms per iteration and items/s, with every repeat kept."""
    median = statistics.median(seconds_per_iteration)
    return {"ms_per_step": 1e3 * median, "images_per_s": items_per_iteration / median,
            "runs_ms": [1e3 * s for s in seconds_per_iteration]}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import flax
    import optax

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "cores": os.cpu_count(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__, "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.local_devices()]}


def matmul_peak_tflops(dtype: str, *, size: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """Measured peak of one device: TFLOP/s of a large square matmul in ``dtype``."""
    device = jax.local_devices()[0]
    if size is None:
        size = 2048 if device.platform == "cpu" else 8192
    a = jax.device_put(jnp.ones((size, size), dtype), device)
    b = jax.device_put(jnp.ones((size, size), dtype), device)
    matmul = jax.jit(jnp.matmul)
    iterations = 2 if device.platform == "cpu" else 20
    seconds = timed_repeats(lambda: matmul(a, b), jax.block_until_ready, iterations=iterations, repeats=repeats)
    return {"dtype": dtype, "size": size, "tflops": 2 * size**3 / statistics.median(seconds) / 1e12,
            "runs_tflops": [2 * size**3 / s / 1e12 for s in seconds]}


def peak_memory_bytes() -> tuple[int, str]:
    """Peak memory so far: the first device's allocator peak on accelerators, else the process RSS."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


def flops_per_step(compiled: Any) -> float | None:
    """FLOPs of one call of a compiled XLA program, per device, from XLA's cost analysis."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returned one dict per program
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops and flops > 0 else None
