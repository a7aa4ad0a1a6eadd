"""REFUGE, the glaucoma challenge of MICCAI 2018: disc and fovea centres of its 1200 photographs.

The layout read (the six archives of the download, unpacked side by side; ``docs/DATASETS.md``)::

    SRC/Training400/{Glaucoma,Non-Glaucoma}/{g,n}NNNN.jpg
    SRC/Annotation-Training400/Disc_Cup_Masks/{Glaucoma,Non-Glaucoma}/{g,n}NNNN.bmp
    SRC/Annotation-Training400/Fovea_location.xlsx                 (ID, ImgName, Fovea_X, Fovea_Y)
    SRC/REFUGE-Validation400/VNNNN.jpg
    SRC/REFUGE-Validation400-GT/Disc_Cup_Masks/VNNNN.bmp
    SRC/REFUGE-Validation400-GT/Fovea_locations.xlsx               (ID, ImgName, Glaucoma Label, Fovea_X, Fovea_Y)
    SRC/Test400/TNNNN.jpg
    SRC/REFUGE-Test-GT/Disc_Cup_Masks/{G,N}/TNNNN.bmp
    SRC/REFUGE-Test-GT/Glaucoma_label_and_Fovea_location.xlsx      (ID, ImgName, Label(Glaucoma=1), Fovea_X, Fovea_Y)

Masks: cup 0, rim 128, background 255. No fundax finding is labelled (glaucoma is a
diagnosis, RNFL defects are not marked), so every line assesses none (``"assessed": []``)
and carries only centres: the disc centre is the centroid of the disc (rim and cup), the
fovea the sheet's; the glaucoma label is kept as ``"glaucoma"``. Their use: disc and fovea
truth, and photographs to annotate. A set whose photograph folder is absent is left out.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

from fundax.data import images
from fundax.ingest import ichallenge
from fundax.ingest.manual import IngestError, ManualDirWriter, Summary

NAME = "REFUGE"
DISC_BELOW = 192
"""Gray levels under this are disc: the rim (128) and the cup (0) inside it."""


@dataclasses.dataclass(frozen=True)
class Set:
    """One REFUGE set: where its photographs, masks and sheet lie, and where its glaucoma label is."""

    split: str
    photos: tuple[str, ...]
    masks: tuple[str, ...]
    sheet: str
    name: re.Pattern
    label_column: str | None
    """The sheet's glaucoma column; None: the photograph's folder says it (Glaucoma/)."""


SETS: tuple[Set, ...] = (
    Set("train", ("Training400/Glaucoma", "Training400/Non-Glaucoma"),
        ("Annotation-Training400/Disc_Cup_Masks/Glaucoma", "Annotation-Training400/Disc_Cup_Masks/Non-Glaucoma"),
        "Annotation-Training400/Fovea_location.xlsx", re.compile(r"[gn]\d{4}\.jpg"), None),
    Set("train", ("REFUGE-Validation400",), ("REFUGE-Validation400-GT/Disc_Cup_Masks",),
        "REFUGE-Validation400-GT/Fovea_locations.xlsx", re.compile(r"V\d{4}\.jpg"), "Glaucoma Label"),
    Set("test", ("Test400",), ("REFUGE-Test-GT/Disc_Cup_Masks/G", "REFUGE-Test-GT/Disc_Cup_Masks/N"),
        "REFUGE-Test-GT/Glaucoma_label_and_Fovea_location.xlsx", re.compile(r"T\d{4}\.jpg"), "Label(Glaucoma=1)"),
)
"""REFUGE's training, validation and test sets. The validation set joins ``train`` (fundax takes
its own validation by hashing ids); the test set stays ``test``."""


def import_dataset(src: pathlib.Path, writer: ManualDirWriter, min_share: float, annotator: str) -> Summary:
    """Every photograph of the REFUGE sets under ``src`` into ``writer``; ``min_share`` is unused (no lesions)."""
    del min_share  # no lesion masks
    summary = Summary(NAME, findings=())
    present = [s for s in SETS if (src / s.photos[0]).is_dir()]
    if not present:
        raise IngestError(f"{src}: holds none of {', '.join(s.photos[0] for s in SETS)}; is it the REFUGE download? "
                          "(docs/DATASETS.md)")
    for s in SETS:
        if s not in present:
            summary.left_out[f"sets not in the download: {s.photos[0]}"] += 1
    read = [_read(src, s, summary) for s in present]
    for s, rows, masks in read:
        for name, row in sorted(rows.items()):
            photo = _photo(src, s, name)
            size = images.image_size(photo, min_side_px=images.MIN_SIDE_PX)
            fovea = row.fovea(size)
            disc = ichallenge.centroid(ichallenge.dark_mask(masks[photo.stem], size, DISC_BELOW))
            if disc is None or fovea is None:
                disc = fovea = None
                summary.left_out["photographs with an empty disc mask or a fovea at (0, 0): "
                                  "lines written without centres (prepare --locate_missing)"] += 1
            glaucoma = name.startswith("g") if s.label_column is None else row.label(s.label_column)
            writer.add(f"refuge-{photo.stem}", photo, s.split, disc, fovea, annotator, {}, {},
                       assessed=(), extra={"glaucoma": glaucoma})
            summary.imported[s.split] += 1
    return summary


def _photo(src: pathlib.Path, s: Set, name: str) -> pathlib.Path:
    folder = s.photos[1] if s.label_column is None and name.startswith("n") else s.photos[0]
    return src / folder / name


def _read(src: pathlib.Path, s: Set,
          summary: Summary) -> tuple[Set, dict[str, ichallenge.Row], dict[str, pathlib.Path]]:
    """The rows and masks of set ``s``, checked: each row has its photograph and mask, each mask its row."""
    columns = ("ImgName", "Fovea_X", "Fovea_Y") + ((s.label_column,) if s.label_column else ())
    rows = ichallenge.index_rows(ichallenge.read_sheet(src / s.sheet, columns), "ImgName", s.name)
    masks = ichallenge.index_masks([src / folder for folder in s.masks], summary)
    for name, row in rows.items():
        photo = _photo(src, s, name)
        if not photo.is_file():
            raise IngestError(f"{row.where}: {name} has no photograph {photo}")
        if photo.stem not in masks:
            raise IngestError(f"{row.where}: {name} has no disc mask {photo.stem}.bmp in "
                              f"{' or '.join(str(src / folder) for folder in s.masks)}")
    stems = {pathlib.PurePath(name).stem for name in rows}
    for stem, path in masks.items():
        if stem not in stems:
            raise IngestError(f"{path}: a mask of {stem}, which has no row in {src / s.sheet}")
    for folder in s.photos:
        for path in sorted((src / folder).iterdir()) if (src / folder).is_dir() else ():
            if path.name not in rows:
                summary.left_out[f"files in a photograph folder without a row in its sheet: {path}"] += 1
    return s, rows, masks
