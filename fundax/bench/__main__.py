"""Benchmarks: medians of repeated timed runs after a warm-up, as a table and JSON.

    python -m fundax.bench train [--config=FILE] [--config.KEY=VALUE] [--steps=10] [--repeats=5]
        [--data_dir=DIR] [--first_step] [--json_out=FILE]
    python -m fundax.bench torch [same flags] [--nocompile]
    python -m fundax.bench eval  [same flags]
    python -m fundax.bench input --data_dir=DIR [--threads=1,2,4] [--batch_size=32] [--batches=20]
        [--stream=eval]
    python -m fundax.bench trace --trace_dir=WORKDIR/profile [--top=20]

``train``: the full train step (on-device augmentation, forward, both losses,
backward, update) on a batch kept on the device: ms/step, img/s, GFLOPs per image
from XLA's cost analysis, achieved TFLOP/s against the device's peak measured in the
same run (a large matmul in the config's dtype), peak memory, the share of the step
spent augmenting (the step with and without it); ``--first_step`` adds the time to
the first step in a new process, cold and with a warm compilation cache;
``--data_dir`` adds the step fed by the real loader (is training input-bound?).
``torch``: the same network, widths, losses, augmentation and optimiser in PyTorch
(``pip install 'fundax[bench]'``), eager and ``torch.compile``, against fundax's step
on one device with the same global batch, in the same run. ``eval``: evaluation img/s.
``input``: the host pipeline by thread count. ``trace``: where the time of train steps
traced with ``--config.profile_steps`` went, by operation (:mod:`fundax.bench.trace`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from absl import flags

from fundax import cli, configs
from fundax.bench.targets import (
    TARGET_AUGMENT_SHARE,
    TARGET_COMPILE_RATIO,
    TARGET_EAGER_RATIO,
    TARGET_INPUT_PER_CORE,
    TARGET_PEAK_SHARE,
    TARGET_WARM_FIRST_STEP_S,
)

FLAGS = flags.FLAGS
configs.define_config_flag("Model and step config (train, torch, eval).")
flags.declare_key_flag("config")  # listed by --help with this module's own flags
flags.DEFINE_integer("steps", 10, "Timed steps a run (train, torch, eval).")
flags.DEFINE_integer("repeats", 5, "Timed runs; the median is reported.")
flags.DEFINE_bool("first_step", False, "train: also time the first step in a new process, cold and warm.")
flags.DEFINE_bool("compile", True, "torch: also time torch.compile.")
flags.DEFINE_string("data_dir", None, "input: the prepared dataset; train: also feed the step from it.")
flags.DEFINE_string("dataset", "fundus_findings/synthetic", "TFDS name/config of --data_dir.")
flags.DEFINE_string("finding", "macular_hole", "input: the finding whose labels are picked.")
flags.DEFINE_list("threads", ["1", "2"], "input: loader thread counts to measure.")
flags.DEFINE_integer("batch_size", 32, "input: images a batch.")
flags.DEFINE_integer("batches", 20, "input: timed batches a run.")
flags.DEFINE_integer("warmup_batches", 2, "input: untimed batches first.")
flags.DEFINE_enum("stream", "train", ["train", "eval"],
                  "input: the training stream (shuffled, endless) or evaluation's (every record once, in order).")
flags.DEFINE_string("trace_dir", None, "trace: a run's profile folder (WORKDIR/profile).")
flags.DEFINE_integer("top", 20, "trace: the operations listed.")
flags.DEFINE_string("json_out", None, "Also write the results here as JSON.")
flags.DEFINE_string("config_json", None, "first_step (internal): the config as JSON.")
flags.DEFINE_string("cache_dir", None, "first_step (internal): the compilation cache.")

MODES = ("train", "torch", "eval", "input", "trace")
"""The benchmarks ``python -m fundax.bench MODE`` runs."""

COMMANDS = (*MODES, "first_step")
"""The modes and the one ``--first_step`` runs in a new process of its own."""


def _describe(config: Any, devices: int, backend: str) -> str:
    return (f"{config.finding}, {config.image_size} px, global batch {config.batch_size} on {devices} {backend} "
            f"device(s), {config.dtype}; median of {FLAGS.repeats} runs of {FLAGS.steps} steps")


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def run_train(config: Any) -> dict[str, Any]:
    import jax

    from fundax.bench import train as tb
    from fundax.data import pipeline

    setup = tb.Setup(config)
    result: dict[str, Any] = {"benchmark": "train", "config": config.to_dict(),
                              **tb.measure_train(setup, steps=FLAGS.steps, repeats=FLAGS.repeats)}
    step, plain, peak = result["step"], result["step_without_augmentation"], result["matmul_peak"]
    memory, memory_kind = result["peak_memory_bytes"], result["peak_memory_kind"]
    if FLAGS.first_step:
        result["first_step"] = tb.time_to_first_step(config)
    if FLAGS.data_dir:
        source = pipeline.open_split(FLAGS.dataset, FLAGS.data_dir, "train")
        pipeline.check_image_size(FLAGS.dataset, FLAGS.data_dir, config.image_size)
        loader = tb.loader_throughput(setup, source, steps=FLAGS.steps, repeats=FLAGS.repeats)
        result["loader"] = loader
        result["input_bound"] = loader["images_per_s"] < 0.95 * step["images_per_s"]

    print(f"fundax train step: {_describe(config, setup.mesh.size, jax.default_backend())}")
    print(f"  {step['ms_per_step']:.2f} ms/step, {step['images_per_s']:.1f} img/s "
          f"(without augmentation {plain['ms_per_step']:.2f} ms/step)")
    fwd = result["forward_gflops_per_image"]
    if step["gflops_per_image"] is not None:
        print(f"  {fwd:.3f} GFLOP/image forward, {step['gflops_per_image']:.3f} GFLOP/image a train step; "
              f"{step['tflops_per_device']:.3f} TFLOP/s a device = {100 * result['peak_share']:.1f}% of the "
              f"measured {config.dtype} matmul peak {peak['tflops']:.3f} TFLOP/s "
              f"(target >= {100 * TARGET_PEAK_SHARE:.0f}%: {_verdict(result['peak_share'] >= TARGET_PEAK_SHARE)})")
    print(f"  augmentation {100 * result['augmentation_share']:.1f}% of the step "
          f"(target <= {100 * TARGET_AUGMENT_SHARE:.0f}%: "
          f"{_verdict(result['augmentation_share'] <= TARGET_AUGMENT_SHARE)})")
    print(f"  peak memory {memory / 2**20:.0f} MiB ({memory_kind})")
    if "first_step" in result:
        cold, warm = (result["first_step"][k]["first_step_s"] for k in ("cold", "warm"))
        print(f"  first step in a new process: {cold:.2f} s cold, {warm:.2f} s with a warm cache "
              f"(target <= {TARGET_WARM_FIRST_STEP_S:.0f} s: {_verdict(warm <= TARGET_WARM_FIRST_STEP_S)})")
    if "loader" in result:
        print(f"  fed by the real loader ({config.loader_threads} threads): {result['loader']['images_per_s']:.1f} "
              f"img/s vs {step['images_per_s']:.1f} on a device batch: "
              f"{'input-bound' if result['input_bound'] else 'not input-bound'}")
    return result


def run_torch(config: Any) -> dict[str, Any]:
    import jax

    from fundax.bench import train as tb

    if config.model != "guided_cnn":
        raise ValueError(f"the PyTorch twin is the guided CNN; --config.model={config.model} has none")
    # PyTorch runs the global batch on one device, so fundax does too: a like-for-like ratio.
    setup = tb.Setup(config, devices=jax.local_devices()[:1])
    comparison = tb.compare_torch(setup, steps=FLAGS.steps, repeats=FLAGS.repeats, compiled=FLAGS.compile)
    fundax_step, variants = comparison["fundax"], comparison["torch"]
    accelerator = jax.default_backend() != "cpu"
    print(f"train step, fundax vs PyTorch: {_describe(config, setup.mesh.size, jax.default_backend())}")
    print(f"  {'':<16}{'ms/step':>9}{'img/s':>9}{'fundax ×':>10}")
    print(f"  {'fundax':<16}{fundax_step['ms_per_step']:>9.2f}{fundax_step['images_per_s']:>9.1f}{'':>10}")
    for v in variants:
        name = f"torch {v['variant']}"
        if "error" in v:
            print(f"  {name:<16} failed: {v['error']}")
            continue
        target = TARGET_EAGER_RATIO["accelerator" if accelerator else "cpu"] if v["variant"] == "eager" \
            else TARGET_COMPILE_RATIO
        applies = accelerator or v["variant"] == "eager"
        note = f"  target >= {target}: {_verdict(v['fundax_ratio'] >= target)}" if applies else ""
        print(f"  {name:<16}{v['ms_per_step']:>9.2f}{v['images_per_s']:>9.1f}{v['fundax_ratio']:>10.2f}{note}")
    return {"benchmark": "torch", "config": config.to_dict(), "devices": setup.mesh.size,
            "fundax": fundax_step, "torch": variants}


def run_eval(config: Any) -> dict[str, Any]:
    import jax

    from fundax.bench import train as tb

    setup = tb.Setup(config)
    result = tb.time_eval_step(setup, steps=FLAGS.steps, repeats=FLAGS.repeats)
    print(f"fundax eval step: {_describe(config, setup.mesh.size, jax.default_backend())}")
    print(f"  {result['ms_per_step']:.2f} ms/batch, {result['images_per_s']:.1f} img/s")
    return {"benchmark": "eval", "config": config.to_dict(), "devices": setup.mesh.size, "eval": result}


def run_input() -> dict[str, Any]:
    from fundax.bench.input import input_throughput
    from fundax.data import pipeline

    if not FLAGS.data_dir:
        raise cli.UsageError("input needs --data_dir, a prepared dataset")
    source = pipeline.open_split(FLAGS.dataset, FLAGS.data_dir, "train")
    size = source[0]["image"].shape[0]
    results = [input_throughput(source, FLAGS.finding, int(t), FLAGS.batch_size, FLAGS.batches,
                                FLAGS.warmup_batches, FLAGS.repeats, stream=FLAGS.stream) for t in FLAGS.threads]
    print(f"host input pipeline ({FLAGS.stream} stream), {FLAGS.dataset} at {size} px, batch {FLAGS.batch_size}, "
          f"median of {FLAGS.repeats} runs of {FLAGS.batches} batches")
    print("threads  images/s  images/s per core  images per CPU-second")
    for r in results:
        print(f"{r['threads']:>7}  {r['images_per_s']:>8.1f}  {r['images_per_s_per_core']:>17.1f}  "
              f"{r['images_per_cpu_s']:>21.1f}")
    best = max(r["images_per_s_per_core"] for r in results)
    print(f"best {best:.1f} images/s per core (target >= {TARGET_INPUT_PER_CORE:.0f}: "
          f"{_verdict(best >= TARGET_INPUT_PER_CORE)})")
    return {"benchmark": "input", "stream": FLAGS.stream, "image_size_px": int(size), "batch_size": FLAGS.batch_size,
            "results": results}


def run_first_step() -> dict[str, Any]:
    import ml_collections

    from fundax.bench import train as tb

    with open(FLAGS.config_json) as f:
        config = ml_collections.ConfigDict(json.load(f))
    result = tb.first_step_seconds(config, FLAGS.cache_dir)
    print(json.dumps(result))
    return result


def run_trace() -> int:
    from fundax.bench import trace

    if not FLAGS.trace_dir:
        raise cli.UsageError("trace needs --trace_dir, the profile folder of a run traced with "
                             "--config.profile_steps=START,N")
    try:
        summary = trace.summarise(trace.latest_trace(FLAGS.trace_dir), FLAGS.top)
    except trace.TraceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(trace.table(summary))
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


def main(argv: list[str]) -> int:
    usage = f"python -m fundax.bench {{{','.join(MODES)}}} [flags]"
    if len(argv) < 2:
        raise cli.UsageError(f"give the benchmark to run: {usage}")
    if len(argv) > 2:
        raise cli.UsageError(f"give one benchmark, got {' '.join(argv[1:])}: {usage}")
    command = argv[1]
    if command not in COMMANDS:
        raise cli.UsageError(f"unknown benchmark {command!r}: {usage}")
    if FLAGS.steps < 1 or FLAGS.repeats < 1:
        raise cli.UsageError(f"--steps and --repeats must be >= 1, got {FLAGS.steps} and {FLAGS.repeats}")
    if command == "first_step":
        run_first_step()
        return 0
    if command == "trace":
        return run_trace()
    from fundax.bench import timing
    from fundax.data import pipeline

    try:
        # Checked whole and locked, as training does; the mesh (all devices, or one) checks the batch.
        config = configs.validate(FLAGS.config, 1)
        if command == "input":
            result = run_input()
        else:
            result = {"train": run_train, "torch": run_torch, "eval": run_eval}[command](config)
    except configs.ConfigError as e:
        cli.usage_exit(str(e))
    except (ValueError, pipeline.DatasetError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    result["machine"] = timing.machine()
    result["repeats"], result["steps"] = FLAGS.repeats, FLAGS.steps
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    cli.run(main)
