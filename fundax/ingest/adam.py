"""ADAM (iChallenge-AMD), the AMD detection challenge of ISBI 2020: its training set as a manual directory.

The layout read (the training photographs with their disc and fovea annotations, and the
lesion masks, unpacked side by side; ``docs/DATASETS.md``)::

    SRC/Training400/AMD/A0001.jpg …            SRC/Training400/Non-AMD/N0001.jpg …
    SRC/Training400/Fovea_location.xlsx        (ID, imgName, Fovea_X, Fovea_Y; one row per photograph)
    SRC/Training400/Disc_Masks/<name>.bmp      (disc 0, background 255)
    SRC/Training400-Lesion/Lesion_Masks/{drusen,exudate,hemorrhage,scar,others}/<name>.bmp
                                               (lesion 0, background 255; only where the lesion is)

Each row of the sheet becomes one line of the train split: the fovea from the sheet, the
disc centre the centroid of the disc mask. A lesion mask of a mapped type makes the
photograph positive for its finding, with the regions that hold the lesion
(:func:`fundax.ingest.lesions.regions_of_lesion`); no mask, negative. A photograph whose disc
mask is empty or missing, or whose fovea is (0, 0), has no centres: its line is written
without them (``prepare --locate_missing``) and its lesions are image-level labels. The AMD
label (the photograph's folder) is kept on the line as ``"amd"``.
"""

from __future__ import annotations

import pathlib
import re

from fundax.data import images
from fundax.ingest import ichallenge, lesions
from fundax.ingest.manual import IngestError, ManualDirWriter, Summary
from fundax.regions import RegionError

NAME = "ADAM"
PHOTOS = pathlib.PurePath("Training400")
FOLDERS = {"A": "AMD", "N": "Non-AMD"}
"""First letter of a photograph's name → its folder under :data:`PHOTOS` (and its AMD label: ``A``)."""
SHEET = PHOTOS / "Fovea_location.xlsx"
COLUMNS = ("imgName", "Fovea_X", "Fovea_Y")
DISC_MASKS = PHOTOS / "Disc_Masks"
LESION_MASKS = pathlib.PurePath("Training400-Lesion") / "Lesion_Masks"
LESIONS: dict[str, str | None] = {"drusen": "drusen", "exudate": "hard_exudate", "hemorrhage": "hemorrhage",
                                  "scar": None, "others": None}
"""ADAM lesion folder → fundax finding, or None: not mapped (``docs/DATASETS.md`` says why)."""
MAPPED: tuple[str, ...] = tuple(finding for finding in LESIONS.values() if finding)
"""The findings ADAM's lesion masks assess; the other five are not assessed on its lines."""
DARK_BELOW = 128
"""Gray levels under this are disc or lesion (drawn 0 on 255)."""
SPLIT = "train"

_NAME = re.compile(r"[AN]\d{4}\.jpg")


def import_dataset(src: pathlib.Path, writer: ManualDirWriter, min_share: float, annotator: str) -> Summary:
    """Every photograph of ADAM's training set under ``src`` into ``writer``; what was done and left out."""
    summary = Summary(NAME, findings=MAPPED)
    if not all((src / PHOTOS / folder).is_dir() for folder in FOLDERS.values()):
        raise IngestError(f"{src}: holds no {PHOTOS}/AMD/ and {PHOTOS}/Non-AMD/ folders; is it the ADAM download? "
                          "(docs/DATASETS.md)")
    rows = ichallenge.index_rows(ichallenge.read_sheet(src / SHEET, COLUMNS), "imgName", _NAME)
    for name, row in rows.items():
        photo = src / PHOTOS / FOLDERS[name[0]] / name
        if not photo.is_file():
            raise IngestError(f"{row.where}: {name} has no photograph {photo}")
    for folder in FOLDERS.values():
        for path in sorted((src / PHOTOS / folder).iterdir()):
            if path.name not in rows:
                summary.left_out[f"files in a photograph folder without a row in {SHEET.name}: {path}"] += 1
    discs = ichallenge.index_masks([src / DISC_MASKS], summary) if (src / DISC_MASKS).is_dir() else {}
    masks = {kind: ichallenge.index_masks([src / LESION_MASKS / kind], summary)
             for kind, finding in LESIONS.items() if finding or (src / LESION_MASKS / kind).is_dir()}
    stems = {pathlib.PurePath(name).stem for name in rows}
    for kind_masks in (discs, *masks.values()):
        for stem, path in kind_masks.items():
            if stem not in stems:
                raise IngestError(f"{path}: a mask of {stem}, which has no row in {src / SHEET}")
    for name, row in sorted(rows.items()):
        _add(src, writer, summary, name, row, discs, masks, min_share, annotator)
    return summary


def _add(src: pathlib.Path, writer: ManualDirWriter, summary: Summary, name: str, row: ichallenge.Row,
         discs: dict[str, pathlib.Path], masks: dict[str, dict[str, pathlib.Path]], min_share: float,
         annotator: str) -> None:
    photo = src / PHOTOS / FOLDERS[name[0]] / name
    size = images.image_size(photo, min_side_px=images.MIN_SIDE_PX)
    stem = photo.stem
    fovea = row.fovea(size)
    disc = ichallenge.centroid(ichallenge.dark_mask(discs[stem], size, DARK_BELOW)) if stem in discs else None
    if disc is None or fovea is None:
        disc = fovea = None
        summary.left_out["photographs without a disc mask, an empty one or a fovea at (0, 0): "
                          "lines written without centres (prepare --locate_missing)"] += 1
    findings: dict[str, list[str] | None] = {}
    lesion_masks = {}
    for kind, finding in LESIONS.items():
        if stem not in masks.get(kind, {}):
            continue
        if finding is None:
            summary.left_out[f"{kind} masks (not mapped, docs/DATASETS.md)"] += 1
            continue
        mask = ichallenge.dark_mask(masks[kind][stem], size, DARK_BELOW)
        if not mask.any():
            summary.left_out[f"empty {kind} masks (read as negative)"] += 1
            continue
        try:
            findings[finding] = None if disc is None else lesions.regions_of_lesion(mask, disc, fovea, min_share)
        except RegionError as e:
            raise IngestError(f"{photo}: {e} (disc from {discs[stem]}, fovea from {row.where})") from None
        lesion_masks[finding] = mask
        summary.positives[finding] += 1
    writer.add(f"adam-{stem}", photo, SPLIT, disc, fovea, annotator, findings, lesion_masks,
               assessed=MAPPED, extra={"amd": name[0] == "A"})
    summary.imported[SPLIT] += 1
