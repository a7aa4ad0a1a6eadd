"""The fundus_findings TFDS dataset from a manual directory, read back with tfds.data_source."""

import json
import pathlib

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from fundax import findings, regions
from fundax.data import preparation as prepare
from fundax.data import annotations, fundus_findings, pipeline

H, W = 60, 80  # original photographs: a fundus circle of radius 28 centred in a black frame


def _photo(path: pathlib.Path, shade: int = 200) -> None:
    image = np.zeros((H, W, 3), np.uint8)
    cv2.circle(image, (40, 30), 28, (shade // 3, shade // 2, shade), -1)  # BGR: orange-red
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def _line(image_id, file, split="train", disc=(30.0, 30.0), fovea=(52.0, 31.0), graders=None):
    graders = graders if graders is not None else [
        {"annotator": "a", "findings": {"macular_hole": ["macula"], "drusen": ["macula", "temporal"]}},
        {"annotator": "b", "findings": {}},
        {"annotator": "c", "findings": {"macular_hole": ["macula", "superior_disc"]}},
    ]
    return json.dumps({"image_id": image_id, "file": file, "split": split, "disc": list(disc),
                       "fovea": list(fovea), "annotations": graders, "camera": "x"})


@pytest.fixture(scope="module")
def manual(tmp_path_factory):
    """A manual directory with 8 good lines and one line of every image-level fault."""
    root = tmp_path_factory.mktemp("manual")
    lines = []
    for i in range(6):
        _photo(root / "images" / f"tr{i}.png")
        lines.append(_line(f"tr{i}", f"images/tr{i}.png"))
    for i in range(2):
        _photo(root / "images" / f"te{i}.jpg")
        lines.append(_line(f"te{i}", f"images/te{i}.jpg", split="test",
                           graders=[{"annotator": "a", "findings": {}}, {"annotator": "b", "findings": {}}]))
    (root / "images" / "notimage.png").write_text("hello")
    _photo(root / "images" / "cut.png")
    data = (root / "images" / "cut.png").read_bytes()
    (root / "images" / "cut.png").write_bytes(data[: len(data) // 2])
    _photo(root / "images" / "big.png")
    big = np.zeros((200, 200, 3), np.uint8)
    cv2.circle(big, (100, 100), 90, (60, 100, 200), -1)
    cv2.imwrite(str(root / "images" / "huge.png"), big)
    bad = [
        _line("missing", "images/nothere.png"),
        _line("notimage", "images/notimage.png"),
        _line("cut", "images/cut.png"),
        _line("outside", "images/big.png", fovea=(95.0, 31.0)),
        _line("bomb", "images/huge.png"),
        _line("escape", "../outside.png"),
        "{not json",
    ]
    lines[3:3] = bad
    (root / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    return root, bad


@pytest.fixture(scope="module")
def prepared(manual, tmp_path_factory):
    root, _ = manual
    data_dir = tmp_path_factory.mktemp("data")
    result = prepare.prepare("manual", data_dir, image_size_px=32, manual_dir=root, max_pixels=10_000,
                             show_progress=False, workers=2)
    return result, data_dir


def test_counts_read_accepted_rejected(prepared, manual):
    result, _ = prepared
    _, bad = manual
    meta = result.metadata
    assert meta["num_read"] == 15
    assert meta["num_rejected"] == len(bad) == 7
    assert meta["num_accepted"] == 8
    assert meta["num_read"] == meta["num_accepted"] + meta["num_rejected"]
    assert sum(result.split_sizes.values()) == 8
    assert result.split_sizes["test"] == 2


def test_rejects_file_keeps_each_line_with_its_reason(prepared, manual):
    result, _ = prepared
    root, bad = manual
    rejects = [json.loads(line) for line in result.rejects_path.read_text().splitlines()]
    by_text = {r["text"]: r for r in rejects}
    assert set(by_text) == set(bad)
    reasons = {json.loads(t)["image_id"] if t.startswith("{\"") else "json": r["reason"]
               for t, r in by_text.items()}
    assert "nothere.png" in reasons["missing"]
    assert "not" in reasons["notimage"] and "image" in reasons["notimage"]
    assert "truncated" in reasons["cut"]
    assert "fovea" in reasons["outside"]
    assert "10000" in reasons["bomb"].replace(",", "").replace("_", "")
    assert "escape" in reasons["escape"] or "outside" in reasons["escape"]
    assert all(r["file"].endswith("annotations.jsonl") for r in rejects)
    line_numbers = sorted(r["line"] for r in rejects)
    assert line_numbers == [4, 5, 6, 7, 8, 9, 10]


def test_records_read_back_with_votes_masks_and_transformed_coordinates(prepared, manual):
    result, data_dir = prepared
    root, _ = manual
    sources = tfds.data_source("fundus_findings/manual", data_dir=data_dir)
    records = [r for split in ("train", "validation") for r in (sources[split][i] for i in range(len(sources[split])))]
    assert len(records) == 6
    mh, dr = findings.finding_index("macular_hole"), findings.finding_index("drusen")
    for r in records:
        assert r["image"].shape == (32, 32, 3) and r["image"].dtype == np.uint8
        assert r["votes"][mh] == 2 and r["votes"][dr] == 1 and r["votes"].sum() == 3
        assert r["region_bits"][mh] == regions.regions_to_bits(["macula", "superior_disc"])
        assert r["region_bits"][dr] == regions.regions_to_bits(["macula", "temporal"])
        assert r["num_graders"] == 3
        line = r["line"].decode()
        assert json.loads(line)["camera"] == "x"  # the original line, extra keys and all
        # The fundus box is 56x56 from (12, 2); it scales by 32/56 into the square.
        np.testing.assert_allclose(r["disc"], [(30 - 12) * 32 / 56, (30 - 2) * 32 / 56], atol=0.6)
        np.testing.assert_allclose(r["fovea"], [(52 - 12) * 32 / 56, (31 - 2) * 32 / 56], atol=0.6)
    example = pipeline.FindingExample("macular_hole", 2)(records[0])
    assert example["label"] == 1 and example["weight"] == 1
    drusen = pipeline.FindingExample("drusen", 2)(records[0])
    assert drusen["weight"] == 0  # one vote of three: excluded for drusen only
    test_record = sources["test"][0]
    absent = pipeline.FindingExample("macular_hole", 2)(test_record)
    assert absent["label"] == 0 and absent["weight"] == 1 and absent["region_bits"] == 0


def test_label_counts_per_split(prepared):
    result, _ = prepared
    counts = result.metadata["label_counts"]
    train_like = {k: counts["train"]["macular_hole"][k] + counts["validation"]["macular_hole"][k]
                  for k in ("present", "absent", "excluded", "not_assessed")}
    assert train_like == {"present": 6, "absent": 0, "excluded": 0, "not_assessed": 0}
    assert counts["test"]["macular_hole"] == {"present": 0, "absent": 2, "excluded": 0, "not_assessed": 0}
    assert counts["train"]["drusen"]["excluded"] + counts["validation"]["drusen"]["excluded"] == 6


def test_validation_is_a_stable_hash_of_image_id():
    ids = [f"img-{i}" for i in range(2000)]
    chosen = [i for i in ids if fundus_findings.is_validation(i)]
    assert 150 < len(chosen) < 250  # about 10%
    assert chosen == [i for i in reversed(ids) if fundus_findings.is_validation(i)][::-1]


def test_reuse_and_parameter_mismatch(prepared, manual):
    result, data_dir = prepared
    root, _ = manual
    again = prepare.prepare("manual", data_dir, image_size_px=32, manual_dir=root, max_pixels=10_000,
                            show_progress=False)
    assert again.reused and again.split_sizes == result.split_sizes
    with pytest.raises(ValueError, match="prepared with .*image_size_px.*32.*--overwrite"):
        prepare.prepare("manual", data_dir, image_size_px=48, manual_dir=root, show_progress=False)


def test_strict_fails_on_the_first_rejection_and_leaves_nothing_behind(manual, tmp_path):
    root, _ = manual
    # Lines are checked before photographs, so the first rejection is the escaping path.
    with pytest.raises(fundus_findings.PrepareError, match="--strict: .*annotations.jsonl:9: .*escapes"):
        prepare.prepare("manual", tmp_path, image_size_px=32, manual_dir=root, strict=True, show_progress=False)
    config_dir = tmp_path / "fundus_findings" / "manual"
    assert not config_dir.exists() or not any(config_dir.iterdir())


def test_missing_manual_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="needs --manual_dir"):
        prepare.prepare("manual", tmp_path, show_progress=False)
    with pytest.raises(ValueError, match="is not a directory"):
        prepare.prepare("manual", tmp_path, manual_dir=tmp_path / "nope", show_progress=False)


def test_missing_split_and_unprepared_dataset_are_clear_errors(prepared, tmp_path):
    _, data_dir = prepared
    with pytest.raises(pipeline.DatasetError, match="no split 'dev'.*'test', 'train', 'validation'"):
        pipeline.open_split("fundus_findings/manual", data_dir, "dev")
    with pytest.raises(pipeline.DatasetError, match="not prepared"):
        pipeline.open_split("fundus_findings/synthetic", tmp_path, "train")


def test_annotation_reader_and_prepare_agree_on_votes(manual):
    root, _ = manual
    read = annotations.read_annotations(root / "annotations.jsonl")
    assert read.num_read == 15 and len(read.rejections) == 2  # schema-level: bad JSON and the escape


def test_lesion_masks_are_prepared_through_the_photographs_crop_and_bad_ones_rejected(tmp_path):
    root = tmp_path / "manual"
    _photo(root / "images" / "a.png")
    mask = np.zeros((H, W), np.uint8)
    mask[20:28, 40:48] = 255  # rows 20..27, columns 40..47 of the photograph
    (root / "masks").mkdir(parents=True)
    cv2.imwrite(str(root / "masks" / "a_mh.png"), mask)
    cv2.imwrite(str(root / "masks" / "small.png"), mask[:30])

    def with_masks(image_id, masks):
        return json.dumps(json.loads(_line(image_id, "images/a.png", split="test")) | {"lesion_masks": masks})

    lines = [with_masks("good", {"macular_hole": "masks/a_mh.png"}),
             _line("none", "images/a.png", split="test"),
             with_masks("small", {"macular_hole": "masks/small.png"}),
             with_masks("gone", {"drusen": "masks/nothere.png"}),
             with_masks("escape", {"drusen": "../x.png"}),
             with_masks("unknown", {"glaucoma": "masks/a_mh.png"})]
    # Every split needs a photograph: one train line and one the hash sends to validation.
    ids = [f"t{i}" for i in range(40)]
    lines += [_line(next(i for i in ids if not fundus_findings.is_validation(i)), "images/a.png"),
              _line(next(i for i in ids if fundus_findings.is_validation(i)), "images/a.png")]
    (root / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    result = prepare.prepare("manual", tmp_path / "data", image_size_px=32, manual_dir=root, show_progress=False)
    reasons = {json.loads(r["text"])["image_id"]: r["reason"]
               for r in map(json.loads, result.rejects_path.read_text().splitlines())}
    assert set(reasons) == {"small", "gone", "escape", "unknown"}
    assert "the lesion mask is 80×30 pixels but the photograph is 80×60" in reasons["small"]
    assert "nothere.png: no such file" in reasons["gone"]
    assert "lesion_masks['drusen'] '../x.png' escapes the manual directory" in reasons["escape"]
    assert "unknown finding 'glaucoma'" in reasons["unknown"]
    source = pipeline.open_split("fundus_findings/manual", tmp_path / "data", "test", decode_images=False)
    records = {source[i]["image_id"].decode(): source[i] for i in range(len(source))}
    mh = findings.finding_index("macular_hole")
    good, none = records["good"], records["none"]
    assert good["lesion_known"] == 1 << mh and none["lesion_known"] == 0
    assert not none["lesion_bits"].any()
    # The fundus box is rows 3..57, columns 13..67 (55 x 55), scaled by 32/55 = 1/1.71875: mask rows
    # [17, 25) of it land on prepared rows 9..14 (r * 1.71875 < 25 and (r + 1) * 1.71875 > 17), columns
    # [27, 35) on 15..20, any overlap counting.
    assert fundus_findings.images.fundus_box(cv2.imread(str(root / "images" / "a.png"))) == (3, 13, 58, 68)
    on = good["lesion_bits"][..., 0] == 1 << mh
    rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (9, 14, 15, 20)
    assert on[9:15, 15:21].all() and on.sum() == 36


def test_training_draws_only_photographs_with_a_certain_grade():
    import fakes

    source = fakes.records(40)
    example = pipeline.FindingExample("macular_hole", 2)
    votes = np.array([r["votes"][example.index] for r in source])
    scored, labels = pipeline.scored_indices(source, example)
    np.testing.assert_array_equal(scored, np.flatnonzero(votes != 1))  # one vote of three: excluded
    np.testing.assert_array_equal(labels, votes[scored] >= 2)
    assert 0 < len(scored) < 40
    batches = len(scored) // 4
    stream = iter(pipeline.train_dataset(source, example, global_batch=4, seed=0, threads=1, indices=scored))
    discs = np.concatenate([next(stream)["disc"] for _ in range(batches)])
    # One epoch: distinct scored photographs only (each record's disc is unique), all weighing 1.
    seen = [int(np.flatnonzero((np.array([r["disc"] for r in source]) == d).all(1))[0]) for d in discs]
    assert len(set(seen)) == len(seen) == 4 * batches and set(seen) <= set(scored.tolist())
    with pytest.raises(pipeline.DatasetError, match="no photograph of the training split has a certain grade"):
        pipeline.train_dataset(source, example, global_batch=4, seed=0, indices=np.array([], np.int64))


def test_a_finding_not_assessed_is_weighed_zero_and_counted_apart():
    mh, dr = findings.finding_index("macular_hole"), findings.finding_index("drusen")
    votes = np.zeros((3, len(findings.FINDINGS)), np.int32)
    votes[:, dr] = annotations.NOT_ASSESSED
    votes[0, mh], votes[1, mh], votes[2, mh] = 2, annotations.NOT_ASSESSED, 1
    counts = fundus_findings.label_counts(votes)
    assert counts["macular_hole"] == {"present": 1, "absent": 0, "excluded": 1, "not_assessed": 1}
    assert counts["drusen"] == {"present": 0, "absent": 0, "excluded": 0, "not_assessed": 3}
    record = {"image": np.zeros((8, 8, 3), np.uint8), "disc": np.zeros(2), "fovea": np.ones(2),
              "votes": votes[1], "region_bits": np.zeros(len(findings.FINDINGS), np.uint8)}
    example = pipeline.FindingExample("macular_hole", 2)
    assert example(record)["weight"] == 0 and example.weight(record) == 0 and example.label(record) == 0
