"""Tests of fundax.data.annotations: every bad-line kind, votes, region bits and consensus."""

from __future__ import annotations

import copy
import json
import os
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fakes
from fundax import findings as findings_lib
from fundax import regions as regions_lib
from fundax.data import annotations

EXAMPLE = fakes.EXAMPLE
GOOD = json.dumps(EXAMPLE)


def line(**changes) -> str:
    """The example line with top-level keys changed (a value of ... removes the key)."""
    obj = copy.deepcopy(EXAMPLE)
    for key, value in changes.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj)


def grader_line(*entries) -> str:
    return line(annotations=list(entries))


def read(tmp_path: pathlib.Path, *lines: str | bytes) -> annotations.ReadResult:
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return annotations.read_annotations(path)


def rejected(tmp_path: pathlib.Path, bad: str) -> str:
    """The reason a bad line after a good one is rejected; checks counts and bookkeeping."""
    result = read(tmp_path, GOOD, bad)
    assert result.num_read == 2
    assert len(result.records) == 1 and len(result.rejections) == 1
    rejection = result.rejections[0]
    assert rejection.line_number == 2
    assert rejection.source == os.fspath(tmp_path / "annotations.jsonl")
    assert rejection.text == bad
    return rejection.reason


# --- good lines -------------------------------------------------------------------------------


def test_example_line_votes_and_region_bits():
    record = annotations.parse_line(GOOD, 7)
    votes, bits = record.votes(), record.region_bits()
    assert votes.dtype == np.int32 and votes.shape == (len(findings_lib.FINDINGS),)
    assert bits.dtype == np.uint8 and bits.shape == (len(findings_lib.FINDINGS),)
    hole, drusen = findings_lib.finding_index("macular_hole"), findings_lib.finding_index("drusen")
    assert votes[hole] == 2 and bits[hole] == 0b011  # macula | superior_disc
    assert votes[drusen] == 1 and bits[drusen] == 0b1001  # macula | temporal
    others = np.ones(len(findings_lib.FINDINGS), bool)
    others[[hole, drusen]] = False
    assert not votes[others].any() and not bits[others].any()


def test_example_line_fields():
    record = annotations.parse_line(GOOD, 7)
    assert record.image_id == "snubh-000123" and record.file == "images/000123.jpg"
    assert record.split == "train" and record.line == GOOD and record.line_number == 7
    assert record.disc == (812.5, 1290.0) and record.fovea == (1890.0, 1402.5)
    assert [g.annotator for g in record.graders] == ["r01", "r07", "r12"]
    assert record.graders[0].findings == {"drusen": ("macula", "temporal"), "macular_hole": ("macula",)}
    assert record.graders[1].findings == {}
    assert record.extra == {}


def test_regions_deduplicated_in_canonical_order_and_extra_keys_kept():
    text = line(
        eye="OD",
        camera={"model": "x"},
        annotations=[{
            "annotator": "r01",
            "note": "faint",
            "findings": {"hemorrhage": ["inferonasal", "macula", "macula"]},
        }],
    )
    record = annotations.parse_line(text)
    assert record.graders[0].findings == {"hemorrhage": ("macula", "inferonasal")}
    assert record.graders[0].extra == {"note": "faint"}
    assert record.extra == {"eye": "OD", "camera": {"model": "x"}}
    assert record.region_bits()[findings_lib.finding_index("hemorrhage")] == regions_lib.regions_to_bits(
        ["macula", "inferonasal"]
    )


def test_integer_coordinates_and_upper_case_extension_accepted():
    record = annotations.parse_line(line(disc=[0, 10], fovea=[5, 10], file="a/B.TIFF"))
    assert record.disc == (0.0, 10.0) and isinstance(record.disc[0], float)


def test_crlf_and_byte_order_mark(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\r\n" + line(image_id="b").encode() + b"\r\n")
    result = annotations.read_annotations(path)
    assert [r.image_id for r in result.records] == ["snubh-000123", "b"]
    assert result.records[0].line == GOOD and not result.rejections


def test_last_line_without_newline(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_text(GOOD + "\n" + line(image_id="b"))
    result = annotations.read_annotations(path)
    assert result.num_read == 2 and len(result.records) == 2


def test_blank_lines_are_skipped_not_counted(tmp_path):
    result = read(tmp_path, GOOD, "", "   \t", line(image_id="b"))
    assert result.num_read == 2 and not result.rejections
    assert [r.line_number for r in result.records] == [1, 4]


def test_rejection_as_json():
    rejection = annotations.Rejection("m/annotations.jsonl", 3, "bad split 'dev'", "{...}")
    assert rejection.as_json() == {
        "file": "m/annotations.jsonl", "line": 3, "reason": "bad split 'dev'", "text": "{...}"
    }


def test_missing_annotations_file(tmp_path):
    path = tmp_path / "nowhere" / "annotations.jsonl"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        annotations.read_annotations(path)


# --- bad lines --------------------------------------------------------------------------------


def test_malformed_json(tmp_path):
    assert rejected(tmp_path, GOOD[:-5]).startswith("not valid JSON")


def test_parse_line_raises_the_reason():
    with pytest.raises(annotations.AnnotationError, match="^bad split 'dev'"):
        annotations.parse_line(line(split="dev"))


def test_not_an_object(tmp_path):
    assert rejected(tmp_path, "[1, 2]") == "not a JSON object: got list"


@pytest.mark.parametrize("key", annotations.REQUIRED_KEYS)
def test_missing_required_key(tmp_path, key):
    assert rejected(tmp_path, line(**{key: ...})) == f"missing required key(s): {key!r}"


def test_duplicate_key(tmp_path):
    bad = GOOD[:-1] + ', "split": "test"}'
    assert "duplicate key 'split'" in rejected(tmp_path, bad)


@pytest.mark.parametrize("image_id", ["", "a b", "x" * 129, "é", 17, None])
def test_bad_image_id(tmp_path, image_id):
    assert rejected(tmp_path, line(image_id=image_id)).startswith(f"bad image_id {image_id!r}")


def test_longest_image_id_accepted():
    assert annotations.parse_line(line(image_id="x" * 128)).image_id == "x" * 128


@pytest.mark.parametrize("file", ["", 3, None, ["a.png"]])
def test_file_not_a_string(tmp_path, file):
    assert "'file' must be a non-empty string" in rejected(tmp_path, line(file=file))


@pytest.mark.parametrize("split", ["dev", "Train", 1, None])
def test_bad_split(tmp_path, split):
    assert rejected(tmp_path, line(split=split)).startswith(f"bad split {split!r}")


@pytest.mark.parametrize(
    "value, reason",
    [
        ("12,3", "'disc' must be a list [x, y] of 2 numbers"),
        ([1.0], "'disc' must be a list [x, y] of 2 numbers"),
        ([1.0, 2.0, 3.0], "'disc' must be a list [x, y] of 2 numbers"),
        (["1", "2"], "'disc' must hold numbers, got str '1'"),
        ([None, 2], "'disc' must hold numbers, got null"),
        ([True, 2], "'disc' must hold numbers, got bool True"),
        ([3, False], "'disc' must hold numbers, got bool False"),
        ([-1.0, 2.0], "'disc' has a negative coordinate"),
    ],
)
def test_bad_coordinates(tmp_path, value, reason):
    assert rejected(tmp_path, line(disc=value)).startswith(reason)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_coordinates(tmp_path, literal):
    bad = GOOD.replace("[1890.0, 1402.5]", f"[1890.0, {literal}]")
    assert rejected(tmp_path, bad).startswith("'fovea' must hold finite numbers")


def test_huge_integer_coordinate(tmp_path):
    bad = GOOD.replace("[1890.0, 1402.5]", f"[{10**400}, 1402.5]")
    assert rejected(tmp_path, bad) == "'fovea' holds a number too large for a float"


def test_disc_equal_to_fovea(tmp_path):
    reason = rejected(tmp_path, line(disc=[100, 50.0], fovea=[100.0, 50]))
    assert reason.startswith("disc equals fovea (100, 50)")


@pytest.mark.parametrize("value", [[], {}, "r01", None])
def test_empty_or_non_list_annotations(tmp_path, value):
    assert rejected(tmp_path, line(annotations=value)).startswith("'annotations' must be a non-empty list")


@pytest.mark.parametrize(
    "entry, reason",
    [
        ("r01", "annotations[0] must be an object, got str"),
        ({"findings": {}}, "annotations[0] is missing the key 'annotator'"),
        ({"annotator": "r01"}, "annotations[0] is missing the key 'findings'"),
        ({"annotator": "", "findings": {}}, "annotations[0].annotator must be a non-empty string"),
        ({"annotator": 5, "findings": {}}, "annotations[0].annotator must be a non-empty string"),
        ({"annotator": "r01", "findings": ["drusen"]}, "annotations[0].findings must be an object, got list"),
    ],
)
def test_bad_grader_entry(tmp_path, entry, reason):
    assert rejected(tmp_path, grader_line(entry)).startswith(reason)


def test_unknown_finding_lists_valid_ones(tmp_path):
    reason = rejected(tmp_path, grader_line({"annotator": "r01", "findings": {"glaucoma": ["macula"]}}))
    assert "unknown finding 'glaucoma'" in reason and "annotator 'r01'" in reason
    assert all(name in reason for name in findings_lib.FINDINGS)


def test_unknown_region_lists_valid_ones(tmp_path):
    entry = {"annotator": "r01", "findings": {"drusen": ["macula", "fovea"]}}
    reason = rejected(tmp_path, grader_line(entry))
    assert "finding 'drusen'" in reason and "unknown region 'fovea'" in reason
    assert all(name in reason for name in regions_lib.REGIONS)


@pytest.mark.parametrize("regions", [[], "macula", {"macula": 1}])
def test_finding_without_region_list(tmp_path, regions):
    reason = rejected(tmp_path, grader_line({"annotator": "r01", "findings": {"membrane": regions}}))
    assert "finding 'membrane' needs a non-empty list of regions, or null for an image-level label" in reason


def test_a_finding_without_regions_is_an_image_level_label_that_votes():
    text = line(annotations=[
        {"annotator": "r01", "findings": {"macular_hole": None}},
        {"annotator": "r02", "findings": {"macular_hole": None, "drusen": ["macula"]}},
        {"annotator": "r03", "findings": {"drusen": None}},
    ])
    record = annotations.parse_line(text)
    assert record.graders[0].findings == {"macular_hole": ()}
    hole, drusen = findings_lib.finding_index("macular_hole"), findings_lib.finding_index("drusen")
    assert record.votes()[hole] == 2 and record.votes()[drusen] == 2
    # No grader marked the hole's regions: no cue. Drusen's cue is the regions one grader marked.
    assert record.region_bits()[hole] == 0
    assert record.region_bits()[drusen] == regions_lib.regions_to_bits(["macula"])


def test_region_not_a_string(tmp_path):
    reason = rejected(tmp_path, grader_line({"annotator": "r01", "findings": {"membrane": ["macula", 3]}}))
    assert "finding 'membrane' has a region that is not a string: 3" in reason


def test_duplicate_finding_within_a_grader(tmp_path):
    bad = GOOD.replace('"drusen": ["macula", "temporal"]', '"drusen": ["macula"], "drusen": ["temporal"]')
    assert "duplicate key 'drusen'" in rejected(tmp_path, bad)


def test_duplicate_annotator(tmp_path):
    bad = grader_line(
        {"annotator": "r01", "findings": {}}, {"annotator": "r01", "findings": {"drusen": ["macula"]}}
    )
    assert rejected(tmp_path, bad) == "duplicate annotator 'r01'"


def test_duplicate_image_id_rejects_the_later_line(tmp_path):
    result = read(tmp_path, GOOD, line(image_id="other"), line(split="test"))
    assert result.num_read == 3 and len(result.records) == 2
    [rejection] = result.rejections
    assert rejection.line_number == 3
    assert rejection.reason == "duplicate image_id 'snubh-000123' (first on line 1)"


def test_id_of_a_rejected_line_is_not_reserved(tmp_path):
    result = read(tmp_path, line(split="dev"), GOOD)
    assert [r.line_number for r in result.records] == [2] and result.rejections[0].line_number == 1


@pytest.mark.parametrize("file", ["../x.png", "images/../../x.png", ".."])
def test_path_escaping_with_dot_dot(tmp_path, file):
    assert f"'file' {file!r} escapes the manual directory" in rejected(tmp_path, line(file=file))


def test_dot_dot_staying_inside_is_accepted(tmp_path):
    assert annotations.resolve_image_path(tmp_path, "a/../b.png") == tmp_path.resolve() / "b.png"


def test_absolute_path(tmp_path):
    file = os.fspath(tmp_path / "x.png")
    assert rejected(tmp_path, line(file=file)).startswith("'file' must be relative to the manual directory")


@pytest.mark.parametrize("link_dir", [False, True])
def test_symlink_pointing_outside(tmp_path, link_dir):
    manual, outside = tmp_path / "manual", tmp_path / "outside"
    manual.mkdir()
    outside.mkdir()
    (outside / "x.png").write_bytes(b"")
    if link_dir:
        (manual / "linked").symlink_to(outside, target_is_directory=True)
        file = "linked/x.png"
    else:
        (manual / "x.png").symlink_to(outside / "x.png")
        file = "x.png"
    reason = rejected(manual, line(file=file))
    assert reason.startswith(f"'file' {file!r} escapes the manual directory (it resolves to ")


def test_symlink_inside_is_accepted(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    path = annotations.resolve_image_path(tmp_path, "link/x.png")
    assert path == (tmp_path / "real" / "x.png").resolve()


def test_symlink_loop(tmp_path):
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(annotations.AnnotationError, match="cannot be resolved|escapes"):
        annotations.resolve_image_path(tmp_path, "loop.png")


@pytest.mark.parametrize("file", ["a.gif", "a.bmp", "images/a", "a.png.txt", "images/.png"])
def test_bad_extension(tmp_path, file):
    assert f"'file' {file!r} has an unsupported extension" in rejected(tmp_path, line(file=file))


def test_invalid_utf8(tmp_path):
    bad = GOOD.encode().replace(b"snubh", b"snu\xffbh")
    result = read(tmp_path, GOOD, bad)
    assert result.num_read == 2 and len(result.records) == 1
    [rejection] = result.rejections
    assert rejection.reason == "not valid UTF-8 (byte 17)" and rejection.line_number == 2
    assert "snu\\xffbh" in rejection.text
    json.dumps(rejection.as_json(), ensure_ascii=False).encode("utf-8")


def _one_line(raw: bytes) -> bool:
    return b"\n" not in raw and b"\r" not in raw and not raw.startswith(b"\xef\xbb\xbf")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(
    st.sampled_from([GOOD, line(image_id="b"), line(split="dev"), "", " ", "{}"]).map(str.encode),
    st.text().map(str.encode),
    st.binary(max_size=40),
).filter(_one_line), max_size=8))
def test_every_non_blank_line_is_accepted_or_rejected(tmp_path_factory, lines):
    """Read = accepted + rejected, each non-blank line exactly once, in file order."""
    result = read(tmp_path_factory.mktemp("a"), *lines)
    expected = [n for n, raw in enumerate(lines, start=1) if not _is_blank(raw)]
    seen = sorted([r.line_number for r in result.records] + [r.line_number for r in result.rejections])
    assert seen == expected and result.num_read == len(expected)


def _is_blank(raw: bytes) -> bool:
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


# --- consensus --------------------------------------------------------------------------------


def test_consensus_two_of_three():
    label, weight = annotations.consensus(np.array([0, 1, 2, 3]), min_votes=2)
    assert label.dtype == np.float32 and weight.dtype == np.float32
    np.testing.assert_array_equal(label, [0, 0, 1, 1])
    np.testing.assert_array_equal(weight, [1, 0, 1, 1])


def test_consensus_one_vote_is_enough():
    label, weight = annotations.consensus(np.array([0, 1, 2, 3]), min_votes=1)
    np.testing.assert_array_equal(label, [0, 1, 1, 1])
    np.testing.assert_array_equal(weight, [1, 1, 1, 1])


def test_consensus_keeps_shape_and_uses_the_example():
    votes = np.stack([annotations.parse_line(GOOD).votes()] * 3)
    label, weight = annotations.consensus(votes)
    assert label.shape == weight.shape == votes.shape
    hole, drusen = findings_lib.finding_index("macular_hole"), findings_lib.finding_index("drusen")
    assert (label[:, hole] == 1).all() and (weight[:, hole] == 1).all()
    assert (label[:, drusen] == 0).all() and (weight[:, drusen] == 0).all()
    assert label.sum() == 3 and weight.sum() == 3 * (len(findings_lib.FINDINGS) - 1)


@pytest.mark.parametrize("min_votes", [0, -1])
def test_consensus_rejects_min_votes_below_one(min_votes):
    with pytest.raises(ValueError, match="min_votes"):
        annotations.consensus(np.array([1]), min_votes=min_votes)


def test_consensus_rejects_negative_votes_other_than_not_assessed():
    with pytest.raises(ValueError, match="non-negative"):
        annotations.consensus(np.array([0, -2]))


def test_consensus_gives_no_label_to_a_finding_not_assessed():
    label, weight = annotations.consensus(np.array([annotations.NOT_ASSESSED, 0, 1, 2]), min_votes=1)
    np.testing.assert_array_equal(label, [0, 0, 1, 1])
    np.testing.assert_array_equal(weight, [0, 1, 1, 1])


# --- assessed (optional, per grader) ---------------------------------------------------------------


def _assessing(*assessed):
    """EXAMPLE's three graders (macular hole from r01 and r12, drusen from r01), each with its ``assessed``
    (None: the key left out)."""
    entries = copy.deepcopy(EXAMPLE["annotations"])
    for entry, names in zip(entries, assessed):
        if names is not None:
            entry["assessed"] = names
    return grader_line(*entries)


def test_a_finding_no_grader_assessed_has_no_votes_at_all():
    # r01 assessed drusen and macular hole, r07 membrane too, r12 only macular hole.
    record = annotations.parse_line(_assessing(["macular_hole", "drusen"], ["membrane", "drusen", "macular_hole"],
                                               ["macular_hole"]))
    assert record.graders[1].assessed == ("drusen", "macular_hole", "membrane")  # registry order
    assert record.assessed == ("drusen", "macular_hole", "membrane")
    assert all("assessed" not in grader.extra for grader in record.graders)
    expected = [annotations.NOT_ASSESSED] * len(findings_lib.FINDINGS)
    for name, votes in {"drusen": 1, "macular_hole": 2, "membrane": 0}.items():
        expected[findings_lib.finding_index(name)] = votes
    np.testing.assert_array_equal(record.votes(), expected)
    label, weight = annotations.consensus(record.votes())
    assert weight.sum() == 2 and label.sum() == 1  # macular hole present, membrane absent; the rest no label
    # One grader without the key assessed every finding: a finding nobody lists is then absent.
    everyone = annotations.parse_line(_assessing(["macular_hole", "drusen"], None, ["macular_hole"]))
    assert everyone.assessed == findings_lib.FINDINGS and (everyone.votes() >= 0).all()
    assert annotations.parse_line(GOOD).assessed == findings_lib.FINDINGS


def test_a_grader_read_built_in_code_cannot_list_what_it_did_not_assess():
    with pytest.raises(ValueError, match="lists \\['membrane'\\], which its assessed leaves out"):
        annotations.GraderRead("r01", {"membrane": ("macula",)}, assessed=("drusen",))


@pytest.mark.parametrize("assessed, why", [
    ("drusen", "annotations[0].assessed must be a list of finding names"),
    (["drusen", 3], "annotations[0].assessed must be a list of finding names"),
    (["drusen", "macular_hole", "glaucoma"], "glaucoma"),
    (["drusen", "macular_hole", "drusen"], "'drusen' more than once"),
    (["drusen"], "annotations[0] (annotator 'r01') lists 'macular_hole', which its 'assessed' leaves out"),
])
def test_a_bad_assessed_is_rejected_naming_what(tmp_path, assessed, why):
    assert why in rejected(tmp_path, _assessing(assessed))


def test_a_mask_of_a_finding_no_grader_assessed_is_rejected(tmp_path):
    bad = json.loads(_assessing(["drusen", "macular_hole"], ["drusen"], ["macular_hole"]))
    bad["lesion_masks"] = {"membrane": "m.png"}
    assert "'lesion_masks' names 'membrane', which no grader assessed" in rejected(tmp_path, json.dumps(bad))
    bad["lesion_masks"] = {"drusen": "m.png"}
    assert annotations.parse_line(json.dumps(bad)).lesion_masks == {"drusen": "m.png"}


# --- lesion masks (optional) ---------------------------------------------------------------------


def test_lesion_masks_are_read_in_registry_order_and_kept_out_of_extra(tmp_path):
    result = read(tmp_path, line(lesion_masks={"rnfl_defect": "m/r.png", "macular_hole": "m/h.png"}))
    record = result.records[0]
    assert list(record.lesion_masks.items()) == [("macular_hole", "m/h.png"), ("rnfl_defect", "m/r.png")]
    assert "lesion_masks" not in record.extra and record.extra == {}
    assert read(tmp_path, GOOD).records[0].lesion_masks == {}


@pytest.mark.parametrize("value, reason", [
    (["m/h.png"], "'lesion_masks' must be an object (finding -> mask file), got list"),
    ({"glaucoma": "m/g.png"}, "lesion_masks: unknown finding 'glaucoma'; valid findings are: hemorrhage"),
    ({"drusen": ""}, "lesion_masks['drusen'] must be a non-empty string, got ''"),
    ({"drusen": 3}, "lesion_masks['drusen'] must be a non-empty string, got 3"),
    ({"drusen": "/abs/d.png"}, "lesion_masks['drusen'] must be relative to the manual directory"),
    ({"drusen": "../d.png"}, "lesion_masks['drusen'] '../d.png' escapes the manual directory"),
    ({"drusen": "m/d.bmp"}, "lesion_masks['drusen'] 'm/d.bmp' has an unsupported extension"),
])
def test_bad_lesion_masks(tmp_path, value, reason):
    assert rejected(tmp_path, line(lesion_masks=value)).startswith(reason)


def test_lesion_mask_symlink_leading_outside_is_rejected(tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}_outside"
    outside.mkdir()
    (tmp_path / "m").symlink_to(outside, target_is_directory=True)
    reason = rejected(tmp_path, line(lesion_masks={"drusen": "m/d.png"}))
    assert reason.startswith("lesion_masks['drusen'] 'm/d.png' escapes the manual directory (it resolves to")
