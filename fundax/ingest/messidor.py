"""Messidor and Messidor-2: diabetic retinopathy and macular edema grades as a manual directory.

The layouts read (``docs/DATASETS.md``)::

    messidor:   SRC/Base11/*.tif … SRC/Base34/*.tif, each base's SRC/BaseNN/Annotation_BaseNN.xls
                (or SRC/Annotation_BaseNN.xls; ``Annotation_BaseNN_update20161024.xls`` preferred)
    messidor2:  SRC/IMAGES/<image_id>   SRC/messidor_data.csv (image_id, adjudicated_dr_grade,
                adjudicated_dme, adjudicated_gradable: the adjudicated grades published for Messidor-2)

Messidor's retinopathy grade counts lesions: grades 0 and 1 have no haemorrhage (H = 0), grades
2 and 3 may have some. Its risk of macular edema is 0 exactly when no hard exudate is visible.
Messidor-2's adjudicated grades are ICDR grades (:mod:`fundax.ingest.kaggle_dr`), its ``dme`` 1
hard exudates within a disc diameter of the fovea.
"""

from __future__ import annotations

import pathlib

from fundax.ingest import kaggle_dr, tables
from fundax.ingest.manual import IngestError, ManualDirWriter, Summary

BASES = tuple(f"Base{department}{part}" for department in (1, 2, 3) for part in (1, 2, 3, 4))
COLUMNS = ("Image name", "Retinopathy grade", "Risk of macular edema")
ERRATA_GRADES = {"20051020_64007_0100_PP.tif": "3", "20051020_63936_0100_PP.tif": "1",
                 "20060523_48477_0100_PP.tif": "3", "20051020_63045_0100_PP.tif": "0"}
"""Retinopathy grades corrected by Messidor's errata (Base11 and Base13), whichever annotation file is read."""
ERRATA_DUPLICATES = frozenset(f"{name}_0400_PP.tif" for name in (
    "20051202_55582", "20051202_41076", "20051202_48287", "20051202_48586", "20051202_55457", "20051202_55626",
    "20051202_54783", "20051202_48575", "20051205_32966", "20051202_55484", "20051205_32981", "20051202_55562",
    "20051202_54547"))
"""Photographs of Base33 that Messidor's errata list as duplicates of others: left out."""

M2_COLUMNS = ("image_id", "adjudicated_dr_grade", "adjudicated_dme", "adjudicated_gradable")


def _annotation(src: pathlib.Path, base: str) -> pathlib.Path:
    """A base's annotation file: the errata's update before the original, in the base's folder before SRC."""
    names = (f"Annotation_{base}_update20161024.xls", f"Annotation_{base}.xls")
    found = [folder / name for name in names for folder in (src / base, src) if (folder / name).is_file()]
    if not found:
        raise IngestError(f"{src / base}: no Annotation_{base}.xls in it or in {src} (docs/DATASETS.md)")
    return found[0]


def messidor1_assessed(grade: str, risk: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(present, assessed) of a Messidor retinopathy grade (0–3) and risk of macular edema (0–2)."""
    assessed = ("hard_exudate",) + (("hemorrhage",) if grade in ("0", "1") else ())
    return (("hard_exudate",) if risk != "0" else ()), assessed


def import_messidor(src: pathlib.Path, writer: ManualDirWriter, min_share: float, annotator: str) -> Summary:
    """Every graded photograph of the Messidor bases under ``src`` into ``writer``; ``min_share`` is unused."""
    del min_share  # image-level labels: no lesion pixels
    present_bases = [base for base in BASES if (src / base).is_dir()]
    if not present_bases:
        raise IngestError(f"{src}: holds none of the folders {BASES[0]} … {BASES[-1]}; is it the Messidor "
                          "download? (Messidor-2 is the format messidor2; docs/DATASETS.md)")
    summary = Summary("Messidor", findings=("hemorrhage", "hard_exudate"))
    missing = [base for base in BASES if base not in present_bases]
    if missing:
        summary.left_out[f"bases not in {src}, not imported: {' '.join(missing)}"] += len(missing)
    lines, seen = [], {}
    for base in present_bases:
        path = _annotation(src, base)
        header, rows = tables.read_table(path)
        at = tables.columns(path, header, COLUMNS)
        files = tables.photographs(src / base)
        used = []
        for row in rows:
            name = tables.cell(path, row, at["Image name"], "Image name")
            grade = tables.cell(path, row, at["Retinopathy grade"], "Retinopathy grade", ("0", "1", "2", "3"))
            risk = tables.cell(path, row, at["Risk of macular edema"], "Risk of macular edema", ("0", "1", "2"))
            if name not in files:
                raise IngestError(f"{path}, row {row[0]}: Image name {name} has no photograph {src / base / name}")
            used.append(name)
            if base == "Base33" and name in ERRATA_DUPLICATES:
                summary.left_out["duplicates listed by Messidor's errata"] += 1
                continue
            if name in seen:
                raise IngestError(f"{path}, row {row[0]}: Image name {name} is listed twice (first in {seen[name]})")
            seen[name] = f"{path}, row {row[0]}"
            lines.append((name, files[name], ERRATA_GRADES.get(name, grade), risk))
        tables.count_strays(summary, files, used + [path.name], f"files in {base}/ not listed in {path.name}")
    for name, photo, grade, risk in lines:
        present, assessed = messidor1_assessed(grade, risk)
        tables.write(writer, summary, f"messidor-{pathlib.Path(name).stem}", photo, "train", annotator,
                     present, assessed)
    return summary


def messidor2_assessed(grade: str, dme: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(present, assessed) of an adjudicated ICDR grade (0–4) and referable DME (0/1)."""
    assessed = kaggle_dr.icdr_assessed(grade)
    if dme == "1":
        return ("hard_exudate",), tuple(dict.fromkeys(assessed + ("hard_exudate",)))
    return (), assessed


def import_messidor2(src: pathlib.Path, writer: ManualDirWriter, min_share: float, annotator: str) -> Summary:
    """Every gradable photograph of Messidor-2 under ``src`` into ``writer``; ``min_share`` is unused."""
    del min_share  # image-level labels: no lesion pixels
    labels = src / "messidor_data.csv"
    if not labels.is_file() and not (src / "IMAGES").is_dir():
        raise IngestError(f"{src}: holds neither messidor_data.csv nor IMAGES; is it the Messidor-2 download? "
                          "(docs/DATASETS.md)")
    if not labels.is_file():
        raise IngestError(f"{labels}: no such file; the adjudicated grades are a download of their own "
                          "(docs/DATASETS.md)")
    summary = Summary("Messidor-2", findings=kaggle_dr.ICDR_FINDINGS)
    header, rows = tables.read_table(labels)
    at = tables.columns(labels, header, M2_COLUMNS)
    files = tables.photographs(src / "IMAGES")
    by_lower = {name.lower(): name for name in files}
    tables.unique(labels, rows, at["image_id"], "image_id")
    lines, used = [], []
    for row in rows:
        image = tables.cell(labels, row, at["image_id"], "image_id")
        name = image if image in files else by_lower.get(image.lower())
        if name is None:
            raise IngestError(f"{labels}, row {row[0]}: image_id {image} has no photograph {src / 'IMAGES' / image}")
        used.append(name)
        if tables.cell(labels, row, at["adjudicated_gradable"], "adjudicated_gradable", ("0", "1")) == "0":
            summary.skipped.append((name, "adjudicated ungradable"))
            continue
        grade = tables.cell(labels, row, at["adjudicated_dr_grade"], "adjudicated_dr_grade", kaggle_dr.ICDR_GRADES)
        dme = tables.cell(labels, row, at["adjudicated_dme"], "adjudicated_dme", ("0", "1"))
        lines.append((name, *messidor2_assessed(grade, dme)))
    tables.count_strays(summary, files, used, "files in IMAGES/ without a row in messidor_data.csv")
    for name, present, assessed in lines:
        tables.write(writer, summary, f"messidor2-{pathlib.Path(name).stem}", files[name], "train", annotator,
                     present, assessed)
    return summary
