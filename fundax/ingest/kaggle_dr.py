"""APTOS 2019 and EyePACS (Kaggle's diabetic retinopathy detection): ICDR grades as a manual directory.

The layouts read (the competitions' downloads, unpacked; ``docs/DATASETS.md``)::

    aptos:    SRC/train.csv (id_code,diagnosis)   SRC/train_images/<id_code>.png
              SRC/test.csv (id_code)               SRC/test_images/<id_code>.png   (no labels: left out)
    eyepacs:  SRC/trainLabels.csv (image,level)   SRC/train/<image>.jpeg
              SRC/retinopathy_solution.csv (image,level,Usage)   SRC/test/<image>.jpeg   (optional)

Both grade each photograph 0–4 on the International Clinical Diabetic Retinopathy (ICDR)
scale. Grade 0 (no apparent retinopathy) and grade 1 (microaneurysms only) say that there
is no haemorrhage, hard exudate or cotton wool spot; grades 2–4 do not say which lesions
there are, so those findings are not assessed on their lines. No other finding is assessed.
"""

from __future__ import annotations

import pathlib

from fundax.ingest import tables
from fundax.ingest.manual import IngestError, ManualDirWriter, Summary

ICDR_GRADES = ("0", "1", "2", "3", "4")
ICDR_FINDINGS = ("hemorrhage", "hard_exudate", "cotton_wool_patch")
"""The findings an ICDR grade of 0 or 1 says are absent."""


def icdr_assessed(grade: str) -> tuple[str, ...]:
    """The findings an ICDR grade assesses (all absent): those of :data:`ICDR_FINDINGS` for 0 and 1, none above."""
    return ICDR_FINDINGS if grade in ("0", "1") else ()


def _graded_set(summary: Summary, writer: ManualDirWriter, annotator: str, labels: pathlib.Path,
                folder: pathlib.Path, id_column: str, grade_column: str, extension: str, prefix: str,
                split: str) -> None:
    """Every row of ``labels`` (``id_column``, ``grade_column``) with its photograph ``folder/<id><extension>``."""
    header, rows = tables.read_table(labels)
    at = tables.columns(labels, header, (id_column, grade_column))
    files = tables.photographs(folder)
    tables.unique(labels, rows, at[id_column], id_column)
    lines = []
    for row in rows:
        name = tables.cell(labels, row, at[id_column], id_column)
        grade = tables.cell(labels, row, at[grade_column], grade_column, ICDR_GRADES)
        if f"{name}{extension}" not in files:
            raise IngestError(f"{labels}, row {row[0]}: {id_column} {name} has no photograph "
                              f"{folder / f'{name}{extension}'}")
        lines.append((name, grade))
    tables.count_strays(summary, files, [f"{name}{extension}" for name, _ in lines],
                        f"files in {folder.name}/ without a row in {labels.name}")
    for name, grade in lines:
        tables.write(writer, summary, f"{prefix}-{name}", files[f"{name}{extension}"], split, annotator,
                     present=(), assessed=icdr_assessed(grade))


def _unlabelled(summary: Summary, folder: pathlib.Path, why: str) -> None:
    """Count the photographs of an unlabelled set, under one reason."""
    if folder.is_dir():
        summary.left_out[f"{why} ({folder})"] += len(tables.photographs(folder))


def _recognise(src: pathlib.Path, name: str, expected: tuple[str, ...]) -> None:
    if not any((src / entry).exists() for entry in expected):
        raise IngestError(f"{src}: holds none of {', '.join(expected)}; is it the {name} download? "
                          "(docs/DATASETS.md)")


def import_aptos(src: pathlib.Path, writer: ManualDirWriter, min_share: float, annotator: str) -> Summary:
    """APTOS 2019's labelled training set under ``src`` into ``writer``; ``min_share`` is unused."""
    del min_share  # image-level labels: no lesion pixels
    _recognise(src, "APTOS 2019", ("train.csv", "train_images"))
    summary = Summary("APTOS 2019", findings=ICDR_FINDINGS)
    _graded_set(summary, writer, annotator, src / "train.csv", src / "train_images", "id_code", "diagnosis",
                ".png", "aptos", "train")
    _unlabelled(summary, src / "test_images", "photographs of the test set, whose labels are not published")
    return summary


def import_eyepacs(src: pathlib.Path, writer: ManualDirWriter, min_share: float, annotator: str) -> Summary:
    """EyePACS's training set, and its test set where its labels are there, under ``src``; ``min_share`` is unused."""
    del min_share  # image-level labels: no lesion pixels
    _recognise(src, "EyePACS (Kaggle diabetic retinopathy detection)", ("trainLabels.csv", "train"))
    summary = Summary("EyePACS", findings=ICDR_FINDINGS)
    _graded_set(summary, writer, annotator, src / "trainLabels.csv", src / "train", "image", "level",
                ".jpeg", "eyepacs-train", "train")
    if (src / "retinopathy_solution.csv").is_file():
        _graded_set(summary, writer, annotator, src / "retinopathy_solution.csv", src / "test", "image", "level",
                    ".jpeg", "eyepacs-test", "test")
    else:
        _unlabelled(summary, src / "test", "photographs of the test set without retinopathy_solution.csv")
    return summary
