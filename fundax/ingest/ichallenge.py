"""What ADAM and REFUGE share: ``.xlsx`` sheets of fovea locations and BMP masks drawn dark on white.

Both are iChallenge datasets (Baidu, with Sun Yat-sen University): one row per photograph in
the first worksheet of an ``.xlsx`` workbook, whose header names its columns (``ImgName``,
``Fovea_X``, ``Fovea_Y``, …), and masks of the photograph's size, white (255) where there is
nothing and darker where the structure is (``docs/DATASETS.md``). A fovea at (0, 0) is one
the graders did not mark (not visible in the photograph).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from fundax.ingest import tables
from fundax.ingest.manual import IngestError, Summary

PHOTO_SUFFIX = ".jpg"
MASK_SUFFIX = ".bmp"


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of a sheet: where it is (``sheet, row N``) and its cells by header name."""

    where: str
    cells: dict[str, str]
    """Header name → the cell as text (:func:`fundax.ingest.tables.read_table`: ``2.0`` reads ``"2"``)."""

    def text(self, column: str, pattern: re.Pattern) -> str:
        value = self.cells.get(column, "")
        if not pattern.fullmatch(value):
            raise IngestError(f"{self.where}: {column} is {value!r}, not a photograph's name as the dataset names them")
        return value

    def number(self, column: str) -> float:
        value = self.cells.get(column, "")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number >= 0):
            raise IngestError(f"{self.where}: {column} is {value!r}, not a number (finite and not negative)")
        return number

    def label(self, column: str) -> bool:
        value = self.cells.get(column, "")
        if value not in ("0", "1"):
            raise IngestError(f"{self.where}: {column} is {value!r}, want 0 or 1")
        return value == "1"

    def fovea(self, size: tuple[int, int]) -> tuple[float, float] | None:
        """(Fovea_X, Fovea_Y) in pixels; None at (0, 0), not marked; IngestError outside the photograph."""
        x, y = self.number("Fovea_X"), self.number("Fovea_Y")
        if x == 0 and y == 0:
            return None
        if x > size[0] or y > size[1]:
            raise IngestError(f"{self.where}: the fovea ({x:g}, {y:g}) lies outside the {size[0]}×{size[1]} photograph")
        return x, y


def read_sheet(path: pathlib.Path, columns: Sequence[str]) -> list[Row]:
    """The rows of the first worksheet of ``path`` below a header naming each of ``columns``.

    Read by :func:`fundax.ingest.tables.read_table` (so a sheet saved as CSV reads too); empty
    rows are skipped; IngestError naming the file (and row) when the workbook cannot be read or
    the header lacks a column or names one twice.
    """
    (header_row, header), rows = tables.read_table(path)
    named = [name for name in header if name]
    if [column for column in columns if column not in header] or len(set(named)) != len(named):
        raise IngestError(f"{path}, row {header_row}: want a header naming each of {', '.join(columns)} once, "
                          f"got {', '.join(header)!r}")
    return [Row(f"{path}, row {number}", {name: value for name, value in zip(header, cells) if name})
            for number, cells in rows]


def index_rows(rows: Iterable[Row], column: str, pattern: re.Pattern) -> dict[str, Row]:
    """Photograph name → its row; IngestError naming the row of a name listed twice."""
    found: dict[str, Row] = {}
    for row in rows:
        name = row.text(column, pattern)
        if name in found:
            raise IngestError(f"{row.where}: {name} is listed twice (first in {found[name].where})")
        found[name] = row
    return found


def index_masks(folders: Iterable[pathlib.Path], summary: Summary) -> dict[str, pathlib.Path]:
    """Photograph stem → mask file of the ``.bmp`` files in ``folders``; other files are counted left out."""
    found: dict[str, pathlib.Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise IngestError(f"{folder}: no such folder (see docs/DATASETS.md for the layout)")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() != MASK_SUFFIX or not path.is_file():
                summary.left_out[f"files in a mask folder that are not .bmp masks: {path}"] += 1
                continue
            if path.stem in found:
                raise IngestError(f"{path}: a second mask of {path.stem} (the first is {found[path.stem]})")
            found[path.stem] = path
    return found


def dark_mask(path: pathlib.Path, size: tuple[int, int], below: int) -> np.ndarray:
    """bool (H, W), True where the gray level of the mask at ``path`` is under ``below``.

    IngestError naming the file when it cannot be read, differs in size from its photograph
    (``size``, width × height), or is dark over more than half of it: a mask drawn light on dark.
    """
    try:
        with Image.open(path) as image:
            if image.size != size:
                raise IngestError(f"{path}: the mask is {image.size[0]}×{image.size[1]} pixels but its photograph "
                                  f"is {size[0]}×{size[1]}")
            if image.mode not in ("1", "L", "P", "RGB"):
                raise IngestError(f"{path}: a mask of pixel mode {image.mode}; want 1- or 8-bit gray, palette or RGB")
            gray = np.asarray(image.convert("L"))
    except (OSError, Image.DecompressionBombError) as e:
        raise IngestError(f"{path}: not an image that can be read ({e})") from None
    mask = gray < below
    if mask.mean() > 0.5:
        raise IngestError(f"{path}: dark over {mask.mean():.0%} of the photograph; the dataset draws its masks dark "
                          "on white (255), is this one inverted?")
    return mask


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """(x, y) of the mean pixel centre of ``mask`` (pixel (i, j) at (j + 0.5, i + 0.5)); None if empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return float(cols.mean() + 0.5), float(rows.mean() + 0.5)
