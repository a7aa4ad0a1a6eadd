"""Label tables of image-level datasets (CSV, XLSX, XLS) and the lines written from them.

Every reader returns the header and the rows as text cells with their 1-based row number in
the file, so that an importer's errors name the file and the row. Spreadsheet numbers are
written as a CSV would have them (``2.0`` → ``"2"``).
"""

from __future__ import annotations

import csv
import os
import pathlib
from collections.abc import Collection, Iterable, Sequence

from fundax import findings as findings_lib
from fundax.data import images
from fundax.ingest.manual import IngestError, ManualDirWriter, Summary

Row = tuple[int, list[str]]
"""(row number in the file, text cells)."""


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _split(path: pathlib.Path, rows: Iterable[tuple[int, list[str]]]) -> tuple[Row, list[Row]]:
    """The first non-empty row as the header (with its row number), the other non-empty rows as data."""
    header, data = None, []
    for number, cells in rows:
        if not any(cells):
            continue
        if header is None:
            header = (number, cells)
        else:
            data.append((number, cells))
    if header is None:
        raise IngestError(f"{path}: empty; want a header and a row per photograph")
    return header, data


def read_table(path: pathlib.Path) -> tuple[Row, list[Row]]:
    """Header row and data rows of a ``.csv``, ``.xlsx`` (first sheet) or ``.xls`` (first sheet) file.

    A CSV row's number is the line it starts on (a quoted cell may hold a line break).
    """
    if not path.is_file():
        raise IngestError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader, rows, line = csv.reader(f), [], 1
                for row in reader:
                    rows.append((line, [_text(c) for c in row]))
                    line = reader.line_num + 1
        elif suffix == ".xlsx":
            import openpyxl
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
            try:
                sheet = book.worksheets[0]
                rows = [(n, [_text(c) for c in row])
                        for n, row in enumerate(sheet.iter_rows(values_only=True), start=1)]
            finally:
                book.close()
        elif suffix == ".xls":
            import xlrd
            sheet = xlrd.open_workbook(path).sheet_by_index(0)
            rows = [(n + 1, [_text(c) for c in sheet.row_values(n)]) for n in range(sheet.nrows)]
        else:
            raise IngestError(f"{path}: not a .csv, .xlsx or .xls file")
    except UnicodeDecodeError as e:
        raise IngestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except IngestError:
        raise
    except Exception as e:  # csv.Error, zipfile.BadZipFile, xlrd.XLRDError, …: the file is not what it says
        raise IngestError(f"{path}: cannot be read as {suffix[1:].upper()} ({type(e).__name__}: {e})") from None
    return _split(path, rows)


def columns(path: pathlib.Path, header: Row, wanted: Sequence[str]) -> dict[str, int]:
    """Column name → index for each of ``wanted``; IngestError naming the file and header row if one is missing."""
    number, names = header
    where = {name: i for i, name in reversed(list(enumerate(names)))}
    missing = [name for name in wanted if name not in where]
    if missing:
        raise IngestError(f"{path}, row {number}: want the columns {', '.join(wanted)}; "
                          f"missing {', '.join(missing)} in {', '.join(names)[:200]!r}")
    return {name: where[name] for name in wanted}


def cell(path: pathlib.Path, row: Row, index: int, name: str, allowed: Collection[str] | None = None) -> str:
    """Row ``row``'s cell ``index`` (column ``name``), refused unless non-empty (and in ``allowed``)."""
    number, cells = row
    value = cells[index] if index < len(cells) else ""
    if not value or (allowed is not None and value not in allowed):
        want = f"one of {', '.join(allowed)}" if allowed is not None else "a value"
        raise IngestError(f"{path}, row {number}: {name} is {value!r}, want {want}")
    return value


def unique(path: pathlib.Path, rows: Sequence[Row], index: int, name: str) -> None:
    """Refuse a value of column ``index`` listed twice, naming both rows."""
    seen: dict[str, int] = {}
    for number, cells in rows:
        value = cells[index] if index < len(cells) else ""
        if value in seen:
            raise IngestError(f"{path}, row {number}: {name} {value} is listed twice (first in row {seen[value]})")
        seen[value] = number


def photographs(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """File name → path of every file in ``folder``; IngestError if there is no such folder."""
    if not folder.is_dir():
        raise IngestError(f"{folder}: no such folder (see docs/DATASETS.md for the layout)")
    return {entry.name: pathlib.Path(entry.path) for entry in os.scandir(folder) if entry.is_file()}


def count_strays(summary: Summary, files: dict[str, pathlib.Path], used: Collection[str], why: str) -> None:
    """Count each of ``files`` not in ``used`` as left out, for ``why``."""
    for name in sorted(set(files) - set(used)):
        summary.left_out[f"{why}: {files[name]}"] += 1


def write(writer: ManualDirWriter, summary: Summary, image_id: str, photo: pathlib.Path, split: str,
          annotator: str, present: Collection[str], assessed: Collection[str]) -> None:
    """One line without centres: ``present`` positive as image-level labels, ``assessed`` said of, the rest not.

    The summary counts the line, its positives and each of its findings that is not assessed.
    """
    images.image_size(photo, min_side_px=images.MIN_SIDE_PX)
    ordered = [name for name in findings_lib.FINDINGS if name in assessed]
    findings = {name: None for name in ordered if name in present}
    writer.add(image_id, photo, split, None, None, annotator, findings, {}, assessed=ordered)
    summary.imported[split] += 1
    summary.positives.update(list(findings))
    summary.not_assessed.update([name for name in summary.findings if name not in assessed])
