"""Preparing manual directories whose splits come out empty, and the rejects file that always results."""

import json

import cv2
import ml_collections
import numpy as np
import pytest

from fundax.configs import default
from fundax.data import fundus_findings, pipeline
from fundax.data import preparation as prepare
from test_dataset import _line, _photo

# tr2 is the only one of these that the id hash sends to validation.
TRAIN_IDS = [f"tr{i}" for i in range(8)]


def _train_only(root):
    """The annotation tool's output: every line split=train."""
    for image_id in TRAIN_IDS:
        _photo(root / "images" / f"{image_id}.png")
    (root / "annotations.jsonl").write_text(
        "\n".join(_line(i, f"images/{i}.png") for i in TRAIN_IDS) + "\n")
    return root


def _config(data_dir, **overrides) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.dataset, config.data_dir, config.finding = "fundus_findings/manual", str(data_dir), "macular_hole"
    config.image_size, config.batch_size = 32, 8
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def train_only(tmp_path_factory):
    root = _train_only(tmp_path_factory.mktemp("manual"))
    data_dir = tmp_path_factory.mktemp("data")
    result = prepare.prepare("manual", data_dir, image_size_px=32, manual_dir=root, show_progress=False, workers=1)
    return result, data_dir, root


def test_a_train_only_directory_is_prepared_with_an_empty_test_split(train_only):
    result, data_dir, root = train_only
    assert not result.reused
    assert result.split_sizes == {"train": 7, "validation": 1, "test": 0}
    assert result.metadata["empty_splits"] == ["test"]
    assert result.rejects_path.read_text() == ""
    assert result.metadata["label_counts"]["test"]["macular_hole"] == {"present": 0, "absent": 0,
        "excluded": 0, "not_assessed": 0}
    assert "empty splits, left out of the dataset: test" in prepare.summary(result)
    assert len(pipeline.open_split("fundus_findings/manual", data_dir, "validation")) == 1
    again = prepare.prepare("manual", data_dir, image_size_px=32, manual_dir=root, show_progress=False)
    assert again.reused and again.split_sizes == result.split_sizes


def test_an_empty_split_is_named_when_it_is_opened(train_only):
    _, data_dir, _ = train_only
    with pytest.raises(pipeline.DatasetError,
                       match=r"split 'test' of 'fundus_findings/manual' in .* is empty: no line of annotations\.jsonl"):
        pipeline.open_split("fundus_findings/manual", data_dir, "test")


def test_evaluate_on_an_empty_split_says_so(train_only, tmp_path):
    from fundax import evaluation

    _, data_dir, _ = train_only
    (tmp_path / "config.json").write_text(_config(data_dir).to_json())
    with pytest.raises(pipeline.DatasetError, match=r"split 'test' of .* is empty"):
        evaluation.evaluate(tmp_path, "test")


def test_rejected_test_lines_leave_empty_splits_and_rejects_in_line_order(tmp_path):
    root = tmp_path / "manual"
    _photo(root / "images" / "a.png")
    cv2.imwrite(str(root / "images" / "dot.png"), np.full((1, 1, 3), 200, np.uint8))
    lines = [
        _line("te0", "images/missing.png", split="test"),
        "{not json",
        _line("tr0", "images/a.png"),
        _line("te1", "images/a.png", split="test", fovea=(95.0, 31.0)),
        _line("te2", "../escape.png", split="test"),
        _line("tr1", "images/a.png"),
        _line("dot", "images/dot.png", disc=(0.0, 0.0), fovea=(1.0, 1.0)),
    ]
    (root / "annotations.jsonl").write_text("\n".join(lines) + "\n")
    result = prepare.prepare("manual", tmp_path / "data", image_size_px=32, manual_dir=root,
                             show_progress=False, workers=2)
    assert result.split_sizes == {"train": 2, "validation": 0, "test": 0}
    assert result.metadata["empty_splits"] == ["validation", "test"]
    rejects = [json.loads(line) for line in result.rejects_path.read_text().splitlines()]
    assert [r["line"] for r in rejects] == [1, 2, 4, 5, 7]
    assert "1×1 pixels" in rejects[-1]["reason"] and "at least 32 px" in rejects[-1]["reason"]
    assert result.metadata["num_read"] == 7 and result.metadata["num_accepted"] == 2


def test_train_with_an_empty_validation_split_says_so(tmp_path):
    from fundax import loop

    root = tmp_path / "manual"
    _photo(root / "images" / "a.png")
    (root / "annotations.jsonl").write_text(
        "\n".join(_line(i, "images/a.png") for i in ("tr0", "tr1")) + "\n"
        + _line("te0", "images/a.png", split="test") + "\n")
    prepare.prepare("manual", tmp_path / "data", image_size_px=32, manual_dir=root, show_progress=False)
    with pytest.raises(pipeline.DatasetError,
                       match=r"split 'validation' of .* is empty: .*10% of the train lines"):
        loop.train_and_evaluate(_config(tmp_path / "data"), tmp_path / "work", tmp_path / "data",
                                show_progress=False)


def test_no_accepted_photograph_is_an_error_that_keeps_the_rejects(tmp_path):
    root = tmp_path / "manual"
    root.mkdir()
    (root / "annotations.jsonl").write_text(_line("a", "images/none.png") + "\n{not json\n")
    with pytest.raises(fundus_findings.PrepareError,
                       match=r"no photograph of .*annotations\.jsonl was accepted \(2 lines read\): reasons in "):
        prepare.prepare("manual", tmp_path / "data", image_size_px=32, manual_dir=root, show_progress=False)
