"""Reading ``annotations.jsonl`` of a manual directory, and the graders' consensus (§3.1).

``docs/DATA_FORMAT.md`` fixes the format. Every line is checked in full
and either becomes a :class:`Record` or a :class:`Rejection` with the reason,
never half-used, so that lines read = lines accepted + lines rejected.

Choices the format leaves open:

* Blank (whitespace-only) lines are not records: they are skipped and not
  counted as read. Line numbers still count every physical line, from 1.
* A UTF-8 byte order mark at the start of the file is ignored; a line ends at
  ``\\n`` and a ``\\r`` before it is dropped too.
* A line that is not valid UTF-8 is rejected; its ``text`` shows the bad bytes
  as ``\\xNN`` escapes, so that it can still be written out as UTF-8.
* A key repeated within a JSON object (also a finding repeated within one
  grader's findings) is rejected rather than letting the last one win.
* Extra keys are allowed at the top level and in grader entries; they are kept
  in ``Record.extra`` and ``GraderRead.extra`` and not interpreted.
* A region listed twice for one finding counts once.
* A later line with the ``image_id`` of an accepted line is rejected; ids of
  rejected lines are not reserved.
* ``file`` must be relative, stay inside the manual directory after ``..`` and
  symlinks are resolved, and end in .jpg, .jpeg, .png, .tif or .tiff.
  Whether it exists and decodes is checked later (:mod:`fundax.data.images`),
  as are coordinates beyond the image's width and height.
* A grader entry's optional ``assessed`` (a list of finding names, each once) says which
  findings that grader assessed (an import of a dataset that labels a few); the grader may
  list no other. Without it the grader assessed every finding, as the format always meant.
  A finding no grader of the line assessed is *not assessed* there: neither present nor
  absent, its votes :data:`NOT_ASSESSED`, and no ``lesion_masks`` entry may name it.
* The optional ``lesion_masks`` (finding → a mask image's path, where lesion
  pixels are known, e.g. from a segmentation) is checked like ``file``; whether
  each mask decodes and matches the photograph's size is checked later too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import posixpath
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fundax import findings as findings_lib
from fundax import regions as regions_lib

REQUIRED_KEYS: tuple[str, ...] = ("image_id", "file", "split", "disc", "fovea", "annotations")
LESION_MASKS_KEY = "lesion_masks"
"""Optional: finding → path of a mask of its lesion pixels (DATA_FORMAT.md)."""
ASSESSED_KEY = "assessed"
"""Optional in a grader entry: the findings that grader assessed (DATA_FORMAT.md)."""
NOT_ASSESSED = -1
"""The votes of a finding the line does not assess: no label either way (:func:`consensus`)."""
SPLITS: tuple[str, ...] = ("train", "test")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
IMAGE_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
_BOM = b"\xef\xbb\xbf"


class AnnotationError(ValueError):
    """Why one line is rejected (message = the reason)."""


@dataclasses.dataclass(frozen=True)
class GraderRead:
    """One grader's reading of one image."""

    annotator: str
    findings: Mapping[str, tuple[str, ...]]
    """Finding → region names (deduplicated, canonical order); findings in registry order. An empty
    tuple: the grader gave the finding as an image-level label (``null`` on disk), no regions."""
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    assessed: tuple[str, ...] = findings_lib.FINDINGS
    """The findings this grader assessed, registry order: every one unless the entry says otherwise."""

    def __post_init__(self) -> None:
        # A listed finding outside ``assessed`` would count as absent in Record.votes (-1 + 1 = 0).
        listed = [name for name in self.findings if name not in self.assessed]
        if listed:
            raise ValueError(f"grader {self.annotator!r} lists {listed}, which its assessed leaves out")


@dataclasses.dataclass(frozen=True)
class Record:
    """One accepted line of ``annotations.jsonl``."""

    image_id: str
    file: str
    split: str
    disc: tuple[float, float]
    fovea: tuple[float, float]
    graders: tuple[GraderRead, ...]
    line: str
    line_number: int
    extra: Mapping[str, Any]
    lesion_masks: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Finding → path (relative to the manual directory) of its lesion mask; registry order."""

    @property
    def assessed(self) -> tuple[str, ...]:
        """The findings at least one grader assessed, registry order; the others have no label here."""
        return tuple(name for name in findings_lib.FINDINGS if any(name in g.assessed for g in self.graders))

    def votes(self) -> np.ndarray:
        """int32[len(FINDINGS)], registry order: how many graders listed each finding;
        :data:`NOT_ASSESSED` for a finding no grader assessed."""
        votes = np.array([0 if name in self.assessed else NOT_ASSESSED for name in findings_lib.FINDINGS],
                         np.int32)
        for grader in self.graders:
            for name in grader.findings:
                votes[findings_lib.finding_index(name)] += 1
        return votes

    def region_bits(self) -> np.ndarray:
        """uint8[len(FINDINGS)]: union of the regions of the graders listing each finding."""
        bits = np.zeros(len(findings_lib.FINDINGS), np.uint8)
        for grader in self.graders:
            for name, names in grader.findings.items():
                bits[findings_lib.finding_index(name)] |= regions_lib.regions_to_bits(names)
        return bits


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A line (or the image it names) that cannot be used, and why."""

    source: str
    line_number: int
    reason: str
    text: str

    def as_json(self) -> dict:
        """The rejects-file form: file, line, reason and the original text."""
        return {"file": self.source, "line": self.line_number, "reason": self.reason, "text": self.text}


@dataclasses.dataclass
class ReadResult:
    """Accepted records and rejected lines of one annotations file, in file order."""

    records: list[Record]
    rejections: list[Rejection]

    @property
    def num_read(self) -> int:
        """Lines read (blank lines excepted) = accepted + rejected."""
        return len(self.records) + len(self.rejections)


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook`` that refuses a key given twice (JSON would keep the last)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise AnnotationError(f"duplicate key {key!r} in a JSON object")
        obj[key] = value
    return obj


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def read_point(obj: dict[str, Any], key: str) -> tuple[float, float]:
    """``obj[key]`` as an (x, y) of finite numbers; AnnotationError naming ``key`` otherwise."""
    value = obj[key]
    if not isinstance(value, list) or len(value) != 2:
        raise AnnotationError(f"{key!r} must be a list [x, y] of 2 numbers, got {value!r}")
    point = []
    for v in value:
        # bool is an int in Python but never a coordinate.
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise AnnotationError(f"{key!r} must hold numbers, got {_type_name(v)} {v!r}")
        try:
            f = float(v)
        except OverflowError:
            raise AnnotationError(f"{key!r} holds a number too large for a float") from None
        if not math.isfinite(f):
            raise AnnotationError(f"{key!r} must hold finite numbers, got {value!r}")
        if f < 0:
            raise AnnotationError(f"{key!r} has a negative coordinate: {value!r}")
        point.append(f)
    return point[0], point[1]


def _grader(entry: Any, index: int) -> GraderRead:
    where = f"annotations[{index}]"
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where} must be an object, got {_type_name(entry)}")
    for key in ("annotator", "findings"):
        if key not in entry:
            raise AnnotationError(f"{where} is missing the key {key!r}")
    annotator, found = entry["annotator"], entry["findings"]
    if not isinstance(annotator, str) or not annotator:
        raise AnnotationError(f"{where}.annotator must be a non-empty string, got {annotator!r}")
    if not isinstance(found, dict):
        raise AnnotationError(f"{where}.findings must be an object, got {_type_name(found)}")
    by_finding: dict[str, tuple[str, ...]] = {}
    for name, names in found.items():
        _known_finding(name, f"{where} (annotator {annotator!r})")
        if names is None:  # an image-level label: present, its regions not marked
            by_finding[name] = ()
            continue
        if not isinstance(names, list) or not names:
            raise AnnotationError(
                f"{where} (annotator {annotator!r}): finding {name!r} needs a non-empty list of regions,"
                f" or null for an image-level label (present, regions not marked), got {names!r}"
            )
        for region in names:
            if not isinstance(region, str):
                raise AnnotationError(
                    f"{where} (annotator {annotator!r}): finding {name!r} has a region that is not a"
                    f" string: {region!r}"
                )
        try:
            bits = regions_lib.regions_to_bits(names)
        except regions_lib.RegionError as e:
            raise AnnotationError(f"{where} (annotator {annotator!r}): finding {name!r}: {e}") from None
        by_finding[name] = regions_lib.bits_to_regions(bits)
    ordered = {name: by_finding[name] for name in findings_lib.FINDINGS if name in by_finding}
    assessed = _assessed(entry[ASSESSED_KEY], where) if ASSESSED_KEY in entry else findings_lib.FINDINGS
    listed = [name for name in ordered if name not in assessed]
    if listed:
        raise AnnotationError(f"{where} (annotator {annotator!r}) lists {', '.join(map(repr, listed))}, "
                              f"which its {ASSESSED_KEY!r} leaves out")
    extra = {k: v for k, v in entry.items() if k not in ("annotator", "findings", ASSESSED_KEY)}
    return GraderRead(annotator=annotator, findings=ordered, extra=extra, assessed=assessed)


def _known_finding(name: str, where: str) -> None:
    """AnnotationError naming ``where`` unless ``name`` is a finding of the registry."""
    try:
        findings_lib.get_finding(name)
    except findings_lib.UnknownFindingError as e:
        raise AnnotationError(f"{where}: {e}") from None


def _check_file(file: str, key: str = "'file'") -> None:
    """The checks of a path (``key`` names it) that need no file system: relative, not leaving, an image."""
    if "\x00" in file:
        raise AnnotationError(f"{key} holds a NUL character: {file!r}")
    try:
        file.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in the JSON names no file on any disk
        raise AnnotationError(f"{key} {file!r} is not valid unicode (a lone surrogate)") from None
    if posixpath.isabs(file) or os.path.isabs(file):
        raise AnnotationError(f"{key} must be relative to the manual directory, got absolute {file!r}")
    normal = posixpath.normpath(file)
    if normal == ".." or normal.startswith("../"):
        raise AnnotationError(f"{key} {file!r} escapes the manual directory")
    if posixpath.splitext(file)[1].lower() not in IMAGE_EXTENSIONS:
        raise AnnotationError(
            f"{key} {file!r} has an unsupported extension; want one of {', '.join(IMAGE_EXTENSIONS)}"
        )


def _lesion_masks(value: Any) -> dict[str, str]:
    """The optional ``lesion_masks`` object, checked: finding → mask path, in registry order."""
    if not isinstance(value, dict):
        raise AnnotationError(f"{LESION_MASKS_KEY!r} must be an object (finding -> mask file), "
                              f"got {_type_name(value)}")
    for name, file in value.items():
        _known_finding(name, LESION_MASKS_KEY)
        if not isinstance(file, str) or not file:
            raise AnnotationError(f"{LESION_MASKS_KEY}[{name!r}] must be a non-empty string, got {file!r}")
        _check_file(file, f"{LESION_MASKS_KEY}[{name!r}]")
    return {name: value[name] for name in findings_lib.FINDINGS if name in value}


def _assessed(value: Any, where: str) -> tuple[str, ...]:
    """A grader entry's optional ``assessed`` list, checked: known findings, each once; registry order."""
    key = f"{where}.{ASSESSED_KEY}"
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise AnnotationError(f"{key} must be a list of finding names, got {value!r}")
    for name in value:
        _known_finding(name, key)
    if len(set(value)) != len(value):
        twice = sorted({name for name in value if value.count(name) > 1})
        raise AnnotationError(f"{key} lists {', '.join(map(repr, twice))} more than once")
    return tuple(name for name in findings_lib.FINDINGS if name in value)


Locator = Callable[[str], tuple[tuple[float, float], tuple[float, float], dict[str, Any]]]
"""``locate(file) -> (disc, fovea, what was found)``: centres for a line that has none
(``prepare --locate_missing``); raises AnnotationError when it cannot place them with confidence."""
LOCATED_KEY = "located"
"""The key a line whose centres were located (not given) carries in its record's ``extra``."""


def parse_line(text: str, line_number: int = 1, locate: Locator | None = None) -> Record:
    """The record of one line (``text`` without its newline); AnnotationError(reason) if bad.

    With ``locate``, a line without ``disc`` and ``fovea`` (both absent or null) gets the centres
    ``locate`` finds in its photograph, and ``extra["located"]`` says what was found.
    """
    try:
        obj = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"not valid JSON: {e.msg} (column {e.colno})") from None
    except AnnotationError:
        raise
    except ValueError as e:  # e.g. an integer with more digits than Python parses
        raise AnnotationError(f"not valid JSON: {e}") from None
    except RecursionError:
        raise AnnotationError("not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise AnnotationError(f"not a JSON object: got {_type_name(obj)}")
    unplaced = all(obj.get(key) is None for key in ("disc", "fovea"))
    optional = ("disc", "fovea") if locate is not None and unplaced else ()
    missing = [key for key in REQUIRED_KEYS if key not in obj and key not in optional]
    if missing:
        hint = "; prepare --locate_missing finds disc and fovea" if {"disc", "fovea"} <= set(missing) else ""
        raise AnnotationError(f"missing required key(s): {', '.join(map(repr, missing))}{hint}")

    image_id = obj["image_id"]
    if not isinstance(image_id, str) or not IMAGE_ID_PATTERN.fullmatch(image_id):
        raise AnnotationError(f"bad image_id {image_id!r}: want a string matching {IMAGE_ID_PATTERN.pattern}")
    file = obj["file"]
    if not isinstance(file, str) or not file:
        raise AnnotationError(f"'file' must be a non-empty string, got {file!r}")
    _check_file(file)
    split = obj["split"]
    if split not in SPLITS:
        raise AnnotationError(f"bad split {split!r}: want one of {', '.join(map(repr, SPLITS))}")
    located = None
    if optional:
        disc, fovea, located = locate(file)
    else:
        disc, fovea = read_point(obj, "disc"), read_point(obj, "fovea")
    if disc == fovea:
        raise AnnotationError(f"disc equals fovea ({disc[0]:g}, {disc[1]:g}): the regions are undefined")

    entries = obj["annotations"]
    if not isinstance(entries, list) or not entries:
        raise AnnotationError(f"'annotations' must be a non-empty list of grader entries, got {entries!r}")
    graders = tuple(_grader(entry, i) for i, entry in enumerate(entries))
    seen: set[str] = set()
    for grader in graders:
        if grader.annotator in seen:
            raise AnnotationError(f"duplicate annotator {grader.annotator!r}")
        seen.add(grader.annotator)

    lesion_masks = _lesion_masks(obj[LESION_MASKS_KEY]) if LESION_MASKS_KEY in obj else {}
    assessed = {name for grader in graders for name in grader.assessed}
    masked = [name for name in lesion_masks if name not in assessed]
    if masked:
        raise AnnotationError(f"{LESION_MASKS_KEY!r} names {', '.join(map(repr, masked))}, "
                              "which no grader assessed")

    return Record(
        image_id=image_id,
        file=file,
        split=split,
        disc=disc,
        fovea=fovea,
        graders=graders,
        line=text,
        line_number=line_number,
        extra={k: v for k, v in obj.items() if k not in REQUIRED_KEYS and k != LESION_MASKS_KEY}
        | ({LOCATED_KEY: located} if located is not None else {}),
        lesion_masks=lesion_masks,
    )


def resolve_image_path(manual_dir: str | os.PathLike, file: str, key: str = "'file'") -> pathlib.Path:
    """The real path of ``file`` under ``manual_dir``; AnnotationError if it leads outside."""
    _check_file(file, key)
    root = pathlib.Path(manual_dir).resolve()
    try:
        path = (root / file).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise AnnotationError(f"{key} {file!r} cannot be resolved: {e}") from None
    if not path.is_relative_to(root):
        raise AnnotationError(f"{key} {file!r} escapes the manual directory (it resolves to {path})")
    return path


def _strip_newline(raw: bytes) -> bytes:
    raw = raw[:-1] if raw.endswith(b"\n") else raw
    return raw[:-1] if raw.endswith(b"\r") else raw


def read_annotations(path: str | os.PathLike, locate_missing: Callable[[pathlib.Path], Any] | None = None
                     ) -> ReadResult:
    """Every line of an annotations file, checked: records and rejections in file order.

    The manual directory is the file's folder; image paths are checked against it. With
    ``locate_missing`` (``photo path -> Locator result``), a line without centres has them
    located in its photograph (:func:`parse_line`).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"annotations file not found: {path}")
    source = os.fspath(path)
    result = ReadResult(records=[], rejections=[])
    first_line: dict[str, int] = {}
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            raw = _strip_newline(raw)
            if line_number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                reason = f"not valid UTF-8 (byte {e.start})"
                shown = raw.decode("utf-8", "backslashreplace")
                result.rejections.append(Rejection(source, line_number, reason, shown))
                continue
            if not text.strip():
                continue
            try:
                locate = None if locate_missing is None else (
                    lambda file: locate_missing(resolve_image_path(path.parent, file)))
                record = parse_line(text, line_number, locate)
                resolve_image_path(path.parent, record.file)
                for name, mask_file in record.lesion_masks.items():
                    resolve_image_path(path.parent, mask_file, f"{LESION_MASKS_KEY}[{name!r}]")
                first = first_line.get(record.image_id)
                if first is not None:
                    raise AnnotationError(f"duplicate image_id {record.image_id!r} (first on line {first})")
            except AnnotationError as e:
                result.rejections.append(Rejection(source, line_number, str(e), text))
                continue
            first_line[record.image_id] = line_number
            result.records.append(record)
    return result


def consensus(votes: np.ndarray, min_votes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Training label and weight (float32, shape of ``votes``) from grader votes (§3.1).

    label = 1 where votes ≥ min_votes; weight = 0 where 0 < votes < min_votes (an
    uncertain finding, left out of training and evaluation) or votes = :data:`NOT_ASSESSED`
    (no label at all, left out likewise), 1 elsewhere.
    """
    if min_votes < 1:
        raise ValueError(f"min_votes must be >= 1, got {min_votes}")
    votes = np.asarray(votes)
    if np.any(votes < NOT_ASSESSED):
        raise ValueError(f"votes must be non-negative counts or NOT_ASSESSED ({NOT_ASSESSED})")
    present = votes >= min_votes
    return present.astype(np.float32), (present | (votes == 0)).astype(np.float32)
