"""The run folder (``--workdir``): its layout, and everything fundax reads from it or writes to it by name.

No other module builds a path inside a workdir; they ask :class:`Workdir`::

    WORKDIR/
      config.json               the resolved config; its "fundax_run" section: provenance, init_from
      config_changes.jsonl      result-changing config changes accepted on resume
      metrics.jsonl             train and validation numbers, notes (stall, guidance, config changes)
      tensorboard/              the same numbers as TensorBoard event files
      checkpoints/<step>/       Orbax: train state, data iterator, loop state
      damaged_checkpoints/      checkpoints that failed to restore, moved aside
      eval/<split>_metrics.json, <split>_examples.csv, <split>_outputs.npz, <split>_roc.png
      profile/                  jax.profiler traces (config.profile_steps)
      jax_cache/                compiled steps (the default compilation cache; on this machine's
                                disk, ``~/.cache/fundax/jax_cache/...``, for a gs:// workdir)
      .fundax.lock, .fundax.holder   the lock of the process writing the run (gs://: a lease in .fundax.lock)

A workdir may be a local folder or a ``gs://`` location (:mod:`fundax.storage`).
"""

from __future__ import annotations

import io
import json
import pathlib
from typing import Any

import ml_collections

from fundax import storage

CONFIG = "config.json"
RUN_SECTION = "fundax_run"
"""The key of ``config.json`` that holds what is known of the run beside its config (provenance, init_from)."""
EVAL_KINDS = {"metrics": "_metrics.json", "examples": "_examples.csv", "outputs": "_outputs.npz", "roc": "_roc.png"}
"""The files an evaluation of one split writes, by kind: ``<split><suffix>``."""


class NotAWorkdirError(ValueError):
    """A folder that is not a fundax run, or a run without what was asked of it."""


def eval_file(directory: str | pathlib.Path, split: str, kind: str) -> pathlib.Path:
    """One evaluation file of ``split`` in ``directory`` (a workdir's ``eval/``, or another ``--out_dir``)."""
    return storage.path(directory) / f"{split}{EVAL_KINDS[kind]}"


class Workdir:
    """The paths of one run folder."""

    def __init__(self, path: str | pathlib.Path):
        self.path = storage.path(path)

    def __repr__(self) -> str:
        return f"Workdir({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workdir) and self.path == other.path

    def __hash__(self) -> int:
        return hash(self.path)

    config_file = property(lambda self: self.path / CONFIG)
    config_changes = property(lambda self: self.path / "config_changes.jsonl")
    metrics_log = property(lambda self: self.path / "metrics.jsonl")
    tensorboard = property(lambda self: self.path / "tensorboard")
    checkpoint_dir = property(lambda self: storage.absolute(self.path) / "checkpoints")
    damaged_checkpoint_dir = property(lambda self: storage.absolute(self.path) / "damaged_checkpoints")
    eval_dir = property(lambda self: self.path / "eval")
    profile_dir = property(lambda self: self.path / "profile")
    @property
    def compilation_cache(self) -> pathlib.Path:
        # JAX would read the cache object by object through gcsfs; a local copy per machine is faster.
        if storage.is_remote(self.path):
            return storage.local_cache("jax_cache", str(self.path).replace("://", "/", 1))
        return self.path.absolute() / "jax_cache"

    lock_file = property(lambda self: self.path / ".fundax.lock")
    holder_file = property(lambda self: self.path / ".fundax.holder")

    def eval_file(self, split: str, kind: str) -> pathlib.Path:
        return eval_file(self.eval_dir, split, kind)

    def checkpoints(self, keep: int = 3, read_only: bool = False, selection_metric: str = "val_loss"):
        """The run's :class:`fundax.checkpoints.Checkpoints`."""
        from fundax import checkpoints

        return checkpoints.Checkpoints(self.checkpoint_dir, keep=keep, read_only=read_only,
                                       selection_metric=selection_metric, damaged_dir=self.damaged_checkpoint_dir)

    def check_exists(self) -> None:
        """Raise :class:`NotAWorkdirError` unless this is a run folder with a ``config.json``."""
        if not self.path.is_dir():
            raise NotAWorkdirError(f"workdir {self.path} does not exist")
        if not self.config_file.exists():
            raise NotAWorkdirError(f"{self.path} is not a fundax workdir: it has no {CONFIG}")


def as_workdir(workdir: str | pathlib.Path | Workdir) -> Workdir:
    return workdir if isinstance(workdir, Workdir) else Workdir(workdir)


# --- config.json --------------------------------------------------------------------------------------------

def read_config_json(workdir: str | pathlib.Path | Workdir) -> dict[str, Any] | None:
    """The whole ``config.json`` (config and run section) as written, or None when there is none."""
    path = as_workdir(workdir).config_file
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise NotAWorkdirError(f"{path} is not the JSON fundax writes ({e}): move it away") from None


def saved_config(workdir: str | pathlib.Path | Workdir) -> dict[str, Any] | None:
    """The config a run saved (without its run section), as a plain dict; None when there is none."""
    saved = read_config_json(workdir)
    if saved is None:
        return None
    saved.pop(RUN_SECTION, None)
    return saved


def run_info(workdir: str | pathlib.Path | Workdir) -> dict[str, Any]:
    """The run section of ``config.json``: provenance, and what ``init_from`` loaded; {} for older runs."""
    return (read_config_json(workdir) or {}).get(RUN_SECTION, {})


def write_config(workdir: str | pathlib.Path | Workdir, config: ml_collections.ConfigDict,
                 info: dict[str, Any]) -> None:
    """``config.json``: the resolved config and the run section ``info``, written whole or not at all."""
    data = json.loads(config.to_json_best_effort()) | {RUN_SECTION: info}
    storage.write_whole(as_workdir(workdir).config_file, json.dumps(data, indent=2) + "\n")


def load_config(workdir: str | pathlib.Path | Workdir) -> ml_collections.FrozenConfigDict:
    """The resolved config a training run saved in its workdir, locked.

    Keys that fundax added after the run was trained take their defaults, which
    reproduce what the run did.
    """
    from fundax.configs import default

    wd = as_workdir(workdir)
    wd.check_exists()
    saved = saved_config(wd)

    def merged(defaults: dict, values: dict) -> dict:
        return {**defaults, **{k: merged(defaults[k], v) if isinstance(v, dict) and isinstance(defaults.get(k), dict)
                               else v for k, v in values.items()}}

    return ml_collections.FrozenConfigDict(merged(default.get_config().to_dict(), saved))


# --- evaluations ------------------------------------------------------------------------------------------

def read_eval_metrics(workdir: str | pathlib.Path | Workdir, split: str) -> dict[str, Any] | None:
    """The ``<split>_metrics.json`` of the run's evaluation, or None when the split was not evaluated."""
    path = as_workdir(workdir).eval_file(split, "metrics")
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def read_eval_outputs(workdir: str | pathlib.Path | Workdir, split: str) -> dict[str, Any]:
    """The per-example arrays of the run's evaluation of ``split`` (``<split>_outputs.npz``)."""
    import numpy as np

    with np.load(io.BytesIO(as_workdir(workdir).eval_file(split, "outputs").read_bytes())) as data:
        return {k: data[k] for k in data.files}


def stored_operating_point(workdir: str | pathlib.Path | Workdir) -> tuple[float | None, str]:
    """The decision threshold of the run's evaluation (validation first, else test), and where it came from."""
    for split in ("validation", "test"):
        result = read_eval_metrics(workdir, split)
        if result is not None and result.get("threshold") is not None:
            return float(result["threshold"]), f"{split} operating point, step {result['checkpoint_step']}"
    return None, "no operating point: run python -m fundax.evaluate --split=validation for one"


# --- checkpoints ------------------------------------------------------------------------------------------

def resolve_step(ckpts: Any, which: str) -> int:
    """``best``, ``latest`` or a step number, checked against the saved steps."""
    steps = sorted(ckpts.all_steps())
    if not steps:
        raise NotAWorkdirError(f"no checkpoints in {ckpts.directory}")
    if which == "latest":
        return steps[-1]
    if which == "best":
        best = ckpts.best_step()
        if best is None:
            raise NotAWorkdirError(f"no checkpoint in {ckpts.directory} has a validation {ckpts.selection_metric}; "
                                   f"use --checkpoint=latest or one of {steps}")
        return best
    if not which.isdigit() or int(which) not in steps:
        raise NotAWorkdirError(f"no checkpoint {which!r} in {ckpts.directory}; it has steps {steps} "
                               "(or use best or latest)")
    return int(which)


def restore_state(config: ml_collections.ConfigDict, workdir: str | pathlib.Path | Workdir, which: str,
                  mesh: Any) -> tuple[Any, int]:
    """The train state of one saved checkpoint (``best``, ``latest`` or a step), laid out over ``mesh``."""
    from fundax import checkpoints, models, optimizer, trainer

    wd = as_workdir(workdir)
    ckpts = wd.checkpoints(read_only=True, selection_metric=config.selection_metric)
    try:
        step = resolve_step(ckpts, which)
        checkpoints.check_compatible(ckpts.restore_loop(step), config.finding, config.model, wd.path)
        model, tx = models.create_model(config), optimizer.make_optimizer(config)
        state, _ = ckpts.restore(step, trainer.abstract_train_state(model, tx, config, mesh))
    finally:
        ckpts.close()
    return state, step


def find_checkpoint(path: str | pathlib.Path) -> tuple[Workdir, str]:
    """A workdir and the checkpoint meant by ``path``: ``WORKDIR`` (its best, else its latest),
    ``WORKDIR/checkpoints/STEP`` or ``WORKDIR:STEP`` / ``WORKDIR:best`` / ``WORKDIR:latest``."""
    text = str(path)
    which = None
    head, sep, tail = text.rpartition(":")
    if sep and (tail.isdigit() or tail in ("best", "latest")) and head:
        text, which = head, tail
    p = storage.path(text)
    if which is None and p.name.isdigit() and p.parent.name == "checkpoints":
        p, which = p.parent.parent, p.name
    wd = Workdir(p)
    wd.check_exists()
    if which is None:
        config = load_config(wd)
        ckpts = wd.checkpoints(read_only=True, selection_metric=config.selection_metric)
        try:
            which = "best" if ckpts.best_step() is not None else "latest"
        finally:
            ckpts.close()
    return wd, which


def lock(workdir: str | pathlib.Path | Workdir):
    """The run's :class:`fundax.reliability.WorkdirLock` (a :class:`~fundax.reliability.WorkdirLease` on
    object storage): one training at a time in a workdir."""
    from fundax import reliability

    wd = as_workdir(workdir)
    if storage.is_remote(wd.path):
        return reliability.WorkdirLease(wd.lock_file)
    return reliability.WorkdirLock(wd.lock_file, wd.holder_file)
