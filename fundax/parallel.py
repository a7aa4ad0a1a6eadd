"""Several processes, one run: JAX's own distributed runtime, started before anything else.

On Cloud TPU pod slices and under SLURM every process runs the same command and
``jax.distributed.initialize()`` finds the others by itself; elsewhere the
coordinator, the number of processes and each one's id are given explicitly.
A single process needs none of this. The mesh (:func:`make_mesh`) then spans
every device of every process, each process reads only its slice of each global
batch, process 0 alone writes logs and pictures, and Orbax saves collectively.
"""

from __future__ import annotations

import hashlib
import os

import jax
import numpy as np

from fundax import storage

AXIS = "data"
"""The mesh's one axis: the global batch is split over it."""


def make_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over all (global) devices, axis ``data``."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


def define_flags() -> None:
    """``--coordinator_address``, ``--num_processes``, ``--process_id``: for the entry points that train or evaluate."""
    from absl import flags

    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0, to run several processes outside Cloud TPU and SLURM.")
    flags.DEFINE_integer("num_processes", None, "With --coordinator_address: how many processes take part.")
    flags.DEFINE_integer("process_id", None, "With --coordinator_address: this process's id, 0 to num_processes-1.")


def in_cluster() -> bool:
    """Whether JAX can find the other processes by itself (a multi-host TPU slice, SLURM).

    Workers of a TPU pod slice do not always carry TPU_WORKER_HOSTNAMES in an ssh
    session, so the launch scripts set FUNDAX_DISTRIBUTED=1 there.
    """
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", os.environ.get("SLURM_NPROCS", "1")) or 1)
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return slurm_tasks > 1 or "," in tpu_hosts or os.environ.get("FUNDAX_DISTRIBUTED") == "1"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Join the run's other processes, if there are any. Call before touching a device."""
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError("--coordinator_address, --num_processes and --process_id go together")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id {process_id} must lie in [0, {num_processes})")
    elif not in_cluster():
        return
    else:
        check_gpu_binding(os.environ)
    # CPU processes exchange collectives over gloo; accelerators ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def check_gpu_binding(environ: dict[str, str]) -> None:
    """Refuse, at start-up, a SLURM task bound to fewer GPUs than JAX will ask for.

    Under SLURM, JAX gives each task the GPU numbered ``SLURM_LOCALID`` among those it
    sees (``local_device_ids``). A site that binds GPUs to tasks (``--gpus-per-task``,
    ``--gpu-bind``) leaves each task one GPU, numbered 0, so every task but the first would
    ask for a GPU that is not there and fail deep inside the CUDA start-up.
    """
    if "SLURM_LOCALID" not in environ or environ.get("JAX_LOCAL_DEVICE_IDS"):
        return
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    local = int(environ["SLURM_LOCALID"])
    if visible and local >= len(visible):
        raise ValueError(
            f"this SLURM task (SLURM_LOCALID={local}) sees {len(visible)} GPU(s) (CUDA_VISIBLE_DEVICES="
            f"{environ['CUDA_VISIBLE_DEVICES']}), but JAX would take GPU number {local}: the site binds GPUs to "
            "tasks. Submit without --gpus-per-task/--gpu-bind (launch/slurm/train.sbatch), or export "
            "JAX_LOCAL_DEVICE_IDS=0 so that each task takes the GPU it is given")


def raise_together(error: Exception | None, kind: type[Exception]) -> None:
    """Raise ``kind`` on every process when any process met ``error``; return when none did.

    A refusal that one process finds (a busy workdir on process 0, say) must stop every
    process at once with the same line, not leave the others to time out in a collective
    later. The message is the first failing process's, naming the process when there are
    several. A collective: every process must call it.
    """
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    from jax.experimental import multihost_utils

    size = 2048
    text = str(error).encode("utf-8")[:size] if error is not None else b""
    mine = np.zeros(size + 1, np.int32)
    mine[0] = 1 if error is not None else 0
    mine[1:1 + len(text)] = np.frombuffer(text, np.uint8)
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    failed = [i for i in range(everyone.shape[0]) if everyone[i, 0]]
    if not failed:
        return
    first = everyone[failed[0], 1:].astype(np.uint8).tobytes().rstrip(b"\0").decode("utf-8", "replace")
    message = first if failed == [0] else f"process {failed[0]}: {first}"
    if error is not None and str(error) == message:
        raise error
    raise kind(message)


def check_same(text: str, what: str, kind: type[Exception]) -> None:
    """Raise ``kind`` on every process unless every process holds the same ``text`` (a fingerprint).

    ``what`` names the thing in the error, e.g. the dataset whose copies differ between hosts.
    A collective: every process must call it.
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = np.frombuffer(hashlib.sha256(text.encode("utf-8")).digest(), np.uint8).astype(np.int32)
    everyone = np.asarray(multihost_utils.process_allgather(digest))
    differ = [i for i in range(everyone.shape[0]) if not np.array_equal(everyone[i], everyone[0])]
    if differ:
        raise kind(f"{what} differs between processes: process(es) {', '.join(map(str, differ))} hold another "
                   "copy than process 0; prepare or copy the same dataset onto every host")


def initialize_from_flags() -> None:
    """:func:`initialize` with the values of :func:`define_flags`'s flags."""
    from absl import flags

    f = flags.FLAGS
    initialize(f.coordinator_address, f.num_processes, f.process_id)


COMPILATION_CACHE_MAX_BYTES = 4 << 30
"""The compilation cache's bound: the least recently used entries go beyond it."""


def enable_compilation_cache(directory: str) -> None:
    """Keep compiled steps on disk, so a restarted run skips recompiling them.

    The cache is bounded (:data:`COMPILATION_CACHE_MAX_BYTES`), which is also what makes JAX
    take a file lock around each read and write: unbounded, it writes entries in place, and
    another process sharing the folder (a second process of the run on this host, an
    evaluation beside the training) could read one half written.
    """
    storage.path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)
    # Cache every step, however quick it compiled: the train step is the one that matters.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
