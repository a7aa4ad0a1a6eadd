"""The annotations file the tool writes: each grader's reading merged into its image's line.

Every save is serialised across threads and processes (an operating-system file
lock, ``filelock``'s, on the sidecar ``<file>.lock``, which the system drops when
its holder dies), reads the file again under that lock, changes only the line of
the image being saved, and replaces the file atomically (a temporary file beside
it, fsync, rename, fsync of the folder). So several graders writing one file, or
a writer killed at any instant, lose nothing: readers see the old file or the new
one, never a mix. A file that is a symbolic link is written through to its
target, locked there, and stays a link.

Every other line, valid or not, is kept byte for byte. In the changed line the
other graders' entries and every other key (``lesion_masks``, extra keys, a grader
entry's ``assessed``, which widens to a finding its grader lists; absent or ``null``
centres, unless the grader placed them) keep their values
and key order (JSON whitespace may change); so do image-level labels (a finding's
regions ``null``) the grader left as they were. A line is only written if the
dataset reader (:func:`fundax.data.annotations.parse_line`) accepts it, a line
without centres as ``prepare --locate_missing`` reads it. The line of an image
is the one the reader keeps: the first line with its id that the reader accepts,
else (a placeholder, say, with centres and no reading yet) the first with its id.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import posixpath
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import filelock

from fundax import findings as findings_lib
from fundax import regions as regions_lib
from fundax.data import annotations as annotations_lib

Point = tuple[float, float]


class StoreError(ValueError):
    """A save that would write a line the dataset reader rejects, or cannot be merged."""


class CentresChanged(StoreError):
    """The disc or fovea of the line changed since the grader loaded it (another grader moved them)."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The parsed lines of the file at one moment: image id → JSON object of its first line."""

    lines: Mapping[str, dict[str, Any]]
    ids_by_file: Mapping[str, str]

    def entry(self, image_id: str, annotator: str) -> dict[str, Any] | None:
        """``annotator``'s entry in the line of ``image_id``, if any."""
        for entry in entries(self.lines.get(image_id)):
            if entry.get("annotator") == annotator:
                return entry
        return None

    def centres(self, image_id: str) -> tuple[Point, Point] | None:
        """(disc, fovea) of the line of ``image_id``, if it has usable ones."""
        line = self.lines.get(image_id)
        try:
            disc, fovea = _point(line["disc"]), _point(line["fovea"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError, OverflowError):
            return None
        return (disc, fovea) if all(map(math.isfinite, disc + fovea)) else None


def _point(value: Any) -> Point:
    x, y = value
    return float(x), float(y)


def entries(line: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The grader entries (objects) of a parsed line; none for a missing or malformed list."""
    value = (line or {}).get("annotations")
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []


def _physical_lines(data: bytes) -> list[bytes]:
    """The lines of ``data`` with their newlines, split at ``\\n`` alone as the reader splits them."""
    parts = data.split(b"\n")
    return [part + b"\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _decode(raw: bytes, first: bool) -> str:
    """The text of one physical line; as in the reader, a byte order mark is only ignored at the start of the file."""
    return raw.decode("utf-8-sig" if first else "utf-8")


def _loads(raw: bytes, first: bool = False) -> dict[str, Any] | None:
    """The JSON object of one physical line, or None for a blank, broken or non-object line."""
    try:
        # As in the reader: a repeated key makes the line broken, rather than letting the last one win.
        obj = json.loads(_decode(raw, first), object_pairs_hook=annotations_lib.no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _unlocated(file: str) -> tuple[Point, Point, dict[str, Any]]:
    """Stands in for the locator of ``prepare --locate_missing``: the rest of a line without centres is checked."""
    return (0.0, 0.0), (1.0, 1.0), {}


def _parse(text: str) -> annotations_lib.Record:
    """The record of a line as ``prepare --locate_missing`` reads it (centres may be left out); AnnotationError."""
    return annotations_lib.parse_line(text, locate=_unlocated)


def _accepted(raw: bytes, first: bool, manual_dir: pathlib.Path) -> bool:
    """Whether the dataset reader accepts this line (as a first line with its image id)."""
    try:
        record = _parse(_decode(raw, first))
        annotations_lib.resolve_image_path(manual_dir, record.file)
    except (UnicodeDecodeError, annotations_lib.AnnotationError):
        return False
    return True


def _index(lines: Sequence[bytes], manual_dir: pathlib.Path) -> dict[str, int]:
    """Image id → position of its line: the first with the id the reader accepts, else the first with the id.

    The reader skips a rejected line and keeps a later one with the same id, so
    writing into the first would leave the other graders' line a rejected duplicate.
    """
    positions: dict[str, list[int]] = {}
    for k, raw in enumerate(lines):
        obj = _loads(raw, first=k == 0)
        if obj is not None and isinstance(obj.get("image_id"), str):
            positions.setdefault(obj["image_id"], []).append(k)
    index = {}
    for image_id, ks in positions.items():
        # One line per id is the rule; only a repeated id needs the reader's full checks.
        accepted = (k for k in ks if len(ks) > 1 and _accepted(lines[k], k == 0, manual_dir))
        index[image_id] = next(accepted, ks[0])
    return index


Findings = Mapping[str, Sequence[str] | None]
"""Finding → its region names, or None: an image-level label (present, regions not marked)."""


def canonical_findings(found: Findings) -> dict[str, list[str] | None]:
    """Findings in registry order, each with its regions deduplicated in canonical order (None kept).

    Raises StoreError for an unknown finding or region, or a finding with an empty list of regions.
    """
    out: dict[str, list[str] | None] = {}
    for name, names in found.items():
        if name not in findings_lib.FINDINGS:
            raise StoreError(f"unknown finding {name!r}; valid findings are: {', '.join(findings_lib.FINDINGS)}")
        if names is None:
            out[name] = None
            continue
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
            raise StoreError(f"finding {name!r} needs a non-empty list of regions (names), or null for an"
                             f" image-level label, got {names!r}")
        try:
            out[name] = list(regions_lib.bits_to_regions(regions_lib.regions_to_bits(names)))
        except regions_lib.RegionError as e:
            raise StoreError(f"finding {name!r}: {e}") from None
    return {name: out[name] for name in findings_lib.FINDINGS if name in out}


def merge_entry(
    line: dict[str, Any] | None,
    *,
    image_id: str,
    file: str,
    split: str,
    disc: Point | None,
    fovea: Point | None,
    annotator: str,
    findings: Findings,
) -> dict[str, Any]:
    """The line of ``image_id`` with ``annotator``'s findings and the given centres (None: none given); pure.

    A new line gets ``file`` and ``split``, and no centres when none are given; an
    existing one (whose ``file`` must name the same path, normalised) keeps its own,
    its centres when none are given, its other graders' entries, the extra keys of
    this grader's entry, and every other key.
    """
    found = canonical_findings(findings)
    if line is None:
        centres = {} if disc is None or fovea is None else {"disc": list(disc), "fovea": list(fovea)}
        return {"image_id": image_id, "file": file, "split": split, **centres,
                "annotations": [{"annotator": annotator, "findings": found}]}
    if not isinstance(line.get("file"), str) or posixpath.normpath(line["file"]) != posixpath.normpath(file):
        raise StoreError(f"image id {image_id!r} already names {line.get('file')!r} in the annotations file,"
                         f" not {file!r}")
    merged = dict(line)
    if disc is not None and fovea is not None:
        merged["disc"], merged["fovea"] = list(disc), list(fovea)
    readings = list(line.get("annotations") or [])
    for k, entry in enumerate(readings):
        if isinstance(entry, dict) and entry.get("annotator") == annotator:
            readings[k] = {**entry, "findings": found}
            if isinstance(entry.get("assessed"), list):
                # An import's grader who lists a finding its labels did not cover has now assessed it.
                added = [name for name in findings_lib.FINDINGS if name in found and name not in entry["assessed"]]
                readings[k]["assessed"] = [*entry["assessed"], *added]
            break
    else:
        readings.append({"annotator": annotator, "findings": found})
    merged["annotations"] = readings
    return merged


def _dump(obj: dict[str, Any]) -> str:
    """One line of JSON, UTF-8 text where it can be (a lone surrogate stays escaped)."""
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise StoreError(f"the line of {obj.get('image_id')!r} holds NaN or Infinity, which JSON cannot:"
                         " mend it in the file first") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, allow_nan=False)
    return text


class AnnotationStore:
    """One ``annotations.jsonl``: cached reads, and locked, atomic merges of one grader's reading."""

    def __init__(self, path: str | os.PathLike):
        given = pathlib.Path(path).absolute()
        # A link to a file graders share is written through: replacing the link would leave them the old file.
        self.path = given.resolve()
        self.manual_dir = given.parent  # ``file`` paths are relative to the folder the file was named in
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._thread_lock = threading.Lock()
        self._file_lock = filelock.FileLock(self.lock_path, thread_local=False)
        self._cache: tuple[tuple[int, int, int], Snapshot] | None = None

    def snapshot(self) -> Snapshot:
        """The file as it is now (re-parsed only when it was replaced or changed)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return Snapshot({}, {})
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cache
        if cached is not None and cached[0] == key:
            return cached[1]
        lines = _physical_lines(self.path.read_bytes())
        by_id = {image_id: _loads(lines[k], k == 0) or {}
                 for image_id, k in _index(lines, self.manual_dir).items()}
        by_file = {os.path.normpath(obj["file"]): i for i, obj in by_id.items() if isinstance(obj.get("file"), str)}
        snap = Snapshot(by_id, by_file)
        self._cache = (key, snap)
        return snap

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # The file lock keeps other processes (and other stores of this file) out;
        # the thread lock orders this store's threads, which share one file lock.
        with self._thread_lock, self._file_lock:
            yield

    def save(
        self,
        image_id: str,
        *,
        file: str,
        split: str,
        disc: Sequence[float] | None,
        fovea: Sequence[float] | None,
        annotator: str,
        findings: Findings,
        centres_seen: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> dict[str, Any]:
        """Merge ``annotator``'s findings for ``image_id`` into the file; the line written.

        ``disc`` and ``fovea`` are both given (the grader placed them) or both None (the
        line's stay as they are: none on a new line). ``centres_seen``, the (disc, fovea)
        the grader was shown (None: none yet), must still be the line's, else
        CentresChanged: another grader moved them meanwhile.
        """
        if (disc is None) != (fovea is None):
            raise StoreError("disc and fovea go together: give both or neither")
        disc_xy = None if disc is None else _point(disc)
        fovea_xy = None if fovea is None else _point(fovea)
        with self._locked():
            self._remove_stale_temporaries()
            data = self.path.read_bytes() if self.path.exists() else b""
            lines = _physical_lines(data)
            at = _index(lines, self.manual_dir).get(image_id)
            old = _loads(lines[at], at == 0) if at is not None else None
            now = Snapshot({image_id: old}, {}).centres(image_id) if old is not None else None
            seen = None if centres_seen is None else (_point(centres_seen[0]), _point(centres_seen[1]))
            if old is not None and now != seen:
                raise CentresChanged(f"the disc and fovea of {image_id!r} were moved by another grader since you"
                                     " opened it; reload to see them")
            merged = merge_entry(old, image_id=image_id, file=file, split=split, disc=disc_xy, fovea=fovea_xy,
                                 annotator=annotator, findings=findings)
            text = _dump(merged)
            try:
                _parse(text)
            except annotations_lib.AnnotationError as e:
                raise StoreError(f"the line of {image_id!r} would be rejected by the dataset reader: {e}") from None
            new_line = text.encode("utf-8") + b"\n"
            if at is None:
                if lines and not lines[-1].endswith(b"\n"):
                    lines[-1] += b"\n"  # a last line without its newline must not swallow ours
                lines.append(new_line)
            else:
                lines[at] = new_line
            self._replace(b"".join(lines))
            return merged

    def _temporary_prefix(self) -> str:
        return f".{self.path.name}."

    def _remove_stale_temporaries(self) -> None:
        # Under the lock no other writer is between its temporary file and the rename,
        # so any temporary file still there was left by a writer that died.
        for leftover in self.path.parent.glob(self._temporary_prefix() + "*.tmp"):
            leftover.unlink(missing_ok=True)

    def _replace(self, data: bytes) -> None:
        """Write ``data`` as the whole file, atomically and durably."""
        try:
            mode = self.path.stat().st_mode & 0o777
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        fd, tmp = tempfile.mkstemp(prefix=self._temporary_prefix(), suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.chmod(tmp, mode)  # mkstemp makes 0600; keep the file readable as it was
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if os.name == "nt":
            return  # Windows cannot open a folder to flush it
        # The rename itself is only durable once the folder is on disk.
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def first_unread(snapshot: Snapshot, image_ids: Sequence[str], annotator: str) -> int:
    """Position of the first image ``annotator`` has no entry for; ``len(image_ids)`` if none."""
    for k, image_id in enumerate(image_ids):
        if snapshot.entry(image_id, annotator) is None:
            return k
    return len(image_ids)


def count_read(snapshot: Snapshot, image_ids: Sequence[str], annotator: str) -> int:
    """How many of ``image_ids`` ``annotator`` has an entry for."""
    return sum(snapshot.entry(image_id, annotator) is not None for image_id in image_ids)
