"""The training loop: data, steps, validation, model selection, checkpoints and logs.

Running it again on the same workdir resumes at the latest checkpoint with the
saved parameters, optimiser, data-iterator and loop state.
"""

from __future__ import annotations

import json
import logging
import pathlib
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fundax import checkpoints, configs, losses, reliability, stall, trainer
from fundax.data import pipeline

log = logging.getLogger("fundax")

TRAIN_METRICS = ("loss", "bce", "guidance", "guidance_weight", "grad_norm", "nonfinite")
NO_STEP = 2**31 - 1


class MetricWriter:
    """``metrics.jsonl`` and TensorBoard event files in the workdir (process 0 only)."""

    def __init__(self, workdir: pathlib.Path, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        if not self.enabled:
            return
        truncate_metrics(self.path, resume_step)
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"{split}/{name}", value, step)

    def note(self, step: int, kind: str, message: str) -> None:
        """A line of text in metrics.jsonl (not TensorBoard), e.g. the stall detector's."""
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "split": kind, "message": message}) + "\n")

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.enabled:
            self.tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()


def truncate_metrics(path: pathlib.Path, last_step: int) -> None:
    """Keep the entries up to ``last_step``: a resumed run writes the later ones again.

    A line cut short by a killed process is dropped with them.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry["step"] <= last_step:
            kept.append(line + "\n")
    partial = path.with_suffix(".jsonl.tmp")
    partial.write_text("".join(kept), encoding="utf-8")
    partial.replace(path)


def check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Errors a user can fix by changing one config value, each named."""
    problems = []
    if config.batch_size <= 0 or config.batch_size % num_devices:
        problems.append(f"batch_size {config.batch_size} must be a positive multiple of the {num_devices} devices")
    for key in ("num_train_steps", "eval_every_steps", "log_every_steps", "checkpoints_to_keep", "image_size"):
        if config[key] <= 0:
            problems.append(f"{key} must be positive, got {config[key]}")
    if config.eval_every_steps > 0 and config.log_every_steps > 0 and config.eval_every_steps % config.log_every_steps:
        problems.append(f"eval_every_steps {config.eval_every_steps} must be a multiple of "
                        f"log_every_steps {config.log_every_steps}")
    try:
        trainer.check_model(config)
    except ValueError as e:
        problems.append(str(e))
    if config.guidance_weight < 0:
        problems.append(f"guidance_weight must be >= 0, got {config.guidance_weight}")
    for key in ("guidance_delay_steps", "guidance_ramp_steps", "warmup_steps"):
        if config[key] < 0:
            problems.append(f"{key} must be >= 0, got {config[key]}")
    if not 0 <= config.guidance_start_bce < 1:
        problems.append(f"guidance_start_bce must lie in [0, 1) (0: no gate), got {config.guidance_start_bce}")
    if config.guidance_form not in losses.GUIDANCE_FORMS:
        problems.append(f"guidance_form must be one of {', '.join(map(repr, losses.GUIDANCE_FORMS))}, "
                        f"got {config.guidance_form!r}")
    if config.selection_metric not in checkpoints.SELECTION_METRICS:
        problems.append(f"selection_metric must be one of {', '.join(map(repr, checkpoints.SELECTION_METRICS))}, "
                        f"got {config.selection_metric!r}")
    if config.guidance_delay_steps + config.guidance_ramp_steps > config.num_train_steps:
        problems.append(f"the guidance warm-up (guidance_delay_steps + guidance_ramp_steps = "
                        f"{config.guidance_delay_steps + config.guidance_ramp_steps}) must end by num_train_steps "
                        f"{config.num_train_steps}, since only checkpoints after it are selected: shorten it, or set "
                        "both and guidance_start_bce to 0 for lambda = 1 from the first step (the paper's setting)")
    if config.stall_patience < 1:
        problems.append(f"stall_patience must be at least 1, got {config.stall_patience}")
    if config.learning_rate <= 0:
        problems.append(f"learning_rate must be positive, got {config.learning_rate}")
    if config.lr_plateau_patience < 1:
        problems.append(f"lr_plateau_patience must be at least 1, got {config.lr_plateau_patience}")
    if not 0 < config.lr_plateau_factor <= 1:
        problems.append(f"lr_plateau_factor must lie in (0, 1], got {config.lr_plateau_factor}")
    if not 0 <= config.min_learning_rate <= config.learning_rate:
        problems.append(f"min_learning_rate must lie in [0, learning_rate], got {config.min_learning_rate}")
    if problems:
        raise ValueError("bad config: " + "; ".join(problems))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       data_dir: str | pathlib.Path, show_progress: bool = True,
                       allow_config_change: bool = False) -> dict[str, Any]:
    """Train ``config.finding`` in ``workdir``, resuming there if it holds a checkpoint.

    A resume whose config differs from the run's ``config.json`` in a key that changes what is
    learnt (:func:`fundax.configs.resume_changes`) raises :class:`ConfigChangeError`, unless
    ``allow_config_change``: then the change is recorded in ``config_changes.jsonl`` and
    ``metrics.jsonl``.

    Raises :class:`reliability.Preempted` after saving when a stop signal arrives,
    :class:`reliability.NonFiniteError` on a NaN/Inf step (unless skipped),
    :class:`reliability.WorkdirError` when the workdir is busy or unwritable, and
    :class:`checkpoints.CheckpointWriteError` when a checkpoint cannot be written.
    """
    workdir = pathlib.Path(workdir)
    mesh = trainer.make_mesh()
    check_config(config, mesh.size)
    if jax.process_index() == 0:
        with reliability.WorkdirLock(workdir), reliability.StopSignals() as signals:
            return _train(config, workdir, data_dir, mesh, signals, show_progress, allow_config_change)
    with reliability.StopSignals() as signals:
        return _train(config, workdir, data_dir, mesh, signals, show_progress, allow_config_change)


class ConfigChangeError(ValueError):
    """A resume asked for a config that would make the run neither the old one nor a new one."""


def saved_config(workdir: pathlib.Path) -> dict[str, Any] | None:
    """The workdir's ``config.json``, or None when there is none."""
    path = workdir / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigChangeError(f"{path} is not the JSON fundax writes ({e}): move it away to resume") from None


def check_resume_config(saved: dict[str, Any] | None, config: ml_collections.ConfigDict, workdir: pathlib.Path,
                        step: int, allow: bool) -> dict[str, tuple]:
    """The result-changing differences from the saved config; raises unless ``allow``."""
    changes = configs.resume_changes(saved, config) if saved is not None else {}
    if changes and not allow:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
        raise ConfigChangeError(
            f"{workdir} holds a run to step {step} trained with another config ({listed}): resuming would make it "
            "neither run. Use another --workdir, or pass --allow_config_change to continue it with the change "
            "recorded in config_changes.jsonl")
    return changes


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path, data_dir: str | pathlib.Path,
           mesh: jax.sharding.Mesh, signals: reliability.StopSignals, show_progress: bool,
           allow_config_change: bool) -> dict[str, Any]:
    # Read before the restore, a collective, so that process 0 cannot have rewritten it yet.
    saved = saved_config(workdir)
    model = trainer.create_model(config)
    tx = trainer.make_optimizer(config)
    train_source = pipeline.open_split(config.dataset, data_dir, "train")
    val_source = pipeline.open_split(config.dataset, data_dir, "validation")
    pipeline.check_image_size(config.dataset, data_dir, config.image_size)
    example = pipeline.FindingExample(config.finding, config.min_votes)
    process, processes = jax.process_index(), jax.process_count()
    scored, scored_labels = pipeline.scored_indices(
        pipeline.open_split(config.dataset, data_dir, "train", decode_images=False), example)
    # The training BCE of a classifier that only knows the prevalence: the gate of the guidance warm-up.
    prior_bce = stall.prior_bce(float(scored_labels.mean()) if scored_labels.size else 0.0)
    data_iter = iter(pipeline.train_dataset(
        train_source, example, global_batch=config.batch_size, seed=config.seed, process_index=process,
        process_count=processes, threads=config.loader_threads, prefetch_batches=config.prefetch_batches,
        indices=scored))

    ckpts = checkpoints.Checkpoints(workdir, keep=config.checkpoints_to_keep, selection_metric=config.selection_metric)
    restored = ckpts.restore_latest_intact(
        trainer.abstract_train_state(model, tx, config, mesh), data_iter,
        check=lambda loop_json: checkpoints.check_compatible(loop_json, config.finding, config.model, workdir))
    if restored is not None:
        state, loop_json, resumed_at = restored
        changes = check_resume_config(saved, config, workdir, resumed_at, allow_config_change)
        loop = trainer.LoopState.from_json(loop_json)
        sums = {k: np.float32(v) for k, v in loop_json.get("train_sums", {}).items()}
        log.info("resuming %s from step %d (%s)", workdir, resumed_at, ckpts.directory)
    else:
        resumed_at = 0
        state = trainer.create_train_state(model, tx, config, mesh)
        start = trainer.initial_guidance_start(config)
        loop = trainer.LoopState(config.finding, config.model, float(config.learning_rate),
                                 guidance_start=start if start >= 0 else None)
        sums = {}
        changes = {}
    if process == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")

    writer = MetricWriter(workdir, resumed_at)
    if changes:
        text = "config changed on resume (--allow_config_change): " + "; ".join(
            f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
        log.warning("step %d: %s", resumed_at, text)
        writer.note(resumed_at, "config_change", text)
        if process == 0:
            with open(workdir / "config_changes.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": resumed_at, "changes": {k: list(v) for k, v in changes.items()},
                                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    train_step = trainer.make_train_step(model, tx, config, mesh)
    eval_step = trainer.make_eval_step(model, config, mesh)
    batch_sharding = NamedSharding(mesh, P(trainer.AXIS))
    step = int(state.step)
    validation: dict[str, float] = {}
    first_nonfinite = NO_STEP

    def check_finite() -> None:
        """Stop on a non-finite step before anything is logged or saved after it."""
        bad = int(first_nonfinite)
        if bad != NO_STEP and not config.skip_nonfinite_steps:
            raise reliability.NonFiniteError(
                f"non-finite loss or gradients at step {bad}; training stopped. The last good checkpoint "
                f"is step {ckpts.latest_step()} in {ckpts.directory}; set --config.skip_nonfinite_steps=True "
                "to skip such steps instead")

    def save(metrics: dict[str, float] | None = None) -> None:
        check_finite()
        ckpts.save(step, state, _loop_json(loop, config, sums), data_iter, metrics=metrics)

    from tqdm import tqdm

    bar = tqdm(total=config.num_train_steps, initial=step, unit="step", mininterval=2.0,
               disable=not show_progress or process != 0)
    tick, tick_step = time.perf_counter(), step
    started, first_step = tick, step + 1
    def start_guidance(why: str) -> None:
        nonlocal state
        loop.guidance_start = step
        state = trainer.set_guidance_start(state, step)
        text = (f"step {step}: {why}: lambda rises to {config.guidance_weight:g} over "
                f"{config.guidance_ramp_steps} steps")
        writer.note(step, "guidance", text)
        log.info("%s", text)

    try:
        while step < config.num_train_steps and not loop.stopped_early:
            if loop.guidance_start is None and step >= config.guidance_delay_steps:
                start_guidance(f"guidance_delay_steps {config.guidance_delay_steps} reached")
            batch = pipeline.to_global(next(data_iter), batch_sharding)
            state, metrics = train_step(state, batch)
            step += 1
            if step == first_step:
                jax.block_until_ready(metrics)
                log.info("first step done %.1f s after the loop started (compiling included)",
                         time.perf_counter() - started)
            for name in TRAIN_METRICS:
                sums[name] = sums.get(name, 0) + metrics[name]
            sums["count"] = sums.get("count", 0) + 1
            first_nonfinite = jnp.minimum(first_nonfinite, jnp.where(metrics["nonfinite"] > 0, step, NO_STEP))
            if step % config.log_every_steps == 0 or step == config.num_train_steps:
                check_finite()
                count = int(sums.pop("count"))
                means = {k: float(np.asarray(v)) / count for k, v in sums.items() if k != "nonfinite"}
                means["learning_rate"] = trainer.learning_rate(state, config)
                skipped = int(np.asarray(sums["nonfinite"]))
                if skipped:
                    means["skipped_steps"] = skipped
                    first = int(first_nonfinite)
                    log.warning("skipped %d step(s) with a non-finite loss or gradients%s", skipped,
                                f", the first at step {first}" if first != NO_STEP else "")
                    first_nonfinite = NO_STEP
                writer.write(step, "train", means)
                sums = {}
                gate = config.guidance_start_bce * prior_bce
                if loop.guidance_start is None and config.guidance_start_bce > 0 and means["bce"] <= gate:
                    start_guidance(f"the classifier has learnt (training BCE {means['bce']:.3f} <= "
                                   f"guidance_start_bce x {prior_bce:.3f}, the BCE of the prevalence alone)")
                now = time.perf_counter()
                images_per_s = (step - tick_step) * config.batch_size / max(now - tick, 1e-9)
                writer.scalar("train/images_per_s", images_per_s, step)
                bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{images_per_s:.1f}")
                tick, tick_step = now, step
            if step % config.eval_every_steps == 0 or step == config.num_train_steps:
                check_finite()
                outputs = trainer.gather_eval(eval_step, state, pipeline.eval_batches(
                    val_source, example, global_batch=config.batch_size, process_index=process,
                    process_count=processes, threads=config.loader_threads,
                    prefetch_batches=config.prefetch_batches), batch_sharding)
                validation = trainer.validation_metrics(outputs, config.guidance_weight, config.epsilon)
                before = loop.learning_rate
                # During the guidance warm-up the network is not yet the model eq. 3 trains: it is not
                # selected, and the validation numbers it moves do not lower the learning rate.
                start = loop.guidance_start
                selectable = start is not None and step >= start + config.guidance_ramp_steps
                if selectable:
                    loop.observe(step, checkpoints.selection_score(validation, config.selection_metric), config)
                if loop.learning_rate != before:
                    state = trainer.set_learning_rate(state, loop.learning_rate)
                    log.info("step %d: %s stagnates, learning rate %.3g -> %.3g",
                             step, config.selection_metric, before, loop.learning_rate)
                stalled = loop.observe_floor(stall.at_floor(validation), config)
                writer.write(step, "validation", {**validation, "stalled": int(stalled),
                                                  "learning_rate": trainer.learning_rate(state, config)})
                if stalled:
                    advice = stall.message(step, validation, loop.evals_at_floor)
                    writer.note(step, "stall", advice)
                    log.warning("%s", advice)
                kept = {k: validation[k] for k in checkpoints.SELECTION_METRICS if k in validation}
                save(kept if selectable else None)
                if process == 0:
                    bar.write(_validation_line(step, validation))
            elif config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
                save()
            bar.update(1)
            signum = signals.should_stop(step)
            if signum is not None:
                if ckpts.latest_step() != step:
                    save()
                ckpts.close()
                log.warning("stopped by %s at step %d: checkpoint saved in %s; run the same command to resume",
                            signal.Signals(signum).name, step, ckpts.directory)
                raise reliability.Preempted(signum, step)
        check_finite()
    finally:
        bar.close()
        ckpts.close()
        writer.close()
    if loop.stopped_early:
        log.info("early stop at step %d: no better %s for %d evaluations",
                 step, config.selection_metric, config.early_stopping_patience)
    return {"step": step, "best_step": loop.best_step, "selection_metric": config.selection_metric,
            "best_score": loop.best_score, "evals_at_floor": loop.evals_at_floor,
            "stopped_early": loop.stopped_early, "checkpoints": str(ckpts.directory),
            "metrics": str(workdir.absolute() / "metrics.jsonl"),
            "tensorboard": str(workdir.absolute() / "tensorboard"),
            **validation}


def _loop_json(loop: trainer.LoopState, config: ml_collections.ConfigDict, sums: dict[str, Any]) -> dict[str, Any]:
    # Partial train-metric sums travel with the checkpoint so a resumed run logs the same means.
    return loop.as_json(config) | {"train_sums": {k: float(np.asarray(v)) for k, v in sums.items()}}


def _validation_line(step: int, v: dict[str, float]) -> str:
    auroc = f", AUROC {v['val_auroc']:.4f}" if "val_auroc" in v else ""
    return f"step {step}: validation loss {v['val_loss']:.4f} (BCE {v['val_bce']:.4f}, " \
           f"guidance {v['val_guidance']:.4f}){auroc} on {v['val_examples']} examples"
