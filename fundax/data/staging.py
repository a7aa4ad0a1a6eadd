"""A prepared dataset on object storage (``--data_dir=gs://...``), copied to this machine's disk to be read.

array_record reads local files, so a ``gs://`` data_dir is staged once per machine into
``$FUNDAX_DATA_CACHE/<name>/<config>/<version>`` (default ``~/.cache/fundax/datasets``),
a TFDS data_dir of its own. The processes of one machine take a file lock and share one
copy. A copy is reused while it matches the remote set: the same
:func:`fundax.data.pipeline.dataset_fingerprint` and every remote file present at its size;
otherwise it is staged again. A copy is made in a temporary folder beside its place and
renamed into it when whole, so a copy cut short never counts.

fundax prepares datasets into local folders only: prepare one (``python -m fundax.prepare``)
and upload its ``<name>/<config>/<version>`` folder to use it from ``gs://``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import filelock

from fundax import storage
from fundax.data import pipeline


def cache_root() -> pathlib.Path:
    """Where staged datasets live on this machine."""
    if os.environ.get("FUNDAX_DATA_CACHE"):
        return pathlib.Path(os.environ["FUNDAX_DATA_CACHE"])
    return storage.local_cache("datasets")


def _version_dir(dataset: str, data_dir: str | pathlib.Path) -> str:
    """``<name>/<config>/<version>``: where TFDS keeps ``dataset`` inside a data_dir."""
    import tensorflow_datasets as tfds

    import fundax.data.fundus_findings  # noqa: F401  (registers the builder)

    builder = tfds.builder(dataset, data_dir=tempfile.gettempdir())
    return os.path.relpath(builder.data_dir, builder.data_dir_root)


def local_data_dir(dataset: str, data_dir: str | pathlib.Path) -> str:
    """A local data_dir holding ``dataset``: ``data_dir`` itself when local, else a staged copy of it."""
    if not storage.is_remote(data_dir):
        return str(data_dir)
    version = _version_dir(dataset, data_dir)
    remote = storage.path(data_dir) / version
    files = storage.list_files(remote)
    if not files:
        raise pipeline.DatasetError(
            f"dataset {dataset!r} is not in {data_dir} (nothing under {remote}); prepare it locally with "
            f"python -m fundax.prepare and upload its {version} folder there")
    root = cache_root()
    target = root / version
    target.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(target) + ".lock"):
        wanted = _remote_fingerprint(dataset, remote, version, files)
        if target.is_dir() and _matches(dataset, root, target, files, wanted):
            return str(root)
        partial = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            storage.download_files(remote, sorted(files), partial)
            if target.exists():
                shutil.rmtree(target)
            partial.rename(target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return str(root)


def _matches(dataset: str, root: pathlib.Path, target: pathlib.Path, files: dict[str, int],
             wanted: dict) -> bool:
    """Whether the staged copy is the remote set: every file at its size, and the same fingerprint."""
    for name, size in files.items():
        local = target / name
        if not local.is_file() or local.stat().st_size != size:
            return False
    try:
        return pipeline.dataset_fingerprint(dataset, root) == wanted
    except Exception:  # noqa: BLE001 — TFDS fails in many ways on a damaged copy; it is staged again
        return False


def _remote_fingerprint(dataset: str, remote: storage.AnyPath, version: str, files: dict[str, int]) -> dict:
    """The fingerprint of the remote set, from its metadata alone (a few small JSON files)."""
    with tempfile.TemporaryDirectory(prefix="fundax_fingerprint_") as tmp:
        names = [n for n in files if n.endswith(".json")]
        storage.download_files(remote, names, pathlib.Path(tmp, version))
        return pipeline.dataset_fingerprint(dataset, tmp)
