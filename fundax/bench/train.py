"""The train and eval step benchmarks: fundax, and the same network in PyTorch.

Every step is timed on a batch kept on the device (so the figure is the step, not
the input); :func:`loader_throughput` then feeds the same step from the real
pipeline to tell whether training is input-bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fundax import models, optimizer, parallel, trainer
from fundax.bench import timing
from fundax.data import pipeline


def random_batch(config: ml_collections.ConfigDict, *, seed: int = 0) -> dict[str, np.ndarray]:
    """A global batch of the train step's layout; the step's cost does not depend on pixel values."""
    rng = np.random.default_rng(seed)
    b, s = config.batch_size, config.image_size
    return {
        "image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
        "disc": np.tile(np.array([0.7 * s, 0.5 * s], np.float32), (b, 1)),
        "fovea": np.tile(np.array([0.45 * s, 0.52 * s], np.float32), (b, 1)),
        "region_bits": rng.integers(0, 256, (b,), dtype=np.int32),
        "label": rng.integers(0, 2, (b,)).astype(np.float32),
        "weight": np.ones((b,), np.float32),
        "guided": np.ones((b,), np.float32),  # every example with a regional cue, as the loader's batches say
    }


class Setup:
    """Mesh, model, optimiser, state and a device-resident batch for ``config``.

    The mesh spans ``devices``, by default every local device. ``initial``: the initial state
    on the host, when another Setup of the same config has it (:attr:`initial_state`).
    """

    def __init__(self, config: ml_collections.ConfigDict, devices: list[jax.Device] | None = None,
                 initial: trainer.TrainState | None = None):
        self.config = config
        self.mesh = parallel.make_mesh(jax.local_devices() if devices is None else devices)
        if config.batch_size % self.mesh.size:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {self.mesh.size} devices")
        self.model = models.create_model(config)
        self.tx = optimizer.make_optimizer(config)
        self.sharding = NamedSharding(self.mesh, P(parallel.AXIS))
        self.batch = pipeline.to_global(random_batch(config), self.sharding)
        self._train_steps: dict[bool, Any] = {}
        self._initial = initial

    def train_step(self, augment: bool = True) -> Any:
        """The compiled train step, with or without on-device augmentation; compiled once."""
        if augment not in self._train_steps:
            config = ml_collections.ConfigDict(self.config.to_dict())  # the config may be locked
            config.augment.enabled = augment
            step = trainer.make_train_step(self.model, self.tx, config, self.mesh)
            self._train_steps[augment] = step.lower(self.fresh_state(), self.batch).compile()
        return self._train_steps[augment]

    def fresh_state(self) -> trainer.TrainState:
        """The initial state, on the mesh; a new copy each call, as the train step donates it.

        Initialised once and copied from the host after: each initialisation compiles anew.
        """
        return jax.device_put(self.initial_state, NamedSharding(self.mesh, P()))

    @property
    def initial_state(self) -> trainer.TrainState:
        """The initial state on the host."""
        if self._initial is None:
            self._initial = jax.device_get(trainer.create_train_state(self.model, self.tx, self.config, self.mesh))
        return self._initial

    @property
    def per_device_batch(self) -> int:
        return self.config.batch_size // self.mesh.size


def time_train_step(setup: Setup, *, steps: int, repeats: int, augment: bool = True) -> dict[str, Any]:
    """Median ms/step and img/s of the full train step, and its FLOPs from XLA's cost analysis."""
    step = setup.train_step(augment)
    flops = timing.flops_per_step(step)
    holder = {"state": setup.fresh_state()}

    def run() -> Any:
        holder["state"], metrics = step(holder["state"], setup.batch)
        return metrics

    result = timing.summary(timing.timed_repeats(run, jax.block_until_ready, iterations=steps, repeats=repeats),
                            setup.config.batch_size)
    finite = bool(np.isfinite(float(run()["loss"])))
    result.update(augment=augment, finite_loss=finite,
                  gflops_per_image=None if flops is None else flops / setup.per_device_batch / 1e9)
    if flops is not None:
        result["tflops_per_device"] = flops / (result["ms_per_step"] / 1e3) / 1e12
    return result


def measure_train(setup: Setup, *, steps: int, repeats: int, without_augmentation: bool = True,
                  progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The train step's figures: FLOPs, the share of the device's matmul peak measured in the
    same run, peak memory, and (``without_augmentation``) the step's share spent augmenting.

    ``progress`` sees the figures after each measurement.
    """
    result: dict[str, Any] = {"devices": setup.mesh.size, "step": time_train_step(setup, steps=steps, repeats=repeats)}
    step = result["step"]
    if without_augmentation:
        if progress is not None:
            progress(result)
        plain = time_train_step(setup, steps=steps, repeats=repeats, augment=False)
        result.update(step_without_augmentation=plain,
                      augmentation_share=max(0.0, 1.0 - plain["ms_per_step"] / step["ms_per_step"]))
    # Before the matmul peak, whose square operands would otherwise set the high-water mark.
    result["peak_memory_bytes"], result["peak_memory_kind"] = timing.peak_memory_bytes()
    if progress is not None:
        progress(result)
    peak = result["matmul_peak"] = timing.matmul_peak_tflops(setup.config.dtype)
    if "tflops_per_device" in step:
        result["peak_share"] = step["tflops_per_device"] / peak["tflops"]
    if progress is not None:
        progress(result)
    result["forward_gflops_per_image"] = forward_gflops_per_image(setup)
    return result


def compare_torch(setup: Setup, *, steps: int, repeats: int, compiled: bool = True,
                  progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """fundax's train step against PyTorch's eager and (``compiled``) ``torch.compile`` step.

    ``progress`` sees the figures after each measurement, so a caller that stops waiting
    keeps those it has.
    """
    result: dict[str, Any] = {"devices": setup.mesh.size,
                              "fundax": time_train_step(setup, steps=steps, repeats=repeats), "torch": []}
    runs = [False, True] if compiled else [False]
    for compile_it in runs:
        if progress is not None:
            progress(result)
        try:
            variant = time_torch(setup, steps=steps, repeats=repeats, compiled=compile_it)
        except Exception as e:  # torch.compile fails on some platforms; say so, keep the eager figure
            if not compile_it:
                raise
            variant = {"variant": "torch.compile", "error": f"{type(e).__name__}: {str(e)[:300]}"}
        if "images_per_s" in variant:
            variant["fundax_ratio"] = result["fundax"]["images_per_s"] / variant["images_per_s"]
        result["torch"].append(variant)
    return result


def forward_gflops_per_image(setup: Setup) -> float | None:
    """Model GFLOPs per image of one forward pass (inference mode), from XLA's cost analysis."""
    variables = jax.eval_shape(lambda: setup.model.clone(axis_name=None).init(
        jax.random.key(0), np.zeros((1, setup.config.image_size, setup.config.image_size, 3), np.float32)))
    images = jax.ShapeDtypeStruct((1, setup.config.image_size, setup.config.image_size, 3), np.float32)
    apply = jax.jit(lambda v, x: setup.model.clone(axis_name=None).apply(v, x, train=False))
    flops = timing.flops_per_step(apply.lower(variables, images).compile())
    return None if flops is None else flops / 1e9


def time_eval_step(setup: Setup, *, steps: int, repeats: int) -> dict[str, Any]:
    """Median img/s of the eval step (no augmentation, activation maps and AIR terms out)."""
    step = trainer.make_eval_step(setup.model, setup.config, setup.mesh)
    state = setup.fresh_state()
    index = np.arange(setup.config.batch_size, dtype=np.int32)
    batch = dict(setup.batch, record_index=jax.device_put(index, setup.sharding))
    seconds = timing.timed_repeats(lambda: step(state, batch), jax.block_until_ready,
                                   iterations=steps, repeats=repeats)
    return timing.summary(seconds, setup.config.batch_size)


def loader_throughput(setup: Setup, source: Any, *, steps: int, repeats: int) -> dict[str, Any]:
    """img/s of the train step fed by the real host pipeline from prepared records."""
    config = setup.config
    step = setup.train_step()
    example = pipeline.FindingExample(config.finding, config.min_votes)
    stream = iter(pipeline.train_dataset(source, example, global_batch=config.batch_size, seed=config.seed,
                                         threads=config.loader_threads, prefetch_batches=config.prefetch_batches))
    holder = {"state": setup.fresh_state()}

    def run() -> Any:
        batch = pipeline.to_global(next(stream), setup.sharding)
        holder["state"], metrics = step(holder["state"], batch)
        return metrics

    return timing.summary(timing.timed_repeats(run, jax.block_until_ready, iterations=steps, repeats=repeats),
                          config.batch_size)


def first_step_seconds(config: ml_collections.ConfigDict, cache_dir: str) -> dict[str, float]:
    """In this process: build the state and run one train step with the cache in ``cache_dir``."""
    parallel.enable_compilation_cache(cache_dir)
    start = time.perf_counter()
    setup = Setup(config)
    state = setup.fresh_state()
    ready = time.perf_counter()
    step = trainer.make_train_step(setup.model, setup.tx, config, setup.mesh)
    jax.block_until_ready(step(state, setup.batch))
    end = time.perf_counter()
    return {"first_step_s": end - ready, "state_and_first_step_s": end - start}


def time_to_first_step(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """First train step in a new process, cold (empty compilation cache) and warm (the cache it filled)."""
    with tempfile.TemporaryDirectory(prefix="fundax_bench_cache_") as cache:
        config_file = os.path.join(cache, "bench_config.json")
        with open(config_file, "w") as f:
            f.write(config.to_json())
        runs = {}
        for name in ("cold", "warm"):
            done = subprocess.run([sys.executable, "-m", "fundax.bench", "first_step", f"--config_json={config_file}",
                                   f"--cache_dir={os.path.join(cache, 'compilation_cache')}"],
                                  capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(f"first-step run ({name}) failed: {done.stderr.strip()[-2000:]}")
            runs[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return runs


def time_torch(setup: Setup, *, steps: int, repeats: int, compiled: bool, augment: bool = True) -> dict[str, Any]:
    """The same network, loss and update in PyTorch (channels_last, autocast for bfloat16)."""
    import torch

    from fundax.bench import torch_guided_cnn as tg
    from fundax.regions import grid_mask, region_mask

    config = setup.config
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # cuDNN picks its fastest kernels for these fixed shapes, as a tuned PyTorch job would.
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(config.seed)
    model = tg.TorchGuidedCNN(setup.model).to(device).to(memory_format=torch.channels_last).train()
    host = random_batch(config)
    size, grid = config.image_size, models.activation_grid(config)
    map_size = grid.size
    geometry = list(zip(host["disc"], host["fovea"], host["region_bits"], strict=True))
    full = np.stack([region_mask(size, size, d, f, int(b)) for d, f, b in geometry])
    cells = np.stack([grid_mask(grid, d, f, int(b)) for d, f, b in geometry])
    batch = {"image": torch.from_numpy(host["image"]).permute(0, 3, 1, 2).contiguous().to(device),
             "mask_full": torch.from_numpy(full)[:, None].to(device),
             "mask": torch.from_numpy(cells.astype(np.float32)).to(device),
             "label": torch.from_numpy(host["label"]).to(device), "weight": torch.from_numpy(host["weight"]).to(device)}
    step = tg.make_train_step(
        model, learning_rate=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay,
        guidance_weight=config.guidance_weight, epsilon=config.epsilon, map_size=map_size,
        bfloat16=config.dtype == "bfloat16", augmented=augment, compiled=compiled, seed=config.seed)

    def sync(loss: Any) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        float(loss.detach())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    sync(step(batch))  # compiles, when compiled
    first = time.perf_counter() - start
    result = timing.summary(timing.timed_repeats(lambda: step(batch), sync, iterations=steps, repeats=repeats),
                            config.batch_size)
    result.update(variant="torch.compile" if compiled else "eager", first_step_s=first, torch=torch.__version__,
                  threads=torch.get_num_threads(), finite_loss=bool(np.isfinite(float(step(batch).detach()))))
    if device.type == "cuda":
        result["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    return result
