"""Tests of fundax.annotate.store: merges keep everything else, writes are serialised and atomic."""

from __future__ import annotations

import ast
import json
import multiprocessing
import os
import pathlib
import signal
import threading
import time

import filelock
import pytest

from fundax import findings as findings_lib
from fundax.annotate import store
from fundax.data import annotations

# The example line of docs/DATA_FORMAT.md, with an extra key at the top and in one grader's entry.
EXAMPLE = {
    "image_id": "snubh-000123", "file": "images/000123.jpg", "split": "train",
    "disc": [812.5, 1290.0], "fovea": [1890.0, 1402.5],
    "annotations": [
        {"annotator": "r01", "findings": {"macular_hole": ["macula"], "drusen": ["macula", "temporal"]}},
        {"annotator": "r07", "findings": {}, "seconds": 41},
        {"annotator": "r12", "findings": {"macular_hole": ["macula", "superior_disc"]}}],
    "camera": "TRC-NW8",
}
DISC, FOVEA = (812.5, 1290.0), (1890.0, 1402.5)


def _line(image_id: str, annotators=("r01",), disc=DISC, fovea=FOVEA) -> bytes:
    obj = {**EXAMPLE, "image_id": image_id, "file": f"images/{image_id}.jpg", "disc": list(disc),
           "fovea": list(fovea), "annotations": [{"annotator": a, "findings": {}} for a in annotators]}
    return json.dumps(obj).encode() + b"\n"


def _save(s: store.AnnotationStore, image_id: str, annotator: str, findings=None, seen=(DISC, FOVEA), **kw):
    return s.save(image_id, file=kw.get("file", f"images/{image_id}.jpg"), split="train", disc=kw.get("disc", DISC),
                  fovea=kw.get("fovea", FOVEA), annotator=annotator, findings=findings or {}, centres_seen=seen)


def _accepted(path: pathlib.Path) -> dict[str, annotations.Record]:
    """The records of the file; fails the test if the dataset reader rejects any line."""
    result = annotations.read_annotations(path)
    assert result.rejections == [], [r.reason for r in result.rejections]
    return {r.image_id: r for r in result.records}


def test_a_new_file_gets_a_line_the_reader_accepts(tmp_path):
    s = store.AnnotationStore(tmp_path / "annotations.jsonl")
    line = _save(s, "a", "r01", {"macular_hole": ["temporal", "macula", "macula"]}, seen=None)
    assert line["annotations"] == [{"annotator": "r01", "findings": {"macular_hole": ["macula", "temporal"]}}]
    record = _accepted(s.path)["a"]
    assert record.disc == DISC and record.fovea == FOVEA and record.split == "train"
    assert record.graders[0].findings == {"macular_hole": ("macula", "temporal")}


def test_merge_keeps_other_lines_byte_for_byte_and_other_graders_entries(tmp_path):
    path = tmp_path / "annotations.jsonl"
    other = b'{"image_id": "b",  "file": "images/b.jpg", "split": "test", "disc": [1, 2], "fovea": [3, 4.50],' \
            b' "annotations": [{"annotator": "r02", "findings": {}}]}\r\n'
    broken = b"this line is not JSON, and stays\n"
    path.write_bytes(other + json.dumps(EXAMPLE).encode() + b"\n" + broken + _line("c"))
    s = store.AnnotationStore(path)
    _save(s, "snubh-000123", "r07", {"rnfl_defect": ["superotemporal"]}, file="images/000123.jpg")
    lines = path.read_bytes().split(b"\n")
    assert lines[0] + b"\n" == other and lines[2] + b"\n" == broken and lines[3] + b"\n" == _line("c")
    merged = json.loads(lines[1])
    assert [e["annotator"] for e in merged["annotations"]] == ["r01", "r07", "r12"]
    assert merged["annotations"][0] == EXAMPLE["annotations"][0]
    assert merged["annotations"][2] == EXAMPLE["annotations"][2]
    assert merged["annotations"][1] == {"annotator": "r07", "findings": {"rnfl_defect": ["superotemporal"]},
                                        "seconds": 41}
    assert merged["camera"] == "TRC-NW8" and list(merged) == list(EXAMPLE)
    result = annotations.read_annotations(path)
    assert [r.line_number for r in result.rejections] == [3]  # the broken line, as before


def test_saving_again_replaces_the_graders_entry_and_a_new_grader_is_appended(tmp_path):
    s = store.AnnotationStore(tmp_path / "annotations.jsonl")
    _save(s, "a", "r01", {"drusen": ["macula"]}, seen=None)
    _save(s, "a", "r01", {})
    _save(s, "a", "r02", {"hemorrhage": ["inferonasal"]})
    record = _accepted(s.path)["a"]
    assert [(g.annotator, dict(g.findings)) for g in record.graders] == [
        ("r01", {}), ("r02", {"hemorrhage": ("inferonasal",)})]
    assert len(s.path.read_bytes().splitlines()) == 1


def test_a_last_line_without_its_newline_keeps_its_own_line(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(_line("a").rstrip(b"\n"))
    _save(store.AnnotationStore(path), "b", "r01", seen=None)
    assert set(_accepted(path)) == {"a", "b"}


@pytest.mark.parametrize("findings, reason", [
    ({"glaucoma": ["macula"]}, "unknown finding 'glaucoma'"),
    ({"drusen": ["fovea"]}, "unknown region 'fovea'"),
    ({"drusen": []}, "needs a non-empty list of regions"),
])
def test_a_reading_the_reader_would_reject_is_not_written(tmp_path, findings, reason):
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(_line("a"))
    with pytest.raises(store.StoreError, match=reason):
        _save(store.AnnotationStore(path), "a", "r02", findings)
    assert path.read_bytes() == _line("a")


def test_centres_moved_by_another_grader_meanwhile_are_a_conflict(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(_line("a", disc=(10.0, 20.0)))
    s = store.AnnotationStore(path)
    with pytest.raises(store.CentresChanged, match="moved by another grader"):
        _save(s, "a", "r02", seen=((11.0, 20.0), FOVEA))
    with pytest.raises(store.CentresChanged):
        _save(s, "a", "r02", seen=None)  # placed anew over centres the grader never saw
    _save(s, "a", "r02", seen=((10.0, 20.0), FOVEA), disc=(15.0, 25.0))
    assert _accepted(path)["a"].disc == (15.0, 25.0)


def test_resume_is_the_first_image_the_grader_has_not_read(tmp_path):
    s = store.AnnotationStore(tmp_path / "annotations.jsonl")
    ids = ["a", "b", "c", "d"]
    assert store.first_unread(s.snapshot(), ids, "r01") == 0
    _save(s, "a", "r01", seen=None)
    _save(s, "b", "r02", seen=None)  # another grader's reading does not count
    _save(s, "c", "r01", {"drusen": ["macula"]}, seen=None)
    snapshot = s.snapshot()
    assert store.first_unread(snapshot, ids, "r01") == 1
    assert store.count_read(snapshot, ids, "r01") == 2
    assert store.first_unread(snapshot, ids, "r02") == 0
    for image_id in ("b", "d"):
        _save(s, image_id, "r01", seen=None if image_id == "d" else (DISC, FOVEA))
    assert store.first_unread(s.snapshot(), ids, "r01") == 4


def test_the_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(_line("a"))
    path.chmod(0o640)
    _save(store.AnnotationStore(path), "b", "r01", seen=None)
    assert path.stat().st_mode & 0o777 == 0o640


def _grade(path: str, grader: str, image_ids: list[str], s: store.AnnotationStore | None = None) -> None:
    """One grader: saves every image, each a different finding."""
    s = s or store.AnnotationStore(path)
    for k, image_id in enumerate(image_ids):
        for _ in range(50):
            try:
                seen = s.snapshot().centres(image_id)
                s.save(image_id, file=f"images/{image_id}.jpg", split="train", disc=DISC, fovea=FOVEA,
                       annotator=grader, findings={"drusen": ["macula"]} if k % 2 else {}, centres_seen=seen)
                break
            except store.CentresChanged:  # another grader created the line between our look and our save
                continue


def test_concurrent_graders_lose_no_line_and_no_entry(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(_line("pre", annotators=("r99",)))
    ids = [f"img-{k}" for k in range(8)]
    graders = ["g1", "g2", "g3", "g4"]
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_grade, args=(str(path), g, ids[k:] + ids[:k])) for k, g in enumerate(graders)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    records = _accepted(path)
    assert set(records) == {"pre", *ids}
    for image_id in ids:
        assert sorted(g.annotator for g in records[image_id].graders) == graders
    assert [g.annotator for g in records["pre"].graders] == ["r99"]
    assert path.read_bytes().startswith(_line("pre", annotators=("r99",)))


def _save_and_die(path: str) -> None:
    """A writer killed between writing its temporary file and renaming it."""
    os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    _save(store.AnnotationStore(path), "b", "r01", {"drusen": ["macula"]}, seen=None)


def test_a_writer_killed_before_its_rename_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "annotations.jsonl"
    before = _line("a") + _line("z")
    path.write_bytes(before)
    child = multiprocessing.get_context("spawn").Process(target=_save_and_die, args=(str(path),))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert path.read_bytes() == before
    leftovers = list(tmp_path.glob(".annotations.jsonl.*.tmp"))
    assert len(leftovers) == 1 and b'"b"' in leftovers[0].read_bytes()  # it had written everything
    _save(store.AnnotationStore(path), "c", "r01", seen=None)  # the lock died with the writer
    assert list(tmp_path.glob(".annotations.jsonl.*.tmp")) == []
    assert set(_accepted(path)) == {"a", "c", "z"}


def test_a_failed_rename_leaves_the_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(_line("a"))

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        _save(store.AnnotationStore(path), "a", "r02", {"drusen": ["macula"]})
    assert path.read_bytes() == _line("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.jsonl", "annotations.jsonl.lock"]


def _save_one(path: str, ready) -> None:
    s = store.AnnotationStore(path)
    ready.set()
    _save(s, "b", "r01", seen=None)


def test_a_save_waits_for_the_lock_held_by_another_process(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(_line("a"))
    s = store.AnnotationStore(path)
    held = filelock.FileLock(s.lock_path)
    held.acquire()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=_save_one, args=(str(path), ready))
    child.start()
    try:
        assert ready.wait(60)
        time.sleep(0.5)
        assert child.is_alive() and path.read_bytes() == _line("a")
    finally:
        held.release()
    child.join(60)
    assert child.exitcode == 0 and set(_accepted(path)) == {"a", "b"}


def test_the_line_merged_is_the_one_the_reader_keeps(tmp_path):
    path = tmp_path / "annotations.jsonl"
    rejected = json.dumps({**json.loads(_line("a")), "split": "val"}).encode() + b"\n"  # the reader skips it
    kept = _line("a", annotators=("r03", "r04"), disc=(10.0, 20.0))
    path.write_bytes(rejected + kept)
    s = store.AnnotationStore(path)
    assert s.snapshot().centres("a") == ((10.0, 20.0), FOVEA)
    _save(s, "a", "r01", {"drusen": ["macula"]}, seen=((10.0, 20.0), FOVEA), disc=(10.0, 20.0))
    assert path.read_bytes().startswith(rejected)
    record = _accepted_after_rejections(path, [1])["a"]
    assert [g.annotator for g in record.graders] == ["r03", "r04", "r01"]


def test_a_placeholder_line_without_readings_gets_the_first_reading(tmp_path):
    path = tmp_path / "annotations.jsonl"
    placeholder = json.dumps({**json.loads(_line("a")), "annotations": []}).encode() + b"\n"
    path.write_bytes(placeholder)
    _save(store.AnnotationStore(path), "a", "r01")
    assert [g.annotator for g in _accepted(path)["a"].graders] == ["r01"]
    assert len(path.read_bytes().splitlines()) == 1


def test_a_line_with_a_repeated_key_is_left_alone(tmp_path):
    path = tmp_path / "annotations.jsonl"
    repeated = _line("a").rstrip(b"}\n") + b', "split": "test"}\n'  # the reader rejects it; which split is meant?
    path.write_bytes(repeated)
    s = store.AnnotationStore(path)
    assert s.snapshot().centres("a") is None
    _save(s, "a", "r01", seen=None)
    assert path.read_bytes().startswith(repeated)
    assert _accepted_after_rejections(path, [1])["a"].split == "train"


def test_a_line_naming_its_file_another_way_is_still_the_images(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(json.dumps({**json.loads(_line("a")), "file": "./images//a.jpg"}).encode() + b"\n")
    _save(store.AnnotationStore(path), "a", "r02", {"drusen": ["macula"]})
    record = _accepted(path)["a"]
    assert record.file == "./images//a.jpg" and [g.annotator for g in record.graders] == ["r01", "r02"]
    with pytest.raises(store.StoreError, match="already names"):
        _save(store.AnnotationStore(path), "a", "r02", file="images/b.jpg")


def test_values_json_or_utf_8_cannot_hold_as_such(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(_line("a").rstrip(b"}\n") + b', "lens": "\\ud800 \xc3\xa9"}\n' + _line("b"))
    _save(store.AnnotationStore(path), "a", "r02")  # a lone surrogate, escaped in the file, stays escaped
    assert _accepted(path)["a"].extra["lens"] == "\ud800 é"
    nan = _line("b").rstrip(b"}\n") + b', "exposure": NaN}\n'
    path.write_bytes(nan)
    with pytest.raises(store.StoreError, match="NaN"):
        _save(store.AnnotationStore(path), "b", "r02")
    assert path.read_bytes() == nan


def test_the_temporary_file_is_on_disk_before_the_rename_and_the_rename_after(tmp_path, monkeypatch):
    path = tmp_path / "annotations.jsonl"
    path.write_bytes(_line("a"))
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(store.os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or fsync(fd))
    monkeypatch.setattr(store.os, "replace", lambda *a: events.append(("replace",)) or replace(*a))
    _save(store.AnnotationStore(path), "b", "r01", seen=None)
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert pathlib.Path(events[0][1]).name.startswith(".annotations.jsonl.") and events[2][1] == str(tmp_path)


def _accepted_after_rejections(path: pathlib.Path, rejected: list[int]) -> dict[str, annotations.Record]:
    result = annotations.read_annotations(path)
    assert [r.line_number for r in result.rejections] == rejected
    return {r.image_id: r for r in result.records}


def test_a_symlinked_file_is_written_through_to_its_target(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    target = shared / "annotations.jsonl"
    target.write_bytes(_line("a"))
    link = tmp_path / "annotations.jsonl"
    link.symlink_to(target)
    s = store.AnnotationStore(link)
    _save(s, "b", "r01", {"drusen": ["macula"]}, seen=None)
    assert link.is_symlink() and link.resolve() == target
    assert set(_accepted(target)) == {"a", "b"}
    assert s.lock_path == shared / "annotations.jsonl.lock" and s.lock_path.exists()
    # Another tool given the target itself takes the same lock and sees the same file.
    assert store.AnnotationStore(target).lock_path == s.lock_path
    assert store.AnnotationStore(target).snapshot().entry("b", "r01") is not None


def test_a_symlink_to_a_file_not_yet_there_creates_it(tmp_path):
    (tmp_path / "shared").mkdir()
    link = tmp_path / "annotations.jsonl"
    link.symlink_to(pathlib.Path("shared") / "annotations.jsonl")  # relative, as `ln -s` makes them
    _save(store.AnnotationStore(link), "a", "r01", seen=None)
    assert link.is_symlink() and set(_accepted(tmp_path / "shared" / "annotations.jsonl")) == {"a"}


def test_threads_saving_at_once_lose_nothing(tmp_path):
    # Two stores on one file (two tools in one process) and threads sharing each of them.
    path = tmp_path / "annotations.jsonl"
    stores = [store.AnnotationStore(path), store.AnnotationStore(path)]
    graders = [f"g{k}" for k in range(6)]
    ids = [f"img-{k}" for k in range(5)]
    start = threading.Barrier(len(graders))
    errors = []

    def grade(k: int) -> None:
        start.wait()
        try:
            _grade(str(path), graders[k], ids[k % len(ids):] + ids[:k % len(ids)], stores[k % 2])
        except BaseException as e:  # a failure in a thread must fail the test, not vanish
            errors.append(e)

    threads = [threading.Thread(target=grade, args=(k,)) for k in range(len(graders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    records = _accepted(path)
    assert set(records) == set(ids)
    for image_id in ids:
        assert sorted(g.annotator for g in records[image_id].graders) == graders


def test_no_fundax_module_imports_fcntl_so_the_tool_starts_on_windows():
    root = pathlib.Path(store.__file__).parents[1]
    importers = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            if any(name == "fcntl" or (name or "").startswith("fcntl.") for name in names):
                importers.append(str(path.relative_to(root)))
    assert importers == []


# An imported line (as fundax.ingest writes them): no centres, an image-level label, the findings its
# labels assess, a lesion mask and extra keys, at the top and in the importer's entry.
IMPORTED = {
    "image_id": "rfmid-17", "file": "images/rfmid-17.png", "split": "train",
    "annotations": [{"annotator": "rfmid", "assessed": ["hemorrhage", "drusen", "macular_hole"],
                     "findings": {"drusen": ["macula"], "macular_hole": None}, "row": 17}],
    "lesion_masks": {"drusen": "masks/rfmid-17-drusen.png"}, "eye": "left",
}


def _located(path: pathlib.Path) -> dict[str, annotations.Record]:
    """The records of the file as ``prepare --locate_missing`` reads it (the locator here a stand-in)."""
    result = annotations.read_annotations(path, locate_missing=lambda photo: ((1.0, 2.0), (30.0, 2.0), {}))
    assert result.rejections == [], [r.reason for r in result.rejections]
    return {r.image_id: r for r in result.records}


@pytest.mark.parametrize("unplaced", [{}, {"disc": None, "fovea": None}])
def test_a_line_the_tool_did_not_write_survives_a_save_without_centres_byte_for_byte(tmp_path, unplaced):
    path = tmp_path / "annotations.jsonl"
    line = {**IMPORTED, **unplaced}
    path.write_text(json.dumps(line, ensure_ascii=False) + "\n")
    s = store.AnnotationStore(path)
    assert s.snapshot().centres("rfmid-17") is None
    mine = s.snapshot().entry("rfmid-17", "rfmid")["findings"]
    assert mine == {"drusen": ["macula"], "macular_hole": None}
    # The importer's own id saving its reading as loaded, centres not placed (a suggestion not confirmed).
    _save(s, "rfmid-17", "rfmid", mine, seen=None, file=line["file"], disc=None, fovea=None)
    assert path.read_text() == json.dumps(line, ensure_ascii=False) + "\n"
    assert _located(path)["rfmid-17"].graders[0].findings["macular_hole"] == ()


def test_a_line_the_tool_did_not_write_keeps_every_key_when_centres_and_regions_are_added(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_text(json.dumps(IMPORTED) + "\n")
    s = store.AnnotationStore(path)
    # The image-level label marked in regions, with centres the grader confirmed.
    marked = {"drusen": ["macula"], "macular_hole": ["macula", "temporal"]}
    _save(s, "rfmid-17", "rfmid", marked, seen=None, file=IMPORTED["file"])
    # Another grader, with an image-level label of their own.
    _save(s, "rfmid-17", "r01", {"hemorrhage": None}, file=IMPORTED["file"])
    line = json.loads(path.read_text())
    assert line == {**IMPORTED, "disc": list(DISC), "fovea": list(FOVEA), "annotations": [
        {**IMPORTED["annotations"][0], "findings": marked}, {"annotator": "r01", "findings": {"hemorrhage": None}}]}
    assert list(line) == [*IMPORTED, "disc", "fovea"]
    assert list(line["annotations"][0]) == ["annotator", "assessed", "findings", "row"]
    record = _accepted(path)["rfmid-17"]  # the plain reader too, now that it has centres
    assert record.lesion_masks == IMPORTED["lesion_masks"] and record.extra == {"eye": "left"}
    # The import assessed three findings; r01, a grader of the tool, every one.
    assert record.graders[0].assessed == ("hemorrhage", "drusen", "macular_hole")
    assert record.graders[1].assessed == findings_lib.FINDINGS


def test_a_finding_the_import_did_not_assess_joins_its_assessed_when_its_grader_lists_it(tmp_path):
    path = tmp_path / "annotations.jsonl"
    path.write_text(json.dumps(IMPORTED) + "\n")
    s = store.AnnotationStore(path)
    _save(s, "rfmid-17", "rfmid", {"drusen": ["macula"], "membrane": ["macula"]}, seen=None, file=IMPORTED["file"])
    entry = json.loads(path.read_text())["annotations"][0]
    assert entry["assessed"] == ["hemorrhage", "drusen", "macular_hole", "membrane"]
    assert _accepted(path)["rfmid-17"].votes()[findings_lib.finding_index("membrane")] == 1


def test_a_new_line_without_centres_has_none_and_half_the_centres_are_refused(tmp_path):
    path = tmp_path / "annotations.jsonl"
    s = store.AnnotationStore(path)
    with pytest.raises(store.StoreError, match="give both or neither"):
        _save(s, "a", "r01", seen=None, fovea=None)
    assert not path.exists()
    line = _save(s, "a", "r01", {"drusen": None}, seen=None, disc=None, fovea=None)
    assert "disc" not in line and "fovea" not in line
    rejection = annotations.read_annotations(path).rejections[0]  # the plain reader wants centres ...
    assert "prepare --locate_missing finds disc and fovea" in rejection.reason
    assert _located(path)["a"].graders[0].findings == {"drusen": ()}  # ... --locate_missing places them
