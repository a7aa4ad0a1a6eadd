"""IDRiD, the Indian Diabetic Retinopathy Image Dataset: its segmentation set as a manual directory.

The layout read (IDRiD's download, unpacked; ``docs/DATASETS.md``)::

    SRC/A. Segmentation/
        1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_NN.jpg
        2. All Segmentation Groundtruths/{a. Training Set,b. Testing Set}/
            {1. Microaneurysms,2. Haemorrhages,3. Hard Exudates,4. Soft Exudates,5. Optic Disc}/
                IDRiD_NN_{MA,HE,EX,SE,OD}.tif
    SRC/C. Localization/
        1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_NNN.jpg        (optional)
        2. Groundtruths/1. Optic Disc Center Location/
            a. IDRiD_OD_Center_Training Set_Markups.csv, b. IDRiD_OD_Center_Testing Set_Markups.csv
        2. Groundtruths/2. Fovea Center Location/
            IDRiD_Fovea_Center_Training Set_Markups.csv, IDRiD_Fovea_Center_Testing Set_Markups.csv

Each segmentation photograph becomes one line: split from its set, disc and fovea from the
markups of the same set and number (``IDRiD_07`` ↔ ``IDRiD_007``), scaled to the
photograph when the localization copy is present at another size. A lesion mask makes the
photograph positive for its finding, with the regions that hold the lesion
(:func:`fundax.ingest.lesions.regions_of_lesion`); no mask, or an empty one, negative. A
photograph whose disc centre falls outside its optic disc mask's bounding box is skipped:
the markup belongs to another photograph.
"""

from __future__ import annotations

import csv
import math
import pathlib
import re

import numpy as np

from fundax.data import images
from fundax.ingest import lesions
from fundax.ingest.manual import IngestError, ManualDirWriter, Summary
from fundax.regions import RegionError

NAME = "IDRiD"
SEGMENTATION = pathlib.PurePath("A. Segmentation")
SEGMENTATION_PHOTOS = SEGMENTATION / "1. Original Images"
SEGMENTATION_MASKS = SEGMENTATION / "2. All Segmentation Groundtruths"
LOCALIZATION = pathlib.PurePath("C. Localization")
LOCALIZATION_PHOTOS = LOCALIZATION / "1. Original Images"
MARKUPS = LOCALIZATION / "2. Groundtruths"
SETS = {"train": "a. Training Set", "test": "b. Testing Set"}
"""fundax split → IDRiD's folder of that set."""

LESIONS: tuple[tuple[str, str, str | None], ...] = (
    ("1. Microaneurysms", "MA", None),
    ("2. Haemorrhages", "HE", "hemorrhage"),
    ("3. Hard Exudates", "EX", "hard_exudate"),
    ("4. Soft Exudates", "SE", "cotton_wool_patch"),
    ("5. Optic Disc", "OD", None),
)
"""(folder, file suffix, fundax finding or None) of each segmentation label."""
MAPPED: tuple[str, ...] = tuple(finding for _, _, finding in LESIONS if finding is not None)
"""The findings IDRiD's masks assess; the other five are not assessed on its lines."""
UNMAPPED = {"MA": "microaneurysm masks (fundax has no microaneurysm finding)",
            "OD": "optic disc masks (used to check the disc centre only)"}

CENTRES = {
    ("disc", "train"): "1. Optic Disc Center Location/a. IDRiD_OD_Center_Training Set_Markups.csv",
    ("disc", "test"): "1. Optic Disc Center Location/b. IDRiD_OD_Center_Testing Set_Markups.csv",
    ("fovea", "train"): "2. Fovea Center Location/IDRiD_Fovea_Center_Training Set_Markups.csv",
    ("fovea", "test"): "2. Fovea Center Location/IDRiD_Fovea_Center_Testing Set_Markups.csv",
}
MARKUP_HEADER = ("imageno", "x-coordinate", "y-coordinate")
"""``Image No, X- Coordinate, Y - Coordinate`` with spaces dropped and lower case."""

_PHOTO = re.compile(r"IDRiD_(\d+)\.jpe?g", re.IGNORECASE)
_MASK = re.compile(r"IDRiD_(\d+)_([A-Z]{2})\.tiff?", re.IGNORECASE)
_MARKUP_ID = re.compile(r"IDRiD_(\d+)")


def read_markups(path: pathlib.Path) -> dict[int, tuple[float, float]]:
    """Image number → (x, y) of one markup CSV; IngestError naming the file and row of anything malformed.

    Rows and trailing columns with nothing in them are padding and skipped.
    """
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    points: dict[int, tuple[float, float]] = {}
    header_seen = False
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row_number, row in enumerate(csv.reader(f), start=1):
                cells = [cell.strip() for cell in row]
                while cells and not cells[-1]:
                    cells.pop()
                if not cells:
                    continue
                where = f"{path}, row {row_number}"
                if not header_seen:
                    if tuple(c.replace(" ", "").lower() for c in cells) != MARKUP_HEADER:
                        raise IngestError(f"{where}: want the header 'Image No, X- Coordinate, Y - Coordinate', "
                                          f"got {', '.join(cells)!r}")
                    header_seen = True
                    continue
                if len(cells) != 3:
                    raise IngestError(f"{where}: want 3 values (image, x, y), got {len(cells)}: {','.join(cells)!r}")
                match = _MARKUP_ID.fullmatch(cells[0])
                if not match:
                    raise IngestError(f"{where}: {cells[0]!r} is not an IDRiD image name (IDRiD_NNN)")
                try:
                    x, y = float(cells[1]), float(cells[2])
                except ValueError:
                    raise IngestError(f"{where}: coordinates {cells[1]!r}, {cells[2]!r} are not numbers") from None
                if not (math.isfinite(x) and math.isfinite(y) and x >= 0 and y >= 0):
                    raise IngestError(f"{where}: coordinates ({x}, {y}) must be finite and not negative")
                number = int(match[1])
                if number in points:
                    raise IngestError(f"{where}: {cells[0]} is listed twice")
                points[number] = (x, y)
    except UnicodeDecodeError as e:
        raise IngestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise IngestError(f"{path}: not a CSV file ({e})") from None
    if not header_seen:
        raise IngestError(f"{path}: empty; want the header 'Image No, X- Coordinate, Y - Coordinate' "
                          "and a row per image")
    return points


def _listing(folder: pathlib.Path, pattern: re.Pattern, summary: Summary) -> dict[tuple[int, str], pathlib.Path]:
    """(number, suffix) → file of the names in ``folder`` that ``pattern`` matches; others are counted left out."""
    if not folder.is_dir():
        raise IngestError(f"{folder}: no such folder (see docs/DATASETS.md for the layout)")
    found = {}
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if not match or not path.is_file():
            summary.left_out[f"file not named as IDRiD names its files: {path}"] += 1
            continue
        key = (int(match[1]), match[2].upper() if pattern.groups > 1 else "")
        if key in found:
            raise IngestError(f"{path}: a second file for {found[key].name}")
        found[key] = path
    return found


def _scale(src: pathlib.Path, split: str, number: int, size: tuple[int, int]) -> tuple[float, float]:
    """x and y factors from the localization copy of photograph ``number`` (if present) to one of ``size``."""
    folder = src / LOCALIZATION_PHOTOS / SETS[split]
    for path in sorted(folder.glob(f"IDRiD_{number:03d}.*")) if folder.is_dir() else ():
        if _PHOTO.fullmatch(path.name):
            width, height = images.image_size(path)
            return size[0] / width, size[1] / height
    return 1.0, 1.0


def _disc_outside(disc: tuple[float, float], od_mask: np.ndarray) -> bool:
    rows, cols = np.nonzero(od_mask)
    if rows.size == 0:
        return False
    return not (cols.min() <= disc[0] <= cols.max() + 1 and rows.min() <= disc[1] <= rows.max() + 1)


def import_dataset(src: pathlib.Path, writer: ManualDirWriter, min_share: float, annotator: str) -> Summary:
    """Every photograph of IDRiD's segmentation set under ``src`` into ``writer``; what was done and left out."""
    summary = Summary(NAME, findings=tuple(finding for _, _, finding in LESIONS if finding))
    if not (src / SEGMENTATION).is_dir():
        raise IngestError(f"{src}: holds no {SEGMENTATION}/ folder; is it the IDRiD download? (docs/DATASETS.md)")
    for split, folder in SETS.items():
        centres = {what: (src / MARKUPS / CENTRES[what, split]) for what in ("disc", "fovea")}
        points = {what: read_markups(path) for what, path in centres.items()}
        photos = _listing(src / SEGMENTATION_PHOTOS / folder, _PHOTO, summary)
        masks = {}
        for label_folder, suffix, _ in LESIONS:
            for (number, found_suffix), path in _listing(src / SEGMENTATION_MASKS / folder / label_folder,
                                                         _MASK, summary).items():
                if found_suffix != suffix:
                    raise IngestError(f"{path}: a {found_suffix} mask in the folder of {suffix} masks")
                masks[number, suffix] = path
        for (number, _), photo in sorted(photos.items()):
            for what, path in centres.items():
                if number not in points[what]:
                    raise IngestError(f"{photo}: IDRiD_{number:03d} has no row in {path}")
        for (number, suffix), path in sorted(masks.items()):
            for what, csv_path in centres.items():
                if number not in points[what]:
                    raise IngestError(f"{path}: a mask of IDRiD_{number:02d}, which has no row "
                                      f"IDRiD_{number:03d} in {csv_path}")
            if (number, "") not in photos:
                raise IngestError(f"{path}: a mask of IDRiD_{number:02d}, which has no photograph in "
                                  f"{src / SEGMENTATION_PHOTOS / folder}")
        for (number, _), photo in sorted(photos.items()):
            _add(src, writer, summary, split, number, photo, points, masks, min_share, annotator)
    return summary


def _add(src: pathlib.Path, writer: ManualDirWriter, summary: Summary, split: str, number: int,
         photo: pathlib.Path, points: dict, masks: dict, min_share: float, annotator: str) -> None:
    width, height = images.image_size(photo, min_side_px=images.MIN_SIDE_PX)
    sx, sy = _scale(src, split, number, (width, height))
    disc = (points["disc"][number][0] * sx, points["disc"][number][1] * sy)
    fovea = (points["fovea"][number][0] * sx, points["fovea"][number][1] * sy)
    image_id = photo.stem
    for suffix, why in UNMAPPED.items():
        if (number, suffix) in masks:
            summary.left_out[why] += 1
    if (number, "OD") in masks and _disc_outside(disc, images.load_mask(masks[number, "OD"], (height, width))):
        summary.skipped.append((str(photo), f"the disc centre {disc} lies outside its optic disc mask "
                                            f"{masks[number, 'OD'].name}: the markup is of another photograph"))
        return
    findings, lesion_masks = {}, {}
    for _, suffix, finding in LESIONS:
        if finding is None or (number, suffix) not in masks:
            continue
        mask = images.load_mask(masks[number, suffix], (height, width))
        try:
            regions = lesions.regions_of_lesion(mask, disc, fovea, min_share)
        except RegionError as e:
            raise IngestError(f"{photo}: {e}") from None
        if not regions:
            summary.left_out[f"empty {suffix} masks (read as negative)"] += 1
            continue
        findings[finding], lesion_masks[finding] = regions, mask
        summary.positives[finding] += 1
    writer.add(image_id, photo, split, disc, fovea, annotator, findings, lesion_masks,
               assessed=MAPPED)
    summary.imported[split] += 1
