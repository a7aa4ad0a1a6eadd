"""Orbax checkpoints of a run (``WORKDIR/checkpoints``, see :mod:`fundax.workdir`): train state, data
iterator and loop state together.

The latest ``keep`` checkpoints are kept for resuming, and besides them the best
by the run's ``selection_metric``: the lowest total validation loss (the paper's
model selection, §3.1), the lowest validation BCE, or the highest validation AUROC.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from fundax import storage

SELECTION_METRICS = {"val_loss": "min", "val_bce": "min", "val_auroc": "max"}
"""The validation numbers a run can select its best checkpoint by, and which way is better."""

ORBAX_COMMIT_FILE = "commit_success.txt"
"""What Orbax writes last into a step on object storage, where it cannot rename a folder."""

log = logging.getLogger("fundax")


class CheckpointMismatchError(ValueError):
    """A workdir holding a checkpoint of another finding or model."""


class NoIntactCheckpointError(RuntimeError):
    """Every checkpoint of a run is damaged: refuse to start over on top of it."""


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed (a full disk, say); the last good one is kept."""


class Checkpoints:
    """The checkpoints in ``directory``; saves are asynchronous, so call :meth:`close` before exit.

    A checkpoint that fails to restore is moved into ``damaged_dir`` (:meth:`restore_latest_intact`).
    Make one with :meth:`fundax.workdir.Workdir.checkpoints`.
    """

    def __init__(self, directory: str | pathlib.Path, keep: int = 3, read_only: bool = False,
                 selection_metric: str = "val_loss", damaged_dir: str | pathlib.Path | None = None):
        self.directory = storage.absolute(directory)
        self.damaged_dir = storage.absolute(damaged_dir) if damaged_dir is not None else None
        if selection_metric not in SELECTION_METRICS:
            raise ValueError(f"selection_metric must be one of {', '.join(map(repr, SELECTION_METRICS))}, "
                             f"got {selection_metric!r}")
        mode = SELECTION_METRICS[selection_metric]
        self.selection_metric = selection_metric
        preservation = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            # reverse=True sorts descending, so the last n kept are the lowest.
            policies.BestN(get_metric_fn=lambda m: m[selection_metric], reverse=mode == "min", n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        self._pending: int | None = None  # the step of the save that may still be in flight
        self._failed = False
        self.manager = ocp.CheckpointManager(
            self.directory,
            # best_fn makes Orbax write the metrics to disk, so the best survives a restart.
            options=ocp.CheckpointManagerOptions(
                preservation_policy=preservation, best_fn=lambda m: m[selection_metric], best_mode=mode,
                create=not read_only, read_only=read_only,
                # A save cut short (a killed process) leaves a temporary folder; drop it on start.
                cleanup_tmp_directories=not read_only),
            item_names=("state", "data_iter", "loop"),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step best by the selection metric, if any was saved with metrics."""
        return self.manager.best_step()

    def save(
        self,
        step: int,
        state: Any,
        loop: dict[str, Any],
        data_iter: grain.DatasetIterator | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Start saving ``step`` (asynchronously); a failed write is a :class:`CheckpointWriteError`."""
        items = {"state": ocp.args.StandardSave(state), "loop": ocp.args.JsonSave(loop)}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self._finish_pending()
        self._pending = step
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
        except Exception as e:  # noqa: BLE001 — the storage's errors come in many types
            raise self._write_error(step, e) from e

    def _finish_pending(self) -> None:
        """Wait for the save in flight; its failure surfaces here, named by its step."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._write_error(self._pending, e) from e

    def _write_error(self, step: int | None, error: Exception) -> CheckpointWriteError:
        self._failed = True
        # A failed item makes Orbax clean up while the others still write, which fails in turn:
        # name every error in the chain, so the first cause (a full disk, say) is not lost.
        causes, seen = [], set()
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            if text not in causes:
                causes.append(text)
            error = error.__cause__ or error.__context__
        return CheckpointWriteError(
            f"writing the checkpoint of step {step} failed ({'; '.join(reversed(causes))}); the last good "
            f"checkpoint, step {self.last_complete_step()}, is kept in {self.directory}")

    def last_complete_step(self) -> int | None:
        """The newest step whose folder was finalised (Orbax renames it last; on object storage,
        where it cannot, it writes a commit file into it last)."""
        if not self.directory.exists():
            return None
        remote = storage.is_remote(self.directory)
        return max((int(p.name) for p in self.directory.iterdir()
                    if p.name.isdigit() and (not remote or (p / ORBAX_COMMIT_FILE).exists())), default=None)

    def restore_loop(self, step: int) -> dict[str, Any]:
        """Only the loop state (finding, config, schedule): cheap, no arrays."""
        return self.manager.restore(step, args=ocp.args.Composite(loop=ocp.args.JsonRestore()))["loop"]

    def restore(
        self, step: int, abstract_state: Any, data_iter: grain.DatasetIterator | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """The train state (laid out like ``abstract_state``) and loop state; ``data_iter`` is set in place."""
        items = {"state": ocp.args.StandardRestore(abstract_state), "loop": ocp.args.JsonRestore()}
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], restored["loop"]

    def restore_latest_intact(
        self, abstract_state: Any, data_iter: grain.DatasetIterator | None = None,
        check: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[Any, dict[str, Any], int] | None:
        """The newest checkpoint that restores whole: state, loop state and step.

        A damaged newer one (files missing or truncated) is reported and moved to
        ``damaged_dir``, so the resumed run can save that step again.
        None when there are no checkpoints; :class:`NoIntactCheckpointError` when
        there are some but none restores — the run is never silently restarted.
        ``check`` sees each loop state before its arrays are read, and may refuse
        the run (another finding, say) by raising.
        """
        steps = sorted(self.all_steps(), reverse=True)
        damaged = []
        for step in steps:
            try:
                loop = self.restore_loop(step)
            except Exception as e:  # noqa: BLE001 — a damaged checkpoint fails in many ways
                damaged.append((step, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
                continue
            if check is not None:
                check(loop)
            try:
                state, loop = self.restore(step, abstract_state, data_iter)
            except Exception as e:  # noqa: BLE001
                if "tree structures do not match" in str(e):  # intact, but not this fundax's train state
                    raise CheckpointMismatchError(
                        f"checkpoint {step} in {self.directory} holds a train state of another layout (written by "
                        "another version of fundax, or another model config): it is left as it is; train in "
                        "another --workdir") from None
                damaged.append((step, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
                continue
            if damaged and self.damaged_dir is None:
                raise ValueError(f"checkpoints {[s for s, _ in damaged]} in {self.directory} are damaged, and no "
                                 "damaged_dir was given to move them to")
            if damaged:
                self._move_damaged(damaged, step)
            return state, loop, step
        if damaged:
            details = "; ".join(f"step {s}: {why}" for s, why in damaged)
            raise NoIntactCheckpointError(
                f"no intact checkpoint in {self.directory} ({details}); refusing to start over on top of "
                "this run: repair or move the checkpoints, or use another --workdir")
        return None

    def _move_damaged(self, damaged: list[tuple[int, str]], resumed_at: int) -> None:
        """Move damaged checkpoints aside: process 0 moves them, every process then sees the same folder.

        The checkpoint folder is shared by all processes of a run; each found the same damaged
        steps. They wait for one another before the move (none still reads a step being moved)
        and after it (none lists the folder half-moved), and then reload the manager.
        """
        several = jax.process_count() > 1
        if several:
            multihost_utils.sync_global_devices("fundax: damaged checkpoints found")
        for bad, why in damaged:
            target = self.damaged_dir / str(bad)
            if jax.process_index() == 0:
                if target.exists():
                    storage.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                storage.move(self.directory / str(bad), target)
            log.warning("checkpoint %d is damaged (%s); moved it to %s and resumed from step %d",
                        bad, why, target, resumed_at)
        if several:
            multihost_utils.sync_global_devices("fundax: damaged checkpoints moved")
        self.manager.reload()

    def close(self) -> None:
        """Finish the save in flight and release the manager."""
        try:
            if not self._failed:  # after a failure, the error already on its way says it all
                self._finish_pending()
        finally:
            self.manager.close()


def selection_score(validation: dict[str, float], selection_metric: str) -> float:
    """The selection metric of one evaluation as a number to minimise; an error names a missing one."""
    if selection_metric not in validation:
        raise ValueError(f"selection_metric {selection_metric} is undefined on this validation split (it needs "
                         "positive and negative examples): use --config.selection_metric=val_bce")
    value = float(validation[selection_metric])
    return value if SELECTION_METRICS[selection_metric] == "min" else -value


def check_compatible(loop: dict[str, Any], finding: str, model_name: str, workdir: str | pathlib.Path) -> None:
    """A workdir belongs to one finding and one model: refuse to mix runs."""
    for key, wanted in (("finding", finding), ("model_name", model_name)):
        if loop.get(key) != wanted:
            raise CheckpointMismatchError(
                f"{workdir} holds a checkpoint of {key} {loop.get(key)!r}, not {wanted!r}: "
                "use another --workdir")
