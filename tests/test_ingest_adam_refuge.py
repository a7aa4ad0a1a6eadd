"""``python -m fundax.ingest adam|refuge``: their downloads, in small, → manual directories prepare accepts."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import openpyxl
import pytest
from PIL import Image

import fakes
from fundax.ingest import ingest

ROOT = pathlib.Path(__file__).resolve().parents[1]
H, W = 64, 96


def _box(*boxes):
    """A (H, W) mask, True in the row and column ranges ((r0, r1), (c0, c1)), ends excluded."""
    mask = np.zeros((H, W), bool)
    for (r0, r1), (c0, c1) in boxes:
        mask[r0:r1, c0:c1] = True
    return mask


# ADAM's disc: pixel centres x 16.5..23.5, y 28.5..35.5, so its centroid is (20, 32); the fovea (60, 32) on the
# same row makes D = 40 px (a right eye, as in tests/test_ingest.py).
ADAM_DISC = _box(((28, 36), (16, 24)))
# x 56.5..63.5, y 28.5..35.5: at most 5 px from the fovea, far inside the macula (2D/3 = 26.7 px).
MACULA = _box(((28, 36), (56, 64)))
# x 40.5..49.5 (between disc and fovea along their axis), y 0.5..3.5: over 28 px above it, outside the macula.
SUPEROTEMPORAL = _box(((0, 4), (40, 50)))


def _photo(path, width=W, height=H):
    """A fundus-like photograph: a bright disc on a dark field."""
    y, x = np.mgrid[:height, :width]
    field = ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 2) ** 2)[..., None]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(field, np.array([170, 80, 40], np.uint8), 0).astype(np.uint8)).save(path, quality=95)


def _bmp(path, levels):
    """An 8-bit gray BMP as ADAM and REFUGE ship their masks: ``levels`` (uint8 (H, W)), white where nothing is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(levels, np.uint8), "L").save(path)


def _drawn(mask):
    """A mask drawn as ADAM draws discs and lesions: 0 on the structure, 255 elsewhere."""
    return np.where(mask, 0, 255)


def _xlsx(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    book = openpyxl.Workbook()
    book.active.append(header)
    for row in rows:
        book.active.append(row)
    book.save(path)


def _lines(out):
    return [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]


def _run(module, *args):
    env = dict(os.environ, TFDS_DISABLE_PROGRESS_BAR="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


_error = fakes.ingest_refused


# --- ADAM -------------------------------------------------------------------------------------------------------

ADAM_SHEET = "Training400/Fovea_location.xlsx"
ADAM_HEADER = ["ID", "imgName", "Fovea_X", "Fovea_Y"]
LESIONS = "Training400-Lesion/Lesion_Masks"


def _adam(root):
    """Two AMD and two non-AMD photographs in ADAM's folders.

    A0001: drusen at the macula, an exudate superotemporal, a scar (not mapped). A0002: a
    hemorrhage at the macula and an empty exudate mask. N0001: no lesion. N0002: a hemorrhage,
    but its fovea is (0, 0), not marked, so the line has no centres.
    """
    for name in ("A0001", "A0002"):
        _photo(root / f"Training400/AMD/{name}.jpg")
    for name in ("N0001", "N0002"):
        _photo(root / f"Training400/Non-AMD/{name}.jpg")
    _xlsx(root / ADAM_SHEET, ADAM_HEADER, [[1, "A0001.jpg", 60, 32], [2, "A0002.jpg", 60.0, 32.0],
                                           [3, "N0001.jpg", 60, 32], [4, "N0002.jpg", 0, 0]])
    for name in ("A0001", "A0002", "N0001", "N0002"):
        _bmp(root / f"Training400/Disc_Masks/{name}.bmp", _drawn(ADAM_DISC))
    masks = {("drusen", "A0001"): MACULA, ("exudate", "A0001"): SUPEROTEMPORAL, ("scar", "A0001"): MACULA,
             ("hemorrhage", "A0002"): MACULA, ("exudate", "A0002"): np.zeros((H, W), bool),
             ("hemorrhage", "N0002"): SUPEROTEMPORAL}
    for (kind, name), mask in masks.items():
        _bmp(root / LESIONS / kind / f"{name}.bmp", _drawn(mask))
    (root / LESIONS / "others").mkdir()
    return root


@pytest.fixture
def adam_source(tmp_path):
    return _adam(tmp_path / "ADAM")


def test_adam_becomes_one_line_per_row_with_regions_from_its_masks(adam_source, tmp_path):
    out = tmp_path / "manual"
    summary = ingest("adam", adam_source, out, min_lesion_share=0.05)
    assessed = ["hemorrhage", "hard_exudate", "drusen"]
    centres = {"disc": [20.0, 32.0], "fovea": [60.0, 32.0]}
    assert _lines(out) == [
        {"image_id": "adam-A0001", "file": "images/adam-A0001.jpg", "split": "train", **centres,
         "amd": True,
         "annotations": [{"annotator": "adam", "assessed": assessed,
                          "findings": {"drusen": ["macula"], "hard_exudate": ["superotemporal"]}}],
         "lesion_masks": {"drusen": "masks/adam-A0001_drusen.png",
                          "hard_exudate": "masks/adam-A0001_hard_exudate.png"}},
        {"image_id": "adam-A0002", "file": "images/adam-A0002.jpg", "split": "train", **centres,
         "amd": True,
         "annotations": [{"annotator": "adam", "assessed": assessed, "findings": {"hemorrhage": ["macula"]}}],
         "lesion_masks": {"hemorrhage": "masks/adam-A0002_hemorrhage.png"}},
        {"image_id": "adam-N0001", "file": "images/adam-N0001.jpg", "split": "train", **centres,
         "amd": False, "annotations": [{"annotator": "adam", "assessed": assessed, "findings": {}}]},
        {"image_id": "adam-N0002", "file": "images/adam-N0002.jpg", "split": "train",
         "amd": False,
         "annotations": [{"annotator": "adam", "assessed": assessed, "findings": {"hemorrhage": None}}],
         "lesion_masks": {"hemorrhage": "masks/adam-N0002_hemorrhage.png"}},
    ]
    written = np.asarray(Image.open(out / "masks/adam-A0001_hard_exudate.png"))
    np.testing.assert_array_equal(written, SUPEROTEMPORAL)
    assert summary.imported == {"train": 4}
    assert summary.positives == {"drusen": 1, "hard_exudate": 1, "hemorrhage": 2}
    assert summary.left_out == {
        "scar masks (not mapped, docs/DATASETS.md)": 1, "empty exudate masks (read as negative)": 1,
        "photographs without a disc mask, an empty one or a fovea at (0, 0): "
        "lines written without centres (prepare --locate_missing)": 1}
    assert "hemorrhage: 2 positive, 2 negative" in summary.text(out)


def test_an_adam_disc_mask_that_is_empty_or_missing_leaves_the_line_without_centres(adam_source, tmp_path):
    _bmp(adam_source / "Training400/Disc_Masks/A0001.bmp", np.full((H, W), 255))
    (adam_source / "Training400/Disc_Masks/N0001.bmp").unlink()
    ingest("adam", adam_source, tmp_path / "manual")
    lines = {line["image_id"]: line for line in _lines(tmp_path / "manual")}
    assert [name for name, line in lines.items() if "disc" in line] == ["adam-A0002"]
    assert lines["adam-A0001"]["annotations"][0]["findings"] == {"drusen": None, "hard_exudate": None}


def test_prepare_accepts_the_adam_lines_with_centres(adam_source, tmp_path):
    out, data = tmp_path / "manual", tmp_path / "data"
    done = _run("fundax.ingest", "adam", adam_source, f"--out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"ADAM: 4 photographs written to {out} (train 4); 0 skipped" in done.stdout
    prepared = _run("fundax.prepare", "--source=manual", f"--manual_dir={out}", f"--data_dir={data}",
                    "--image_size=32", "--workers=1")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "lines read 4, accepted 3, rejected 1" in prepared.stdout, prepared.stdout
    rejects = [json.loads(line) for line in next(data.rglob("rejects.jsonl")).read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejects] == [
        (4, "missing required key(s): 'disc', 'fovea'; prepare --locate_missing finds disc and fovea")]


def test_a_missing_adam_sheet_is_named(adam_source, tmp_path):
    (adam_source / ADAM_SHEET).unlink()
    assert _error("adam", adam_source, tmp_path) == f"{adam_source / ADAM_SHEET}: no such file"


def test_an_adam_row_without_its_photograph_is_named(adam_source, tmp_path):
    (adam_source / "Training400/Non-AMD/N0001.jpg").unlink()
    assert _error("adam", adam_source, tmp_path) == (
        f"{adam_source / ADAM_SHEET}, row 4: N0001.jpg has no photograph {adam_source}/Training400/Non-AMD/N0001.jpg")


@pytest.mark.parametrize("row, why", [
    ([3, "N0001.jpg", "sixty", 32], "Fovea_X is 'sixty', not a number (finite and not negative)"),
    ([3, "N0001.jpg", 60, -1], "Fovea_Y is '-1', not a number (finite and not negative)"),
    ([3, "N0001.jpg", 600, 32], "the fovea (600, 32) lies outside the 96×64 photograph"),
    ([3, "image three", 60, 32], "imgName is 'image three', not a photograph's name as the dataset names them"),
    ([3, "A0001.jpg", 60, 32], "A0001.jpg is listed twice (first in"),
])
def test_a_malformed_adam_row_is_named_with_its_row(adam_source, tmp_path, row, why):
    rows = [[1, "A0001.jpg", 60, 32], [2, "A0002.jpg", 60, 32], row, [4, "N0002.jpg", 0, 0]]
    _xlsx(adam_source / ADAM_SHEET, ADAM_HEADER, rows)
    assert _error("adam", adam_source, tmp_path).startswith(f"{adam_source / ADAM_SHEET}, row 4: {why}")


def test_an_adam_sheet_without_a_column_is_named(adam_source, tmp_path):
    _xlsx(adam_source / ADAM_SHEET, ["ID", "ImgName", "Fovea_X", "Fovea_Y"], [[1, "A0001.jpg", 60, 32]])
    assert _error("adam", adam_source, tmp_path) == (
        f"{adam_source / ADAM_SHEET}, row 1: want a header naming each of imgName, Fovea_X, Fovea_Y once, "
        "got 'ID, ImgName, Fovea_X, Fovea_Y'")


def test_an_adam_mask_of_another_size_is_named(adam_source, tmp_path):
    mask = adam_source / LESIONS / "drusen/A0001.bmp"
    _bmp(mask, np.full((H, W + 1), 255))
    assert _error("adam", adam_source, tmp_path) == (
        f"{mask}: the mask is 97×64 pixels but its photograph is 96×64")


def test_an_adam_mask_drawn_light_on_dark_is_named(adam_source, tmp_path):
    disc = adam_source / "Training400/Disc_Masks/A0002.bmp"
    _bmp(disc, np.where(ADAM_DISC, 255, 0))
    assert _error("adam", adam_source, tmp_path).startswith(f"{disc}: dark over 99% of the photograph")


def test_an_adam_mask_without_a_row_is_named(adam_source, tmp_path):
    _bmp(adam_source / LESIONS / "hemorrhage/A0009.bmp", _drawn(MACULA))
    assert _error("adam", adam_source, tmp_path) == (
        f"{adam_source / LESIONS}/hemorrhage/A0009.bmp: a mask of A0009, "
        f"which has no row in {adam_source / ADAM_SHEET}")


def test_adam_without_its_lesion_masks_is_named(adam_source, tmp_path):
    (adam_source / LESIONS / "drusen/A0001.bmp").unlink()
    (adam_source / LESIONS / "drusen").rmdir()
    assert _error("adam", adam_source, tmp_path) == (
        f"{adam_source / LESIONS}/drusen: no such folder (see docs/DATASETS.md for the layout)")


@pytest.mark.parametrize("format_name", ["adam", "refuge"])
def test_a_folder_that_is_not_the_dataset_is_named(tmp_path, format_name):
    (tmp_path / "other/Training400/Something").mkdir(parents=True)
    message = _error(format_name, tmp_path / "other", tmp_path)
    assert message.startswith(f"{tmp_path / 'other'}: holds no") and f"is it the {format_name.upper()} download?" \
        in message


# --- REFUGE -----------------------------------------------------------------------------------------------------

TRAIN_SHEET = "Annotation-Training400/Fovea_location.xlsx"
VALIDATION_SHEET = "REFUGE-Validation400-GT/Fovea_locations.xlsx"
TEST_SHEET = "REFUGE-Test-GT/Glaucoma_label_and_Fovea_location.xlsx"
# The disc as REFUGE draws it: rim 128 over rows 20..29 and columns 10..24, cup 0 in its columns 10..12. Its
# pixel centres average to x = 10 + 15/2 = 17.5, y = 20 + 10/2 = 25; the rim alone would give x = 19.
DISC_CUP = np.full((H, W), 255, np.uint8)
DISC_CUP[20:30, 10:25] = 128
DISC_CUP[20:30, 10:13] = 0


def _refuge(root):
    """One glaucoma and one other training photograph, one validation, two test photographs."""
    photos = {"Training400/Glaucoma/g0001.jpg": "Annotation-Training400/Disc_Cup_Masks/Glaucoma/g0001.bmp",
              "Training400/Non-Glaucoma/n0001.jpg": "Annotation-Training400/Disc_Cup_Masks/Non-Glaucoma/n0001.bmp",
              "REFUGE-Validation400/V0001.jpg": "REFUGE-Validation400-GT/Disc_Cup_Masks/V0001.bmp",
              "Test400/T0001.jpg": "REFUGE-Test-GT/Disc_Cup_Masks/G/T0001.bmp",
              "Test400/T0002.jpg": "REFUGE-Test-GT/Disc_Cup_Masks/N/T0002.bmp"}
    for photo, mask in photos.items():
        _photo(root / photo)
        _bmp(root / mask, DISC_CUP)
    _xlsx(root / TRAIN_SHEET, ["ID", "ImgName", "Fovea_X", "Fovea_Y"], [[1, "g0001.jpg", 60.5, 33.25],
                                                                        [2, "n0001.jpg", 61, 34]])
    _xlsx(root / VALIDATION_SHEET, ["ID", "ImgName", "Glaucoma Label", "Fovea_X", "Fovea_Y"],
          [[1, "V0001.jpg", 1, 62, 35]])
    _xlsx(root / TEST_SHEET, ["ID", "ImgName", "Label(Glaucoma=1)", "Fovea_X", "Fovea_Y"],
          [[1, "T0001.jpg", 1, 63, 36], [2, "T0002.jpg", 0, 64, 37]])
    return root


@pytest.fixture
def refuge_source(tmp_path):
    return _refuge(tmp_path / "REFUGE")


def test_refuge_lines_carry_centres_and_assess_no_finding(refuge_source, tmp_path):
    out = tmp_path / "manual"
    summary = ingest("refuge", refuge_source, out)

    def line(name, split, fovea, glaucoma):
        return {"image_id": f"refuge-{name}", "file": f"images/refuge-{name}.jpg", "split": split,
                "disc": [17.5, 25.0], "fovea": fovea, "glaucoma": glaucoma,
                "annotations": [{"annotator": "refuge", "assessed": [], "findings": {}}]}

    assert _lines(out) == [line("g0001", "train", [60.5, 33.25], True), line("n0001", "train", [61.0, 34.0], False),
                           line("V0001", "train", [62.0, 35.0], True), line("T0001", "test", [63.0, 36.0], True),
                           line("T0002", "test", [64.0, 37.0], False)]
    assert summary.imported == {"train": 3, "test": 2} and not summary.positives and not summary.left_out
    assert summary.text(out) == f"REFUGE: 5 photographs written to {out} (test 2, train 3); 0 skipped"


def test_prepare_accepts_what_the_refuge_import_writes(refuge_source, tmp_path):
    out = tmp_path / "manual"
    ingest("refuge", refuge_source, out)
    prepared = _run("fundax.prepare", "--source=manual", f"--manual_dir={out}", f"--data_dir={tmp_path / 'data'}",
                    "--image_size=32", "--strict", "--workers=1")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "lines read 5, accepted 5, rejected 0" in prepared.stdout, prepared.stdout


def test_a_refuge_set_not_downloaded_is_left_out(refuge_source, tmp_path):
    for folder in ("Test400", "REFUGE-Test-GT"):
        shutil.rmtree(refuge_source / folder)
    summary = ingest("refuge", refuge_source, tmp_path / "manual")
    assert summary.imported == {"train": 3} and summary.left_out == {"sets not in the download: Test400": 1}


def test_a_missing_refuge_sheet_is_named(refuge_source, tmp_path):
    (refuge_source / VALIDATION_SHEET).unlink()
    assert _error("refuge", refuge_source, tmp_path) == f"{refuge_source / VALIDATION_SHEET}: no such file"


def test_a_refuge_row_without_its_photograph_is_named(refuge_source, tmp_path):
    (refuge_source / "Test400/T0002.jpg").unlink()
    assert _error("refuge", refuge_source, tmp_path) == (
        f"{refuge_source / TEST_SHEET}, row 3: T0002.jpg has no photograph {refuge_source}/Test400/T0002.jpg")


def test_a_refuge_photograph_without_its_mask_is_named(refuge_source, tmp_path):
    (refuge_source / "REFUGE-Test-GT/Disc_Cup_Masks/N/T0002.bmp").unlink()
    assert _error("refuge", refuge_source, tmp_path).startswith(
        f"{refuge_source / TEST_SHEET}, row 3: T0002.jpg has no disc mask T0002.bmp in")


@pytest.mark.parametrize("label, why", [
    (2, "Label(Glaucoma=1) is '2', want 0 or 1"),
    (None, "Label(Glaucoma=1) is '', want 0 or 1"),
])
def test_a_malformed_refuge_label_is_named_with_its_row(refuge_source, tmp_path, label, why):
    _xlsx(refuge_source / TEST_SHEET, ["ID", "ImgName", "Label(Glaucoma=1)", "Fovea_X", "Fovea_Y"],
          [[1, "T0001.jpg", 1, 63, 36], [2, "T0002.jpg", label, 64, 37]])
    assert _error("refuge", refuge_source, tmp_path) == f"{refuge_source / TEST_SHEET}, row 3: {why}"


def test_a_refuge_mask_of_another_size_is_named(refuge_source, tmp_path):
    mask = refuge_source / "REFUGE-Validation400-GT/Disc_Cup_Masks/V0001.bmp"
    _bmp(mask, np.full((H + 2, W), 255))
    assert _error("refuge", refuge_source, tmp_path) == f"{mask}: the mask is 96×66 pixels but its photograph is 96×64"


def test_a_refuge_sheet_that_is_not_a_workbook_is_named(refuge_source, tmp_path):
    (refuge_source / TRAIN_SHEET).write_text("ID,ImgName,Fovea_X,Fovea_Y\n")
    assert _error("refuge", refuge_source, tmp_path).startswith(
        f"{refuge_source / TRAIN_SHEET}: cannot be read as XLSX")
