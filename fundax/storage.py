"""Where fundax reads and writes: local folders, and Google Cloud Storage (``gs://``).

A ``gs://`` path is an :class:`etils.epath.Path` (through gcsfs when TensorFlow is absent, as
it is in fundax's environment); a local path stays a :class:`pathlib.Path`. Both answer the
pathlib calls fundax makes (``/``, ``exists``, ``read_text``, ``write_text``, ``iterdir``,
``mkdir``). What object storage lacks is made up for here, once:

* no append — :func:`append_text` rewrites the object whole;
* no atomic rename — an object appears whole when its upload ends, so :func:`write_whole`
  writes it directly (a local file is written beside and renamed);
* no folders to rename — :func:`move` copies, then deletes;
* libraries that only write local files (matplotlib, numpy, tensorboardX, the profiler) —
  :func:`writing` hands them a local file and uploads it, :func:`upload_tree` a folder;
* no file locks — generation preconditions instead (:func:`write_object` with
  ``if_generation_match``), on which :class:`fundax.reliability.WorkdirLease` builds a lease.

Credentials are gcsfs's and tensorstore's (Orbax writes arrays through it): application
default credentials, or ``GOOGLE_APPLICATION_CREDENTIALS``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

REMOTE_PREFIXES = ("gs://",)

AnyPath = Any
"""A :class:`pathlib.Path` or, for ``gs://``, an :class:`etils.epath.Path`."""


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is on object storage (``gs://``)."""
    return str(path).startswith(REMOTE_PREFIXES)


def path(p: str | os.PathLike) -> AnyPath:
    """``p`` as a path object that can read and write where it points."""
    if is_remote(p):
        from etils import epath

        return p if isinstance(p, epath.Path) else epath.Path(str(p))
    return pathlib.Path(p)


def absolute(p: str | os.PathLike) -> AnyPath:
    """A local path made absolute; a ``gs://`` path as it is."""
    p = path(p)
    return p if is_remote(p) else p.absolute()


def _fs(p: str | os.PathLike) -> tuple[Any, str]:
    """The fsspec filesystem of a remote path, and the path as it names it (``bucket/key``)."""
    import fsspec

    return fsspec.core.url_to_fs(str(p))


# --- whole files ------------------------------------------------------------------------------------------------

def write_whole(p: str | os.PathLike, text: str) -> None:
    """``text`` into ``p``, which never shows a partly written file."""
    p = path(p)
    if is_remote(p):
        p.write_text(text, encoding="utf-8")
        return
    partial = p.with_name(p.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(p)


def append_text(p: str | os.PathLike, text: str) -> None:
    """``text`` added at the end of ``p`` (created if absent); on object storage, a rewrite."""
    p = path(p)
    if is_remote(p):
        p.write_text((p.read_text(encoding="utf-8") if p.exists() else "") + text, encoding="utf-8")
        return
    with open(p, "a", encoding="utf-8") as f:
        f.write(text)


@contextlib.contextmanager
def writing(p: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A local file to write ``p`` through: ``p`` itself when local, else a temporary file uploaded
    when the block ends without an error. The parent folder is made."""
    p = path(p)
    if not is_remote(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        yield p
        return
    with tempfile.TemporaryDirectory(prefix="fundax_upload_") as tmp:
        local = pathlib.Path(tmp) / p.name
        yield local
        fs, key = _fs(p)
        fs.put_file(str(local), key)


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move a file or folder (on object storage: copy every object, then delete the originals)."""
    if is_remote(src) != is_remote(dst):
        raise ValueError(f"cannot move {src} to {dst}: one is local, the other remote")
    if not is_remote(src):
        shutil.move(str(src), str(dst))
        return
    fs, key = _fs(src)
    fs.mv(key, _fs(dst)[1], recursive=True)


def rmtree(p: str | os.PathLike) -> None:
    """Delete a folder and everything in it."""
    if not is_remote(p):
        shutil.rmtree(p)
        return
    fs, key = _fs(p)
    fs.rm(key, recursive=True)


def upload_tree(local_dir: str | os.PathLike, remote_dir: str | os.PathLike,
                uploaded: dict[str, int] | None = None) -> None:
    """Copy the files under ``local_dir`` to ``remote_dir`` (same relative names).

    With ``uploaded`` (relative name -> size, updated in place), a file whose size has not
    changed since it was last uploaded is skipped: event files only grow.
    """
    fs, root = _fs(remote_dir)
    local_dir = pathlib.Path(local_dir)
    for file in sorted(f for f in local_dir.rglob("*") if f.is_file()):
        name = file.relative_to(local_dir).as_posix()
        size = file.stat().st_size
        if uploaded is not None and uploaded.get(name) == size:
            continue
        fs.put_file(str(file), f"{root.rstrip('/')}/{name}")
        if uploaded is not None:
            uploaded[name] = size


def list_files(remote_dir: str | os.PathLike) -> dict[str, int]:
    """Every object under ``remote_dir``: relative name -> size."""
    fs, root = _fs(remote_dir)
    root = root.rstrip("/") + "/"
    return {name[len(root):]: int(info["size"]) for name, info in fs.find(root, detail=True).items()
            if info.get("type", "file") == "file" and not name.endswith("/")}


def download_files(remote_dir: str | os.PathLike, names: list[str], local_dir: pathlib.Path) -> None:
    """Copy the objects ``names`` (relative to ``remote_dir``) into ``local_dir``."""
    fs, root = _fs(remote_dir)
    root = root.rstrip("/")
    for name in names:
        (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
    fs.get([f"{root}/{n}" for n in names], [str(local_dir / n) for n in names])


def local_cache(*parts: str) -> pathlib.Path:
    """A folder of this machine's fundax cache: ``$FUNDAX_CACHE`` or ``~/.cache/fundax``."""
    root = os.environ.get("FUNDAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fundax")
    return pathlib.Path(root, *parts)


# --- objects with generations: what a lease on object storage is made of ----------------------------------------

def _bucket_key(p: str | os.PathLike) -> tuple[Any, str, str]:
    if not str(p).startswith("gs://"):
        raise ValueError(f"{p}: generation preconditions need a gs:// path")
    fs, name = _fs(p)
    bucket, _, key = name.partition("/")
    return fs, bucket, key


def write_object(p: str | os.PathLike, data: bytes, if_generation_match: str) -> str:
    """Write the object ``p`` only if its generation is ``if_generation_match`` ("0": only if absent).

    Returns the new generation; :class:`FileExistsError` when the precondition fails.
    """
    fs, bucket, key = _bucket_key(p)
    meta = json.dumps({"name": key})
    body = (f"--==0==\nContent-Type: application/json; charset=UTF-8\n\n{meta}\n"
            "--==0==\nContent-Type: application/octet-stream\n\n").encode() + data + b"\n--==0==--"
    # A multipart upload: the JSON API's single request that carries ifGenerationMatch.
    out = fs.call("POST", f"{fs._location}/upload/storage/v1/b/{{}}/o", bucket, uploadType="multipart",
                  ifGenerationMatch=str(if_generation_match), data=body, json_out=True,
                  headers={"Content-Type": 'multipart/related; boundary="==0=="'})
    fs.invalidate_cache()
    return str(out["generation"])


def read_object(p: str | os.PathLike) -> tuple[bytes, str] | None:
    """The content of the object ``p`` and its generation, read together; None when absent."""
    fs, bucket, key = _bucket_key(p)
    try:
        headers, content = fs.call("GET", "b/{}/o/{}", bucket, key, alt="media")
    except FileNotFoundError:
        return None
    return content, str(headers["X-Goog-Generation"])


def delete_object(p: str | os.PathLike, if_generation_match: str) -> None:
    """Delete the object ``p`` if its generation is still ``if_generation_match`` (absent: nothing to do)."""
    fs, bucket, key = _bucket_key(p)
    # FileExistsError: the precondition failed, the object is another holder's now.
    with contextlib.suppress(FileNotFoundError, FileExistsError):
        fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=str(if_generation_match))
    fs.invalidate_cache()
