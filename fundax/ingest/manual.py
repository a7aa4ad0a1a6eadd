"""Writing a manual directory (docs/DATA_FORMAT.md) from an importer, and what it says it did.

An importer hands over one photograph at a time (:meth:`ManualDirWriter.add`); the
directory is built beside its final place (``OUT.partial``) and moved there only when the
whole import succeeded, so that a failed import leaves nothing that ``prepare`` would read.
Photographs are copied (a symlink would point outside the directory, which the format
refuses); lesion masks are written as 1-bit PNGs of the photograph's size.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from fundax import findings as findings_lib

ANNOTATIONS_FILE = "annotations.jsonl"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
LINE_KEYS = ("image_id", "file", "split", "disc", "fovea", "annotations", "lesion_masks")
"""The keys :meth:`ManualDirWriter.add` writes itself; ``extra`` may not use them."""


class IngestError(ValueError):
    """A source that cannot be imported: the message names the file (and the row) and what is wrong."""


@dataclasses.dataclass
class Summary:
    """What an import did: photographs written per split, positives per finding, and everything left out."""

    dataset: str
    findings: tuple[str, ...]
    """The fundax findings the dataset's labels map to: each line is positive or negative for these."""
    imported: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    positives: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(photograph, why) for each photograph not written."""
    left_out: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    """Why → how many source files were read but not imported (unmapped labels, stray files)."""
    not_assessed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    """Finding of :attr:`findings` → photographs written on which it is not assessed (no label)."""

    def text(self, out: os.PathLike | str) -> str:
        """The summary as the command prints it."""
        total = sum(self.imported.values())
        splits = ", ".join(f"{split} {n}" for split, n in sorted(self.imported.items())) or "none"
        lines = [f"{self.dataset}: {total} photographs written to {out} ({splits}); "
                 f"{len(self.skipped)} skipped"]
        for name in self.findings:
            negative = total - self.positives[name] - self.not_assessed[name]
            unknown = f", {self.not_assessed[name]} not assessed" if self.not_assessed[name] else ""
            lines.append(f"  {name}: {self.positives[name]} positive, {negative} negative{unknown}")
        lines += [f"  skipped {image}: {why}" for image, why in self.skipped]
        lines += [f"  left out: {n} {why}" for why, n in sorted(self.left_out.items())]
        return "\n".join(lines)


class ManualDirWriter:
    """Photographs, lesion masks and annotation lines into a directory being built."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        (root / IMAGES_DIR).mkdir(parents=True)
        (root / MASKS_DIR).mkdir()
        self._lines = open(root / ANNOTATIONS_FILE, "w", encoding="utf-8")

    def close(self) -> None:
        self._lines.close()

    def add(self, image_id: str, photo: pathlib.Path, split: str, disc: Sequence[float] | None,
            fovea: Sequence[float] | None, annotator: str, findings: Mapping[str, list[str] | None],
            masks: Mapping[str, np.ndarray], assessed: Sequence[str] | None = None,
            extra: Mapping[str, object] | None = None) -> None:
        """Copy ``photo``, write ``masks`` (finding → bool (H, W)) and the photograph's line.

        ``disc`` and ``fovea`` None: a line without centres, for ``prepare --locate_missing``;
        a finding's regions None: an image-level label (docs/DATA_FORMAT.md). ``assessed``: the
        findings the dataset's labels say anything about (the grader entry's ``"assessed"``); the
        others are *not assessed* on this line, neither present nor absent. None: every finding.
        ``extra``: further keys of the line (a dataset's diagnosis label), kept and not interpreted.
        """
        if assessed is not None:
            unknown = [name for name in assessed if name not in findings_lib.FINDINGS]
            listed_unassessed = [name for name in findings if name not in assessed]
            if unknown or listed_unassessed or len(set(assessed)) != len(assessed):
                raise ValueError(f"{image_id}: assessed {list(assessed)} must name known findings once each "
                                 f"and every finding listed ({', '.join(findings)})")
        clashing = [key for key in extra or {} if key in LINE_KEYS]
        if clashing:
            raise ValueError(f"{image_id}: extra keys {clashing} are keys of the format")
        file = f"{IMAGES_DIR}/{image_id}{photo.suffix.lower()}"
        shutil.copy2(photo, self.root / file)
        lesion_masks = {}
        for name, mask in masks.items():
            lesion_masks[name] = f"{MASKS_DIR}/{image_id}_{name}.png"
            Image.fromarray(np.asarray(mask, dtype=bool)).save(self.root / lesion_masks[name])
        line: dict = {"image_id": image_id, "file": file, "split": split}
        if disc is not None and fovea is not None:
            line |= {"disc": [float(v) for v in disc], "fovea": [float(v) for v in fovea]}
        line |= dict(extra or {})
        reading: dict = {"annotator": annotator, "findings": dict(findings)}
        if assessed is not None and set(assessed) != set(findings_lib.FINDINGS):
            reading["assessed"] = [name for name in findings_lib.FINDINGS if name in assessed]
        line["annotations"] = [reading]
        if lesion_masks:
            line["lesion_masks"] = lesion_masks
        self._lines.write(json.dumps(line) + "\n")


@contextlib.contextmanager
def building(out: pathlib.Path) -> Iterator[ManualDirWriter]:
    """A writer into ``OUT.partial``, moved to ``out`` when the block ends without an error.

    ``out`` must not exist, or be an empty directory: an import never mixes with other files.
    """
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise IngestError(f"--out {out} exists and is not an empty directory; choose a new one")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        raise IngestError(f"{partial} exists (left by an import that was stopped?); remove it first")
    writer = ManualDirWriter(partial)
    try:
        yield writer
    except BaseException:
        writer.close()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    writer.close()
    if out.exists():
        out.rmdir()
    os.replace(partial, out)
