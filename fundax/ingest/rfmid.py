"""RFMiD, the Retinal Fundus Multi-disease Image Dataset: image-level labels as a manual directory.

The layout read (RFMiD's download, unpacked; ``docs/DATASETS.md``)::

    SRC/Training_Set/Training/<ID>.png      SRC/Training_Set/RFMiD_Training_Labels.csv
    SRC/Evaluation_Set/Validation/<ID>.png  SRC/Evaluation_Set/RFMiD_Validation_Labels.csv
    SRC/Test_Set/Test/<ID>.png              SRC/Test_Set/RFMiD_Testing_Labels.csv

Each CSV row (``ID,Disease_Risk,DR,ARMD,MH,…``, one 0/1 column per condition) becomes one
line with one grader. RFMiD labels whole photographs: a mapped column at 1 makes the finding
present with its regions not marked (``null``), at 0 absent. RFMiD has no disc or fovea
centres, so the lines have none: ``prepare --locate_missing`` places them.
"""

from __future__ import annotations

import csv
import pathlib
import re

from fundax.data import images
from fundax.ingest.manual import IngestError, ManualDirWriter, Summary

NAME = "RFMiD"
SETS: tuple[tuple[str, str, str, str, str], ...] = (
    ("train", "Training_Set", "Training", "RFMiD_Training_Labels.csv", "train"),
    ("val", "Evaluation_Set", "Validation", "RFMiD_Validation_Labels.csv", "train"),
    ("test", "Test_Set", "Test", "RFMiD_Testing_Labels.csv", "test"),
)
"""(id prefix, set folder, photograph folder, labels CSV, fundax split) of each RFMiD set.

The evaluation set joins ``train``: fundax takes its own validation from the train lines by
hashing image ids, and RFMiD's test set stays the test split.
"""

FINDINGS = {"MHL": "macular_hole", "ERM": "membrane", "DN": "drusen", "CWS": "cotton_wool_patch",
            "RPEC": "retinal_pigmentary_change"}
"""RFMiD column → fundax finding; every other column is left out (docs/DATASETS.md says why)."""

_ID = re.compile(r"\d{1,9}")


def read_labels(path: pathlib.Path) -> list[tuple[int, str, dict[str, bool]]]:
    """(row number, ID, column → label) of each row of a labels CSV; IngestError naming the file and row.

    The header must start with ``ID`` and hold every column of :data:`FINDINGS`; every other
    cell of a row must be 0 or 1. Empty rows are skipped.
    """
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    rows, header, seen = [], None, {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for row_number, row in enumerate(csv.reader(f), start=1):
                cells = [cell.strip() for cell in row]
                if not any(cells):
                    continue
                where = f"{path}, row {row_number}"
                if header is None:
                    missing = [column for column in FINDINGS if column not in cells]
                    if not cells or cells[0] != "ID" or missing or len(set(cells)) != len(cells):
                        raise IngestError(f"{where}: want a header 'ID,Disease_Risk,DR,…' naming each of "
                                          f"{', '.join(FINDINGS)} once, got {','.join(cells)[:200]!r}")
                    header = cells
                    continue
                if len(cells) != len(header):
                    raise IngestError(f"{where}: want {len(header)} values as the header has, got {len(cells)}")
                if not _ID.fullmatch(cells[0]):
                    raise IngestError(f"{where}: ID {cells[0]!r} is not a number")
                if cells[0] in seen:
                    raise IngestError(f"{where}: ID {cells[0]} is listed twice (first in row {seen[cells[0]]})")
                seen[cells[0]] = row_number
                labels = {}
                for column, value in zip(header[1:], cells[1:]):
                    if value not in ("0", "1"):
                        raise IngestError(f"{where}: {column} is {value!r}, want 0 or 1")
                    labels[column] = value == "1"
                rows.append((row_number, cells[0], labels))
    except UnicodeDecodeError as e:
        raise IngestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise IngestError(f"{path}: not a CSV file ({e})") from None
    if header is None:
        raise IngestError(f"{path}: empty; want the header 'ID,Disease_Risk,DR,…' and a row per photograph")
    return rows


def import_dataset(src: pathlib.Path, writer: ManualDirWriter, min_share: float, annotator: str) -> Summary:
    """Every labelled photograph of RFMiD's three sets under ``src`` into ``writer``; ``min_share`` is unused."""
    del min_share  # image-level labels: no lesion pixels to share out among regions
    summary = Summary(NAME, findings=tuple(FINDINGS.values()))
    if not any((src / folder).is_dir() for _, folder, _, _, _ in SETS):
        raise IngestError(f"{src}: holds none of {', '.join(f for _, f, _, _, _ in SETS)}; "
                          "is it the RFMiD download? (docs/DATASETS.md)")
    sets = []
    for prefix, folder, photo_folder, csv_name, split in SETS:
        labels_csv = src / folder / csv_name
        rows = read_labels(labels_csv)
        photos = src / folder / photo_folder
        if not photos.is_dir():
            raise IngestError(f"{photos}: no such folder (see docs/DATASETS.md for the layout)")
        for row_number, image, _ in rows:
            if not (photos / f"{image}.png").is_file():
                raise IngestError(f"{labels_csv}, row {row_number}: ID {image} has no photograph "
                                  f"{photos / f'{image}.png'}")
        listed = {f"{image}.png" for _, image, _ in rows}
        for path in sorted(photos.iterdir()):
            if path.name not in listed:
                summary.left_out[f"files in a photograph folder without a row in its labels CSV: {path}"] += 1
        sets.append((prefix, photos, split, rows))
    for prefix, photos, split, rows in sets:
        for _, image, labels in rows:
            photo = photos / f"{image}.png"
            images.image_size(photo, min_side_px=images.MIN_SIDE_PX)
            findings = {finding: None for column, finding in FINDINGS.items() if labels[column]}
            unmapped = sum(value for column, value in labels.items() if column not in FINDINGS)
            if unmapped:
                summary.left_out["positive labels of columns not mapped (docs/DATASETS.md)"] += unmapped
            # No centres (prepare --locate_missing places them); positives as image-level labels.
            writer.add(f"rfmid-{prefix}-{image}", photo, split, None, None, annotator, findings, {},
                       assessed=tuple(FINDINGS.values()))
            summary.positives.update(list(findings))
            summary.imported[split] += 1
    return summary
