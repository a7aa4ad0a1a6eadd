"""The training loop: data, steps, validation, model selection, checkpoints and logs.

Running it again on the same workdir resumes at the latest checkpoint with the
saved parameters, optimiser, data-iterator and loop state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fundax import checkpoints, configs, evaluation, finetune, metrics, models, optimizer, provenance, reliability
from fundax import parallel, stall, storage, trainer
from fundax import workdir as workdirs
from fundax.data import pipeline, staging
from fundax.parallel import AXIS, make_mesh

log = logging.getLogger("fundax")

TRAIN_METRICS = ("loss", "bce", "guidance", "guidance_weight", "grad_norm", "nonfinite")
NO_STEP = 2**31 - 1


@dataclasses.dataclass
class LoopState:
    """The host-side state of the loop: model selection, the plateau schedule, the stall detector."""

    finding: str
    model_name: str
    learning_rate: float
    guidance_start: int | None = None  # the step at which lambda started rising (None: not yet)
    best_score: float | None = None  # the selection metric, as a number to minimise
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    evals_at_floor: int = 0  # evaluations in a row in eq. 2's stuck state (fundax.stall)

    def observe(self, step: int, score: float, config: ml_collections.ConfigDict) -> bool:
        """Record a validation score (lower is better); True when it is the best so far.

        The score is the selection metric's (:func:`fundax.checkpoints.selection_score`):
        it picks the best checkpoint, and its stagnation lowers the learning rate
        (``plateau``) and stops the run early.
        """
        improved = self.best_score is None or score < self.best_score
        if improved:
            self.best_score, self.best_step, self.evals_since_best = score, step, 0
            return True
        self.evals_since_best += 1
        if config.lr_schedule == "plateau" and self.evals_since_best % config.lr_plateau_patience == 0:
            self.learning_rate = max(self.learning_rate * config.lr_plateau_factor, config.min_learning_rate)
        patience = config.early_stopping_patience
        self.stopped_early = patience > 0 and self.evals_since_best >= patience
        return False

    def observe_floor(self, at_floor: bool, config: ml_collections.ConfigDict) -> bool:
        """Record whether an evaluation was at eq. 2's floor; True while the run is stalled."""
        self.evals_at_floor = self.evals_at_floor + 1 if at_floor else 0
        return self.evals_at_floor >= config.stall_patience

    def as_json(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), config=config.to_dict())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopState:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def summary_writer_class() -> type:
    """tensorboardX's ``SummaryWriter``, imported without PyTorch and Google Cloud Storage.

    tensorboardX imports both when they are installed (3–4 s a process: PyTorch only to know its
    tensors, the storage client to write gs:// itself); fundax logs numbers, into a local folder
    (uploaded by :class:`MetricWriter` for a gs:// workdir), so neither is needed. A module already
    imported stays as it is; one imported later imports as usual, but tensorboardX keeps, in this
    process, its view that neither is installed (its own gs:// writing and PyTorch tensors).
    """
    blocked = [name for name in ("torch", "google.cloud.storage") if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # an import of it raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        for name in blocked:
            del sys.modules[name]
    return SummaryWriter


class MetricWriter:
    """The run's metrics log and TensorBoard event files (process 0 only).

    In a local workdir each line is appended as it comes. On object storage, where an append is
    a rewrite, the log is kept in memory and written whole by :meth:`flush` — before each
    checkpoint, so a resumed run finds every line up to its step, at most every
    ``FLUSH_EVERY_S`` otherwise, and at the end — and TensorBoard writes to a local folder whose
    event files are uploaded to the workdir's at each flush.
    """

    FLUSH_EVERY_S = 60.0

    def __init__(self, workdir: workdirs.Workdir, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = workdir.metrics_log
        if not self.enabled:
            return
        kept = truncate_metrics(self.path, resume_step)
        SummaryWriter = summary_writer_class()

        self.remote = storage.is_remote(self.path)
        self._lines, self._flushed_at = [kept], time.monotonic()
        self._tensorboard_dir = workdir.tensorboard
        self._local_tensorboard = tempfile.mkdtemp(prefix="fundax_tensorboard_") if self.remote else None
        self._uploaded: dict[str, int] = {}
        self.tensorboard = SummaryWriter(self._local_tensorboard or str(workdir.tensorboard))

    def _append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry) + "\n"
        if not self.remote:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
            return
        self._lines.append(line)
        if time.monotonic() - self._flushed_at >= self.FLUSH_EVERY_S:
            self.flush()

    def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._append({"step": step, "split": split, **metrics})
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"{split}/{name}", value, step)

    def note(self, step: int, kind: str, message: str) -> None:
        """A line of text in the metrics log (not TensorBoard), e.g. the stall detector's."""
        if self.enabled:
            self._append({"step": step, "split": kind, "message": message})

    def scalar(self, name: str, value: float, step: int) -> None:
        if self.enabled:
            self.tensorboard.add_scalar(name, value, step)

    def flush(self) -> None:
        """Write what object storage does not have yet (nothing to do for a local workdir)."""
        if self.enabled and self.remote:
            self.tensorboard.flush()
            self._upload()

    def _upload(self) -> None:
        self._lines = ["".join(self._lines)]
        storage.write_whole(self.path, self._lines[0])
        storage.upload_tree(self._local_tensorboard, self._tensorboard_dir, self._uploaded)
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()
            if self.remote:
                self._upload()
                shutil.rmtree(self._local_tensorboard, ignore_errors=True)


class Profile:
    """A ``jax.profiler`` trace of the train steps ``window = (START, N)``: START to START + N − 1.

    Viewable in TensorBoard's profile plugin or Perfetto, and summarised by
    ``python -m fundax.bench trace`` (experiments/BENCHMARKS.md). Every process writes its
    own trace. A run resumed after START traces nothing.
    """

    def __init__(self, window: tuple[int, int] | None, directory: pathlib.Path, process: int):
        self.window, self.directory, self.process = window, directory, process
        self.active = False
        # The profiler writes local files only: a trace for object storage is uploaded when it ends.
        self._local = None

    def before(self, step: int) -> None:
        if self.window is not None and step == self.window[0] and not self.active:
            if storage.is_remote(self.directory):
                self._local = tempfile.mkdtemp(prefix="fundax_profile_")
            else:
                self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(self._local or str(self.directory), create_perfetto_trace=True)
            self.active = True

    def after(self, step: int, outputs: Any) -> None:
        if self.active and step >= self.window[0] + self.window[1]:
            jax.block_until_ready(outputs)
            self.close()
            log.info("profiler trace of steps %d-%d written to %s", self.window[0],
                     self.window[0] + self.window[1] - 1, self.directory)

    def close(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
            if self._local is not None:
                storage.upload_tree(self._local, self.directory)
                shutil.rmtree(self._local, ignore_errors=True)


class SaveClock:
    """When ``checkpoint_every_minutes`` calls for a checkpoint: that long after the last save.

    Processes' clocks differ; process 0's decides, so that all save the same step together.
    """

    def __init__(self, minutes: float, clock=time.monotonic):
        self.seconds, self.clock = minutes * 60.0, clock
        self.last = clock()

    def saved(self) -> None:
        self.last = self.clock()

    def due(self) -> bool:
        if self.seconds <= 0:
            return False
        due = self.clock() - self.last >= self.seconds
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
        return due


def truncate_metrics(path: pathlib.Path, last_step: int) -> str:
    """Keep the entries up to ``last_step``: a resumed run writes the later ones again. Returns them.

    A line cut short by a killed process is dropped with them.
    """
    if not path.exists():
        return ""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry["step"] <= last_step:
            kept.append(line + "\n")
    storage.write_whole(path, "".join(kept))
    return "".join(kept)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       data_dir: str | pathlib.Path, show_progress: bool = True,
                       allow_config_change: bool = False) -> dict[str, Any]:
    """Train ``config.finding`` in ``workdir``, resuming there if it holds a checkpoint.

    ``config`` is checked whole and locked first (:func:`fundax.configs.validate`) unless it
    already is. A resume whose config differs from the run's saved config in a key that changes
    what is learnt (:func:`fundax.configs.resume_changes`) raises :class:`ConfigChangeError`,
    unless ``allow_config_change``: then the change is recorded in the workdir's config-change
    log and its metrics log. With ``config.init_from`` a new run starts from another run's
    weights (:mod:`fundax.finetune`); a resume restores its own.

    Raises :class:`reliability.Preempted` after saving when a stop signal arrives,
    :class:`reliability.NonFiniteError` on a NaN/Inf step (unless skipped),
    :class:`reliability.WorkdirError` when the workdir is busy or unwritable, and
    :class:`checkpoints.CheckpointWriteError` when a checkpoint cannot be written.
    """
    workdir = workdirs.Workdir(workdir)
    mesh = make_mesh()
    if not isinstance(config, ml_collections.FrozenConfigDict):
        config = configs.validate(config, mesh.size)
    data_dir = stage_data(config.dataset, data_dir)
    with contextlib.ExitStack() as stack:
        # Process 0 holds the workdir; when it is refused, every process stops with its line.
        refused, held = None, None
        if jax.process_index() == 0:
            try:
                held = stack.enter_context(workdirs.lock(workdir))
            except reliability.WorkdirError as e:
                refused = e
        parallel.raise_together(refused, reliability.WorkdirError)
        signals = stack.enter_context(reliability.StopSignals())
        return _train(config, workdir, data_dir, mesh, signals, show_progress, allow_config_change, held)


def stage_data(dataset: str, data_dir: str | pathlib.Path) -> str:
    """The local data_dir to read ``dataset`` from (:func:`fundax.data.staging.local_data_dir`), on every
    process; when one host cannot stage it, every process stops with that host's line."""
    problem, local = None, str(data_dir)
    try:
        local = staging.local_data_dir(dataset, data_dir)
    except (pipeline.DatasetError, OSError) as e:
        problem = e if isinstance(e, pipeline.DatasetError) else pipeline.DatasetError(
            f"cannot stage {dataset} from {data_dir}: {e}")
    parallel.raise_together(problem, pipeline.DatasetError)
    return local


class ConfigChangeError(ValueError):
    """A resume asked for a config that would make the run neither the old one nor a new one."""


def check_resume_config(saved: dict[str, Any] | None, config: ml_collections.ConfigDict,
                        workdir: workdirs.Workdir | pathlib.Path,
                        step: int, allow: bool) -> dict[str, tuple]:
    """The result-changing differences from the saved config; raises unless ``allow``."""
    workdir = workdirs.as_workdir(workdir)
    changes = configs.resume_changes(saved, config) if saved is not None else {}
    if changes and not allow:
        listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
        raise ConfigChangeError(
            f"{workdir.path} holds a run to step {step} trained with another config ({listed}): resuming would make "
            "it neither run. Use another --workdir, or pass --allow_config_change to continue it with the change "
            f"recorded in {workdir.config_changes.name}")
    return changes


def _train(config: ml_collections.ConfigDict, workdir: workdirs.Workdir, data_dir: str | pathlib.Path,
           mesh: jax.sharding.Mesh, signals: reliability.StopSignals, show_progress: bool,
           allow_config_change: bool, held: Any = None) -> dict[str, Any]:
    # Read before the restore, a collective, so that process 0 cannot have rewritten it yet.
    try:
        saved, info = workdirs.saved_config(workdir), workdirs.run_info(workdir)
    except workdirs.NotAWorkdirError as e:
        raise ConfigChangeError(f"{e} to resume") from None
    model = models.create_model(config)
    tx = optimizer.make_optimizer(config)
    # Every process reads its own copy of the dataset (each host's local disk): all stop together
    # when one cannot, and all must read the same data.
    problem, fingerprint = None, None
    try:
        train_source = pipeline.open_split(config.dataset, data_dir, "train")
        val_source = pipeline.open_split(config.dataset, data_dir, "validation")
        pipeline.check_image_size(config.dataset, data_dir, config.image_size)
        fingerprint = pipeline.dataset_fingerprint(config.dataset, data_dir)
    except pipeline.DatasetError as e:
        problem = e
    parallel.raise_together(problem, pipeline.DatasetError)
    parallel.check_same(fingerprint["sha256"], f"the dataset {config.dataset} in {data_dir}", pipeline.DatasetError)
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

    ckpts = workdir.checkpoints(keep=config.checkpoints_to_keep, selection_metric=config.selection_metric)
    restored = ckpts.restore_latest_intact(
        trainer.abstract_train_state(model, tx, config, mesh), data_iter,
        check=lambda loop_json: checkpoints.check_compatible(loop_json, config.finding, config.model, workdir.path))
    made_with = provenance.collect(fingerprint)
    if restored is not None:
        state, loop_json, resumed_at = restored
        changes = check_resume_config(saved, config, workdir, resumed_at, allow_config_change)
        loop = LoopState.from_json(loop_json)
        sums = {k: np.float32(v) for k, v in loop_json.get("train_sums", {}).items()}
        log.info("resuming %s from step %d (%s)", workdir.path, resumed_at, ckpts.directory)
        info = dict(info, last_resume=dict(made_with, step=resumed_at))
    else:
        resumed_at = 0
        state = trainer.create_train_state(model, tx, config, mesh)
        info = {"provenance": made_with}
        if config.init_from:
            state, info["init_from"] = finetune.init_from(state, config, mesh)
            log.info("%s", finetune.summary(info["init_from"]))
        start = trainer.initial_guidance_start(config)
        loop = LoopState(config.finding, config.model, float(config.learning_rate),
                         guidance_start=start if start >= 0 else None)
        sums = {}
        changes = {}
    if process == 0:
        workdirs.write_config(workdir, config, info)

    writer = MetricWriter(workdir, resumed_at)
    if changes:
        text = "config changed on resume (--allow_config_change): " + "; ".join(
            f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
        log.warning("step %d: %s", resumed_at, text)
        writer.note(resumed_at, "config_change", text)
        if process == 0:
            storage.append_text(workdir.config_changes, json.dumps({
                "step": resumed_at, "changes": {k: list(v) for k, v in changes.items()},
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    train_step = trainer.make_train_step(model, tx, config, mesh)
    eval_step = trainer.make_eval_step(model, config, mesh)
    batch_sharding = NamedSharding(mesh, P(AXIS))
    profile = Profile(configs.parse_profile_steps(config.profile_steps), workdir.profile_dir, process)
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

    clock = SaveClock(config.checkpoint_every_minutes)

    def save(selection: dict[str, float] | None = None) -> None:
        check_finite()
        # A lease on object storage can be taken over (its renewal failed for minutes): then another
        # training owns the workdir, and this one must not write a checkpoint into it.
        lost = None
        if getattr(held, "lost", False):
            lost = reliability.WorkdirError(
                f"the lock of {workdir.path} was taken over by another training: stopped at step {step} without "
                f"saving it; the last checkpoint written by this run is step {ckpts.latest_step()}")
        parallel.raise_together(lost, reliability.WorkdirError)
        writer.flush()
        ckpts.save(step, state, _loop_json(loop, config, sums), data_iter, metrics=selection)
        clock.saved()

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
            profile.before(step)
            state, step_metrics = train_step(state, batch)
            step += 1
            profile.after(step, step_metrics)
            if step == first_step:
                jax.block_until_ready(step_metrics)
                log.info("first step done %.1f s after the loop started (compiling included)",
                         time.perf_counter() - started)
            for name in TRAIN_METRICS:
                sums[name] = sums.get(name, 0) + step_metrics[name]
            sums["count"] = sums.get("count", 0) + 1
            first_nonfinite = jnp.minimum(first_nonfinite, jnp.where(step_metrics["nonfinite"] > 0, step, NO_STEP))
            if step % config.log_every_steps == 0 or step == config.num_train_steps:
                check_finite()
                count = int(sums.pop("count"))
                means = {k: float(np.asarray(v)) / count for k, v in sums.items() if k != "nonfinite"}
                means["learning_rate"] = optimizer.learning_rate(state, config)
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
                outputs = evaluation.gather_eval(eval_step, state, pipeline.eval_batches(
                    val_source, example, global_batch=config.batch_size, process_index=process,
                    process_count=processes, threads=config.loader_threads,
                    prefetch_batches=config.prefetch_batches), batch_sharding)
                validation = metrics.validation_metrics(outputs, config.guidance_weight, config.epsilon)
                before = loop.learning_rate
                # During the guidance warm-up the network is not yet the model eq. 3 trains: it is not
                # selected, and the validation numbers it moves do not lower the learning rate.
                start = loop.guidance_start
                selectable = start is not None and step >= start + config.guidance_ramp_steps
                if selectable:
                    loop.observe(step, checkpoints.selection_score(validation, config.selection_metric), config)
                if loop.learning_rate != before:
                    state = optimizer.set_learning_rate(state, loop.learning_rate)
                    log.info("step %d: %s stagnates, learning rate %.3g -> %.3g",
                             step, config.selection_metric, before, loop.learning_rate)
                stalled = loop.observe_floor(stall.at_floor(validation), config)
                writer.write(step, "validation", {**validation, "stalled": int(stalled),
                                                  "learning_rate": optimizer.learning_rate(state, config)})
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
            elif step % config.log_every_steps == 0 and clock.due():
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
        profile.close()
        bar.close()
        ckpts.close()
        writer.close()
    if loop.stopped_early:
        log.info("early stop at step %d: no better %s for %d evaluations",
                 step, config.selection_metric, config.early_stopping_patience)
    return {"step": step, "best_step": loop.best_step, "selection_metric": config.selection_metric,
            "best_score": loop.best_score, "evals_at_floor": loop.evals_at_floor,
            "stopped_early": loop.stopped_early, "checkpoints": str(ckpts.directory),
            "metrics": str(storage.absolute(workdir.metrics_log)),
            "tensorboard": str(storage.absolute(workdir.tensorboard)),
            **({"profile": str(storage.absolute(workdir.profile_dir))} if profile.window else {}),
            **validation}


def _loop_json(loop: LoopState, config: ml_collections.ConfigDict, sums: dict[str, Any]) -> dict[str, Any]:
    # Partial train-metric sums travel with the checkpoint so a resumed run logs the same means.
    return loop.as_json(config) | {"train_sums": {k: float(np.asarray(v)) for k, v in sums.items()}}


def _validation_line(step: int, v: dict[str, float]) -> str:
    auroc = f", AUROC {v['val_auroc']:.4f}" if "val_auroc" in v else ""
    return f"step {step}: validation loss {v['val_loss']:.4f} (BCE {v['val_bce']:.4f}, " \
           f"guidance {v['val_guidance']:.4f}){auroc} on {v['val_examples']} examples"
