"""What keeps a long run safe: one training per workdir, graceful stops, non-finite steps.

* :class:`WorkdirLock` — an exclusive operating-system lock (``filelock``: flock on
  POSIX, LockFileEx on Windows) on the workdir's lock file for the run's lifetime;
  the system drops it when the process dies, however it dies. Who holds it is
  written beside it, in the holder file, for the error a second training gets at
  once (both named by :mod:`fundax.workdir`).
* :class:`StopSignals` — SIGTERM (what Cloud TPU and most schedulers send before
  preemption) or SIGINT asks the loop to finish its step, save and exit with
  status 128 + signal number (143 for SIGTERM, 130 for SIGINT). A second signal
  acts at once. With several processes, a SIGTERM stops them together at the step
  JAX's preemption sync point names; SIGINT then interrupts at once.
* :class:`NonFiniteError` — a NaN or Inf in the loss or gradients.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import signal
import socket
from types import FrameType

import filelock
import jax
from jax.experimental import multihost_utils

class WorkdirError(RuntimeError):
    """A workdir that cannot be used: unwritable, or held by another training."""


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient while ``skip_nonfinite_steps`` is off."""


class Preempted(Exception):
    """The run stopped on a signal after saving; ``exit_status`` is 128 + the signal number."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class WorkdirLock:
    """Exclusive use of a workdir by one training (process 0 of a run takes it)."""

    def __init__(self, lock_file: pathlib.Path, holder_file: pathlib.Path):
        self.path = pathlib.Path(lock_file)
        self.holder_path = pathlib.Path(holder_file)
        self._lock = filelock.FileLock(self.path)

    def _holder(self) -> str:
        try:
            return self.holder_path.read_text(errors="replace").strip() or "another process"
        except OSError:
            return "another process"

    def __enter__(self) -> WorkdirLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            raise WorkdirError(f"{self.path.parent} is in use by another training ({self._holder()}); "
                               "wait for it to finish or use another --workdir") from None
        except OSError as e:
            raise WorkdirError(f"cannot write to workdir {self.path.parent}: {e.strerror or e}") from None
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        try:
            self.holder_path.write_text(f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n")
        except OSError as e:
            self._lock.release()
            raise WorkdirError(f"cannot write to workdir {self.path.parent}: {e.strerror or e}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock.is_locked:
            self.holder_path.unlink(missing_ok=True)
            self._lock.release()


class StopSignals:
    """Turns SIGTERM and SIGINT into a request the loop honours between steps."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        # A second signal of the same kind is not polite any more: act at once.
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> StopSignals:
        for signum in self.SIGNALS:
            if jax.process_count() > 1:
                # JAX's preemption notifier owns SIGTERM and tells every process; Ctrl-C on one
                # of several processes cannot be agreed on without a collective, so it acts at once.
                continue
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def should_stop(self, step: int) -> int | None:
        """The signal to stop on at this step, agreed by all processes; None to go on."""
        if jax.process_count() == 1:
            return self.received
        # JAX's coordination service catches SIGTERM on every host and names one step
        # at which all of them reach the sync point, so all save the same step.
        if multihost_utils.reached_preemption_sync_point(step):
            return signal.SIGTERM
        return None
