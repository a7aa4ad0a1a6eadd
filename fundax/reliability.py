"""What keeps a long run safe: one training per workdir, graceful stops, non-finite steps.

* :class:`WorkdirLock` — an exclusive operating-system lock (``filelock``: flock on
  POSIX, LockFileEx on Windows) on the workdir's lock file for the run's lifetime;
  the system drops it when the process dies, however it dies. Who holds it is
  written beside it, in the holder file, for the error a second training gets at
  once (both named by :mod:`fundax.workdir`).
* :class:`WorkdirLease` — the same for a ``gs://`` workdir, where there are no file locks:
  a lease object created only if absent (a generation precondition), holding its holder
  and expiry, renewed in the background, taken over once expired or once its holder, a
  process of this host, has died.
* :class:`StopSignals` — SIGTERM (what Cloud TPU and most schedulers send before
  preemption) or SIGINT asks the loop to finish its step, save and exit with
  status 128 + signal number (143 for SIGTERM, 130 for SIGINT). A second signal
  acts at once. With several processes, a SIGTERM stops them together at the step
  JAX's preemption sync point names; SIGINT then interrupts at once.
* :class:`NonFiniteError` — a NaN or Inf in the loss or gradients.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pathlib
import signal
import socket
import threading
import time
from types import FrameType

import filelock
import jax
from jax.experimental import multihost_utils

from fundax import storage

log = logging.getLogger("fundax")


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


LEASE_SECONDS = 300.0
"""How long a ``gs://`` workdir's lease lasts unless renewed (every third of it): how long a
training killed on another machine keeps the workdir from a new one."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLease:
    """Exclusive use of a ``gs://`` workdir by one training: a lease in its lock object.

    The object is written only if absent (``ifGenerationMatch=0``); it names its holder and the
    time its lease ends. A thread renews it every third of ``lease_s``, each write conditional on
    the generation of the last, so a lease taken over is never overwritten by its old holder, who
    logs that it lost it. A lease is taken over (again conditionally: one of several contenders
    wins) once it has expired, or at once when its holder was a process of this host that has died.
    """

    def __init__(self, lock_file: str | os.PathLike, lease_s: float = LEASE_SECONDS):
        self.path = storage.path(lock_file)
        self.lease_s = lease_s
        self.lost = False
        self._generation: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._since = datetime.datetime.now().isoformat(timespec="seconds")

    def _record(self) -> bytes:
        return json.dumps({"holder": f"pid {os.getpid()} on {socket.gethostname()} since {self._since}",
                           "host": socket.gethostname(), "pid": os.getpid(),
                           "expires": time.time() + self.lease_s}).encode()

    def _stale(self, lease: dict) -> str | None:
        """Why the lease ``lease`` may be taken over, or None while it holds."""
        if lease.get("expires", 0) < time.time():
            return "its lease expired"
        if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int) and \
                lease["pid"] != os.getpid() and not _process_alive(lease["pid"]):
            return "its process has ended"
        return None

    def __enter__(self) -> WorkdirLease:
        workdir = str(self.path.parent)
        try:
            try:
                self._generation = storage.write_object(self.path, self._record(), if_generation_match="0")
            except FileExistsError:
                current = storage.read_object(self.path)
                generation = current[1] if current else "0"
                try:
                    lease = json.loads(current[0]) if current else {}
                except ValueError:
                    lease = {}
                why = self._stale(lease) if current else "it was released"
                holder = lease.get("holder", "another process")
                if why is None:
                    until = datetime.datetime.fromtimestamp(lease["expires"]).isoformat(timespec="seconds")
                    raise WorkdirError(f"{workdir} is in use by another training ({holder}, lease renewed until "
                                       f"{until}); wait for it to finish or use another --workdir") from None
                try:
                    self._generation = storage.write_object(self.path, self._record(), generation)
                except FileExistsError:
                    raise WorkdirError(f"{workdir} was just taken by another training; use another --workdir") \
                        from None
                if current:
                    log.warning("took over the lock of %s from %s: %s", workdir, holder, why)
        except OSError as e:
            raise WorkdirError(f"cannot write to workdir {workdir}: {e.strerror or e}") from None
        self._renewer = threading.Thread(target=self._renew, name="fundax-lease", daemon=True)
        self._renewer.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self._generation = storage.write_object(self.path, self._record(), self._generation)
            except FileExistsError:
                self.lost = True
                log.error("the lock of %s was taken over by another training: this one no longer holds it",
                          self.path.parent)
                return
            except OSError as e:  # a passing fault: the lease still has two thirds of its time
                log.warning("renewing the lock of %s failed (%s); trying again", self.path.parent, e)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        if self._generation is not None and not self.lost:
            storage.delete_object(self.path, self._generation)
        self._generation = None


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
