"""``python -m fundax.ingest``: lesion masks → regions; IDRiD's download → a manual directory prepare accepts."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fakes
from PIL import Image

from fundax import regions as regions_lib
from fundax.ingest import idrid, ingest, rfmid
from fundax.ingest.lesions import region_shares, regions_of_lesion
from fundax.ingest.manual import IngestError

ROOT = pathlib.Path(__file__).resolve().parents[1]
H, W = 64, 96
# Right eye, disc left of the fovea on one row: D = 40 px, t = (x - 20)/40, s = (32 - y)/40.
DISC, FOVEA = (20.0, 32.0), (60.0, 32.0)


def _mask(*boxes):
    """A (H, W) mask, True in the row and column ranges ((r0, r1), (c0, c1)), ends excluded."""
    mask = np.zeros((H, W), bool)
    for (r0, r1), (c0, c1) in boxes:
        mask[r0:r1, c0:c1] = True
    return mask


# Pixel centres x in 56.5..63.5, y in 28.5..35.5: at most 5 px from the fovea, far inside 2D/3 = 26.7 px.
MACULA = _mask(((28, 36), (56, 64)))
# 70 pixels at x <= 9.5, y <= 6.5 (t < 0, s > 0, over 16 px = 2D/5 from the disc) and 30 at y >= 54.5 (s < 0).
NASAL_70_30 = _mask(((0, 7), (0, 10)), ((54, 57), (0, 10)))
# x 40.5..49.5 (0 < t < 1), y 0.5..3.5: at least 28.5 px from the fovea, so outside the macula.
SUPEROTEMPORAL = _mask(((0, 4), (40, 50)))


def test_a_lesion_in_one_region_is_cued_there_only():
    assert regions_of_lesion(MACULA, DISC, FOVEA, 0.05) == ["macula"]
    assert regions_of_lesion(SUPEROTEMPORAL, DISC, FOVEA, 0.05) == ["superotemporal"]


def test_a_lesion_split_70_30_keeps_the_smaller_part_only_above_its_share():
    np.testing.assert_allclose(region_shares(NASAL_70_30, DISC, FOVEA), [0, 0, 0, 0, 0, 0, 0.7, 0.3])
    assert regions_of_lesion(NASAL_70_30, DISC, FOVEA, 0.25) == ["superonasal", "inferonasal"]
    assert regions_of_lesion(NASAL_70_30, DISC, FOVEA, 0.4) == ["superonasal"]
    assert regions_of_lesion(NASAL_70_30, DISC, FOVEA, 0.3) == ["superonasal", "inferonasal"]  # at the share: in


def test_an_empty_mask_has_no_region():
    assert regions_of_lesion(np.zeros((H, W), bool), DISC, FOVEA) == []
    assert not region_shares(np.zeros((H, W), bool), DISC, FOVEA).any()


def test_a_lesion_with_no_region_at_its_share_is_cued_where_most_of_it_is():
    spread = MACULA | SUPEROTEMPORAL | NASAL_70_30  # 64, 40, 70 and 30 pixels of 204
    assert regions_of_lesion(spread, DISC, FOVEA, 0.9) == ["superonasal"]


def test_shares_agree_with_the_region_map_of_every_pixel():
    mask = np.random.default_rng(0).random((H, W)) < 0.3
    ids = regions_lib.region_map(H, W, (31.0, 40.0), (70.0, 22.0))[mask]
    expected = np.bincount(ids, minlength=regions_lib.NUM_REGIONS) / mask.sum()
    np.testing.assert_allclose(region_shares(mask, (31.0, 40.0), (70.0, 22.0)), expected)


def test_a_bad_share_is_refused():
    with pytest.raises(ValueError, match="min_share"):
        regions_of_lesion(MACULA, DISC, FOVEA, 0.0)


# --- the IDRiD layout, in small -------------------------------------------------------------------------------

SEG = "A. Segmentation"
LOC = "C. Localization"
OD_TRAIN = f"{LOC}/2. Groundtruths/1. Optic Disc Center Location/a. IDRiD_OD_Center_Training Set_Markups.csv"
OD_TEST = f"{LOC}/2. Groundtruths/1. Optic Disc Center Location/b. IDRiD_OD_Center_Testing Set_Markups.csv"
FOVEA_TRAIN = f"{LOC}/2. Groundtruths/2. Fovea Center Location/IDRiD_Fovea_Center_Training Set_Markups.csv"
FOVEA_TEST = f"{LOC}/2. Groundtruths/2. Fovea Center Location/IDRiD_Fovea_Center_Testing Set_Markups.csv"
LABELS = {"MA": "1. Microaneurysms", "HE": "2. Haemorrhages", "EX": "3. Hard Exudates", "SE": "4. Soft Exudates",
          "OD": "5. Optic Disc"}
OD_MASK = _mask(((26, 39), (14, 27)))


def _photo(path, width=W, height=H):
    """A fundus-like photograph: a bright disc on a dark field, with a brighter spot where the optic disc is."""
    y, x = np.mgrid[:height, :width]
    field = ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 2) ** 2)[..., None]
    image = np.where(field, np.array([170, 80, 40], np.uint8), 0).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def _tif(path, mask):
    """A lesion mask as IDRiD ships it: an RGB TIFF, red on the lesion."""
    rgb = np.zeros((*mask.shape, 3), np.uint8)
    rgb[mask, 0] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def _markups(path, rows):
    """A markup CSV as IDRiD has it: its header, many empty columns after the three, empty rows at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    padding = "," * 8
    lines = [f"Image No,X- Coordinate,Y - Coordinate{padding}"]
    lines += [f"{name},{x},{y}{padding}" for name, x, y in rows]
    lines += [padding + ","] * 3
    path.write_text("\r\n".join(lines) + "\r\n")


def _idrid(root):
    """Three training photographs and one testing photograph, in IDRiD's folders.

    IDRiD_01's localization copy is twice as large (its centres are halved); IDRiD_02 has none
    (centres as written); IDRiD_03's optic disc mask is far from its disc centre (skipped).
    """
    train, test = "a. Training Set", "b. Testing Set"
    for name, folder in (("IDRiD_01", train), ("IDRiD_02", train), ("IDRiD_03", train), ("IDRiD_55", test)):
        _photo(root / SEG / "1. Original Images" / folder / f"{name}.jpg")
    _photo(root / LOC / "1. Original Images" / train / "IDRiD_001.jpg", 2 * W, 2 * H)
    _photo(root / LOC / "1. Original Images" / test / "IDRiD_055.jpg")
    masks = {(train, "IDRiD_01"): {"MA": _mask(((5, 6), (70, 71))), "HE": NASAL_70_30, "EX": MACULA, "OD": OD_MASK},
             (train, "IDRiD_02"): {"MA": _mask(((5, 6), (70, 71))), "SE": SUPEROTEMPORAL, "OD": OD_MASK},
             (train, "IDRiD_03"): {"HE": MACULA, "OD": _mask(((0, 10), (80, 90)))},
             (test, "IDRiD_55"): {"HE": MACULA, "EX": np.zeros((H, W), bool), "OD": OD_MASK}}
    for (folder, name), labels in masks.items():
        for label, mask in labels.items():
            _tif(root / SEG / "2. All Segmentation Groundtruths" / folder / LABELS[label] / f"{name}_{label}.tif", mask)
    for folder in (train, test):  # every label's folder exists, also where no photograph has that label
        for label in LABELS.values():
            (root / SEG / "2. All Segmentation Groundtruths" / folder / label).mkdir(parents=True, exist_ok=True)
    _markups(root / OD_TRAIN, [("IDRiD_001", 40, 64), ("IDRiD_002", 20, 32), ("IDRiD_003", 20, 32),
                               ("IDRiD_004", 1, 2)])
    _markups(root / FOVEA_TRAIN, [("IDRiD_001", 120, 64), ("IDRiD_002", 60, 32), ("IDRiD_003", 60, 32),
                                  ("IDRiD_004", 3, 4)])
    _markups(root / OD_TEST, [("IDRiD_055", 20, 32)])
    _markups(root / FOVEA_TEST, [("IDRiD_055", 60, 32)])
    return root


@pytest.fixture
def source(tmp_path):
    return _idrid(tmp_path / "IDRiD")


def _lines(out):
    return [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]


IDRID_ASSESSED = ["hemorrhage", "hard_exudate", "cotton_wool_patch"]
"""The findings IDRiD's masks assess, in registry order; the others are not assessed."""


def test_idrid_becomes_one_line_per_photograph(source, tmp_path):
    out = tmp_path / "manual"
    summary = ingest("idrid", source, out)
    lines = _lines(out)
    assert [line["image_id"] for line in lines] == ["IDRiD_01", "IDRiD_02", "IDRiD_55"]
    first, second, test = lines
    assert (first["split"], second["split"], test["split"]) == ("train", "train", "test")
    # IDRiD_01's centres were marked on a copy twice its size; the others on photographs of its size.
    assert (first["disc"], first["fovea"]) == ([20.0, 32.0], [60.0, 32.0])
    assert (second["disc"], second["fovea"], test["disc"]) == ([20.0, 32.0], [60.0, 32.0], [20.0, 32.0])
    assert first["annotations"] == [{"annotator": "idrid", "assessed": IDRID_ASSESSED, "findings": {
        "hemorrhage": ["superonasal", "inferonasal"], "hard_exudate": ["macula"]}}]
    assert second["annotations"][0]["findings"] == {"cotton_wool_patch": ["superotemporal"]}
    assert test["annotations"][0]["findings"] == {"hemorrhage": ["macula"]}  # its hard exudate mask is empty
    assert first["lesion_masks"] == {"hemorrhage": "masks/IDRiD_01_hemorrhage.png",
                                     "hard_exudate": "masks/IDRiD_01_hard_exudate.png"}
    assert "lesion_masks" in test and set(test["lesion_masks"]) == {"hemorrhage"}
    written = np.asarray(Image.open(out / first["lesion_masks"]["hemorrhage"]))
    np.testing.assert_array_equal(written, NASAL_70_30)
    assert Image.open(out / first["file"]).size == (W, H)
    assert summary.imported == {"train": 2, "test": 1}
    assert summary.positives == {"hemorrhage": 2, "hard_exudate": 1, "cotton_wool_patch": 1}
    assert [image.endswith("IDRiD_03.jpg") for image, _ in summary.skipped] == [True]
    assert "outside its optic disc mask" in summary.skipped[0][1]
    text = summary.text(out)
    assert "3 photographs" in text and "1 skipped" in text
    assert "left out: 2 microaneurysm masks" in text and "left out: 1 empty EX masks" in text
    assert "hemorrhage: 2 positive, 1 negative" in text
    # IDRiD's masks assess three findings; the other five are neither present nor absent.
    assert all(line["annotations"][0]["assessed"] == IDRID_ASSESSED for line in lines)


def test_a_larger_share_narrows_the_cue_and_the_annotator_is_named(source, tmp_path):
    ingest("idrid", source, tmp_path / "manual", min_lesion_share=0.4, annotator="porwal")
    first = _lines(tmp_path / "manual")[0]
    assert first["annotations"] == [{"annotator": "porwal", "assessed": IDRID_ASSESSED, "findings": {
        "hemorrhage": ["superonasal"], "hard_exudate": ["macula"]}}]


def _run(module, *args):
    env = dict(os.environ, TFDS_DISABLE_PROGRESS_BAR="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


def test_prepare_accepts_what_the_command_writes(source, tmp_path):
    out = tmp_path / "manual"
    done = _run("fundax.ingest", "idrid", source, f"--out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"IDRiD: 3 photographs written to {out} (test 1, train 2); 1 skipped" in done.stdout
    prepared = _run("fundax.prepare", "--source=manual", f"--manual_dir={out}", f"--data_dir={tmp_path / 'data'}",
                    "--image_size=32", "--strict", "--workers=1")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "lines read 3, accepted 3, rejected 0" in prepared.stdout, prepared.stdout
    # The test split's rows (present, absent, excluded, not assessed): one grader, under min_votes 2, is
    # uncertain (excluded); the findings IDRiD does not assess are counted apart.
    table = prepared.stdout.splitlines()
    start = next(i for i, line in enumerate(table) if line.startswith("test "))
    rows = {line.split()[-5]: line.split()[-4:] for line in table[start:start + 8]}
    assert rows["hemorrhage"] == ["0", "0", "1", "0"] and rows["hard_exudate"] == ["0", "1", "0", "0"]
    assert rows["drusen"] == rows["rnfl_defect"] == ["0", "0", "0", "1"]


def _error(tmp_path, source):
    with pytest.raises(IngestError) as raised:
        ingest("idrid", source, tmp_path / "manual")
    assert not (tmp_path / "manual").exists() and not (tmp_path / "manual.partial").exists()
    return str(raised.value)


def test_a_missing_markup_csv_is_named(source, tmp_path):
    (source / FOVEA_TEST).unlink()
    assert _error(tmp_path, source) == f"{source / FOVEA_TEST}: no such file"


def test_a_mask_of_an_image_not_in_the_csv_is_named(source, tmp_path):
    _tif(source / SEG / "2. All Segmentation Groundtruths/a. Training Set/2. Haemorrhages/IDRiD_09_HE.tif", MACULA)
    message = _error(tmp_path, source)
    assert message.startswith(f"{source / SEG}/2. All Segmentation Groundtruths/a. Training Set/2. Haemorrhages/"
                              "IDRiD_09_HE.tif: a mask of IDRiD_09, which has no row IDRiD_009 in")
    assert message.endswith(str(source / OD_TRAIN))


@pytest.mark.parametrize("row, why", [
    ("IDRiD_002,20", "want 3 values (image, x, y), got 2: 'IDRiD_002,20'"),
    ("IDRiD_002,twenty,32,,,", "coordinates 'twenty', '32' are not numbers"),
    ("image two,20,32", "'image two' is not an IDRiD image name (IDRiD_NNN)"),
    ("IDRiD_001,5,6", "IDRiD_001 is listed twice"),
])
def test_a_malformed_csv_row_is_named_with_its_row(source, tmp_path, row, why):
    path = source / OD_TRAIN
    lines = path.read_text().splitlines()
    lines[2] = row  # row 3: IDRiD_002's
    path.write_text("\n".join(lines) + "\n")
    assert _error(tmp_path, source) == f"{path}, row 3: {why}"


def test_a_wrong_header_is_named(source, tmp_path):
    path = source / FOVEA_TRAIN
    path.write_text("Image,X,Y\n" + "\n".join(path.read_text().splitlines()[1:]) + "\n")
    want = f"{path}, row 1: want the header 'Image No, X- Coordinate, Y - Coordinate'"
    assert _error(tmp_path, source).startswith(want)


def test_a_photograph_without_centres_is_named(source, tmp_path):
    _markups(source / OD_TEST, [("IDRiD_056", 20, 32)])
    assert _error(tmp_path, source) == (f"{source / SEG}/1. Original Images/b. Testing Set/IDRiD_55.jpg: "
                                        f"IDRiD_055 has no row in {source / OD_TEST}")


def test_the_command_says_errors_in_one_line(source, tmp_path):
    (source / OD_TRAIN).unlink()
    done = _run("fundax.ingest", "idrid", source, f"--out={tmp_path / 'manual'}")
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {source / OD_TRAIN}: no such file"
    unknown = _run("fundax.ingest", "drive", source, f"--out={tmp_path / 'manual'}")
    assert unknown.returncode == 2 and ("unknown FORMAT 'drive'; known: adam, aptos, eyepacs, idrid, messidor, "
                                        "messidor2, odir, refuge, rfmid") in unknown.stderr
    assert _run("fundax.ingest", "idrid", source).returncode == 2  # --out is required


def test_an_existing_output_is_not_overwritten(source, tmp_path):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "mine.txt").write_text("x")
    with pytest.raises(IngestError, match="exists and is not an empty directory"):
        ingest("idrid", source, tmp_path / "manual")
    assert idrid.NAME == "IDRiD"


# --- the RFMiD layout, in small -------------------------------------------------------------------------------

RFMID_HEADER = ("ID,Disease_Risk,DR,ARMD,MH,DN,MYA,BRVO,TSLN,ERM,LS,MS,CSR,ODC,CRVO,TV,AH,ODP,ODE,ST,AION,PT,RT,RS,"
                "CRS,EDN,RPEC,MHL,RP,CWS,CB,ODPM,PRH,MNF,HR,CRAO,TD,CME,PTCR,CF,VH,MCA,VS,BRAO,PLQ,HPED,CL").split(",")
RFMID_SETS = {"train": ("Training_Set", "Training", "RFMiD_Training_Labels.csv"),
              "val": ("Evaluation_Set", "Validation", "RFMiD_Validation_Labels.csv"),
              "test": ("Test_Set", "Test", "RFMiD_Testing_Labels.csv")}


def _rfmid_csv(path, rows):
    """A labels CSV as RFMiD has it: the real header, one row per ID with the positive columns at 1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(RFMID_HEADER)]
    for image_id, positives in rows:
        lines.append(",".join([str(image_id)] + ["1" if c in positives else "0" for c in RFMID_HEADER[1:]]))
    path.write_text("\r\n".join(lines) + "\r\n")


def _rfmid(root, sets):
    """RFMiD's folders with ``sets``: set → [(ID, positive columns)], a PNG photograph for each ID."""
    for name, rows in sets.items():
        folder, photos, labels = RFMID_SETS[name]
        _rfmid_csv(root / folder / labels, rows)
        (root / folder / photos).mkdir(parents=True, exist_ok=True)
        for image_id, _ in rows:
            _photo(root / folder / photos / f"{image_id}.png")
    return root


@pytest.fixture
def rfmid_source(tmp_path):
    # Training 1: macular hole and media haze (MH, not mapped); 2: membrane, drusen, cotton wool spots and
    # pigment epithelium changes; Validation 1: nothing; Test 1: preretinal and vitreous haemorrhage (not mapped).
    return _rfmid(tmp_path / "RFMiD", {"train": [(1, {"Disease_Risk", "MHL", "MH"}),
                                                 (2, {"Disease_Risk", "ERM", "DN", "CWS", "RPEC"})],
                                       "val": [(1, set())],
                                       "test": [(1, {"Disease_Risk", "PRH", "VH"})]})


RFMID_ASSESSED = ["cotton_wool_patch", "drusen", "retinal_pigmentary_change", "macular_hole", "membrane"]
"""The findings RFMiD's mapped columns assess, in registry order; the others are not assessed."""


def test_rfmid_becomes_label_only_lines_without_centres(rfmid_source, tmp_path):
    out = tmp_path / "manual"
    summary = ingest("rfmid", rfmid_source, out)
    lines = _lines(out)
    assert lines == [
        {"image_id": "rfmid-train-1", "file": "images/rfmid-train-1.png", "split": "train",
         "annotations": [{"annotator": "rfmid", "assessed": RFMID_ASSESSED, "findings": {"macular_hole": None}}]},
        {"image_id": "rfmid-train-2", "file": "images/rfmid-train-2.png", "split": "train",
         "annotations": [{"annotator": "rfmid", "assessed": RFMID_ASSESSED, "findings": {
             "membrane": None, "drusen": None, "cotton_wool_patch": None, "retinal_pigmentary_change": None}}]},
        {"image_id": "rfmid-val-1", "file": "images/rfmid-val-1.png", "split": "train",
         "annotations": [{"annotator": "rfmid", "assessed": RFMID_ASSESSED, "findings": {}}]},
        {"image_id": "rfmid-test-1", "file": "images/rfmid-test-1.png", "split": "test",
         "annotations": [{"annotator": "rfmid", "assessed": RFMID_ASSESSED, "findings": {}}]},
    ]
    copied = (out / "images/rfmid-val-1.png").read_bytes()
    assert copied == (rfmid_source / "Evaluation_Set/Validation/1.png").read_bytes()
    assert summary.imported == {"train": 3, "test": 1}
    assert summary.positives == {"macular_hole": 1, "membrane": 1, "drusen": 1, "cotton_wool_patch": 1,
                                 "retinal_pigmentary_change": 1}
    # Disease_Risk and MH of Training 1, Disease_Risk of Training 2, Disease_Risk, PRH and VH of Test 1.
    assert summary.left_out == {"positive labels of columns not mapped (docs/DATASETS.md)": 6}
    assert "macular_hole: 1 positive, 3 negative" in summary.text(out)


def test_rfmid_lines_want_only_their_centres_from_prepare(rfmid_source, tmp_path):
    out, data = tmp_path / "manual", tmp_path / "data"
    ingest("rfmid", rfmid_source, out)
    prepared = _run("fundax.prepare", "--source=manual", f"--manual_dir={out}", f"--data_dir={data}",
                    "--image_size=32", "--workers=1")
    # Without --locate_missing every line is rejected, and for its missing centres alone.
    assert prepared.returncode == 1 and "no photograph" in prepared.stderr
    rejects = [json.loads(line) for line in next(data.rglob("rejects.jsonl")).read_text().splitlines()]
    assert [r["line"] for r in rejects] == [1, 2, 3, 4]
    assert {r["reason"] for r in rejects} == {
        "missing required key(s): 'disc', 'fovea'; prepare --locate_missing finds disc and fovea"}


def _rfmid_error(tmp_path, source):
    with pytest.raises(IngestError) as raised:
        ingest("rfmid", source, tmp_path / "manual")
    assert not (tmp_path / "manual").exists() and not (tmp_path / "manual.partial").exists()
    return str(raised.value)


def test_a_missing_rfmid_csv_is_named(rfmid_source, tmp_path):
    path = rfmid_source / "Test_Set/RFMiD_Testing_Labels.csv"
    path.unlink()
    assert _rfmid_error(tmp_path, rfmid_source) == f"{path}: no such file"


def test_a_row_without_its_photograph_is_named(rfmid_source, tmp_path):
    (rfmid_source / "Training_Set/Training/2.png").unlink()
    csv_path = rfmid_source / "Training_Set/RFMiD_Training_Labels.csv"
    assert _rfmid_error(tmp_path, rfmid_source) == (
        f"{csv_path}, row 3: ID 2 has no photograph {rfmid_source / 'Training_Set/Training/2.png'}")


@pytest.mark.parametrize("edit, why", [
    (lambda cells: cells.__setitem__(27, "2"), "MHL is '2', want 0 or 1"),
    (lambda cells: cells.__setitem__(9, ""), "ERM is '', want 0 or 1"),
    (lambda cells: cells.__setitem__(0, "x7"), "ID 'x7' is not a number"),
    (lambda cells: cells.__setitem__(0, "1"), "ID 1 is listed twice (first in row 2)"),
    (lambda cells: cells.pop(), "want 47 values as the header has, got 46"),
])
def test_a_malformed_rfmid_row_is_named_with_its_row(rfmid_source, tmp_path, edit, why):
    path = rfmid_source / "Training_Set/RFMiD_Training_Labels.csv"
    lines = path.read_text().splitlines()
    cells = lines[2].split(",")  # row 3: ID 2
    edit(cells)
    lines[2] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    assert _rfmid_error(tmp_path, rfmid_source) == f"{path}, row 3: {why}"


def test_an_rfmid_header_without_a_mapped_column_is_named(rfmid_source, tmp_path):
    path = rfmid_source / "Evaluation_Set/RFMiD_Validation_Labels.csv"
    path.write_text(path.read_text().replace(",MHL,", ",MHX,"))
    assert _rfmid_error(tmp_path, rfmid_source).startswith(f"{path}, row 1: want a header 'ID,Disease_Risk,DR,…'")


def test_a_folder_that_is_not_rfmid_is_named(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    assert _rfmid_error(tmp_path, tmp_path / "elsewhere").startswith(f"{tmp_path / 'elsewhere'}: holds none of")
    assert rfmid.FINDINGS["MHL"] == "macular_hole" and "MH" not in rfmid.FINDINGS  # MH is media haze


def _rfmid_from_retina(root):
    """18 photographs of scikit-image's retina in RFMiD's layout: 8 training, 6 validation, 4 test.

    Every other one mirrored (the other eye), each turned by up to 6 degrees, scaled by 6 % and
    brightened or darkened a little, about 256 px; MHL (and Disease_Risk) on every other one. Validation
    has 6 so that one id, ``rfmid-val-6``, falls into fundax's hashed validation split.
    """
    from skimage import data
    from PIL import ImageEnhance

    retina, rows, k = Image.fromarray(data.retina()), {}, 0
    for name, count in (("train", 8), ("val", 6), ("test", 4)):
        folder, photos, _ = RFMID_SETS[name]
        (root / folder / photos).mkdir(parents=True)
        rows[name] = []
        for image_id in range(1, count + 1):
            photo = retina.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if k % 2 else retina
            photo = photo.rotate(3.0 * (k % 5 - 2), resample=Image.Resampling.BILINEAR)
            side = round(256 * (1 + 0.06 * (k % 3 - 1)))
            photo = photo.resize((side, side), Image.Resampling.BILINEAR)
            ImageEnhance.Brightness(photo).enhance(1 + 0.05 * (k % 4 - 1.5)).save(
                root / folder / photos / f"{image_id}.png")
            rows[name].append((image_id, {"Disease_Risk", "MHL"} if k % 2 == 0 else set()))
            k += 1
        _rfmid_csv(root / folder / RFMID_SETS[name][2], rows[name])
    return root


@pytest.mark.slow
def test_raw_rfmid_photographs_train_and_evaluate_with_located_centres(tmp_path):
    src = _rfmid_from_retina(tmp_path / "RFMiD")
    manual_dir, data, workdir = tmp_path / "manual", tmp_path / "data", tmp_path / "W"
    env = dict(os.environ, XLA_FLAGS=fakes.xla_flags(2), TFDS_DISABLE_PROGRESS_BAR="1",
               PYTHONPATH=str(ROOT))

    def run(module, *args):
        done = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{module}: {done.stderr[-3000:]}"
        return done.stdout

    assert "RFMiD: 18 photographs written" in run("fundax.ingest", "rfmid", src, f"--out={manual_dir}")
    lines = _lines(manual_dir)
    assert not any("disc" in line or "fovea" in line for line in lines)  # no centre placed by hand
    test_positives = sum(line["split"] == "test" and "macular_hole" in line["annotations"][0]["findings"]
                         for line in lines)
    assert test_positives == 2
    prepared = run("fundax.prepare", "--source=manual", f"--manual_dir={manual_dir}", f"--data_dir={data}",
                   "--image_size=32", "--locate_missing")
    assert "lines read 18, accepted 18, rejected 0" in prepared, prepared
    metadata = json.loads(next(data.rglob("metadata.json")).read_text())
    assert set(metadata["located"]) == {line["image_id"] for line in lines}
    config = {"image_size": 32, "batch_size": 8, "eval_every_steps": 4, "log_every_steps": 1,
              "checkpoint_every_steps": 2, "guided_cnn.stem_width": 4, "guided_cnn.units_per_stage": "(1,1,1)",
              "guided_cnn.aspp_width": 4, "loader_threads": 2, "num_train_steps": 4, "warmup_steps": 1,
              "guidance_start_bce": 0.5, "guidance_delay_steps": 1, "guidance_ramp_steps": 2,
              "lr_schedule": "plateau", "min_votes": 1}
    run("fundax.train", "--finding=macular_hole", f"--workdir={workdir}", f"--data_dir={data}",
        "--dataset=fundus_findings/manual", "--config=experiments/configs/cpu_demo.py",
        *(f"--config.{k}={v}" for k, v in config.items()))
    run("fundax.evaluate", f"--workdir={workdir}", "--split=test")
    metrics = json.loads((workdir / "eval" / "test_metrics.json").read_text())
    assert (metrics["n_positive"], metrics["n_negative"]) == (2, 2)
    assert metrics["n_positive_without_cue"] == test_positives  # every positive is an image-level label
    assert metrics["air_tp"] is None and metrics["n_air_tp"] == 0
