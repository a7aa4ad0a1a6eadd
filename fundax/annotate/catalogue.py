"""The photographs a session annotates: found under ``--images``, named, and served safely.

A photograph is any regular file under the images folder with an image
extension (the reader's list) whose real path, symlinks resolved, stays inside
that folder; hidden files and folders are skipped, symlinked folders are not
followed. Photographs are ordered by their path. The ``file`` written to the
annotations file is the path relative to the manual directory (the folder of
the annotations file), which must therefore hold the images folder.

An image id is the one an existing line gives the file; otherwise the path
without its extension, ``/`` and other characters the format forbids made
``_``, with a short hash of the path appended when that id is taken.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import posixpath
import re
from collections.abc import Mapping, Sequence

from fundax.data import annotations as annotations_lib

_FORBIDDEN = re.compile(r"[^A-Za-z0-9._-]+")


class CatalogueError(ValueError):
    """The images folder cannot be used (message names it and why)."""


class NotServed(LookupError):
    """A request for something that is not one of the session's photographs."""


@dataclasses.dataclass(frozen=True)
class Photo:
    """One photograph of the session."""

    index: int
    image_id: str
    file: str  # relative to the manual directory, POSIX separators: the line's "file"
    rel: str  # relative to the images folder, POSIX separators: its URL path


def _derived_id(file: str) -> str:
    stem = posixpath.splitext(file)[0]
    return _FORBIDDEN.sub("_", stem).strip("_")[:128] or "image"


def _hashed_id(file: str, base: str) -> str:
    tag = hashlib.sha1(file.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{base[:119]}-{tag}"


def walk(images_dir: pathlib.Path) -> tuple[list[str], list[str]]:
    """Relative POSIX paths of the image files under ``images_dir``, and of those left out, with why."""
    found, skipped = [], []
    for folder, subfolders, names in os.walk(images_dir):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in names:
            if name.startswith(".") or posixpath.splitext(name)[1].lower() not in annotations_lib.IMAGE_EXTENSIONS:
                continue
            path = pathlib.Path(folder, name)
            rel = path.relative_to(images_dir).as_posix()
            real = path.resolve()
            if not real.is_relative_to(images_dir):
                skipped.append(f"{rel} (leads outside the folder, to {real})")
            elif not real.is_file():
                skipped.append(f"{rel} (not a regular file)")
            elif not rel.isprintable() or rel != rel.encode("utf-8", "replace").decode("utf-8"):
                skipped.append(f"{rel!r} (a name the annotations file cannot hold)")
            else:
                found.append(rel)
    return sorted(found), sorted(skipped)


def list_photos(images_dir: pathlib.Path, manual_dir: pathlib.Path, found: Sequence[str],
                ids_by_file: Mapping[str, str]) -> list[Photo]:
    """The photographs at the paths ``found`` under ``images_dir``, with their image ids.

    ``images_dir`` and ``manual_dir`` are resolved paths; ``ids_by_file`` maps the
    normalised ``file`` of existing lines to their image ids.
    """
    prefix = images_dir.relative_to(manual_dir).as_posix()
    taken = set(ids_by_file.values())
    photos: list[Photo] = []
    for rel in found:
        file = rel if prefix == "." else f"{prefix}/{rel}"
        image_id = ids_by_file.get(os.path.normpath(file))
        if image_id is None:
            image_id = _derived_id(rel)
            if image_id in taken:
                image_id = _hashed_id(file, image_id)
        taken.add(image_id)
        photos.append(Photo(len(photos), image_id, file, rel))
    return photos


def check_folders(images_dir: str | os.PathLike, out: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
    """(images folder, manual directory), resolved; CatalogueError naming the flag and path if unusable."""
    images = pathlib.Path(images_dir)
    if not images.is_dir():
        raise CatalogueError(f"--images {images}: not a folder")
    out_path = pathlib.Path(out)
    if out_path.is_dir():
        raise CatalogueError(f"--out {out_path}: is a folder; want the annotations file, e.g."
                             f" {out_path}/annotations.jsonl")
    manual = out_path.absolute().parent
    if not manual.is_dir():
        raise CatalogueError(f"--out {out_path}: the folder {manual} does not exist")
    target = out_path.resolve()  # a symbolic link is written through to its target, beside it
    if not target.parent.is_dir():
        raise CatalogueError(f"--out {out_path}: leads to {target}, whose folder does not exist")
    if not os.access(target.parent, os.W_OK):
        raise CatalogueError(f"--out {out_path}: the folder {target.parent} is not writable")
    images, manual = images.resolve(), manual.resolve()
    if not images.is_relative_to(manual):
        raise CatalogueError(f"--images {images_dir}: must lie inside {manual}, the folder of --out, because the"
                             " image paths in the annotations file are relative to it")
    return images, manual


def resolve_photo(images_dir: pathlib.Path, by_rel: Mapping[str, Photo], rel: str) -> pathlib.Path:
    """The real path of the photograph at URL path ``rel``; NotServed for anything else.

    Only paths of the session's list are served, and only while their real path
    still lies inside the images folder (a symlink may have been changed since).
    """
    if rel not in by_rel:
        raise NotServed(f"{rel!r} is not one of this session's photographs")
    real = (images_dir / rel).resolve()
    if not real.is_relative_to(images_dir) or not real.is_file():
        raise NotServed(f"{rel!r} no longer leads to a file inside the images folder")
    return real


def photo_index(photos: Sequence[Photo]) -> dict[str, Photo]:
    """URL path → photograph."""
    return {photo.rel: photo for photo in photos}
