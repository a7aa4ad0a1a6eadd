"""Public datasets of fundus photographs → a manual directory (docs/DATA_FORMAT.md).

    python -m fundax.ingest FORMAT SRC --out MANUAL_DIR [--min_lesion_share=0.05] [--annotator=NAME]

:data:`IMPORTERS` maps each FORMAT to the module that reads that dataset's download
(``docs/DATASETS.md`` lists them, their label mappings and those not built yet). An
importer reads SRC, hands each photograph to a :class:`~fundax.ingest.manual.ManualDirWriter`
and returns a :class:`~fundax.ingest.manual.Summary`; :func:`ingest` builds the directory
and moves it into place only when the import succeeded. :mod:`~fundax.ingest.ichallenge`
holds what the ADAM and REFUGE importers share (``.xlsx`` sheets, BMP masks).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

from fundax.ingest import adam, idrid, kaggle_dr, manual, messidor, odir, refuge, rfmid
from fundax.ingest.lesions import DEFAULT_MIN_SHARE

Importer = Callable[[pathlib.Path, manual.ManualDirWriter, float, str], manual.Summary]

IMPORTERS: dict[str, Importer] = {
    "adam": adam.import_dataset,
    "aptos": kaggle_dr.import_aptos,
    "eyepacs": kaggle_dr.import_eyepacs,
    "idrid": idrid.import_dataset,
    "messidor": messidor.import_messidor,
    "messidor2": messidor.import_messidor2,
    "odir": odir.import_dataset,
    "refuge": refuge.import_dataset,
    "rfmid": rfmid.import_dataset,
}
"""FORMAT → importer(src, writer, min_lesion_share, annotator)."""

def ingest(format_name: str, src: str | pathlib.Path, out: str | pathlib.Path,
           min_lesion_share: float = DEFAULT_MIN_SHARE, annotator: str | None = None) -> manual.Summary:
    """Import ``src`` (a download of dataset ``format_name``) into the new manual directory ``out``.

    Every line has one grader, ``annotator`` (default: ``format_name``): the dataset's labels are one reading.
    """
    if format_name not in IMPORTERS:
        raise ValueError(f"unknown format {format_name!r}; known: {', '.join(sorted(IMPORTERS))}")
    if not 0 < min_lesion_share <= 1:
        raise ValueError(f"--min_lesion_share must lie in (0, 1], got {min_lesion_share}")
    src = pathlib.Path(src)
    if not src.is_dir():
        raise manual.IngestError(f"{src}: no such folder")
    with manual.building(pathlib.Path(out)) as writer:
        return IMPORTERS[format_name](src, writer, min_lesion_share, annotator or format_name)
