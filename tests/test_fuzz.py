"""Property-based tests: the annotation reader and the region geometry on hostile input.

The reader must never crash and never lose a line (read = accepted + rejected, each line
once), whatever bytes or JSON it is handed; accepted records must carry exactly what the
line said. The region geometry must give an id in 0..7 or raise RegionError, for any
coordinates, and must agree with REGIONS.md, with its symmetries and with its jax twin.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import pathlib
import posixpath

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fakes
from fundax import findings as findings_lib
from fundax import regions as regions_lib
from fundax.data import annotations
from fundax.regions import REGIONS, RegionError

EXAMPLE = fakes.EXAMPLE
FINDINGS = findings_lib.FINDINGS
BOM = b"\xef\xbb\xbf"
FAST = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- strategies: JSON values ---------------------------------------------------------------

# Any character, lone surrogates included (st.characters() leaves them out).
CHARS = st.one_of(
    st.characters(),
    st.integers(0xD800, 0xDFFF).map(chr),
    st.sampled_from("\x00\x1f\x7f\u2028\u2029\ufeff\U0001f600\U0001f9ec é/\\.\"'\n\r\t"),
)
TEXT = st.text(CHARS, max_size=12)
# Integers beyond float range, but under Python's 4300-digit str limit so json.dumps writes them.
HUGE_INTS = st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 2**64, 2**1024, 10**1000])
INTS = st.one_of(st.integers(), HUGE_INTS)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
LEAVES = st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT)
JSON = st.recursive(
    LEAVES,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(TEXT, kids, max_size=4)),
    max_leaves=12,
)


def dumps(value, ensure_ascii: bool = True) -> str:
    return json.dumps(value, allow_nan=True, ensure_ascii=ensure_ascii)


def encode(text: str) -> bytes:
    """UTF-8, but a lone surrogate becomes its (invalid) 3-byte form instead of an error."""
    return text.encode("utf-8", "surrogatepass")


# --- strategies: mutations of the spec's example line ----------------------------------------

COORD = st.one_of(
    st.floats(0, 1e4),
    st.integers(0, 10**6),
    FLOATS,
    INTS,
    st.booleans(),
    st.none(),
    TEXT,
    st.lists(FLOATS, max_size=2),
)
POINT = st.one_of(
    st.lists(st.floats(0, 1e4) | st.integers(0, 5000), min_size=2, max_size=2),
    st.lists(COORD, min_size=2, max_size=2),
    st.lists(COORD, max_size=4),
    JSON,
)
IMAGE_ID = st.one_of(
    st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9._-]{1,8}", fullmatch=True).map(lambda s: s + "\n"),
    st.integers(0, 300).map(lambda n: "x" * n),
    st.sampled_from(["", "\U0001f600", "\ud800", "snubh-\udcff", "é", "a b", "0" * 129]),
    TEXT,
    JSON,
)
SPLIT = st.one_of(st.sampled_from(["train", "test", "Train", "train ", "TEST", "dev", ""]), TEXT, JSON)
FILE = st.one_of(
    st.builds(
        lambda prefix, middle, ext: prefix + middle + ext,
        st.sampled_from(["", "images/", "/", "../", "a/../", "a/../../", "./", "//", "..", "~/"]),
        TEXT,
        st.sampled_from([".png", ".JPG", ".jpeg", ".tif", ".TIFF", ".gif", "", ".png.txt", "/.png"]),
    ),
    JSON,
)
REGION_NAMES = st.sampled_from(REGIONS)
REGION_LIST = st.one_of(
    st.lists(REGION_NAMES, max_size=5),
    st.lists(st.one_of(REGION_NAMES, TEXT, JSON), max_size=4),
    JSON,
)
FINDINGS_DICT = st.one_of(
    st.dictionaries(st.sampled_from(FINDINGS), st.lists(REGION_NAMES, min_size=1, max_size=4), max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(FINDINGS), TEXT), REGION_LIST, max_size=4),
    JSON,
)
ANNOTATOR = st.one_of(st.sampled_from(["r01", "r07", "r12", ""]), TEXT, JSON)
EXTRA_KEY = TEXT.filter(lambda k: k not in annotations.REQUIRED_KEYS)


@st.composite
def grader_entries(draw):
    entry = {"annotator": draw(ANNOTATOR), "findings": draw(FINDINGS_DICT)}
    for key in draw(st.sets(st.sampled_from(["annotator", "findings"]), max_size=1)):
        del entry[key]  # sometimes a key is missing
    extra = draw(st.dictionaries(TEXT.filter(lambda k: k not in ("annotator", "findings")), JSON, max_size=2))
    return draw(JSON) if draw(st.integers(0, 9)) == 0 else {**entry, **extra}


ANNOTATIONS = st.one_of(st.lists(grader_entries(), max_size=4), JSON)
FIELD_VALUES = {
    "image_id": IMAGE_ID,
    "file": FILE,
    "split": SPLIT,
    "disc": POINT,
    "fovea": POINT,
    "annotations": ANNOTATIONS,
}


@st.composite
def mutated_objects(draw) -> dict:
    """The spec's example with one to three fields replaced, removed or added."""
    obj = copy.deepcopy(EXAMPLE)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace"] * 6 + ["delete", "extra", "same_points"]))
        if kind == "replace":
            key = draw(st.sampled_from(sorted(FIELD_VALUES)))
            obj[key] = draw(FIELD_VALUES[key])
        elif kind == "delete":
            obj.pop(draw(st.sampled_from(annotations.REQUIRED_KEYS)), None)
        elif kind == "extra":
            obj.update(draw(st.dictionaries(EXTRA_KEY, JSON, min_size=1, max_size=3)))
        else:  # the disc on the fovea, maybe written as integers
            obj["disc"] = draw(st.sampled_from([[1890.0, 1402.5], [1890, 1402.5], [1890.0, 1402.50]]))
    return obj


# --- an independent reading of DATA_FORMAT.md ----------------------------------------------------

_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def _coordinate(v):
    """The float of a valid coordinate, else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer beyond float range
        return None
    return f if math.isfinite(f) and f >= 0 else None


def _point(value):
    if not isinstance(value, list) or len(value) != 2:
        return None
    xy = tuple(_coordinate(v) for v in value)
    return None if None in xy else xy


def _file_ok(file) -> bool:
    if not isinstance(file, str) or not file or "\x00" in file or file.startswith("/"):
        return False
    try:
        file.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate names no file: rejected
        return False
    parts = []
    for part in file.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return False
            parts.pop()
        else:
            parts.append(part)
    ext = posixpath.splitext(file)[1].lower()
    return ext in (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def _grader_ok(entry) -> bool:
    if not isinstance(entry, dict) or "annotator" not in entry or "findings" not in entry:
        return False
    if not isinstance(entry["annotator"], str) or not entry["annotator"]:
        return False
    found = entry["findings"]
    if not isinstance(found, dict):
        return False
    for name, names in found.items():
        if name not in FINDINGS or not isinstance(names, list) or not names:
            return False
        if not all(isinstance(r, str) and r in REGIONS for r in names):
            return False
    return True


def valid_line(obj) -> bool:
    """Whether DATA_FORMAT.md (and the reader's documented choices) accept this object."""
    if not isinstance(obj, dict) or any(k not in obj for k in annotations.REQUIRED_KEYS):
        return False
    image_id = obj["image_id"]
    if not (isinstance(image_id, str) and 1 <= len(image_id) <= 128 and set(image_id) <= _ID_CHARS):
        return False
    if not _file_ok(obj["file"]) or not (isinstance(obj["split"], str) and obj["split"] in ("train", "test")):
        return False
    disc, fovea = _point(obj["disc"]), _point(obj["fovea"])
    if disc is None or fovea is None or disc == fovea:
        return False
    entries = obj["annotations"]
    if not isinstance(entries, list) or not entries or not all(_grader_ok(e) for e in entries):
        return False
    annotators = [e["annotator"] for e in entries]
    return len(set(annotators)) == len(annotators)


def recount(obj) -> tuple[np.ndarray, np.ndarray]:
    """Votes and region bits per finding, counted straight from the JSON object."""
    votes = np.zeros(len(FINDINGS), np.int64)
    bits = np.zeros(len(FINDINGS), np.int64)
    for entry in obj["annotations"]:
        for name, names in entry["findings"].items():
            k = FINDINGS.index(name)
            votes[k] += 1
            for region in names:
                bits[k] |= 1 << REGIONS.index(region)
    return votes, bits


def parse(text: str, line_number: int = 1):
    """parse_line's record, or its AnnotationError; any other exception propagates."""
    try:
        return annotations.parse_line(text, line_number)
    except annotations.AnnotationError as e:
        assert str(e), "a rejection needs a reason"
        return e


def check_record_round_trips(record: annotations.Record, obj: dict, text: str, line_number: int) -> None:
    assert record.image_id == obj["image_id"] and record.file == obj["file"] and record.split == obj["split"]
    assert record.disc == tuple(float(v) for v in obj["disc"])
    assert record.fovea == tuple(float(v) for v in obj["fovea"])
    assert all(type(v) is float for v in record.disc + record.fovea)
    assert record.line == text and record.line_number == line_number
    extra = {k: v for k, v in obj.items() if k not in annotations.REQUIRED_KEYS}
    assert list(record.extra) == list(extra)
    assert dumps(dict(record.extra)) == dumps(extra)  # NaN-safe equality, order included
    assert [g.annotator for g in record.graders] == [e["annotator"] for e in obj["annotations"]]
    for grader, entry in zip(record.graders, obj["annotations"]):
        assert list(grader.findings) == [f for f in FINDINGS if f in entry["findings"]]
        for name, names in grader.findings.items():
            assert names == tuple(r for r in REGIONS if r in entry["findings"][name])
        grader_extra = {k: v for k, v in entry.items() if k not in ("annotator", "findings")}
        assert dumps(dict(grader.extra)) == dumps(grader_extra)
    votes, bits = recount(obj)
    assert record.votes().dtype == np.int32 and record.region_bits().dtype == np.uint8
    np.testing.assert_array_equal(record.votes(), votes)
    np.testing.assert_array_equal(record.region_bits(), bits)


def scratch_file(tmp_path_factory) -> pathlib.Path:
    """One annotations file per session, rewritten by every example (a fresh folder each
    time makes shrinking slow)."""
    folder = tmp_path_factory.getbasetemp() / "fuzz"
    folder.mkdir(exist_ok=True)
    return folder / "annotations.jsonl"


def write_lines(tmp_path_factory, lines: list[bytes]) -> annotations.ReadResult:
    path = scratch_file(tmp_path_factory)
    path.write_bytes(b"".join(raw + b"\n" for raw in lines))
    return annotations.read_annotations(path)


def is_blank(raw: bytes) -> bool:
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def check_bookkeeping(result: annotations.ReadResult, expected_numbers: list[int]) -> None:
    """Each non-blank line exactly once, records and rejections each in file order."""
    record_numbers = [r.line_number for r in result.records]
    rejection_numbers = [r.line_number for r in result.rejections]
    assert record_numbers == sorted(record_numbers) and rejection_numbers == sorted(rejection_numbers)
    assert sorted(record_numbers + rejection_numbers) == expected_numbers
    assert result.num_read == len(expected_numbers)
    ids = [r.image_id for r in result.records]
    assert len(set(ids)) == len(ids), "an image_id accepted twice"
    for rejection in result.rejections:
        assert rejection.reason
        # The rejects file is written as UTF-8: the kept text must encode.
        json.dumps(rejection.as_json(), ensure_ascii=False).encode("utf-8")


# --- 1. annotation reader ---------------------------------------------------------------------

REQUIRED_ANY = st.fixed_dictionaries(
    {k: st.one_of(st.just(EXAMPLE[k]), JSON) for k in annotations.REQUIRED_KEYS},
    optional={"eye": JSON},
)


@settings(max_examples=300, **FAST)
@given(value=st.one_of(JSON, REQUIRED_ANY), ensure_ascii=st.booleans())
def test_parse_line_of_any_json_value_gives_a_record_or_an_annotation_error(value, ensure_ascii):
    text = dumps(value, ensure_ascii)
    outcome = parse(text, 3)
    value = json.loads(text)  # what the line says (two escaped surrogates read back as one character)
    assert isinstance(outcome, annotations.Record) == valid_line(value)
    if isinstance(outcome, annotations.Record):
        check_record_round_trips(outcome, value, text, 3)


@settings(max_examples=60, **FAST)
@given(
    lines=st.lists(
        st.one_of(
            st.tuples(st.one_of(JSON, REQUIRED_ANY), st.booleans()).map(lambda v: encode(dumps(*v))),
            st.sampled_from([b"", b" ", b"\t \x0c", "\u2028".encode(), b"\r"]),
        ),
        max_size=8,
    )
)
def test_file_of_any_json_values_loses_no_line(tmp_path_factory, lines):
    result = write_lines(tmp_path_factory, lines)
    expected = [n for n, raw in enumerate(lines, start=1) if not is_blank(raw.removesuffix(b"\r"))]
    check_bookkeeping(result, expected)


@settings(max_examples=300, **FAST)
@given(obj=mutated_objects(), ensure_ascii=st.booleans(), line_number=st.integers(1, 10**6))
def test_mutated_example_line_is_accepted_exactly_when_valid_and_round_trips(obj, ensure_ascii, line_number):
    text = dumps(obj, ensure_ascii)
    outcome = parse(text, line_number)
    obj = json.loads(text)  # what the line says (two escaped surrogates read back as one character)
    assert isinstance(outcome, annotations.Record) == valid_line(obj), outcome
    if isinstance(outcome, annotations.Record):
        check_record_round_trips(outcome, obj, text, line_number)
        label, weight = annotations.consensus(outcome.votes())
        assert ((label == 1) <= (weight == 1)).all()


@settings(max_examples=60, **FAST)
@given(objs=st.lists(mutated_objects(), min_size=1, max_size=4), ensure_ascii=st.booleans())
@example(objs=[{**EXAMPLE, "file": "images/\ud800.png"}], ensure_ascii=True)
def test_file_of_mutated_lines_agrees_with_parse_line(tmp_path_factory, objs, ensure_ascii):
    texts = [dumps(obj, ensure_ascii) for obj in objs]
    result = write_lines(tmp_path_factory, [encode(t) for t in texts])
    check_bookkeeping(result, list(range(1, len(texts) + 1)))
    by_number = {r.line_number: r for r in result.records} | {r.line_number: r for r in result.rejections}
    for n, text in enumerate(texts, start=1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate written raw: not UTF-8 on disk
            assert isinstance(by_number[n], annotations.Rejection)
            assert by_number[n].reason.startswith("not valid UTF-8")
            continue
        outcome = parse(text, n)
        if isinstance(outcome, annotations.AnnotationError):
            assert isinstance(by_number[n], annotations.Rejection) and by_number[n].reason == str(outcome)
            assert by_number[n].text == text
        elif isinstance(by_number[n], annotations.Record):
            check_record_round_trips(by_number[n], json.loads(text), text, n)
        else:  # parse_line accepts; resolving the file or an earlier duplicate id refuses
            assert by_number[n].text == text
            assert by_number[n].reason.startswith(("'file' ", "duplicate image_id ")), by_number[n].reason


def physical_lines(data: bytes) -> list[bytes]:
    """The lines of a file as the spec reads them: split at \\n, one \\r before it dropped."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    lines = [raw.removesuffix(b"\r") for raw in lines]
    if lines and lines[0].startswith(BOM):
        lines[0] = lines[0][len(BOM):]
    return lines


GOOD_BYTES = json.dumps(EXAMPLE).encode()


@st.composite
def damaged_good_lines(draw) -> bytes:
    """The example line with a few bytes (NUL, invalid UTF-8, anything) inserted or overwritten."""
    raw = bytearray(GOOD_BYTES)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        junk = draw(st.one_of(st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80", BOM]),
                              st.binary(min_size=1, max_size=3)))
        if draw(st.booleans()):
            raw[at:at] = junk
        else:
            raw[at:at + len(junk)] = junk
    return bytes(raw)


CHUNKS = st.one_of(
    st.binary(max_size=30),
    st.sampled_from([b"\n", b"\r\n", b"\r", b"\x00", b"\xff\xfe", BOM, b"\xed\xa0\x80", b" \n", b"{}", GOOD_BYTES]),
    damaged_good_lines(),
)


@settings(max_examples=120, **FAST)
@given(chunks=st.lists(CHUNKS, max_size=10))
def test_any_bytes_file_never_raises_and_loses_no_line(tmp_path_factory, chunks):
    data = b"".join(chunks)
    path = scratch_file(tmp_path_factory)
    path.write_bytes(data)
    result = annotations.read_annotations(path)
    lines = physical_lines(data)
    expected = [n for n, raw in enumerate(lines, start=1) if not is_blank(raw)]
    check_bookkeeping(result, expected)
    for rejection in result.rejections:
        raw = lines[rejection.line_number - 1]
        try:
            assert rejection.text == raw.decode("utf-8")
        except UnicodeDecodeError as e:
            assert rejection.reason == f"not valid UTF-8 (byte {e.start})"
            assert rejection.text == raw.decode("utf-8", "backslashreplace")
    for record in result.records:
        assert record.line == lines[record.line_number - 1].decode("utf-8")


@pytest.mark.parametrize("where", ["top", "disc", "extra", "findings"])
def test_deeply_nested_json_is_rejected_not_a_crash(tmp_path, where):
    nested = "[" * 100_000 + "]" * 100_000
    good = json.dumps(EXAMPLE)
    text = {
        "top": nested,
        "disc": good.replace("[812.5, 1290.0]", nested),
        "extra": good[:-1] + ', "eye": ' + nested + "}",
        "findings": good.replace('"findings": {}', '"findings": {"drusen": ' + nested + "}"),
    }[where]
    with pytest.raises(annotations.AnnotationError):
        annotations.parse_line(text)
    path = tmp_path / "annotations.jsonl"
    path.write_text(good + "\n" + text + "\n")
    result = annotations.read_annotations(path)
    assert [r.line_number for r in result.records] == [1]
    assert [r.line_number for r in result.rejections] == [2]


@pytest.mark.parametrize("file", ["images/\ud800.png", "\udfff.jpg", "a/\ud83d.tif"])
def test_file_with_a_lone_surrogate_is_one_line_read_not_a_crash(tmp_path, file):
    # json.dumps escapes the surrogate, so the line itself is plain ASCII and valid UTF-8.
    text = json.dumps({**EXAMPLE, "file": file})
    path = tmp_path / "annotations.jsonl"
    path.write_text(text + "\n")
    result = annotations.read_annotations(path)
    assert result.num_read == 1 and not result.records
    assert [r.line_number for r in result.rejections] == [1]
    assert "not valid unicode (a lone surrogate)" in result.rejections[0].reason


VOTE_DTYPES = st.sampled_from([np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint32, np.uint64])


@st.composite
def vote_arrays(draw):
    dtype = np.dtype(draw(VOTE_DTYPES))
    high = min(np.iinfo(dtype).max, 2**63 - 1)
    elements = st.one_of(st.integers(0, 5), st.integers(0, high))
    return draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5), elements=elements))


@settings(max_examples=200, **FAST)
@given(votes=vote_arrays(), min_votes=st.one_of(st.integers(1, 5), st.integers(1, 10**30)))
def test_consensus_label_and_weight(votes, min_votes):
    label, weight = annotations.consensus(votes, min_votes)
    assert label.shape == weight.shape == votes.shape
    assert label.dtype == weight.dtype == np.float32
    v = votes.astype(object)  # exact comparison with any min_votes
    assert np.isin(label, [0, 1]).all() and np.isin(weight, [0, 1]).all()
    assert (weight[label == 1] == 1).all()
    none = v == 0
    assert (label[none] == 0).all() and (weight[none] == 1).all()
    uncertain = (v > 0) & (v < min_votes)
    assert (weight[uncertain] == 0).all() and (label[uncertain] == 0).all()
    present = v >= min_votes
    assert (label[present] == 1).all() and (weight[present] == 1).all()
    # The same from a plain list.
    label2, weight2 = annotations.consensus(votes.tolist(), min_votes)
    np.testing.assert_array_equal(label2, label)
    np.testing.assert_array_equal(weight2, weight)


# --- 2. region geometry -------------------------------------------------------------------------

SPECIAL_FLOATS = [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1e-300, 1e-30, 1.0, 1e150, 1e300,
                  1.7976931348623157e308, -1.0, math.nan, math.inf, -math.inf]
ANY_FLOAT = st.one_of(st.floats(), st.sampled_from(SPECIAL_FLOATS))


def reference(x, y, disc, fovea):
    """REGIONS.md read literally (float64): first-match ids and each point's distance to the
    nearest boundary, in units of D."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    odx, ody = disc
    fx, fy = fovea
    d = math.hypot(fx - odx, fy - ody)
    ux, uy = (fx - odx) / d, (fy - ody) / d
    nx, ny = uy, -ux  # one of the two unit normals
    if ny > 0 or (ny == 0 and nx > 0):
        nx, ny = -nx, -ny
    t = (x - odx) * ux + (y - ody) * uy
    s = (x - odx) * nx + (y - ody) * ny
    r_d, r_f = 2 * d / 5, 2 * d / 3
    t_c = (d * d + r_d * r_d - r_f * r_f) / (2 * d)
    dist_disc = np.hypot(x - odx, y - ody)
    dist_fovea = np.hypot(x - fx, y - fy)
    in_disc, in_fovea = dist_disc < r_d, dist_fovea < r_f
    rules = [
        (1, in_disc & (t < t_c) & (s >= 0)),
        (2, in_disc & (t < t_c) & (s < 0)),
        (0, in_fovea & (t >= t_c)),
        (3, (t > d) & (np.abs(s) < r_f)),
        (4, (t >= 0) & (s >= 0)),
        (5, (t >= 0) & (s < 0)),
        (6, (t < 0) & (s >= 0)),
        (7, (t < 0) & (s < 0)),
    ]
    # The four quadrant rules partition the plane: every point matches exactly one of them.
    assert (sum(m.astype(int) for _, m in rules[4:]) == 1).all()
    ids = np.full(x.shape, -1)
    for k, matches in reversed(rules):
        ids = np.where(matches, k, ids)
    margin = np.minimum.reduce([
        np.abs(s), np.abs(t), np.abs(t - t_c), np.abs(t - d), np.abs(np.abs(s) - r_f),
        np.abs(dist_disc - r_d), np.abs(dist_fovea - r_f),
    ]) / d
    return ids, margin


@settings(max_examples=400, **FAST)
@given(x=hnp.arrays(np.float64, 4, elements=ANY_FLOAT), y=hnp.arrays(np.float64, 4, elements=ANY_FLOAT),
       disc=st.tuples(ANY_FLOAT, ANY_FLOAT), fovea=st.tuples(ANY_FLOAT, ANY_FLOAT))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_region_ids_of_arbitrary_floats_is_an_id_or_region_error(x, y, disc, fovea):
    degenerate = not all(math.isfinite(v) for v in disc + fovea) or disc == fovea
    # A finite pair whose difference overflows (over ~1.8e308 apart) cannot be measured either.
    degenerate = degenerate or not all(math.isfinite(f - d) for f, d in zip(fovea, disc))
    try:
        ids = regions_lib.region_ids(x, y, disc, fovea)
    except RegionError:
        assert degenerate, (disc, fovea)
        return
    assert not degenerate, "a non-finite or coincident disc/fovea pair was accepted"
    assert ids.dtype == np.int32 and ids.shape == (4,)
    assert ((ids >= 0) & (ids <= 7)).all(), ids
    one = regions_lib.region_ids(x[0], y[0], disc, fovea)  # scalar points too
    assert one.dtype == np.int32 and one.shape == () and one == ids[0]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("disc, fovea", [((100.0, 80.0), (140.0, 85.0)), ((0.0, 0.0), (0.0, 10.0))])
def test_non_finite_points_still_get_an_id(disc, fovea):
    values = [math.nan, math.inf, -math.inf, 0.0, 100.0, 1e308]
    x, y = np.meshgrid(values, values)
    ids = regions_lib.region_ids(x, y, disc, fovea)
    assert ids.shape == x.shape and ((ids >= 0) & (ids <= 7)).all()


DEGENERATE_D = st.one_of(
    st.sampled_from([5e-324, 1e-320, 1e-300, 1e-200, 1e-160, 1e-30, 1e150]),
    st.floats(5e-324, 1e-25),
    st.floats(1e100, 1e150),
)


@settings(max_examples=200, **FAST)
@given(d=DEGENERATE_D, angle=st.floats(0, 2 * math.pi), disc=st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)),
       ab=hnp.arrays(np.float64, (2, 8), elements=st.floats(-3, 3)))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_disc_almost_on_the_fovea_or_far_away_gives_ids_or_region_error(d, angle, disc, ab):
    fovea = (disc[0] + d * math.cos(angle), disc[1] + d * math.sin(angle))
    x, y = disc[0] + d * ab[0], disc[1] + d * ab[1]
    try:
        ids = regions_lib.region_ids(x, y, disc, fovea)
    except RegionError:
        return
    assert ids.dtype == np.int32 and ((ids >= 0) & (ids <= 7)).all()


# REGIONS.md's example (a 48k x 32k image): point -> id, and the disc and fovea themselves.
SPEC_POINTS = {(28, 17): 0, (12, 15.6): 1, (12, 16.4): 2, (40, 17): 3, (20, 2): 4, (20, 30): 5, (2, 2): 6,
               (2, 30): 7, (12, 16): 1}


@pytest.mark.parametrize("k", [1e-300, 1e-170, 1e-150, 1e-30, 1.0, 1e30, 1e150, 1e160, 1e300])
def test_spec_example_at_any_scale_is_right_or_refused(k):
    """Scaling leaves every id unchanged (REGIONS.md); a scale the code cannot handle must be
    refused with RegionError, not answered wrongly. All these inputs are normal floats, and
    the annotation reader accepts such a disc/fovea pair."""
    disc, fovea = (12 * k, 16 * k), (28 * k, 17 * k)
    points = list(SPEC_POINTS)
    x = np.array([p[0] * k for p in points])
    y = np.array([p[1] * k for p in points])
    try:
        ids = regions_lib.region_ids(x, y, disc, fovea)
    except RegionError:
        return
    assert dict(zip(points, ids.tolist())) == SPEC_POINTS


@pytest.mark.parametrize(
    "disc, fovea, point, expected",
    [
        ((0.0, 0.0), (0.0, 10.0), (-5.0, -1.0), 6),  # L points down, n = (-1, 0): the point is superior
        ((0.0, 0.0), (0.0, 10.0), (-1.0, 0.5), 1),  # ... and in the disc circle
        ((0.0, 10.0), (0.0, 0.0), (1.0, 16.0), 7),  # L points up, n = (-1, 0): the point is inferior
        ((0.0, 10.0), (0.0, 0.0), (1.0, 9.5), 2),  # ... and in the disc circle
    ],
)
def test_vertical_l_takes_the_normal_with_negative_x(disc, fovea, point, expected):
    """REGIONS.md: n points up (n_y < 0); if n_y = 0 (L vertical), take n_x < 0."""
    assert reference(*point, disc, fovea)[0] == expected
    assert regions_lib.region_ids(*point, disc, fovea) == expected


@st.composite
def geometries(draw, low=0.0, high=4096.0, min_d=1.0):
    """A disc and fovea with D >= min_d, and 32 points in the box disc ± 3D."""
    disc = (draw(st.floats(low, high)), draw(st.floats(low, high)))
    fovea = (draw(st.floats(low, high)), draw(st.floats(low, high)))
    assume(math.hypot(fovea[0] - disc[0], fovea[1] - disc[1]) >= min_d)
    d = math.hypot(fovea[0] - disc[0], fovea[1] - disc[1])
    ab = draw(hnp.arrays(np.float64, (2, 32), elements=st.floats(-3, 3)))
    return disc, fovea, disc[0] + d * ab[0], disc[1] + d * ab[1]


@settings(max_examples=200, **FAST)
@given(geometry=geometries())
@example(geometry=((0.0, 0.0), (0.0, 10.0), np.full(32, -5.0), np.full(32, -1.0)))  # a vertical L
def test_region_ids_match_regions_md_away_from_boundaries(geometry):
    disc, fovea, x, y = geometry
    expected, margin = reference(x, y, disc, fovea)
    ids = regions_lib.region_ids(x, y, disc, fovea)
    clear = margin > 1e-6
    np.testing.assert_array_equal(ids[clear], expected[clear])
    # The disc centre and the fovea centre, which lie on no boundary.
    assert regions_lib.region_ids(*disc, disc, fovea) == 1
    assert regions_lib.region_ids(*fovea, disc, fovea) == 0


@settings(max_examples=200, **FAST)
@given(geometry=geometries(), scale=st.floats(1e-3, 1e3), shift=st.tuples(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4)),
       angle=st.floats(-1.5, 1.5) | st.just(0.0))
def test_similarity_transform_of_everything_leaves_ids_unchanged(geometry, scale, shift, angle):
    disc, fovea, x, y = geometry
    _, margin = reference(x, y, disc, fovea)
    cos, sin = math.cos(angle), math.sin(angle)

    def move(px, py):
        return scale * (cos * px - sin * py) + shift[0], scale * (sin * px + cos * py) + shift[1]

    new_disc, new_fovea = move(*disc), move(*fovea)
    # "Superior" is fixed by the image's up, not carried along: a rotation keeps the ids only
    # while L stays on the same side of the vertical (turning it past vertical swaps
    # superior and inferior, as an upside-down photograph does).
    d = math.hypot(fovea[0] - disc[0], fovea[1] - disc[1])
    ux, new_ux = (fovea[0] - disc[0]) / d, (new_fovea[0] - new_disc[0]) / (scale * d)
    assume(abs(ux) > 1e-6 and abs(new_ux) > 1e-6 and (ux > 0) == (new_ux > 0))
    before = regions_lib.region_ids(x, y, disc, fovea)
    after = regions_lib.region_ids(*move(x, y), new_disc, new_fovea)
    clear = margin > 1e-6
    np.testing.assert_array_equal(after[clear], before[clear])


@settings(max_examples=200, **FAST)
@given(geometry=geometries(), width=st.floats(0, 8192))
def test_horizontal_mirror_maps_a_right_eye_to_the_left_eye(geometry, width):
    disc, fovea, x, y = geometry
    # A vertical L (also one whose u_x underflows to 0): n_y = 0 and the tie-break (n_x < 0) ignores the mirror.
    assume((fovea[0] - disc[0]) / math.hypot(fovea[0] - disc[0], fovea[1] - disc[1]) != 0)
    right = regions_lib.region_ids(x, y, disc, fovea)
    # x -> -x is exact: the ids must match everywhere, boundaries included.
    exact = regions_lib.region_ids(-x, y, (-disc[0], disc[1]), (-fovea[0], fovea[1]))
    np.testing.assert_array_equal(exact, right)
    # x -> W - x rounds: compare away from the boundaries.
    _, margin = reference(x, y, disc, fovea)
    assume(width - disc[0] != width - fovea[0])  # rounding made L vertical
    left = regions_lib.region_ids(width - x, y, (width - disc[0], disc[1]), (width - fovea[0], fovea[1]))
    clear = margin > 1e-6
    np.testing.assert_array_equal(left[clear], right[clear])


def test_bits_round_trip_every_mask():
    for bits in range(256):
        names = regions_lib.bits_to_regions(bits)
        assert names == tuple(r for k, r in enumerate(REGIONS) if bits >> k & 1)
        assert regions_lib.regions_to_bits(names) == bits
        assert regions_lib.bits_to_regions(np.uint8(bits)) == names


@settings(max_examples=200, **FAST)
@given(names=st.lists(st.one_of(REGION_NAMES, TEXT, st.sampled_from(["Macula", "macula ", "fovea", ""])), max_size=6))
def test_regions_to_bits_of_any_strings(names):
    if all(name in REGIONS for name in names):
        assert regions_lib.regions_to_bits(names) == sum(1 << REGIONS.index(r) for r in set(names))
        assert regions_lib.regions_to_bits(reversed(names)) == regions_lib.regions_to_bits(names)
    else:
        with pytest.raises(RegionError):
            regions_lib.regions_to_bits(names)
        with pytest.raises(RegionError):
            regions_lib.regions_to_bits(iter(names))


@settings(max_examples=100, **FAST)
@given(name=st.text(CHARS, min_size=1, max_size=12))
def test_regions_to_bits_of_a_bare_string_raises_region_error(name):
    # A str is an iterable of one-character names, none of which is a region.
    with pytest.raises(RegionError):
        regions_lib.regions_to_bits(name)


@settings(max_examples=200, **FAST)
@given(bits=st.one_of(st.integers(max_value=-1), st.integers(min_value=256), HUGE_INTS,
                      st.sampled_from([np.int64(-1), np.int32(256), np.uint16(65535), np.int64(2**62)])))
def test_bits_outside_0_to_255_raise_region_error(bits):
    with pytest.raises(RegionError):
        regions_lib.bits_to_regions(bits)


@settings(max_examples=100, **FAST)
@given(ids=hnp.arrays(np.int32, hnp.array_shapes(max_dims=3, max_side=6), elements=st.integers(0, 7)),
       bits=st.integers(0, 255))
def test_mask_from_bits_selects_the_listed_regions(ids, bits):
    mask = regions_lib.mask_from_bits(ids, np.int32(bits))
    names = regions_lib.bits_to_regions(bits)
    assert mask.shape == ids.shape and mask.dtype == ids.dtype
    np.testing.assert_array_equal(mask, np.isin(ids, [REGIONS.index(r) for r in names]).astype(ids.dtype))


JAX_POINTS = 32


@functools.cache
def jitted_region_ids():
    import jax

    return jax.jit(regions_lib.region_ids_jax)


@settings(max_examples=150, **FAST)
@given(geometry=geometries(min_d=16.0))
def test_jax_twin_agrees_with_numpy_away_from_boundaries(geometry):
    disc, fovea, x, y = geometry
    # Both sides see the same float32 inputs; float32 arithmetic may differ near a boundary only.
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    disc32, fovea32 = np.float32(disc), np.float32(fovea)
    assume(not np.array_equal(disc32, fovea32))
    # XLA flushes float32 subnormals to zero: an L within ~1e-38 of vertical is vertical there.
    dx, dy = float(fovea32[0] - disc32[0]), float(fovea32[1] - disc32[1])
    assume(dx == 0 or abs(dx) / math.hypot(dx, dy) > 1e-30)
    expected = regions_lib.region_ids(x32, y32, disc32, fovea32)
    _, margin = reference(x32, y32, tuple(map(float, disc32)), tuple(map(float, fovea32)))
    got = np.asarray(jitted_region_ids()(x32, y32, disc32, fovea32))
    assert got.dtype == np.int32 and got.shape == (JAX_POINTS,)
    clear = margin > 1e-3
    np.testing.assert_array_equal(got[clear], expected[clear])
