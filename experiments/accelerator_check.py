"""The parts of the accelerator check, and its report; ``experiments/accelerator_check.sh`` runs them.

    python experiments/accelerator_check.py run OUT_DIR [--tiny]     # the parts OUT_DIR/parts lacks
    python experiments/accelerator_check.py crashed OUT_DIR --rc=N   # the part a dead run was in
    python experiments/accelerator_check.py report OUT_DIR           # accelerator_check.json and .md

Every part writes ``OUT_DIR/parts/NAME.json`` with a ``status``: ok, skipped (with the reason),
failed (with the error), timed_out (with what it had measured) or crashed. A part runs at
most ``cap_s`` seconds; past it, its figures so far are written and the run exits, so that the
next run (the shell script starts one) goes on with the parts after it. ``--tiny`` runs every
part at tiny sizes, on a CPU, in a minute or two on two cores: the check's own test.

Only the standard library at the top: ``crashed`` and ``report`` work when fundax does not import.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fundax.bench import targets  # noqa: E402

BUDGET_S = 480
CPU_DEVICES = 4  # simulated host devices: the CPU side of the agreement part is sharded too
FINDING = "macular_hole"


@dataclasses.dataclass(frozen=True)
class Sizes:
    image_size_px: int  # the benchmarks' (the paper's: 512)
    batch_size: int  # per device for the benchmarks, global elsewhere (the paper's: 32)
    steps: int  # timed steps a repeat
    repeats: int
    torch_compile: bool
    input_size_px: int
    input_images: int
    input_batches: int
    training_size_px: int
    training_images: int
    training_steps: int
    training_log_every: int
    agreement_size_px: int
    agreement_batch: int
    tiny_network: bool
    workers: int | None  # processes preparing the synthetic sets; None: every core


GPU = Sizes(image_size_px=512, batch_size=32, steps=10, repeats=3, torch_compile=True,
            input_size_px=512, input_images=256, input_batches=20,
            training_size_px=256, training_images=800, training_steps=300, training_log_every=25,
            agreement_size_px=256, agreement_batch=16, tiny_network=False, workers=None)
TINY = Sizes(image_size_px=32, batch_size=8, steps=2, repeats=2, torch_compile=False,
             input_size_px=32, input_images=16, input_batches=3,
             training_size_px=32, training_images=40, training_steps=6, training_log_every=2,
             agreement_size_px=32, agreement_batch=8, tiny_network=True, workers=1)

# name: (what it measures, seconds it may take on the GPU host). The order is the order they run.
PARTS = {
    "train_bfloat16": ("train step, paper config, bfloat16: TFLOP/s against the bf16 matmul peak", 70),
    "train_float32": ("train step, paper config, float32: TFLOP/s against the f32 matmul peak", 60),
    "torch": ("the PyTorch twin, eager and torch.compile, against fundax's step (bfloat16, one device)", 90),
    "eval": ("evaluation step, paper config, bfloat16", 25),
    "agreement": ("one sharded train step on the accelerator against the same step on CPU devices", 40),
    "input": ("host input pipeline at 512 px with every core (JPEG and PNG records)", 40),
    "training": ("a short guided training run, python -m fundax.train on synthetic 256-px data", 70),
}
TINY_CAP_S = 240  # a part of the dry run, on a busy 2-core machine


def paper_config(sizes: Sizes, dtype: str = "float32", *, image_size_px: int | None = None,
                 batch_size: int | None = None) -> Any:
    """experiments/configs/paper.py at these sizes; the tiny network for the dry run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper", ROOT / "experiments" / "configs" / "paper.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.finding, config.dtype = FINDING, dtype
    config.image_size = image_size_px or sizes.image_size_px
    config.batch_size = batch_size or sizes.batch_size
    config.loader_threads = os.cpu_count() or 1
    if sizes.tiny_network:
        config.guided_cnn.stem_width, config.guided_cnn.units_per_stage, config.guided_cnn.aspp_width = 4, (1, 1, 1), 4
    return config


@dataclasses.dataclass
class Part:
    """What a part sees: its sizes and folder, and where it leaves figures as it goes."""

    name: str
    sizes: Sizes
    out: pathlib.Path
    partial: dict[str, Any] = dataclasses.field(default_factory=dict)
    children: list[subprocess.Popen] = dataclasses.field(default_factory=list)  # ended with the part

    def progress(self, figures: dict[str, Any]) -> None:
        self.partial = json.loads(json.dumps(figures, default=str))

    @property
    def accelerator(self) -> bool:
        import jax

        return jax.default_backend() != "cpu"

    def devices(self) -> int:
        import jax

        return jax.local_device_count()


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def part_train(part: Part, dtype: str) -> dict[str, Any]:
    from fundax.bench import train as tb

    config = paper_config(part.sizes, dtype, batch_size=part.sizes.batch_size * part.devices())
    setup = tb.Setup(config)
    about = {"dtype": dtype, "image_size_px": config.image_size, "batch_size": config.batch_size}
    # The share spent augmenting is the training dtype's (bfloat16); float32 saves that compile.
    return about | tb.measure_train(setup, steps=part.sizes.steps, repeats=part.sizes.repeats,
                                    without_augmentation=dtype == "bfloat16",
                                    progress=lambda figures: part.progress(about | figures))


def part_torch(part: Part) -> dict[str, Any]:
    import jax

    try:
        import torch
    except ImportError as e:
        return skipped(f"PyTorch does not import here ({e})")
    if part.accelerator and not torch.cuda.is_available():
        return skipped(f"PyTorch {torch.__version__} sees no GPU here, jax does: no like-for-like comparison")
    from fundax.bench import train as tb

    config = paper_config(part.sizes, "bfloat16")
    setup = tb.Setup(config, devices=jax.local_devices()[:1])
    result = tb.compare_torch(setup, steps=part.sizes.steps, repeats=part.sizes.repeats,
                              compiled=part.sizes.torch_compile, progress=part.progress)
    if not part.sizes.torch_compile:
        result["torch"].append({"variant": "torch.compile", "skipped": "not timed at tiny sizes: its compile alone "
                                                                      "outlasts the dry run"})
    return {"dtype": "bfloat16", "image_size_px": config.image_size, "batch_size": config.batch_size,
            "torch_device": "cuda" if torch.cuda.is_available() else "cpu", **result}


def part_eval(part: Part) -> dict[str, Any]:
    from fundax.bench import train as tb

    config = paper_config(part.sizes, "bfloat16", batch_size=part.sizes.batch_size * part.devices())
    setup = tb.Setup(config)
    return {"dtype": "bfloat16", "image_size_px": config.image_size, "batch_size": config.batch_size,
            "devices": setup.mesh.size, **tb.time_eval_step(setup, steps=part.sizes.steps, repeats=part.sizes.repeats)}


def _max_abs(tree_a: Any, tree_b: Any) -> float:
    import jax
    import numpy as np

    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))),
                         tree_a, tree_b)
    return max(jax.tree.leaves(diffs), default=0.0)


def part_agreement(part: Part) -> dict[str, Any]:
    """One train step from the same state and batch, sharded over the accelerator's devices and over
    CPU devices; float32 at full matmul precision, so the two differ only by the order of sums."""
    import jax
    import numpy as np

    from fundax.bench import train as tb

    cpu = jax.devices("cpu")
    if part.accelerator:
        sides = {"accelerator": jax.local_devices(), "cpu": cpu}
        note = f"{len(jax.local_devices())} {jax.default_backend()} device(s) against {len(cpu)} CPU device(s)"
    else:
        sides = {"accelerator": cpu, "cpu": cpu[:1]}
        note = f"no accelerator: {len(cpu)} CPU devices against 1"
    size = part.sizes.agreement_size_px
    config = paper_config(part.sizes, "float32", image_size_px=size, batch_size=part.sizes.agreement_batch)
    results: dict[str, Any] = {}
    initial = None  # the accelerator's, so that both sides start from the same bits
    with jax.default_matmul_precision("highest"):
        for side, devices in sides.items():
            # As many devices as divide the batch: every one gets the same share.
            count = max(n for n in range(1, len(devices) + 1) if config.batch_size % n == 0)
            setup = tb.Setup(config, devices=devices[:count], initial=initial)
            initial = setup.initial_state
            new_state, metrics = setup.train_step()(setup.fresh_state(), setup.batch)
            results[side] = {"devices": setup.mesh.size, "before": initial.params,
                             "params": jax.device_get(new_state.params),
                             "batch_stats": jax.device_get(new_state.batch_stats),
                             "metrics": {k: float(v) for k, v in jax.device_get(metrics).items()}}
    a, b = results["accelerator"], results["cpu"]
    update = _max_abs(b["params"], b["before"])
    params = _max_abs(a["params"], b["params"])
    loss_diff = abs(a["metrics"]["loss"] - b["metrics"]["loss"])
    result = {
        "compared": note, "image_size_px": size, "batch_size": config.batch_size,
        "devices": {"accelerator": a["devices"], "cpu": b["devices"]},
        "loss": {"accelerator": a["metrics"]["loss"], "cpu": b["metrics"]["loss"], "abs_diff": loss_diff,
                 "rel_diff": loss_diff / max(abs(b["metrics"]["loss"]), 1e-12)},
        "grad_norm": {"accelerator": a["metrics"]["grad_norm"], "cpu": b["metrics"]["grad_norm"]},
        "params_max_abs_diff": params, "largest_update": update,
        "params_diff_over_update": params / max(update, 1e-30),
        "batch_stats_max_abs_diff": _max_abs(a["batch_stats"], b["batch_stats"]),
        "tolerance": {"loss_rel_diff": 1e-4, "params_diff_over_update": 1e-2},
    }
    result["agree"] = bool(result["loss"]["rel_diff"] <= 1e-4 and result["params_diff_over_update"] <= 1e-2
                           and np.isfinite(params))
    return result


def part_input(part: Part) -> dict[str, Any]:
    from fundax.bench.input import input_throughput
    from fundax.data import pipeline

    sizes, cores = part.sizes, os.cpu_count() or 1
    threads = sorted({1, cores})
    result: dict[str, Any] = {"image_size_px": sizes.input_size_px, "batch_size": 32, "cores": cores, "formats": {}}
    for image_format in ("jpeg", "png"):
        data_dir = part.out / "data" / f"input_{sizes.input_size_px}_{image_format}"
        prepared_s = prepare_synthetic(data_dir, sizes, sizes.input_size_px, sizes.input_images, 8, image_format)
        source = pipeline.open_split("fundus_findings/synthetic", data_dir, "train")
        runs = [input_throughput(source, FINDING, t, 32, sizes.input_batches, 2, sizes.repeats) for t in threads]
        result["formats"][image_format] = {"prepare_s": prepared_s, "by_threads": runs, "all_cores": runs[-1]}
        part.progress(result)
    return result


def prepare_synthetic(data_dir: pathlib.Path, sizes: Sizes, image_size_px: int, num_train: int, num_test: int,
                      image_format: str = "png") -> float:
    """The synthetic set, with every core (one process in the dry run); the seconds it took."""
    from fundax.data import preparation, synthetic

    start = time.perf_counter()
    preparation.prepare("synthetic", data_dir, image_size_px=image_size_px, image_format=image_format,
                        synthetic_config=synthetic.SyntheticConfig(num_train=num_train, num_test=num_test),
                        workers=sizes.workers, show_progress=False)
    return time.perf_counter() - start


def _train_lines(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [line for line in lines if line.get("split") == "train"]


def part_training(part: Part, cap_s: float) -> dict[str, Any]:
    """``python -m fundax.train`` as a user runs it; steps/s from when its train lines appear."""
    sizes = part.sizes
    workdir, data_dir = part.out / "training", part.out / "data" / "training"
    shutil.rmtree(workdir, ignore_errors=True)
    num_test = max(20, sizes.training_images // 8)
    # Prepared here, as fundax.train would on first use, so that its time is told apart.
    prepared_s = prepare_synthetic(data_dir, sizes, sizes.training_size_px, sizes.training_images, num_test)
    overrides = {
        "dataset": "fundus_findings/synthetic", "image_size": sizes.training_size_px, "batch_size": sizes.batch_size,
        "num_train_steps": sizes.training_steps, "eval_every_steps": sizes.training_steps,
        "log_every_steps": sizes.training_log_every, "loader_threads": os.cpu_count() or 1,
        # The paper's own setting: lambda = 1 from the first step, so the loss logged is one objective throughout.
        "warmup_steps": 0, "guidance_start_bce": 0, "guidance_delay_steps": 0, "guidance_ramp_steps": 0,
        "synthetic.num_train": sizes.training_images, "synthetic.num_test": num_test,
        "compilation_cache_dir": part.out / "jax_cache",
        # Two steps past the first (which compiles) traced by jax.profiler: where a step's time goes.
        "profile_steps": f"{min(2, sizes.training_steps - 2)},2",
    }
    if sizes.tiny_network:
        overrides |= {"guided_cnn.stem_width": 4, "guided_cnn.units_per_stage": "(1,1,1)", "guided_cnn.aspp_width": 4}
    command = [sys.executable, "-m", "fundax.train", f"--finding={FINDING}", f"--workdir={workdir}",
               f"--data_dir={data_dir}", f"--config={ROOT / 'experiments' / 'configs' / 'paper.py'}",
               *(f"--config.{k}={v}" for k, v in overrides.items())]
    from fundax import workdir as workdirs

    metrics = workdirs.Workdir(workdir).metrics_log
    seen: dict[int, float] = {}  # step: when its train line appeared
    start = time.perf_counter()
    with open(part.out / "training.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        part.children.append(process)
        while process.poll() is None and time.perf_counter() - start < cap_s - 5:
            for line in _train_lines(metrics):
                seen.setdefault(line["step"], time.perf_counter() - start)
            part.progress({"seconds_so_far": time.perf_counter() - start, "steps_seen": sorted(seen)})
            time.sleep(0.05)
        stopped = process.poll() is None
        if stopped:
            process.kill()
            process.wait()
    wall = time.perf_counter() - start
    lines = _train_lines(metrics)
    for line in lines:
        seen.setdefault(line["step"], wall)
    tail = (part.out / "training.log").read_text(errors="replace")[-1500:]
    if not lines or (process.returncode != 0 and not stopped):
        return {"status": "failed", "error": f"fundax.train exited with status {process.returncode}",
                "log_tail": tail, "command": command}
    first, last = lines[0], lines[-1]
    timed = last["step"] - first["step"]
    seconds = seen[last["step"]] - seen[first["step"]]
    steps_per_s = timed / seconds if timed > 0 and seconds > 0 else None
    return {
        **({"status": "timed_out", "error": f"stopped after {wall:.0f} s at step {last['step']}"} if stopped else {}),
        "image_size_px": sizes.training_size_px, "batch_size": sizes.batch_size, "steps": last["step"],
        "prepare_s": prepared_s, "wall_s": wall, "steps_per_s": steps_per_s,
        "images_per_s": None if steps_per_s is None else steps_per_s * sizes.batch_size,
        "timed_steps": [first["step"], last["step"]],
        "loss": {"first": first["loss"], "last": last["loss"]}, "bce": {"first": first["bce"], "last": last["bce"]},
        "guidance_weight": last["guidance_weight"], "loss_fell": last["loss"] < first["loss"],
        "profile": _profile_summary(workdirs.Workdir(workdir).profile_dir),
        "log_tail": tail[-400:],
    }


def _profile_summary(profile_dir: pathlib.Path) -> dict[str, Any]:
    """The trace of the training part, summarised (python -m fundax.bench trace), or why there is none."""
    from fundax.bench import trace

    try:
        summary = trace.summarise(trace.latest_trace(profile_dir), top=15)
    except trace.TraceError as e:
        return {"error": str(e)}
    return {"trace": summary["trace"], "by_kind_ms": summary["by_kind_ms"], "top": summary["rows"]}


def machine() -> dict[str, Any]:
    from fundax.bench import timing

    found = timing.machine()
    try:
        import torch

        found["torch"] = torch.__version__
        found["torch_cuda"] = torch.cuda.is_available()
    except ImportError:
        found["torch"] = None
    return found


def run(out: pathlib.Path, tiny: bool, cap_s: float | None = None) -> int:
    """The parts OUT/parts lacks, each stopped at its cap (``cap_s``: the same one for all)."""
    # Before jax starts, which reads them once; the training process inherits them.
    flags = os.environ.get("XLA_FLAGS", "").split()
    if not any("xla_force_host_platform_device_count" in f for f in flags):
        flags.append(f"--xla_force_host_platform_device_count={CPU_DEVICES}")
    if tiny:  # XLA:CPU compiles a train step ten times faster unoptimised; the dry run checks the plumbing
        flags.append("--xla_backend_optimization_level=0")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    parts_dir = out / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    if not (parts_dir / "machine.json").exists():
        try:
            found = machine()
        except Exception as e:  # the parts will say what is missing, each for itself
            found = {"error": f"{type(e).__name__}: {e}"}
        write(parts_dir / "machine.json", found)
    sizes = TINY if tiny else GPU
    for name, (_, part_cap_s) in PARTS.items():
        path = parts_dir / f"{name}.json"
        if path.exists():
            continue
        limit = cap_s or (TINY_CAP_S if tiny else part_cap_s)
        (parts_dir / "current").write_text(name)
        part = Part(name, sizes, out)
        started = time.perf_counter()

        def stop(part: Part = part, path: pathlib.Path = path, limit: float = limit) -> None:
            for child in part.children:
                child.kill()
            write(path, {"status": "timed_out", "seconds": limit, "error": f"still running after {limit:g} s",
                         "partial": part.partial})
            print(f"{part.name}: timed out after {limit:g} s", flush=True)
            os._exit(124)

        watchdog = threading.Timer(limit, stop)
        watchdog.daemon = True
        watchdog.start()
        print(f"{name}: {PARTS[name][0]}", flush=True)
        try:
            result = run_part(part, limit)
        except Exception as e:
            result = {"status": "failed", "error": f"{type(e).__name__}: {str(e)[:1000]}",
                      "traceback": traceback.format_exc()[-3000:], "partial": part.partial}
        watchdog.cancel()
        result = {"status": "ok", **result, "seconds": time.perf_counter() - started}
        write(path, result)
        print(f"{name}: {result['status']} in {result['seconds']:.1f} s", flush=True)
    (parts_dir / "current").unlink(missing_ok=True)
    return 0


def run_part(part: Part, cap_s: float) -> dict[str, Any]:
    functions: dict[str, Callable[[], dict[str, Any]]] = {
        "train_bfloat16": lambda: part_train(part, "bfloat16"), "train_float32": lambda: part_train(part, "float32"),
        "torch": lambda: part_torch(part), "eval": lambda: part_eval(part), "agreement": lambda: part_agreement(part),
        "input": lambda: part_input(part), "training": lambda: part_training(part, cap_s)}
    return functions[part.name]()


def crashed(out: pathlib.Path, rc: int, log: pathlib.Path | None) -> int:
    """The run died inside a part without writing it (a signal, the whole check's time limit): say so.

    Returns 1 when it died outside every part: another run would die the same way.
    """
    current = out / "parts" / "current"
    if not current.exists():
        return 1
    name = current.read_text().strip()
    path = out / "parts" / f"{name}.json"
    if not path.exists():
        tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
        why = "the check's time budget ran out" if rc in (124, 137) else f"the run exited with status {rc}"
        write(path, {"status": "crashed", "error": f"{why} during this part", "exit_status": rc, "log_tail": tail})
    current.unlink()
    return 0


def record_install(out: pathlib.Path, args: argparse.Namespace) -> int:
    """The shell's install step, as a part."""
    log = pathlib.Path(args.log) if args.log else None
    tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    if args.wheelhouse is None:
        result = skipped(args.reason or "no wheelhouse")
    else:
        manifest = json.loads((pathlib.Path(args.wheelhouse) / "manifest.json").read_text(encoding="utf-8")) \
            if (pathlib.Path(args.wheelhouse) / "manifest.json").exists() else {}
        result = {"status": "ok" if args.rc == 0 else "failed", "wheelhouse": args.wheelhouse,
                  "target": args.target, "wheels": len(manifest.get("wheels", [])),
                  "wheelhouse_bytes": manifest.get("total_bytes"), "exit_status": args.rc, "log_tail": tail}
    result["seconds"] = args.seconds
    (out / "parts").mkdir(parents=True, exist_ok=True)
    write(out / "parts" / "install.json", result)
    return 0


def write(path: pathlib.Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- the report ----------------------------------------------------------------------------------


def _target(judge: bool, ok: bool, target: str) -> str:
    """A target's verdict, on an accelerator at the check's sizes; elsewhere the figure alone."""
    return f" (target {target}: {'met' if ok else '**missed**'})" if judge else ""


def summary(name: str, r: dict[str, Any], judge: bool) -> str:
    """The figures of one part, a line for the Markdown table; ``judge``: say which targets are met."""
    if name == "install":
        return f"{r['wheels']} wheels ({(r.get('wheelhouse_bytes') or 0) / 1e6:.1f} MB) into {r['target']}"
    if name.startswith("train_"):
        step = r["step"]
        line = (f"{step['ms_per_step']:.2f} ms/step, {step['images_per_s']:.0f} img/s "
                f"({r['image_size_px']} px, batch {r['batch_size']} on {r['devices']} device(s))")
        if "peak_share" in r:
            share = r["peak_share"]
            line += (f"; {step['tflops_per_device']:.3g} TFLOP/s a device = {100 * share:.1f}% of the measured "
                     f"{r['matmul_peak']['tflops']:.3g} TFLOP/s {r['dtype']} matmul peak")
            if name == "train_bfloat16":
                line += _target(judge, share >= targets.TARGET_PEAK_SHARE, f"≥ {100 * targets.TARGET_PEAK_SHARE:.0f}%")
        if "augmentation_share" in r:
            line += f"; augmentation {100 * r['augmentation_share']:.1f}% of the step"
        return line
    if name == "torch":
        parts = [f"fundax {r['fundax']['images_per_s']:.0f} img/s"]
        for v in r["torch"]:
            if "images_per_s" in v:
                target = (targets.TARGET_EAGER_RATIO["accelerator"] if v["variant"] == "eager"
                          else targets.TARGET_COMPILE_RATIO)
                parts.append(f"{v['variant']} {v['images_per_s']:.0f} img/s, fundax × {v['fundax_ratio']:.2f}"
                             + _target(judge, v["fundax_ratio"] >= target, f"≥ {target}"))
            else:
                parts.append(f"{v['variant']}: {v.get('error') or v.get('skipped')}")
        return "; ".join(parts) + f" (PyTorch on {r.get('torch_device', '?')})"
    if name == "eval":
        return f"{r['images_per_s']:.0f} img/s ({r['ms_per_step']:.2f} ms a batch of {r['batch_size']})"
    if name == "agreement":
        return (f"{r['compared']}: loss {r['loss']['accelerator']:.6f} vs {r['loss']['cpu']:.6f}; parameters differ "
                f"by at most {r['params_max_abs_diff']:.2e}, {r['params_diff_over_update']:.1e} of the step's largest "
                f"update: {'agree' if r['agree'] else '**disagree**'}")
    if name == "input":
        parts = []
        for image_format, f in r["formats"].items():
            best, one = f["all_cores"], f["by_threads"][0]
            line = (f"{image_format}: {best['images_per_s']:.0f} img/s with {best['threads']} threads, "
                    f"{one['images_per_s']:.0f} with one")
            if image_format == "jpeg":
                line += _target(judge, one["images_per_s"] >= targets.TARGET_INPUT_PER_CORE,
                                f"≥ {targets.TARGET_INPUT_PER_CORE:.0f} a core")
            parts.append(line)
        return f"{r['image_size_px']} px, batch {r['batch_size']}: " + "; ".join(parts)
    if name == "training":
        rate = "n/a" if r["steps_per_s"] is None else f"{r['steps_per_s']:.1f} steps/s ({r['images_per_s']:.0f} img/s)"
        return (f"{r['steps']} steps at {r['image_size_px']} px, batch {r['batch_size']}: {rate} over steps "
                f"{r['timed_steps'][0]}–{r['timed_steps'][1]}; loss {r['loss']['first']:.4f} → {r['loss']['last']:.4f} "
                f"({'fell' if r['loss_fell'] else '**did not fall**'}), BCE {r['bce']['first']:.4f} → "
                f"{r['bce']['last']:.4f}; {r['wall_s']:.0f} s in all" + _profile_line(r.get("profile")))
    return ""


def _profile_line(profile: dict[str, Any] | None) -> str:
    """The trace of two training steps, by kind, and its largest operation."""
    if not profile or "by_kind_ms" not in profile:
        return f"; no profile ({profile.get('error')})" if profile else ""
    total = sum(profile["by_kind_ms"].values()) or 1.0
    kinds = ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in profile["by_kind_ms"].items() if v)
    top = profile["top"][0] if profile["top"] else None
    return (f"; profile of 2 steps: {kinds}" + (f", largest {top['operation'][:40]} ({top['kind']}, "
                                                f"{top['total_ms']:.1f} ms)" if top else ""))


def _figures(name: str, r: dict[str, Any], judge: bool) -> str:
    """The summary of a part that ran; what went wrong, with the figures it had, of one that did not."""
    if r["status"] == "ok":
        figures = r
        told = ""
    else:
        figures = r.get("partial") or (r if r["status"] == "timed_out" else {})
        told = str(r.get("reason") or r.get("error") or "")
    try:
        shown = summary(name, figures, judge) if figures else ""
    except (KeyError, TypeError, IndexError):  # a part stopped before it had the figures the line wants
        shown = ""
    if r["status"] == "ok" and not shown:
        shown = "(figures incomplete)"
    return "; so far: ".join(filter(None, [told, shown]))


def report(out: pathlib.Path, started: float | None, tiny: bool) -> int:
    parts_dir = out / "parts"
    found = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in parts_dir.glob("*.json")} \
        if parts_dir.exists() else {}
    info = found.pop("machine", {})
    accelerator = info.get("backend", "cpu") != "cpu"
    parts = {}
    for name in ("install", *PARTS):
        parts[name] = found.get(name) or {"status": "not_run", "reason": "not reached before the check ended (its "
                                          "time budget, or an error outside the parts: see accelerator_check.log)"}
    elapsed = None if started is None else time.time() - started
    result = {"check": "fundax accelerator check", "tiny": tiny,
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "budget_s": BUDGET_S, "elapsed_s": elapsed, "machine": info, "parts": parts}
    write(out / "accelerator_check.json", result)

    devices = ", ".join(sorted(set(info.get("devices", [])))) or "unknown"
    lines = [f"# fundax accelerator check{' (tiny dry run)' if tiny else ''}", "",
             f"{result['date']}; {info.get('backend', '?')} backend, {len(info.get('devices', []))} device(s) "
             f"({devices}), {info.get('cores', '?')} host cores; Python {info.get('python', '?')}, "
             f"jax {info.get('jax', '?')}, flax {info.get('flax', '?')}, PyTorch {info.get('torch') or 'absent'}"
             + (f"; {elapsed:.0f} s of the {BUDGET_S} s budget" if elapsed is not None else ""), "",
             "| part | status | figures | s |", "|---|---|---|---|"]
    for name, r in parts.items():
        seconds = f"{r['seconds']:.0f}" if isinstance(r.get("seconds"), (int, float)) else ""
        figures = _figures(name, r, judge=accelerator and not tiny).replace("|", "/")
        lines.append(f"| {name} | {r['status']} | {figures} | {seconds} |")
    (out / "accelerator_check.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    r = commands.add_parser("run")
    r.add_argument("out")
    r.add_argument("--tiny", action="store_true")
    r.add_argument("--cap-s", type=float, help="stop every part after this many seconds (default: its own cap)")
    c = commands.add_parser("crashed")
    c.add_argument("out")
    c.add_argument("--rc", type=int, required=True)
    c.add_argument("--log")
    i = commands.add_parser("install")
    i.add_argument("out")
    i.add_argument("--wheelhouse")
    i.add_argument("--target")
    i.add_argument("--rc", type=int, default=0)
    i.add_argument("--seconds", type=float, default=0.0)
    i.add_argument("--log")
    i.add_argument("--reason")
    p = commands.add_parser("report")
    p.add_argument("out")
    p.add_argument("--started", type=float, help="when the check started (seconds since the epoch)")
    p.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    if args.command == "run":
        return run(out, args.tiny, args.cap_s)
    if args.command == "crashed":
        return crashed(out, args.rc, pathlib.Path(args.log) if args.log else None)
    if args.command == "install":
        return record_install(out, args)
    return report(out, args.started, args.tiny)


if __name__ == "__main__":
    sys.exit(main())
