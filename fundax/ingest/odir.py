"""ODIR-5K, Ocular Disease Intelligent Recognition: per-eye diagnostic keywords as a manual directory.

The layouts read (the challenge's download, or its common Kaggle copy; ``docs/DATASETS.md``)::

    SRC/ODIR-5K_Training_Annotations(Updated)_V2.xlsx   SRC/ODIR-5K_Training_Images/ODIR-5K_Training_Dataset/
    SRC/data.xlsx                                       SRC/Training Images/

The spreadsheet has a row per patient (``ID, Patient Age, Patient Sex, Left-Fundus,
Right-Fundus, Left-Diagnostic Keywords, Right-Diagnostic Keywords, N, D, G, C, A, H, M, O``);
each eye's keywords, separated by ``，``, become that photograph's line. A keyword naming a
finding makes it present; its absence makes it absent only where no other keyword of the eye
could hide or imply it (:data:`IMPLIES`, :data:`OBSCURED`): there the finding is not assessed.
"""

from __future__ import annotations

import pathlib
import re

from fundax.ingest import tables
from fundax.ingest.manual import IngestError, ManualDirWriter, Summary

MAPPED = ("hemorrhage", "drusen", "retinal_pigmentary_change", "macular_hole", "membrane")
_H, _D, _P, _MH, _M = MAPPED

PRESENT = {"intraretinal hemorrhage": _H, "drusen": _D, "macular hole": _MH, **dict.fromkeys((
    "epiretinal membrane", "macular epiretinal membrane", "epiretinal membrane over the macula",
    "optic disk epiretinal membrane"), _M), **dict.fromkeys((
    "retinal pigmentation", "abnormal pigment", "pigmentation disorder", "macular pigmentation disorder",
    "depigmentation of the retinal pigment epithelium", "pigment epithelium proliferation",
    "retinal pigment epithelial hypertrophy", "retinal pigment epithelium atrophy",
    "chorioretinal atrophy with pigmentation proliferation"), _P)}
"""Keyword → the finding it names."""

_IMPLYING: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("mild nonproliferative retinopathy", "moderate non proliferative retinopathy",
      "suspected moderate non proliferative retinopathy", "severe nonproliferative retinopathy",
      "proliferative diabetic retinopathy", "severe proliferative diabetic retinopathy", "diabetic retinopathy",
      "suspected diabetic retinopathy", "suspicious diabetic retinopathy", "intraretinal microvascular abnormality",
      "suspected microvascular anomalies", "branch retinal vein occlusion", "central retinal vein occlusion",
      "old branch retinal vein occlusion", "old central retinal vein occlusion", "hypertensive retinopathy",
      "retinal artery macroaneurysm", "optic disc edema"), (_H,)),
    (("dry age-related macular degeneration", "age-related macular degeneration"), (_D, _P)),
    (("wet age-related macular degeneration", "idiopathic choroidal neovascularization"), (_H, _D, _P)),
    (("pathological myopia", "myopia retinopathy", "myopic retinopathy", "myopic maculopathy"), (_H, _P, _MH)),
    (("retinitis pigmentosa", "suspected retinitis pigmentosa", "chorioretinal atrophy",
      "diffuse chorioretinal atrophy", "diffuse retinal atrophy", "atrophic change", "atrophy",
      "peripapillary atrophy", "oval yellow-white atrophy", "old chorioretinopathy", "old choroiditis",
      "punctate inner choroidopathy", "central serous chorioretinopathy"), (_P,)),
    (("laser spot", "post laser photocoagulation", "fundus laser photocoagulation spots",
      "post retinal laser surgery"), (_H, _P)),
    (("suspected macular epimacular membrane",), (_M,)),
    (("maculopathy", "rhegmatogenous retinal detachment", "retinal detachment", "retina fold",
      "spotted membranous change", "silicone oil eye"), MAPPED),
)
IMPLIES = {keyword: findings for keywords, findings in _IMPLYING for keyword in keywords}
"""Keyword → the findings it may hold without naming them: not assessed on its eye (docs/DATASETS.md says why)."""

OBSCURED = frozenset(("low image quality", "image offset", "optic disk photographically invisible", "cataract",
                      "suspected cataract", "refractive media opacity", "vitreous opacity", "asteroid hyalosis"))
"""Keywords of an eye seen poorly: no mapped finding is absent on it (those named are still present)."""

NEUTRAL = frozenset((
    "normal fundus", "lens dust", "glaucoma", "suspected glaucoma", "myelinated nerve fibers", "tessellated fundus",
    "vitreous degeneration", "white vessel", "retinochoroidal coloboma", "optic nerve atrophy",
    "central retinal artery occlusion", "branch retinal artery occlusion", "morning glory syndrome",
    "retinal vascular sheathing", "suspected retinal vascular sheathing", "macular coloboma",
    "congenital choroidal coloboma", "wedge white line change", "wedge-shaped change", "choroidal nevus",
    "glial remnants anterior to the optic disc", "vascular loops", "optic discitis",
    "suspected abnormal color of optic disc", "arteriosclerosis", "vessel tortuosity"))
"""Keywords that neither name nor imply a mapped finding."""

NOT_FUNDUS = frozenset(("anterior segment image", "no fundus image"))
"""Keywords of a photograph that is not of the fundus: skipped."""

ANNOTATIONS = ("ODIR-5K_Training_Annotations(Updated)_V2.xlsx",
               "ODIR-5K_Training_Images/ODIR-5K_Training_Annotations(Updated)_V2.xlsx", "data.xlsx")
TRAINING = ("ODIR-5K_Training_Images/ODIR-5K_Training_Dataset", "ODIR-5K_Training_Dataset", "Training Images")
TESTING = ("ODIR-5K_Testing_Images", "Testing Images")
SIDES = ("Left", "Right")
COLUMNS = ("ID",) + tuple(f"{side}-Fundus" for side in SIDES) + tuple(f"{s}-Diagnostic Keywords" for s in SIDES)


def split_keywords(text: str) -> list[str]:
    """An eye's keywords: the cell split at full-width and ASCII commas, spaces collapsed, lower case."""
    return [re.sub(r"\s+", " ", part).strip().lower() for part in re.split("[，,]", text) if part.strip()]


def eye_labels(keywords: list[str]) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """(present, assessed, unknown keywords) of one eye; an unknown keyword leaves unnamed findings unassessed."""
    present = {PRESENT[k] for k in keywords if k in PRESENT}
    unknown = [k for k in keywords if k not in PRESENT and k not in IMPLIES and k not in OBSCURED
               and k not in NEUTRAL and k not in NOT_FUNDUS]
    hidden = {name for k in keywords for name in IMPLIES.get(k, ())}
    if unknown or any(k in OBSCURED for k in keywords):
        hidden = set(MAPPED)
    assessed = tuple(name for name in MAPPED if name in present or name not in hidden)
    return tuple(name for name in MAPPED if name in present), assessed, unknown


def _first(src: pathlib.Path, candidates: tuple[str, ...], is_file: bool) -> pathlib.Path | None:
    found = [src / c for c in candidates if ((src / c).is_file() if is_file else (src / c).is_dir())]
    return found[0] if found else None


def import_dataset(src: pathlib.Path, writer: ManualDirWriter, min_share: float, annotator: str) -> Summary:
    """Every fundus photograph of ODIR-5K's training set under ``src`` into ``writer``; ``min_share`` is unused."""
    del min_share  # image-level labels: no lesion pixels
    labels = _first(src, ANNOTATIONS, is_file=True)
    if labels is None:
        raise IngestError(f"{src}: holds none of {', '.join(ANNOTATIONS)}; is it the ODIR-5K download? "
                          "(docs/DATASETS.md)")
    folder = _first(src, TRAINING, is_file=False)
    if folder is None:
        raise IngestError(f"{src}: holds none of the photograph folders {', '.join(TRAINING)} (docs/DATASETS.md)")
    summary = Summary("ODIR-5K", findings=MAPPED)
    header, rows = tables.read_table(labels)
    at = tables.columns(labels, header, COLUMNS)
    tables.unique(labels, rows, at["ID"], "ID")
    files = tables.photographs(folder)
    lines, seen = [], {}
    for row in rows:
        tables.cell(labels, row, at["ID"], "ID")
        for side in SIDES:
            name = tables.cell(labels, row, at[f"{side}-Fundus"], f"{side}-Fundus")
            keywords = split_keywords(tables.cell(labels, row, at[f"{side}-Diagnostic Keywords"],
                                                  f"{side}-Diagnostic Keywords"))
            if name not in files:
                raise IngestError(f"{labels}, row {row[0]}: {side}-Fundus {name} has no photograph {folder / name}")
            if name in seen:
                raise IngestError(f"{labels}, row {row[0]}: {side}-Fundus {name} is listed twice "
                                  f"(first in row {seen[name]})")
            seen[name] = row[0]
            lines.append((name, keywords))
    tables.count_strays(summary, files, seen, f"files in {folder.name}/ without a row in {labels.name}")
    for name, keywords in lines:
        not_fundus = [k for k in keywords if k in NOT_FUNDUS]
        if not_fundus:
            summary.skipped.append((name, f"not a fundus photograph ({not_fundus[0]})"))
            continue
        present, assessed, unknown = eye_labels(keywords)
        for keyword in unknown:
            summary.left_out[f"keywords not known to the importer, all findings not assessed: {keyword!r}"] += 1
        tables.write(writer, summary, f"odir-{pathlib.Path(name).stem}", files[name], "train", annotator,
                     present, assessed)
    testing = _first(src, TESTING, is_file=False)
    if testing is not None:
        count = sum(1 for path in testing.rglob("*") if path.is_file())
        summary.left_out[f"photographs of the test set, whose labels are not published ({testing})"] += count
    return summary
