"""A prepared dataset is reused only while its inputs and parameters are those it was prepared from."""

import json
import os

import pytest

from fundax.data import fundus_findings, synthetic
from fundax.data import preparation as prepare
from test_dataset import _line, _photo

IDS = ("tr0", "tr2", "te0")  # tr2: validation


@pytest.fixture
def manual(tmp_path):
    root = tmp_path / "manual"
    for image_id in IDS:
        _photo(root / "images" / f"{image_id}.png")
    (root / "annotations.jsonl").write_text("\n".join(
        _line(i, f"images/{i}.png", split="test" if i.startswith("te") else "train") for i in IDS) + "\n")
    data_dir = tmp_path / "data"
    first = prepare.prepare("manual", data_dir, image_size_px=32, manual_dir=root, show_progress=False, workers=1)
    return root, data_dir, first


def _again(root, data_dir, **kwargs):
    return prepare.prepare("manual", data_dir, **({"image_size_px": 32} | kwargs), manual_dir=root,
                           show_progress=False, workers=1)


def test_unchanged_inputs_are_reused_and_the_fingerprint_is_recorded(manual):
    root, data_dir, first = manual
    inputs = first.metadata["inputs"]
    assert set(inputs) == {"annotations_sha256", "files_sha256", "num_files"} and inputs["num_files"] == 3
    assert first.metadata["prepare"]["max_pixels"] == fundus_findings.images.DEFAULT_MAX_PIXELS
    again = _again(root, data_dir)
    assert again.reused and again.metadata == first.metadata


def test_edited_annotations_are_refused_not_reused(manual):
    root, data_dir, first = manual
    lines = [json.loads(line) for line in (root / "annotations.jsonl").read_text().splitlines()]
    for line in lines:
        for grader in line["annotations"]:
            grader["findings"] = {}
    (root / "annotations.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ValueError, match=r"out of date: annotations\.jsonl .* changed.*fundax.prepare --overwrite"):
        _again(root, data_dir)
    rebuilt = _again(root, data_dir, overwrite=True)
    assert not rebuilt.reused
    assert rebuilt.metadata["label_counts"]["test"]["macular_hole"] == {"present": 0, "absent": 1,
        "excluded": 0, "not_assessed": 0}
    assert first.metadata["label_counts"]["test"]["macular_hole"]["present"] == 1


def test_a_changed_photograph_is_refused(manual):
    root, data_dir, _ = manual
    path = root / "images" / "tr0.png"
    _photo(path, shade=120)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ValueError, match=r"photographs or lesion masks .* changed.*fundax.prepare --overwrite"):
        _again(root, data_dir)


def test_other_max_pixels_is_refused(manual):
    root, data_dir, _ = manual
    with pytest.raises(ValueError, match=r"prepared with max_pixels 50000000, not 4000.*fundax.prepare --overwrite"):
        _again(root, data_dir, max_pixels=4000)


def test_strict_is_refused_on_a_dataset_with_rejections(manual):
    root, data_dir, _ = manual
    with open(root / "annotations.jsonl", "a") as f:
        f.write("{not json\n")
    _again(root, data_dir, overwrite=True)
    assert _again(root, data_dir).reused
    with pytest.raises(fundus_findings.PrepareError, match=r"--strict: .* holds 1 rejected line"):
        _again(root, data_dir, strict=True)


def test_synthetic_fingerprint_is_the_generator_settings(tmp_path):
    config = synthetic.SyntheticConfig(num_train=2, num_test=1, height_px=64)
    first = prepare.prepare("synthetic", tmp_path, image_size_px=32, synthetic_config=config, show_progress=False)
    assert set(first.metadata["inputs"]) == {"generator_sha256"}
    assert prepare.prepare("synthetic", tmp_path, image_size_px=32, synthetic_config=config,
                           show_progress=False).reused
    with pytest.raises(ValueError, match=r"prepared with synthetic\.seed 0, not 1.*fundax.prepare --overwrite"):
        prepare.prepare("synthetic", tmp_path, image_size_px=32, show_progress=False,
                        synthetic_config=synthetic.SyntheticConfig(num_train=2, num_test=1, height_px=64, seed=1))


def test_a_synthetic_set_from_before_fingerprints_is_reused_while_its_settings_match(tmp_path):
    config = synthetic.SyntheticConfig(num_train=2, num_test=1, height_px=64)
    first = prepare.prepare("synthetic", tmp_path, image_size_px=32, synthetic_config=config, show_progress=False)
    # As an older fundax wrote it: no input fingerprint, no max_pixels.
    path = first.dataset_dir / "metadata.json"
    metadata = json.loads(path.read_text())
    del metadata["inputs"], metadata["prepare"]["max_pixels"]
    path.write_text(json.dumps(metadata))
    assert prepare.prepare("synthetic", tmp_path, image_size_px=32, synthetic_config=config,
                           show_progress=False).reused
    with pytest.raises(ValueError, match=r"prepared with synthetic\.seed 0, not 1"):
        prepare.prepare("synthetic", tmp_path, image_size_px=32, show_progress=False,
                        synthetic_config=synthetic.SyntheticConfig(num_train=2, num_test=1, height_px=64, seed=1))
    with pytest.raises(ValueError, match=r"prepared with max_pixels \(not recorded\), not 1000"):
        prepare.prepare("synthetic", tmp_path, image_size_px=32, synthetic_config=config, show_progress=False,
                        max_pixels=1000)
