"""Tests of the synthetic fundus generator: determinism, anatomy, lesions, graders, shortcut, files."""

import dataclasses
import json

import cv2
import numpy as np
import pytest

from fundax.data import annotations, synthetic
from fundax.findings import FINDINGS, UnknownFindingError
from fundax.regions import REGIONS, region_map

DARK = ("hemorrhage", "retinal_pigmentary_change", "macular_hole", "rnfl_defect")
BRIGHT = ("hard_exudate", "cotton_wool_patch", "drusen", "membrane")
NO_FINDINGS = {name: 0.0 for name in FINDINGS}


def _config(**kwargs) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(**{"height_px": 96, **kwargs})


def _eyes(config: synthetic.SyntheticConfig, n: int, split: str = "train") -> list[synthetic.SyntheticEye]:
    return [synthetic.synthesize_eye(config, split, i) for i in range(n)]


def _distance_from(eye: synthetic.SyntheticEye, xy) -> np.ndarray:
    """Distance of every pixel centre to the point xy."""
    h, w = eye.image.shape[:2]
    y, x = np.mgrid[0:h, 0:w] + 0.5
    return np.hypot(x - xy[0], y - xy[1])


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64).mean(axis=2)


def _dist(eye: synthetic.SyntheticEye) -> float:
    return float(np.hypot(*np.subtract(eye.fovea_xy, eye.disc_xy)))


@pytest.mark.parametrize("kwargs, error", [
    ({"prevalence": {"glaucoma": 0.1}}, UnknownFindingError),
    ({"shortcut_finding": "glaucoma"}, UnknownFindingError),
    ({"prevalence": {"drusen": 1.5}}, ValueError),
    ({"default_prevalence": -0.1}, ValueError),
    ({"grader_miss_rates": (0.1, float("nan"))}, ValueError),
    ({"grader_miss_rates": ()}, ValueError),
    ({"shortcut_strength": 2.0}, ValueError),
    ({"grader_region_noise": 1.1}, ValueError),
    ({"num_train": -1}, ValueError),
    ({"num_test": 2.5}, ValueError),
    ({"height_px": 16}, ValueError),
    ({"aspect": 0.5}, ValueError),
])
def test_config_rejects_bad_values(kwargs, error):
    with pytest.raises(error):
        synthetic.SyntheticConfig(**kwargs)


def test_config_defaults_and_serialisation():
    config = synthetic.SyntheticConfig(shortcut_finding="", grader_miss_rates=[0.1, 0.2])
    assert config.shortcut_finding is None
    assert config.grader_ids == ("g1", "g2")
    assert config.width_px == round(1.3 * 320)
    assert config.prevalence_of("drusen") == 0.25
    assert synthetic.SyntheticConfig(prevalence={"drusen": 0.7}).prevalence_of("drusen") == 0.7
    # The dataset builder keys prepared data by the config as JSON.
    assert json.loads(json.dumps(dataclasses.asdict(config)))["grader_miss_rates"] == [0.1, 0.2]


def test_bad_split_or_index_is_refused():
    with pytest.raises(ValueError, match="split"):
        synthetic.synthesize_eye(_config(), "validation", 0)
    with pytest.raises(ValueError, match="index"):
        synthetic.synthesize_eye(_config(), "train", -1)


def test_same_config_gives_identical_eyes_and_the_seed_matters():
    config = _config(default_prevalence=0.5)
    a, b = (synthetic.synthesize_eye(config, "train", 3) for _ in range(2))
    assert a.image.tobytes() == b.image.tobytes()
    assert (a.findings, a.annotations, a.disc_xy, a.fovea_xy) == (b.findings, b.annotations, b.disc_xy, b.fovea_xy)
    assert all(np.array_equal(a.lesion_masks[k], b.lesion_masks[k]) for k in a.findings)
    other_seed = synthetic.synthesize_eye(dataclasses.replace(config, seed=1), "train", 3)
    other_split = synthetic.synthesize_eye(config, "test", 3)
    other_index = synthetic.synthesize_eye(config, "train", 4)
    for other in (other_seed, other_split, other_index):
        assert not np.array_equal(a.image, other.image)


def test_eye_depends_only_on_seed_split_and_index():
    alone = synthetic.synthesize_eye(_config(num_train=2, num_test=0), "train", 1)
    among_many = synthetic.synthesize_eye(_config(num_train=500, num_test=50), "train", 1)
    assert alone.image.tobytes() == among_many.image.tobytes()
    assert alone.annotations == among_many.annotations


def test_one_findings_prevalence_leaves_the_other_lesions_alone():
    with_drusen = _config(default_prevalence=0.5, prevalence={"drusen": 1.0})
    without = _config(default_prevalence=0.5, prevalence={"drusen": 0.0})
    for a, b in zip(_eyes(with_drusen, 12), _eyes(without, 12)):
        assert "drusen" in a.findings and "drusen" not in b.findings
        assert {k: v for k, v in a.findings.items() if k != "drusen"} == dict(b.findings)
        assert all(np.array_equal(a.lesion_masks[k], b.lesion_masks[k]) for k in b.findings)


def test_outside_the_field_is_black_and_inside_is_fundus():
    for eye in _eyes(_config(), 10):
        r = _distance_from(eye, eye.fov_xy)
        assert eye.image.shape == (96, 125, 3) and eye.image.dtype == np.uint8
        assert not eye.image[r > eye.fov_radius_px + 0.5].any()
        # Bright enough everywhere for preprocessing to find the fundus (its threshold is 15).
        assert eye.image[r < eye.fov_radius_px - 1].max(axis=1).min() > 15
        h = eye.image.shape[0]
        assert 0.45 * h < eye.fov_radius_px < 0.56 * h


def test_disc_is_bright_and_fovea_dark():
    for eye in _eyes(_config(height_px=160, prevalence=NO_FINDINGS), 10):
        luma, d = _luma(eye.image), _dist(eye)
        field = _distance_from(eye, eye.fov_xy) < eye.fov_radius_px
        assert luma[_distance_from(eye, eye.disc_xy) < 0.1 * d].mean() > 1.3 * luma[field].mean()
        to_fovea = _distance_from(eye, eye.fovea_xy)
        surround = luma[(to_fovea > 0.25 * d) & (to_fovea < 0.45 * d)].mean()
        assert luma[to_fovea < 0.04 * d].mean() < 0.9 * surround


def test_right_eye_has_its_disc_right_of_the_fovea():
    eyes = _eyes(_config(), 40)
    assert {eye.eye for eye in eyes} == {"left", "right"}
    for eye in eyes:
        assert (eye.disc_xy[0] > eye.fovea_xy[0]) == (eye.eye == "right")
        d = _dist(eye)
        assert 0.28 < d / eye.image.shape[1] < 0.42
        assert abs(eye.fovea_xy[1] - eye.disc_xy[1]) < 0.3 * d  # L is nearly horizontal
        assert np.hypot(*np.subtract(eye.disc_xy, eye.fov_xy)) < eye.fov_radius_px
        h, w = eye.image.shape[:2]
        assert all(0 <= x <= w and 0 <= y <= h for x, y in (eye.disc_xy, eye.fovea_xy))
        assert eye.disc_xy == tuple(round(v, 2) for v in eye.disc_xy)


def test_ground_truth_is_the_regions_of_the_lesion_pixels():
    seen = set()
    for eye in _eyes(_config(height_px=128, default_prevalence=1.0), 8):
        h, w = eye.image.shape[:2]
        ids = region_map(h, w, eye.disc_xy, eye.fovea_xy)
        field = _distance_from(eye, eye.fov_xy) < eye.fov_radius_px
        assert set(eye.findings) == set(eye.lesion_masks)
        for name, regions in eye.findings.items():
            mask = eye.lesion_masks[name]
            assert mask.shape == (h, w) and mask.dtype == bool and mask.any()
            assert not (mask & ~field).any()
            assert regions == tuple(REGIONS[k] for k in np.unique(ids[mask]))
        assert eye.findings["macular_hole"] == ("macula",)
        assert {"superotemporal", "inferotemporal"} & set(eye.findings["rnfl_defect"])
        assert "macula" in eye.findings["drusen"] and "macula" in eye.findings["membrane"]
        seen |= set(eye.findings)
    assert seen == set(FINDINGS)


@pytest.mark.parametrize("name", FINDINGS)
def test_each_lesion_shows_where_its_mask_is_and_nowhere_else(name):
    only = _config(height_px=128, prevalence={**NO_FINDINGS, name: 1.0})
    for index in range(3):
        lesion = synthetic.synthesize_eye(only, "train", index)
        healthy = synthetic.synthesize_eye(_config(height_px=128, prevalence=NO_FINDINGS), "train", index)
        assert list(lesion.findings) == [name] and not healthy.findings
        mask = lesion.lesion_masks[name]
        change = _luma(lesion.image) - _luma(healthy.image)
        assert (np.mean(change[mask]) < -8) if name in DARK else (np.mean(change[mask]) > 8)
        reach = 2 * round(0.35 * _dist(lesion)) + 9
        near = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach)))
        assert not np.any(lesion.image != healthy.image, axis=2)[near == 0].any()


def test_prevalence_is_respected():
    config = _config(height_px=64, default_prevalence=0.3, prevalence={"drusen": 0.6, "macular_hole": 0.1})
    eyes = _eyes(config, 400)
    rate = {name: np.mean([name in eye.findings for eye in eyes]) for name in FINDINGS}
    assert abs(rate["drusen"] - 0.6) < 0.08
    assert abs(rate["macular_hole"] - 0.1) < 0.05
    for name in ("hemorrhage", "hard_exudate", "cotton_wool_patch", "retinal_pigmentary_change", "membrane",
                 "rnfl_defect"):
        assert abs(rate[name] - 0.3) < 0.08, name


def test_annotation_lines_follow_the_data_format():
    for eye in _eyes(_config(default_prevalence=0.4, grader_region_noise=0.5, grader_false_positive_rate=0.1), 30):
        line = json.loads(json.dumps(synthetic.annotation_line(eye)))
        assert line["image_id"] == eye.image_id and eye.image_id.startswith("syn-train-")
        assert line["file"] == f"images/train/{eye.image_id}.png" and line["split"] == "train"
        assert (line["disc"], line["fovea"]) == (list(eye.disc_xy), list(eye.fovea_xy))
        assert (line["eye"], line["source"], line["shortcut"]) == (eye.eye, "synthetic", False)
        assert line["annotations"] == list(eye.annotations)
        assert [a["annotator"] for a in line["annotations"]] == ["g1", "g2", "g3"]
        for entry in line["annotations"]:
            for name, regions in entry["findings"].items():
                assert name in FINDINGS and regions
                assert regions == [r for r in REGIONS if r in regions]  # valid, unique, canonical order


def test_perfect_graders_report_the_ground_truth():
    config = _config(default_prevalence=0.5, grader_miss_rates=(0.0, 0.0, 0.0), grader_region_noise=0.0,
                     grader_false_positive_rate=0.0)
    for eye in _eyes(config, 20):
        for entry in eye.annotations:
            assert entry["findings"] == {name: list(regions) for name, regions in eye.findings.items()}


def test_a_grader_who_sees_nothing_writes_no_findings():
    config = _config(default_prevalence=0.8, grader_miss_rates=(1.0, 1.0), grader_false_positive_rate=0.0)
    for eye in _eyes(config, 5):
        assert eye.annotations == ({"annotator": "g1", "findings": {}}, {"annotator": "g2", "findings": {}})


def test_region_noise_drops_a_region_or_adds_a_neighbour():
    config = _config(default_prevalence=0.6, grader_miss_rates=(0.0,), grader_region_noise=1.0,
                     grader_false_positive_rate=0.0)
    kinds = set()
    for eye in _eyes(config, 30):
        (entry,) = eye.annotations
        assert set(entry["findings"]) == set(eye.findings)
        for name, listed in entry["findings"].items():
            truth, listed = set(eye.findings[name]), set(listed)
            (changed,) = truth ^ listed
            assert listed
            if changed in listed:
                assert any(changed in synthetic.adjacent_regions()[r] for r in truth)
            kinds.add(changed in listed)
    assert kinds == {True, False}


def test_graders_miss_and_invent_at_their_rates():
    missing = _config(height_px=64, default_prevalence=0.5, grader_miss_rates=(0.0, 0.3, 0.6),
                      grader_false_positive_rate=0.0)
    listed, present = np.zeros(3), 0
    for eye in _eyes(missing, 150):
        present += len(eye.findings)
        listed += [len(entry["findings"]) for entry in eye.annotations]
    np.testing.assert_allclose(1 - listed / present, [0.0, 0.3, 0.6], atol=0.06)
    inventing = _config(height_px=64, prevalence=NO_FINDINGS, grader_false_positive_rate=0.1)
    invented = [entry["findings"] for eye in _eyes(inventing, 100) for entry in eye.annotations]
    assert abs(sum(map(len, invented)) / (len(invented) * len(FINDINGS)) - 0.1) < 0.03
    assert all(len(regions) == 1 for found in invented for regions in found.values())


def test_adjacent_regions_are_the_borders_of_the_geometry():
    adjacent = synthetic.adjacent_regions()
    for region, neighbours in adjacent.items():
        assert region not in neighbours and len(neighbours) >= 3
        assert all(region in adjacent[n] for n in neighbours)
    assert "temporal" in adjacent["macula"] and "superonasal" in adjacent["inferonasal"]
    assert "inferotemporal" not in adjacent["superotemporal"]
    assert "macula" not in adjacent["superonasal"]


def test_shortcut_follows_the_label_in_train_only():
    config = _config(height_px=64, prevalence={"macular_hole": 0.5}, shortcut_finding="macular_hole",
                     shortcut_strength=0.9)
    train = [(eye.shortcut, "macular_hole" in eye.findings) for eye in _eyes(config, 300)]
    assert 0.85 < np.mean([s == label for s, label in train]) < 0.95
    test = [(eye.shortcut, "macular_hole" in eye.findings) for eye in _eyes(config, 300, split="test")]
    assert 0.4 < np.mean([s for s, _ in test]) < 0.6
    assert 0.4 < np.mean([s == label for s, label in test]) < 0.6
    assert not any(eye.shortcut for eye in _eyes(_config(height_px=64), 30))


@pytest.mark.parametrize("name", ["rnfl_defect", "macular_hole", "hemorrhage"])
def test_shortcut_stamp_is_bright_outside_the_field_and_the_findings_regions(name):
    config = _config(height_px=128, prevalence={name: 1.0}, shortcut_finding=name, shortcut_strength=1.0)
    for index in range(8):
        stamped = synthetic.synthesize_eye(config, "train", index)
        plain = synthetic.synthesize_eye(dataclasses.replace(config, shortcut_finding=None), "train", index)
        assert stamped.shortcut and not plain.shortcut and stamped.findings == plain.findings
        stamp = np.any(stamped.image != plain.image, axis=2)
        assert stamp.sum() > 0.5 * (0.05 * 128) * (0.12 * 128) and _luma(stamped.image)[stamp].mean() > 150
        assert (_distance_from(stamped, stamped.fov_xy)[stamp] > stamped.fov_radius_px).all()
        # Inside the field of view's bounding box, which preprocessing crops to.
        (cx, cy), r = stamped.fov_xy, stamped.fov_radius_px
        rows, cols = np.nonzero(stamp)
        assert cols.min() >= cx - r and cols.max() + 1 <= cx + r
        assert rows.min() >= cy - r and rows.max() + 1 <= cy + r
        h, w = stamp.shape
        stamp_regions = {REGIONS[k] for k in np.unique(region_map(h, w, stamped.disc_xy, stamped.fovea_xy)[stamp])}
        assert not stamp_regions & set(stamped.findings[name])


def test_write_manual_dir_is_readable_and_the_same_for_any_number_of_workers(tmp_path):
    config = _config(num_train=5, num_test=3, default_prevalence=0.4, shortcut_finding="drusen")
    steps = []
    one = synthetic.write_manual_dir(tmp_path / "one", config, workers=1, progress=steps.append)
    two = synthetic.write_manual_dir(tmp_path / "two", config, workers=2)
    assert one == tmp_path / "one" / "annotations.jsonl" and sum(steps) == 8
    assert one.read_bytes() == two.read_bytes()
    lines = [json.loads(text) for text in one.read_text().splitlines()]
    assert [(line["split"], line["image_id"]) for line in lines] == (
        [("train", f"syn-train-{i:06d}") for i in range(5)] + [("test", f"syn-test-{i:06d}") for i in range(3)])
    for line in lines:
        assert (tmp_path / "one" / line["file"]).read_bytes() == (tmp_path / "two" / line["file"]).read_bytes()
        decoded = cv2.imread(str(tmp_path / "one" / line["file"]), cv2.IMREAD_COLOR)[..., ::-1]
        eye = synthetic.synthesize_eye(config, line["split"], int(line["image_id"][-6:]))
        assert decoded.shape == (96, 125, 3) and np.array_equal(decoded, eye.image)
        assert line == synthetic.annotation_line(eye)
    read = annotations.read_annotations(one)
    assert len(read.records) == 8 and not read.rejections
    assert not list(tmp_path.rglob("*.tmp"))


def test_an_interrupted_write_leaves_no_annotations(tmp_path):
    (tmp_path / "annotations.jsonl").write_text("stale\n")

    def stop_after_two(n):
        stop_after_two.done += n
        if stop_after_two.done == 2:
            raise KeyboardInterrupt

    stop_after_two.done = 0
    with pytest.raises(KeyboardInterrupt):
        synthetic.write_manual_dir(tmp_path, _config(num_train=4, num_test=0), workers=1, progress=stop_after_two)
    assert not (tmp_path / "annotations.jsonl").exists()
    synthetic.write_manual_dir(tmp_path, _config(num_train=4, num_test=0), workers=1)
    assert len((tmp_path / "annotations.jsonl").read_text().splitlines()) == 4


def test_demo_eye_is_a_right_eye_with_its_findings():
    eye = synthetic.demo_eye(height_px=256)
    assert eye.image.shape == (256, round(1.3 * 256), 3) and eye.eye == "right"
    assert eye.disc_xy[0] > eye.fovea_xy[0]
    assert set(eye.findings) == {"macular_hole", "drusen", "rnfl_defect", "hemorrhage"}
    assert all(entry["findings"] == {k: list(v) for k, v in eye.findings.items()} for entry in eye.annotations)


def test_prevalence_from_a_config_string():
    from fundax.configs import default

    assert synthetic.parse_prevalence("") is None
    assert synthetic.parse_prevalence("macular_hole=0.5, drusen=0.25") == {"macular_hole": 0.5, "drusen": 0.25}
    for bad in ("macular_hole", "macular_hole=half", "=0.5x"):
        with pytest.raises(ValueError, match="is not FINDING=P"):
            synthetic.parse_prevalence(bad)
    section = default.get_config().synthetic
    section.prevalence, section.height_px = "macular_hole=0.5", 64
    made = synthetic.from_config(section)
    assert made.prevalence == {"macular_hole": 0.5} and made.height_px == 64 and made.num_train == section.num_train
    section.prevalence = "glaucoma=0.5"
    with pytest.raises(ValueError, match="unknown finding 'glaucoma'"):
        synthetic.from_config(section)
