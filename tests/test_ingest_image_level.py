"""``python -m fundax.ingest`` for datasets with image-level grades: ODIR-5K, Messidor, Messidor-2, APTOS, EyePACS."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import openpyxl
import pytest
import xlwt
from PIL import Image

import fakes
from fundax.ingest import ingest, odir

ROOT = pathlib.Path(__file__).resolve().parents[1]
ICDR = ["hemorrhage", "hard_exudate", "cotton_wool_patch"]
ODIR_ALL = ["hemorrhage", "drusen", "retinal_pigmentary_change", "macular_hole", "membrane"]


def _photo(path, width=48, height=40):
    """A small fundus-like photograph in the format of its extension."""
    y, x = np.mgrid[:height, :width]
    field = ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 2) ** 2)[..., None]
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.where(field, np.array([170, 80, 40], np.uint8), 0).astype(np.uint8))
    image.save(path, format={".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF"}[path.suffix.lower()])


def _csv(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _lines(out):
    return [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]


def _line(image_id, file, split, assessed, annotator, findings):
    return {"image_id": image_id, "file": file, "split": split,
            "annotations": [{"annotator": annotator, "assessed": assessed, "findings": findings}]}


_error = fakes.ingest_refused


# --- ODIR-5K: the challenge's spreadsheet, one row per patient, keywords per eye ---------------------------

ODIR_XLSX = "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
ODIR_PHOTOS = "ODIR-5K_Training_Images/ODIR-5K_Training_Dataset"
ODIR_HEADER = ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
               "Right-Diagnostic Keywords", "N", "D", "G", "C", "A", "H", "M", "O"]
ODIR_ROWS = [  # (ID, left keywords, right keywords): the N…O flags are the patient's and are not read
    (0, "cataract", "normal fundus"),
    (1, "normal fundus", "moderate non proliferative retinopathy，drusen"),
    (2, "macular epiretinal membrane，retinal pigmentation", "anterior segment image"),
    (3, "intraretinal hemorrhage,hypertensive retinopathy", "low image quality，macular hole"),
    (4, "dry age-related macular degeneration", "retinal whatever"),
]


def _odir(root, rows=ODIR_ROWS):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    sheet.append(ODIR_HEADER)
    for patient, left, right in rows:
        sheet.append([patient, 60, "Female", f"{patient}_left.jpg", f"{patient}_right.jpg", left, right,
                      0, 0, 0, 0, 0, 0, 0, 1])
        for side in ("left", "right"):
            _photo(root / ODIR_PHOTOS / f"{patient}_{side}.jpg")
    root.mkdir(parents=True, exist_ok=True)
    book.save(root / ODIR_XLSX)
    _photo(root / "ODIR-5K_Testing_Images" / "937_left.jpg")
    _photo(root / "ODIR-5K_Testing_Images" / "937_right.jpg")
    (root / ODIR_PHOTOS / "notes.txt").write_text("stray")
    return root


def test_odir_keywords_become_a_line_per_eye_with_what_they_assess(tmp_path):
    src, out = _odir(tmp_path / "ODIR"), tmp_path / "manual"
    summary = ingest("odir", src, out)
    rows = [("0_left", [], {}),  # cataract: the fundus is seen through it, nothing is absent
            ("0_right", ODIR_ALL, {}),
            ("1_left", ODIR_ALL, {}),
            ("1_right", ODIR_ALL[1:], {"drusen": None}),  # retinopathy: haemorrhages graded, not listed
            ("2_left", ODIR_ALL, {"retinal_pigmentary_change": None, "membrane": None}),
            ("3_left", ODIR_ALL, {"hemorrhage": None}),  # named, though hypertensive retinopathy would hide it
            ("3_right", ["macular_hole"], {"macular_hole": None}),  # low image quality: only what is named
            ("4_left", ["hemorrhage", "macular_hole", "membrane"], {}),  # AMD: drusen and pigment implied
            ("4_right", [], {})]  # a keyword the importer does not know
    assert _lines(out) == [_line(f"odir-{name}", f"images/odir-{name}.jpg", "train", assessed, "odir", findings)
                           for name, assessed, findings in rows]
    assert summary.imported == {"train": 9}
    assert summary.skipped == [("2_right.jpg", "not a fundus photograph (anterior segment image)")]
    assert summary.positives == {"hemorrhage": 1, "drusen": 1, "retinal_pigmentary_change": 1, "macular_hole": 1,
                                 "membrane": 1}
    assert summary.not_assessed == {"hemorrhage": 4, "drusen": 4, "retinal_pigmentary_change": 4,
                                    "macular_hole": 2, "membrane": 3}
    assert summary.left_out == {
        f"files in ODIR-5K_Training_Dataset/ without a row in {ODIR_XLSX}: {src / ODIR_PHOTOS / 'notes.txt'}": 1,
        "keywords not known to the importer, all findings not assessed: 'retinal whatever'": 1,
        f"photographs of the test set, whose labels are not published ({src / 'ODIR-5K_Testing_Images'})": 2}
    assert "hemorrhage: 1 positive, 4 negative, 4 not assessed" in summary.text(out)


def test_odir_knows_each_keyword_once():
    groups = [set(odir.PRESENT), set(odir.IMPLIES), odir.OBSCURED, odir.NEUTRAL, odir.NOT_FUNDUS]
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == 102
    assert odir.split_keywords(" Abnormal  pigment ，suspected abnormal color of  optic disc") == [
        "abnormal pigment", "suspected abnormal color of optic disc"]


def test_prepare_reads_the_lines_and_wants_only_their_centres(tmp_path):
    src, out, data = _odir(tmp_path / "ODIR"), tmp_path / "manual", tmp_path / "data"
    env = dict(os.environ, TFDS_DISABLE_PROGRESS_BAR="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "fundax.ingest", "odir", str(src), f"--out={out}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and "ODIR-5K: 9 photographs written" in done.stdout, done.stderr[-2000:]
    prepared = subprocess.run([sys.executable, "-m", "fundax.prepare", "--source=manual", f"--manual_dir={out}",
                               f"--data_dir={data}", "--image_size=32", "--workers=1"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=180)
    assert prepared.returncode == 1 and "no photograph" in prepared.stderr
    rejects = [json.loads(line) for line in next(data.rglob("rejects.jsonl")).read_text().splitlines()]
    assert [r["line"] for r in rejects] == list(range(1, 10))
    assert {r["reason"] for r in rejects} == {
        "missing required key(s): 'disc', 'fovea'; prepare --locate_missing finds disc and fovea"}


def test_bad_odir_sources_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    assert _error("odir", tmp_path / "empty", tmp_path).startswith(f"{tmp_path / 'empty'}: holds none of {ODIR_XLSX}")
    src = _odir(tmp_path / "ODIR", [(0, "normal fundus", "normal fundus"), (1, "drusen", "")])
    assert _error("odir", src, tmp_path) == (
        f"{src / ODIR_XLSX}, row 3: Right-Diagnostic Keywords is '', want a value")
    src = _odir(tmp_path / "ODIR2", [(0, "normal fundus", "normal fundus"), (0, "drusen", "drusen")])
    assert _error("odir", src, tmp_path) == f"{src / ODIR_XLSX}, row 3: ID 0 is listed twice (first in row 2)"
    src = _odir(tmp_path / "ODIR3", [(0, "normal fundus", "normal fundus")])
    (src / ODIR_PHOTOS / "0_right.jpg").unlink()
    assert _error("odir", src, tmp_path) == (
        f"{src / ODIR_XLSX}, row 2: Right-Fundus 0_right.jpg has no photograph {src / ODIR_PHOTOS / '0_right.jpg'}")


# --- Messidor: twelve bases of TIFF photographs, an .xls per base ---------------------------------------------

MESSIDOR_HEADER = ["Image name", "Ophthalmologic department", "Retinopathy grade", "Risk of macular edema "]


def _xls(path, rows):
    book = xlwt.Workbook()
    sheet = book.add_sheet("Feuil1")
    for r, row in enumerate([MESSIDOR_HEADER] + rows):
        for c, value in enumerate(row):
            sheet.write(r, c, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(str(path))


def _messidor(root):
    """Base11 with its .xls inside its folder, Base33 with its .xls beside the folders (both are found)."""
    base11 = [("20051020_63045_0100_PP.tif", 2, 0),  # the errata correct its grade to 0
              ("20051020_43808_0100_PP.tif", 3, 2), ("20051020_43832_0100_PP.tif", 1, 1)]
    base33 = [("20051202_55582_0400_PP.tif", 0, 0),  # a duplicate by the errata: left out
              ("20051205_33025_0400_PP.tif", 2, 0)]
    for base, rows, xls in (("Base11", base11, root / "Base11" / "Annotation_Base11.xls"),
                            ("Base33", base33, root / "Annotation_Base33.xls")):
        _xls(xls, [[name, "Service Ophtalmologie Lariboisière", float(grade), float(risk)]
                   for name, grade, risk in rows])
        for name, _, _ in rows:
            _photo(root / base / name)
    (root / "Base11" / "Thumbs.db").write_bytes(b"\0")
    return root


def test_messidor_grades_say_which_photographs_have_no_haemorrhage_or_hard_exudate(tmp_path):
    src, out = _messidor(tmp_path / "Messidor"), tmp_path / "manual"
    summary = ingest("messidor", src, out)
    both, exudate = ["hemorrhage", "hard_exudate"], ["hard_exudate"]
    assert _lines(out) == [
        _line("messidor-20051020_63045_0100_PP", "images/messidor-20051020_63045_0100_PP.tif", "train", both,
              "messidor", {}),
        _line("messidor-20051020_43808_0100_PP", "images/messidor-20051020_43808_0100_PP.tif", "train", exudate,
              "messidor", {"hard_exudate": None}),
        _line("messidor-20051020_43832_0100_PP", "images/messidor-20051020_43832_0100_PP.tif", "train", both,
              "messidor", {"hard_exudate": None}),
        _line("messidor-20051205_33025_0400_PP", "images/messidor-20051205_33025_0400_PP.tif", "train", exudate,
              "messidor", {})]
    assert summary.positives == {"hard_exudate": 2} and summary.not_assessed == {"hemorrhage": 2}
    others = " ".join(f"Base{d}{p}" for d in (1, 2, 3) for p in (1, 2, 3, 4) if f"{d}{p}" not in ("11", "33"))
    assert summary.left_out == {
        f"bases not in {src}, not imported: {others}": 10,
        "duplicates listed by Messidor's errata": 1,
        f"files in Base11/ not listed in Annotation_Base11.xls: {src / 'Base11' / 'Thumbs.db'}": 1}


def test_bad_messidor_sources_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    assert _error("messidor", tmp_path / "empty", tmp_path).startswith(f"{tmp_path / 'empty'}: holds none of")
    src = _messidor(tmp_path / "Messidor")
    xls = src / "Annotation_Base33.xls"
    _xls(xls, [["20051205_33025_0400_PP.tif", "CHU de St Etienne", 4.0, 0.0]])
    assert _error("messidor", src, tmp_path) == f"{xls}, row 2: Retinopathy grade is '4', want one of 0, 1, 2, 3"
    _xls(xls, [["20051020_43808_0100_PP.tif", "CHU de St Etienne", 0.0, 0.0]])
    _photo(src / "Base33" / "20051020_43808_0100_PP.tif")
    assert _error("messidor", src, tmp_path) == (f"{xls}, row 2: Image name 20051020_43808_0100_PP.tif is listed "
                                                 f"twice (first in {src / 'Base11/Annotation_Base11.xls'}, row 3)")
    xls.write_text("Image name\tRetinopathy grade\n")
    assert _error("messidor", src, tmp_path).startswith(f"{xls}: cannot be read as XLS")
    xls.unlink()
    assert _error("messidor", src, tmp_path) == f"{src / 'Base33'}: no Annotation_Base33.xls in it or in {src} " \
                                                "(docs/DATASETS.md)"


# --- Messidor-2: IMAGES/ and the adjudicated grades' messidor_data.csv ---------------------------------------

M2_HEADER = "image_id,adjudicated_dr_grade,adjudicated_dme,adjudicated_gradable"


def _messidor2(root):
    rows = ["20051020_43808_0100_PP.png,0,0,1", "IM000001.jpg,1,1,1", "IM000002.JPG,,,0", "IM000003.JPG,2,1,1"]
    _csv(root / "messidor_data.csv", [M2_HEADER] + rows)
    _csv(root / "messidor-2.csv", ["20051020_43808_0100_PP.png;20051020_43832_0100_PP.png"])
    for name in ("20051020_43808_0100_PP.png", "IM000001.JPG", "IM000002.JPG", "IM000003.JPG"):
        _photo(root / "IMAGES" / name)
    return root


def test_messidor2_adjudicated_grades_are_icdr_grades_with_referable_edema(tmp_path):
    src, out = _messidor2(tmp_path / "messidor2"), tmp_path / "manual"
    summary = ingest("messidor2", src, out)
    assert _lines(out) == [
        _line("messidor2-20051020_43808_0100_PP", "images/messidor2-20051020_43808_0100_PP.png", "train", ICDR,
              "messidor2", {}),
        _line("messidor2-IM000001", "images/messidor2-IM000001.jpg", "train", ICDR, "messidor2",
              {"hard_exudate": None}),  # listed in lower case, found in IMAGES/ as IM000001.JPG
        _line("messidor2-IM000003", "images/messidor2-IM000003.jpg", "train", ["hard_exudate"], "messidor2",
              {"hard_exudate": None})]
    assert summary.skipped == [("IM000002.JPG", "adjudicated ungradable")]
    assert summary.not_assessed == {"hemorrhage": 1, "cotton_wool_patch": 1} and not summary.left_out
    csv_path = src / "messidor_data.csv"
    csv_path.write_text(csv_path.read_text().replace("IM000003.JPG,2,1,1", "IM000003.JPG,2,2,1"))
    assert _error("messidor2", src, tmp_path) == f"{csv_path}, row 5: adjudicated_dme is '2', want one of 0, 1"
    csv_path.unlink()
    assert _error("messidor2", src, tmp_path).startswith(f"{csv_path}: no such file; the adjudicated grades")


# --- APTOS 2019 and EyePACS: Kaggle's CSVs and folders --------------------------------------------------------

def _aptos(root):
    _csv(root / "train.csv", ["id_code,diagnosis", "000c1434d8d7,2", "001639a390f0,0", "0024cdab0c1e,1"])
    _csv(root / "test.csv", ["id_code", "0005cfc8afb6", "003f0afdcd15"])
    _csv(root / "sample_submission.csv", ["id_code,diagnosis", "0005cfc8afb6,0", "003f0afdcd15,0"])
    for name in ("000c1434d8d7", "001639a390f0", "0024cdab0c1e"):
        _photo(root / "train_images" / f"{name}.png")
    for name in ("0005cfc8afb6", "003f0afdcd15"):
        _photo(root / "test_images" / f"{name}.png")
    return root


def _eyepacs(root):
    _csv(root / "trainLabels.csv", ["image,level", "10_left,0", "10_right,4", "13_left,1"])
    _csv(root / "retinopathy_solution.csv", ["image,level,Usage", "1_left,0,Private", "1_right,3,Public"])
    for folder, names in (("train", ("10_left", "10_right", "13_left")), ("test", ("1_left", "1_right"))):
        for name in names:
            _photo(root / folder / f"{name}.jpeg")
    return root


def test_icdr_grades_0_and_1_say_three_findings_are_absent_and_2_to_4_nothing(tmp_path):
    aptos, eyepacs = _aptos(tmp_path / "aptos"), _eyepacs(tmp_path / "eyepacs")
    summary = ingest("aptos", aptos, tmp_path / "a")
    assert _lines(tmp_path / "a") == [
        _line("aptos-000c1434d8d7", "images/aptos-000c1434d8d7.png", "train", [], "aptos", {}),
        _line("aptos-001639a390f0", "images/aptos-001639a390f0.png", "train", ICDR, "aptos", {}),
        _line("aptos-0024cdab0c1e", "images/aptos-0024cdab0c1e.png", "train", ICDR, "aptos", {})]
    assert summary.not_assessed == dict.fromkeys(ICDR, 1) and not summary.positives
    assert summary.left_out == {
        f"photographs of the test set, whose labels are not published ({aptos / 'test_images'})": 2}
    assert "hard_exudate: 0 positive, 2 negative, 1 not assessed" in summary.text(tmp_path / "a")
    summary = ingest("eyepacs", eyepacs, tmp_path / "e")
    written = _lines(tmp_path / "e")
    assert [(line["image_id"], line["split"], line["annotations"][0]["assessed"]) for line in written] == [
        ("eyepacs-train-10_left", "train", ICDR), ("eyepacs-train-10_right", "train", []),
        ("eyepacs-train-13_left", "train", ICDR), ("eyepacs-test-1_left", "test", ICDR),
        ("eyepacs-test-1_right", "test", [])]
    assert summary.imported == {"train": 3, "test": 2} and summary.not_assessed == dict.fromkeys(ICDR, 2)
    (eyepacs / "retinopathy_solution.csv").unlink()
    summary = ingest("eyepacs", eyepacs, tmp_path / "e2")
    assert summary.imported == {"train": 3} and summary.left_out == {
        f"photographs of the test set without retinopathy_solution.csv ({eyepacs / 'test'})": 2}


@pytest.mark.parametrize("edit, why", [
    (lambda lines: lines.__setitem__(2, "10_right,5"), "row 3: level is '5', want one of 0, 1, 2, 3, 4"),
    (lambda lines: lines.__setitem__(2, "10_right,"), "row 3: level is '', want one of 0, 1, 2, 3, 4"),
    (lambda lines: lines.__setitem__(2, "10_left,0"), "row 3: image 10_left is listed twice (first in row 2)"),
    (lambda lines: lines.__setitem__(2, "11_left,0"),
     "row 3: image 11_left has no photograph {src}/train/11_left.jpeg"),
    (lambda lines: lines.__setitem__(0, "name,level"), "row 1: want the columns image, level; missing image in "
                                                       "'name, level'"),
])
def test_a_bad_eyepacs_row_is_named_with_its_file_and_row(tmp_path, edit, why):
    src = _eyepacs(tmp_path / "eyepacs")
    labels = src / "trainLabels.csv"
    lines = labels.read_text().splitlines()
    edit(lines)
    labels.write_text("\n".join(lines) + "\n")
    assert _error("eyepacs", src, tmp_path) == f"{labels}, {why.format(src=src)}"


def test_missing_and_foreign_kaggle_sources_are_named(tmp_path):
    src = _aptos(tmp_path / "aptos")
    (src / "train.csv").unlink()
    assert _error("aptos", src, tmp_path) == f"{src / 'train.csv'}: no such file"
    (tmp_path / "empty").mkdir()
    for format_name in ("aptos", "eyepacs", "messidor2"):
        assert _error(format_name, tmp_path / "empty", tmp_path).startswith(f"{tmp_path / 'empty'}: holds ")
