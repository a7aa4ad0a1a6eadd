"""Tests of the annotation tool's web app, catalogue and command line (no browser: see test_annotate_browser)."""

from __future__ import annotations

import base64
import io
import json
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():
    # Newest Starlette prefers httpx2 but still drives httpx, which every Starlette version takes.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from fundax import landmarks, regions
from fundax.annotate import app as app_lib
from fundax.annotate import catalogue, cli, photos
from fundax.data import annotations, images, synthetic

TOKEN = "t0ken-for-tests"
W, H = 60, 40


def _picture(path: pathlib.Path, seed: int = 0, fmt: str | None = None) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return pixels


@pytest.fixture
def manual(tmp_path):
    """A manual directory: photographs, decoys, a symlink out, and another grader's line."""
    root = tmp_path / "manual"
    _picture(root / "images" / "a.png", 0)
    _picture(root / "images" / "sub" / "b.tif", 1, "TIFF")
    _picture(root / "images" / ".hidden.png", 2)
    (root / "images" / "notes.txt").write_text("not a photograph")
    (root / "images" / "fake.jpg").write_text("a text file named like a photograph")
    _picture(tmp_path / "outside" / "secret.png", 3)
    (root / "images" / "out.png").symlink_to(tmp_path / "outside" / "secret.png")
    line = {"image_id": "b-1", "file": "images/sub/b.tif", "split": "test", "disc": [40.0, 20.0],
            "fovea": [15.0, 21.0], "annotations": [{"annotator": "r02", "findings": {"drusen": ["macula"]}}]}
    (root / "annotations.jsonl").write_text(json.dumps(line) + "\n")
    return root


def _png_header(path: pathlib.Path, width: int, height: int) -> None:
    """A PNG whose header says width×height RGB pixels, followed by far too few of them."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _session(manual: pathlib.Path, grader: str = "r01") -> app_lib.Session:
    return cli.open_session(str(manual / "images"), str(manual / "annotations.jsonl"), grader, token=TOKEN)[0]


def _client(manual: pathlib.Path, grader: str = "r01") -> TestClient:
    return TestClient(app_lib.create_app(_session(manual, grader)), base_url="http://127.0.0.1:8765")


def _reading(findings=None, disc=(20.0, 18.0), fovea=(45.0, 20.0), seen=None) -> str:
    disc = disc if isinstance(disc, str) else list(disc)
    return json.dumps({"findings": findings or {}, "disc": disc, "fovea": list(fovea), "centres_seen": seen})


def _get(client: TestClient, path: str):
    return client.get(path, headers={app_lib.TOKEN_HEADER: TOKEN})


def _post(client: TestClient, index: int, body: str, token: str | None = TOKEN):
    headers = {app_lib.TOKEN_HEADER: token} if token is not None else {}
    return client.post(f"/api/photos/{index}", content=body, headers=headers)


# --- catalogue ----------------------------------------------------------------------------------


def test_the_catalogue_lists_photographs_inside_the_folder_with_stable_ids(manual):
    session, notes = cli.open_session(str(manual / "images"), str(manual / "annotations.jsonl"), "r01")
    assert [(p.image_id, p.file, p.rel) for p in session.photos] == [
        ("a", "images/a.png", "a.png"), ("fake", "images/fake.jpg", "fake.jpg"),
        ("b-1", "images/sub/b.tif", "sub/b.tif")]  # b.tif keeps the id of its existing line
    assert any("out.png (leads outside the folder" in note for note in notes)


def test_taken_ids_get_a_hash_of_the_path(tmp_path):
    _picture(tmp_path / "x.png")
    _picture(tmp_path / "x.jpg")
    photos = catalogue.list_photos(tmp_path, tmp_path, catalogue.walk(tmp_path)[0], {"y.png": "x"})
    ids = [p.image_id for p in photos]
    assert len(set(ids)) == 2 and all(i.startswith("x-") and len(i) == 10 for i in ids)
    assert all(annotations.IMAGE_ID_PATTERN.fullmatch(i) for i in ids)


# --- safety -------------------------------------------------------------------------------------


def test_changing_data_needs_the_session_token(manual):
    client = _client(manual)
    before = (manual / "annotations.jsonl").read_bytes()
    for token in (None, "", "wrong", TOKEN + "x"):
        response = _post(client, 0, _reading(), token)
        assert response.status_code == 403 and "X-Fundax-Token" in response.json()["error"]
    assert (manual / "annotations.jsonl").read_bytes() == before
    assert _post(client, 0, _reading()).status_code == 200
    assert TOKEN in client.get("/").text  # the tool's own page holds it


@pytest.mark.parametrize("path", ["/api/session", "/api/photos/0",
                                  "/api/photos/0/regions?disc=1,1&fovea=50,30&width=10&height=10"])
def test_reading_the_api_needs_the_session_token_too(manual, path):
    # Another web page can send a plain GET (an <img>), but not this header: it must not set the
    # tool computing region maps for it (up to 16M cells, seconds and most of a GB each).
    client = _client(manual)
    for token in (None, "wrong"):
        response = client.get(path, headers={} if token is None else {app_lib.TOKEN_HEADER: token})
        assert response.status_code == 403
    assert _get(client, path).status_code == 200


@pytest.mark.parametrize("path", [
    "/photos/%2e%2e/annotations.jsonl",
    "/photos/sub/%2e%2e/%2e%2e/annotations.jsonl",
    "/photos/%2Fetc%2Fpasswd",
    "/photos//etc/passwd",
    "/photos/out.png",           # a symlink leading outside the images folder
    "/photos/notes.txt",         # not an image
    "/photos/.hidden.png",
    "/photos/sub",
    "/photos/A.PNG",
])
def test_nothing_but_the_sessions_photographs_is_served(manual, path):
    response = _get(_client(manual), path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"


def test_a_file_named_like_a_photograph_is_not_served(manual):
    client = _client(manual)
    response = _get(client, "/photos/fake.jpg")
    assert response.status_code == 400 and "not an image" in response.json()["error"]
    assert b"a text file" not in response.content
    view = _get(client, "/api/photos/1").json()  # the page is told why, and can move past it
    assert view["file"] == "images/fake.jpg" and "fake.jpg: not an image in a known format" in view["problem"]


def test_a_symlink_repointed_outside_after_start_is_refused(manual, tmp_path):
    link = manual / "images" / "link.png"
    link.symlink_to(manual / "images" / "a.png")
    client = _client(manual)
    assert _get(client, "/photos/link.png").status_code == 200
    link.unlink()
    link.symlink_to(tmp_path / "outside" / "secret.png")
    assert _get(client, "/photos/link.png").status_code == 404


def test_photographs_are_served_as_fundax_decodes_them(manual):
    client = _client(manual)
    for rel, seed in (("a.png", 0), ("sub/b.tif", 1)):
        response = _get(client, f"/photos/{rel}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        shown = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)
        original = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
        assert shown.shape == original.shape and np.abs(shown - original).mean() < 12  # JPEG quality 95


def test_a_foreign_host_header_is_refused_and_pages_carry_security_headers(manual):
    client = _client(manual)
    foreign = {"Host": "attacker.example", app_lib.TOKEN_HEADER: TOKEN}
    assert client.get("/api/session", headers=foreign).status_code == 400
    response = _get(client, "/api/session")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in response.headers["content-security-policy"]


def test_photographs_need_the_session_and_tell_nothing_of_names_without_it(manual):
    client = _client(manual)
    existing, missing = client.get("/photos/a.png"), client.get("/photos/nope.png")
    assert existing.status_code == missing.status_code == 403
    assert existing.content == missing.content and "reload the tool's page" in existing.json()["error"]
    page = client.get("/")
    cookie = page.headers["set-cookie"]
    assert f"={TOKEN};" in cookie and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert client.get("/photos/a.png").status_code == 200  # the page's cookie opens the photographs
    assert client.get("/photos/nope.png").status_code == 404
    assert client.get("/api/session").status_code == 403  # but not the API: that needs the header
    assert _post(client, 0, _reading(), token=None).status_code == 403
    name = cookie.split("=", 1)[0]
    client.cookies.clear()
    client.cookies.set(name, "wrong")
    assert client.get("/photos/a.png").status_code == 403
    client.cookies.clear()
    assert _get(client, "/photos/a.png").status_code == 200


def _counting_decodes(monkeypatch, pause_s: float = 0.0) -> dict:
    """Counts the photographs decoded, and the most decoded at once."""
    seen = {"calls": [], "active": 0, "peak": 0}
    lock, load = threading.Lock(), images.load_image

    def counted(path, *args, **kwargs):
        with lock:
            seen["calls"].append(pathlib.Path(path).name)
            seen["active"] += 1
            seen["peak"] = max(seen["peak"], seen["active"])
        try:
            time.sleep(pause_s)
            return load(path, *args, **kwargs)
        finally:
            with lock:
                seen["active"] -= 1

    monkeypatch.setattr(images, "load_image", counted)
    return seen


def test_a_photograph_is_decoded_once_for_the_browser(manual, monkeypatch):
    seen = _counting_decodes(monkeypatch)
    client = _client(manual)
    first, second = _get(client, "/photos/a.png"), _get(client, "/photos/a.png")
    assert first.status_code == second.status_code == 200 and first.content == second.content
    assert seen["calls"] == ["a.png"]


def test_decodes_run_one_at_a_time_and_a_photograph_asked_twice_at_once_is_decoded_once(manual, monkeypatch):
    # Several pages (or one page's fast clicks) asking at once must not each hold a decoded photograph.
    seen = _counting_decodes(monkeypatch, pause_s=0.2)
    client = _client(manual)
    wanted = ["a.png", "a.png", "sub/b.tif"]
    start, statuses = threading.Barrier(len(wanted)), []

    def fetch(rel: str) -> None:
        start.wait()
        statuses.append(_get(client, f"/photos/{rel}").status_code)

    threads = [threading.Thread(target=fetch, args=(rel,)) for rel in wanted]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses == [200, 200, 200]
    assert sorted(seen["calls"]) == ["a.png", "b.tif"] and seen["peak"] == photos.MAX_DECODES == 1


def test_the_photograph_cache_keeps_the_last_few_and_sees_changes(tmp_path):
    decoded = []
    cache = photos.PhotoCache(entries=2, max_bytes=10**6,
                             encode=lambda path: decoded.append(path.name) or path.read_bytes())
    paths = [tmp_path / f"{k}.png" for k in range(3)]
    for k, path in enumerate(paths):
        path.write_bytes(bytes([k]) * 10)
    for path in (*paths, paths[2], paths[0]):
        cache.get(path)
    assert decoded == ["0.png", "1.png", "2.png", "0.png"]  # 0 had made way for 2
    paths[0].write_bytes(b"changed")
    assert cache.get(paths[0]) == b"changed"
    small = photos.PhotoCache(entries=8, max_bytes=15, encode=lambda path: path.read_bytes())
    for path in paths:
        small.get(path)
    assert len(small) == 1  # 10 bytes each: a second one would pass the byte limit


@pytest.mark.parametrize("extra", [[], ["grader-pc.lan"]])
def test_serving_on_all_interfaces_still_answers_only_to_this_machines_names(manual, extra):
    # A page of another site whose name its owner points at this machine (DNS rebinding) sends that name.
    hosts = app_lib.allowed_hosts("0.0.0.0", extra)
    client = TestClient(app_lib.create_app(_session(manual), hosts), base_url="http://localhost:8765")
    accepted = ["localhost:8765", "127.0.0.1", "[::1]:8765", "LocalHost:8765", socket.gethostname(),
                f"{socket.getfqdn()}:8765", *[f"{name.upper()}:8765" for name in extra]]
    for host in accepted:
        response = client.get("/api/session", headers={"Host": host, app_lib.TOKEN_HEADER: TOKEN})
        assert response.status_code == 200, host
    refused = ["evil.example", "evil.example:8765", "localhost.evil.example", "pc.lan" if extra else "grader-pc.lan"]
    for host in refused:
        response = client.get("/", headers={"Host": host})
        assert response.status_code == 400, host
        assert TOKEN not in response.text and "--allowed_host" in response.json()["error"]
    assert "*" not in hosts


def test_photographs_prepare_would_refuse_are_flagged_when_opened_and_never_decoded(manual, monkeypatch):
    _png_header(manual / "images" / "sub" / "big.png", 9000, 9000)  # 81 Mpx, 100 bytes
    seen = _counting_decodes(monkeypatch)
    client = _client(manual)
    view = _get(client, "/api/photos/3").json()
    assert view["file"] == "images/sub/big.png" and view["width"] is None
    assert view["problem"].startswith("sub/big.png: 9000×9000 = 81000000 pixels, over the limit of 50000000")
    assert "fundax.prepare" in view["problem"]
    response = _get(client, "/photos/sub/big.png")
    assert response.status_code == 400 and "over the limit of 50000000" in response.json()["error"]
    saved = _post(client, 3, _reading())
    assert saved.status_code == 400 and "over the limit" in saved.json()["error"]
    suggested = _get(client, "/api/photos/3/suggestion")
    assert suggested.status_code == 400 and "over the limit" in suggested.json()["error"]
    assert seen["calls"] == []


def test_a_photograph_under_prepares_minimum_side_is_flagged_too(manual, monkeypatch):
    _png_header(manual / "images" / "sub" / "big.png", 640, 20)  # 20 px high: prepare wants 32
    seen = _counting_decodes(monkeypatch)
    view = _get(_client(manual), "/api/photos/3").json()
    assert "640×20 pixels; the shorter side must be at least 32 px" in view["problem"], view["problem"]
    assert "fundax.prepare" in view["problem"] and seen["calls"] == []


def test_what_the_browser_is_told_names_paths_relative_to_the_images_folder(manual, tmp_path, monkeypatch):
    _png_header(manual / "images" / "sub" / "broken.png", W, H)  # a header that reads, pixels that do not
    client = _client(manual)
    broken = _get(client, "/photos/sub/broken.png").json()["error"]
    assert broken.startswith("sub/broken.png: truncated or corrupt"), broken
    fake = _get(client, "/photos/fake.jpg").json()["error"]
    assert fake.startswith("fake.jpg: "), fake
    unlocated = _get(client, "/api/photos/3/suggestion").json()["error"]
    assert unlocated.startswith("sub/broken.png: truncated or corrupt"), unlocated
    from fundax.annotate import store

    def denied(*args):
        raise PermissionError(13, "Permission denied", str(manual / "annotations.jsonl"))

    monkeypatch.setattr(store.os, "replace", denied)
    failed = _post(client, 0, _reading()).json()["error"]
    assert failed == "cannot read or write ../annotations.jsonl: Permission denied"
    for message in (broken, fake, unlocated, failed):
        assert str(tmp_path) not in message


# --- what the page is told ----------------------------------------------------------------------


@pytest.mark.parametrize("disc, fovea, grid_w, grid_h", [
    ((20.0, 18.0), (45.0, 20.0), 97, 61),     # disc left of the fovea: a left eye
    ((45.5, 19.0), (18.0, 22.5), 97, 61),     # a right eye
    ((30.0, 5.0), (28.0, 35.0), 97, 61),      # L nearly vertical
    ((45.5, 19.0), (18.0, 22.5), 700, 451),   # a canvas large enough to place the names from every 3rd cell
])
def test_the_region_map_is_fundax_regions_on_the_canvas_grid(manual, disc, fovea, grid_w, grid_h):
    query = f"disc={disc[0]},{disc[1]}&fovea={fovea[0]},{fovea[1]}&width={grid_w}&height={grid_h}"
    response = _get(_client(manual), f"/api/photos/0/regions?{query}")
    assert response.status_code == 200
    body = response.json()
    ids = np.frombuffer(base64.b64decode(body["ids"]), np.uint8).reshape(grid_h, grid_w)
    expected = regions.region_map(grid_h, grid_w, disc, fovea, image_size=(H, W))
    np.testing.assert_array_equal(ids, expected)
    for name, (x, y) in body["labels"].items():
        assert regions.REGIONS[ids[int(y), int(x)]] == name


@pytest.mark.parametrize("query, reason", [
    ("disc=1,1&fovea=1,1&width=10&height=10", "coincide"),
    ("disc=1,1&fovea=61,1&width=10&height=10", "outside the image"),
    ("disc=1,1&fovea=nan,1&width=10&height=10", "'fovea' must hold finite numbers"),
    ("disc=1,1&fovea=5,1&width=0&height=10", "must be positive"),
    ("disc=1,1&fovea=5,1&width=5000&height=5000", "at most"),
    ("disc=1&fovea=5,1&width=10&height=10", "'disc' must be a list [x, y] of 2 numbers"),
    ("disc=1,x&fovea=5,1&width=10&height=10", "want ?disc"),
    ("disc=1,1&width=10&height=10", "want ?disc"),
])
def test_bad_region_map_requests_say_why(manual, query, reason):
    response = _get(_client(manual), f"/api/photos/0/regions?{query}")
    assert response.status_code == 400 and reason in response.json()["error"]


def test_a_reading_is_saved_merged_and_read_back(manual):
    client = _client(manual)
    assert _get(client, "/api/session").json()["resume"] == 0
    view = _post(client, 2, _reading({"rnfl_defect": ["superotemporal"]}, (40.0, 20.0), (15.0, 21.0),
                                     seen=[[40.0, 20.0], [15.0, 21.0]])).json()
    assert view["findings"] == {"rnfl_defect": ["superotemporal"]} and view["other_graders"] == 1
    assert view["read"] == 1 and view["split"] == "test"
    normal = _post(client, 0, _reading(disc=(20.04, 18.0))).json()
    assert normal["findings"] == {} and normal["disc"] == [20.04, 18.0] and normal["read"] == 2
    assert _get(client, "/api/session").json()["resume"] == 1
    result = annotations.read_annotations(manual / "annotations.jsonl")
    assert result.rejections == []
    by_id = {r.image_id: r for r in result.records}
    assert [g.annotator for g in by_id["b-1"].graders] == ["r02", "r01"]
    assert by_id["a"].file == "images/a.png" and by_id["a"].split == "train"
    assert _get(_client(manual, "r02"), "/api/session").json()["resume"] == 0  # r02 read only b


@pytest.mark.parametrize("body, status, reason", [
    (_reading({"glaucoma": ["macula"]}), 400, "unknown finding"),
    (_reading({"drusen": "macula"}), 400, "non-empty list"),
    (_reading(disc=(61.0, 1.0)), 400, "disc (61, 1) lies outside the image"),
    (_reading(disc=(45.0, 20.0)), 400, "coincide"),
    (json.dumps({"findings": {}, "disc": [1, 2]}), 400, "'fovea' must be a list [x, y] of 2 numbers, got None"),
    (_reading({"drusen": [["macula"]]}), 400, "non-empty list of regions (names)"),
    (_reading(disc="12"), 400, "'disc' must be a list [x, y] of 2 numbers"),
    (_reading(disc=(10 ** 400, 1)), 400, "'disc' holds a number too large for a float"),
    # What the file reader refuses, the tool refuses: no coercion, no last-one-wins, no crash.
    (_reading(disc=("20", "18")), 400, "'disc' must hold numbers, got str '20'"),
    (_reading(disc=(True, 18)), 400, "'disc' must hold numbers, got bool True"),
    ('{"findings": {}, "disc": {"20": 0, "18": 0}, "fovea": [45, 20]}', 400, "'disc' must be a list [x, y]"),
    (_reading(disc=(20, 18, 1)), 400, "'disc' must be a list [x, y] of 2 numbers"),
    ('{"findings": {}, "disc": [20, 18], "fovea": [45, 20], "disc": [1, 1]}', 400, "duplicate key 'disc'"),
    ('{"findings": {"drusen": ["macula"], "drusen": []}, "disc": [20, 18], "fovea": [45, 20]}', 400,
     "duplicate key 'drusen'"),
    ('{"findings": ' + "[" * 60_000, 400, "nested too deeply"),
    (_reading(seen=[["40", "20"], [15, 21]]), 400, "centres_seen must be [disc, fovea]"),
    (_reading(seen=[[True, 20], [15, 21]]), 400, "centres_seen must be [disc, fovea]"),
    (_reading(seen=[[20.0, 18.0], 5]), 400, "centres_seen must be [disc, fovea]"),
    (_reading(seen=[[20.0, 18.0], "ab"]), 400, "centres_seen must be [disc, fovea]"),
    ("[1, 2]", 400, "must be a JSON object"),
    ("{", 400, "not JSON"),
    (b"\xff{}", 400, "not JSON"),
    ("x" * (app_lib.MAX_BODY_BYTES + 1), 400, "over"),
])
def test_bad_readings_are_refused_and_change_nothing(manual, body, status, reason):
    before = (manual / "annotations.jsonl").read_bytes()
    response = _post(_client(manual), 0, body)
    assert response.status_code == status and reason in response.json()["error"]
    assert (manual / "annotations.jsonl").read_bytes() == before


def test_a_line_with_centres_json_cannot_hold_is_shown_without_them(manual):
    path = manual / "annotations.jsonl"
    path.write_text(path.read_text().replace("[40.0, 20.0]", "[NaN, 20.0]"))
    response = _get(_client(manual), "/api/photos/2")
    assert response.status_code == 200 and response.json()["disc"] is None


def test_saving_over_centres_another_grader_moved_is_a_conflict(manual):
    response = _post(_client(manual), 2, _reading(seen=[[41.0, 20.0], [15.0, 21.0]]))
    assert response.status_code == 409 and "reload" in response.json()["error"]


def test_unknown_photographs_are_not_found(manual):
    client = _client(manual)
    assert _get(client, "/api/photos/3").status_code == 404
    assert _post(client, 99, _reading()).status_code == 404


# --- command line -------------------------------------------------------------------------------


def _failure(argv, capsys, status: int) -> str:
    """The ``error:`` line of a command line that fails with ``status``: 1 the folders, 2 the flags (then the hint)."""
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == status, err
    lines = err.splitlines()
    assert len(lines) == (2 if status == 2 else 1) and lines[0].startswith("error: "), err
    if status == 2:
        assert lines[1] == "(see python -m fundax.annotate --help)"
    assert out == ""
    return lines[0]


def test_folders_and_addresses_it_cannot_use_stop_it_with_one_line_naming_what_and_where(manual, tmp_path, capsys):
    images, out = str(manual / "images"), str(manual / "annotations.jsonl")
    empty = tmp_path / "manual" / "empty"
    empty.mkdir()
    busy = socket.create_server(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    cases = {
        f"--images {tmp_path}/nope: not a folder": ["--images", f"{tmp_path}/nope", "--out", out],
        f"--images {tmp_path / 'outside'}: must lie inside {manual}": ["--images", str(tmp_path / "outside"),
                                                                       "--out", out],
        f"--out {manual}: is a folder": ["--images", images, "--out", str(manual)],
        f"--out {tmp_path}/no/a.jsonl: the folder {tmp_path}/no does not exist": ["--images", images, "--out",
                                                                                   f"{tmp_path}/no/a.jsonl"],
        f"--images {empty}: holds no photographs": ["--images", str(empty), "--out", out],
        f"--host 127.0.0.1 --port {port}: cannot listen there (Address already in use)": [
            "--images", images, "--out", out, "--port", str(port)],
        f"--out {manual}/dangling.jsonl: leads to {tmp_path}/gone/a.jsonl, whose folder does not exist": [
            "--images", images, "--out", str(manual / "dangling.jsonl"), "--port", str(port)],
    }
    (manual / "dangling.jsonl").symlink_to(tmp_path / "gone" / "a.jsonl")
    try:
        for expected, argv in cases.items():
            assert _failure([*argv, "--grader", "r01"], capsys, 1).startswith(f"error: {expected}")
    finally:
        busy.close()
    # Called directly, the session refuses a grader id the file could not hold.
    with pytest.raises(cli.SetupError, match="--grader 'r 01': want 1 to 64 characters"):
        cli.open_session(images, out, "r 01")


def test_bad_flags_are_usage_errors_in_one_line_naming_the_flag_and_value(manual, capsys):
    base = ["--images", str(manual / "images"), "--out", str(manual / "annotations.jsonl")]
    want_grader = "want 1 to 64 characters without spaces or control characters"
    cases = {
        f"bad flag --grader=r 01: {want_grader}, got 'r 01'": [*base, "--grader", "r 01"],
        # A name that is not UTF-8 (a lone surrogate) could be neither shown on the page nor written;
        # one with a line break would break the one-line message, so both are escaped in it.
        f"bad flag --grader=r\\udcff01: {want_grader}, got 'r\\udcff01'": [*base, "--grader", "r\udcff01"],
        f"bad flag --grader=r\\n01: {want_grader}, got 'r\\n01'": [*base, "--grader=r\n01"],
        "bad flag --port=70000: want a port in 0..65535, got 70000": [*base, "--grader=r01", "--port", "70000"],
        "bad flag --port=http: want a port number, got 'http'": [*base, "--grader=r01", "--port=http"],
        "bad flag --split=validation: value should be one of <train|test>": [*base, "--grader=r01",
                                                                            "--split=validation"],
        "missing required flag --grader": base,
        "missing required flags --images, --out, --grader": [],
        "unknown flag --prot": [*base, "--grader=r01", "--prot=80"],
        "unexpected arguments: photo.jpg": [*base, "--grader=r01", "photo.jpg"],
    }
    for expected, argv in cases.items():
        assert _failure(argv, capsys, 2) == f"error: {expected}", argv


def test_help_lists_the_flags_and_exits_0(capsys):
    # fundax.report defines --images, --out and --split in absl's global flags: the tool's own set is apart.
    from fundax import report

    assert report.FLAGS["out"].default == "report"
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("Mark findings and the regions")
    assert "usage: python -m fundax.annotate --images=DIR --out=FILE --grader=ID" in out
    for flag in ("--images", "--out", "--grader", "--split: <train|test>", "--host", "--port", "--allowed_host"):
        assert f"\n  {flag}" in out, flag


def test_a_symlinked_out_is_written_through_to_the_file_it_names(manual, tmp_path):
    shared = tmp_path / "shared" / "annotations.jsonl"
    shared.parent.mkdir()
    (manual / "annotations.jsonl").rename(shared)
    (manual / "annotations.jsonl").symlink_to(shared)
    assert _post(_client(manual), 0, _reading()).status_code == 200
    assert (manual / "annotations.jsonl").is_symlink()
    result = annotations.read_annotations(manual / "annotations.jsonl")
    assert result.rejections == [] and {r.image_id for r in result.records} == {"a", "b-1"}


def test_rejected_lines_of_an_existing_file_are_reported_and_kept(manual):
    path = manual / "annotations.jsonl"
    path.write_text(path.read_text() + '{"image_id": "x"}\n')
    session, notes = cli.open_session(str(manual / "images"), str(path), "r01")
    assert any("line 2: missing required key(s)" in note for note in notes)
    client = TestClient(app_lib.create_app(session), base_url="http://127.0.0.1")
    assert _post(client, 0, _reading(), session.token).status_code == 200
    assert path.read_text().splitlines()[1] == '{"image_id": "x"}'


def test_serving_beyond_this_machine_warns_and_names_the_hosts_it_answers_to(manual, monkeypatch, capsys):
    import uvicorn

    served = {}

    def run(self, sockets):
        served["host"], served["app"] = sockets[0].getsockname()[0], self.config.app
        sockets[0].close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    argv = ["--images", str(manual / "images"), "--out", str(manual / "annotations.jsonl"), "--grader", "r01",
            "--port", "0"]
    assert cli.main([*argv, "--host", "0.0.0.0", "--allowed_host", "Grader-PC.lan.",
                     "--allowed_host", "[fd00::7]"]) == 0
    err = capsys.readouterr()
    warning = next(line for line in err.err.splitlines() if line.startswith("warning: --host"))
    assert "warning: --host 0.0.0.0 lets other machines see the photographs" in warning
    for name in ("localhost", "127.0.0.1", socket.gethostname().lower(), "grader-pc.lan", "fd00::7"):
        assert name in warning
    assert "3 photographs, 0 read" in err.out and served["host"] == "0.0.0.0"
    client = TestClient(served["app"])
    for host, status in (("grader-pc.lan:8765", 200), ("[fd00::7]:8765", 200), ("evil.example", 400)):
        assert client.get("/", headers={"Host": host}).status_code == status, host
    assert cli.main(argv) == 0 and "warning: --host" not in capsys.readouterr().err
    assert _failure([*argv, "--allowed_host", "a b"], capsys, 2) == (
        "error: bad flag --allowed_host=a b: want a host name or address, got 'a b'")


@pytest.mark.timeout(90)
def test_ctrl_c_stops_the_tool_with_one_line(manual):
    argv = ["--images", str(manual / "images"), "--out", str(manual / "annotations.jsonl"), "--grader", "r01",
            "--port", "0"]
    tool = subprocess.Popen([sys.executable, "-m", "fundax.annotate", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=pathlib.Path(__file__).resolve().parents[1])
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        started = tool.stdout.readline()
        assert started.startswith("fundax annotate: http://127.0.0.1:"), started
        url = started.split()[2]
        deadline = time.monotonic() + 30
        while True:  # Ctrl-C while it serves, not while it starts
            try:
                with direct.open(url, timeout=5) as response:
                    assert response.status == 200
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        tool.send_signal(signal.SIGINT)
        out, err = tool.communicate(timeout=30)
    finally:
        tool.kill()
    assert tool.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert out.splitlines() == ["fundax annotate: stopped; r01 has read 0 of 3 photographs"]
    assert cli.is_loopback("127.0.0.2") and cli.is_loopback("::1") and not cli.is_loopback("example.org")


def test_a_failed_write_is_reported_to_the_page(manual, monkeypatch):
    from fundax.annotate import store

    def full_disk(*args):
        raise OSError(28, "No space left on device", str(manual / "annotations.jsonl"))

    monkeypatch.setattr(store.os, "replace", full_disk)
    response = _post(_client(manual), 0, _reading())
    assert response.status_code == 500 and "No space left on device" in response.json()["error"]


# --- suggested centres and lines the tool did not write ------------------------------------------


@pytest.fixture
def imported(tmp_path):
    """A manual directory of an import: a fundus photograph (eye.png) and noise (noise.png), lines without centres."""
    root = tmp_path / "imported"
    eye = synthetic.synthesize_eye(synthetic.SyntheticConfig(num_train=1, num_test=0, height_px=200, seed=3),
                                   "train", 0)
    (root / "images").mkdir(parents=True)
    Image.fromarray(eye.image).save(root / "images" / "eye.png")
    _picture(root / "images" / "noise.png")
    line = {"image_id": "eye", "file": "images/eye.png", "split": "train",
            "annotations": [{"annotator": "rfmid", "assessed": ["drusen", "macular_hole"],
                             "findings": {"macular_hole": None}, "row": 3}],
            "lesion_masks": {"drusen": "masks/eye.png"}, "camera": "x"}
    (root / "annotations.jsonl").write_text(json.dumps(line, ensure_ascii=False) + "\n")
    return root


def _counting_locates(monkeypatch) -> list[tuple[int, ...]]:
    calls, locate = [], landmarks.locate
    monkeypatch.setattr(landmarks, "locate", lambda image: calls.append(image.shape) or locate(image))
    return calls


def test_the_suggested_centres_are_the_locators_and_computed_once_per_photograph(imported, monkeypatch):
    photo = imported / "images" / "eye.png"
    disc, fovea, info = landmarks.locate_photograph(photo)  # what prepare --locate_missing would write
    calls = _counting_locates(monkeypatch)
    client = _client(imported, "rfmid")
    view = _get(client, "/api/photos/0").json()
    assert view["file"] == "images/eye.png" and view["disc"] is None and view["fovea"] is None
    first, again = (_get(client, "/api/photos/0/suggestion") for _ in range(2))
    assert first.status_code == 200 and first.json() == again.json() and len(calls) == 1
    assert first.json() == {"disc": list(disc), "fovea": list(fovea), "disc_confidence": info["disc_confidence"],
                            "fovea_confidence": info["fovea_confidence"], "flags": [], "confident": True,
                            "locator": landmarks.LOCATOR_VERSION}
    os.utime(photo, ns=(10**18, 10**18))  # a photograph changed on disk is located again
    assert _get(client, "/api/photos/0/suggestion").json() == first.json() and len(calls) == 2
    assert _get(client, "/api/photos/0").json()["disc"] is None  # a suggestion writes nothing


def test_a_suggestion_the_locator_is_unsure_of_says_so(imported):
    body = _get(_client(imported), "/api/photos/1/suggestion").json()  # noise: no fundus
    assert body["confident"] is False and "low disc confidence" in body["flags"]
    with pytest.raises(annotations.AnnotationError, match="could not place them with confidence"):
        landmarks.locate_photograph(imported / "images" / "noise.png")  # as prepare --locate_missing refuses it


def test_the_page_is_answered_while_the_locator_runs(imported, monkeypatch):
    started, release, locate = threading.Event(), threading.Event(), landmarks.locate

    def slow(image):
        started.set()
        assert release.wait(30)
        return locate(image)

    monkeypatch.setattr(landmarks, "locate", slow)
    client = _client(imported)
    answers = []
    worker = threading.Thread(target=lambda: answers.append(_get(client, "/api/photos/0/suggestion").status_code))
    worker.start()
    try:
        assert started.wait(30)
        assert _get(client, "/api/photos/1").status_code == 200
        assert _get(client, "/api/photos/1/regions?disc=1,1&fovea=50,30&width=10&height=10").status_code == 200
    finally:
        release.set()
        worker.join(30)
    assert answers == [200]


def test_an_imported_line_round_trips_through_the_page_and_gains_only_what_the_grader_confirms(imported):
    path = imported / "annotations.jsonl"
    before = path.read_bytes()
    client = _client(imported, "rfmid")
    view = _get(client, "/api/photos/0").json()
    assert view["findings"] == {"macular_hole": None}  # shown as an image-level label
    # Saved as loaded, the suggestion not confirmed: no centres sent, the line unchanged to the byte.
    body = json.dumps({"findings": view["findings"], "disc": None, "fovea": None, "centres_seen": None})
    saved = _post(client, 0, body)
    assert saved.status_code == 200 and saved.json()["disc"] is None and path.read_bytes() == before
    # Confirmed (or dragged) centres and the label marked in regions: those are written, the rest kept.
    suggestion = _get(client, "/api/photos/0/suggestion").json()
    marked = {"macular_hole": ["macula"]}
    body = json.dumps({"findings": marked, "disc": suggestion["disc"], "fovea": suggestion["fovea"],
                       "centres_seen": None})
    assert _post(client, 0, body).status_code == 200
    line, old = json.loads(path.read_text()), json.loads(before)
    assert line == {**old, "disc": suggestion["disc"], "fovea": suggestion["fovea"],
                    "annotations": [{**old["annotations"][0], "findings": marked}]}
    assert list(line) == [*old, "disc", "fovea"]


def test_a_new_line_saved_without_centres_has_none(imported):
    client = _client(imported, "r01")
    saved = _post(client, 1, json.dumps({"findings": {}, "disc": None, "fovea": None, "centres_seen": None}))
    assert saved.status_code == 200 and saved.json()["disc"] is None and saved.json()["read"] == 1
    line = json.loads((imported / "annotations.jsonl").read_text().splitlines()[1])
    assert line == {"image_id": "noise", "file": "images/noise.png", "split": "train",
                    "annotations": [{"annotator": "r01", "findings": {}}]}
