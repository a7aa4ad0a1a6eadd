"""Tests of the annotation tool's web app, catalogue and command line (no browser: see test_annotate_browser)."""

from __future__ import annotations

import base64
import io
import json
import pathlib
import socket
import warnings

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():
    # Newest Starlette prefers httpx2 but still drives httpx, which every Starlette version takes.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from fundax import regions
from fundax.annotate import app as app_lib
from fundax.annotate import catalogue, cli
from fundax.data import annotations

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


def _client(manual: pathlib.Path, grader: str = "r01") -> TestClient:
    session, _ = cli.open_session(str(manual / "images"), str(manual / "annotations.jsonl"), grader, token=TOKEN)
    return TestClient(app_lib.create_app(session), base_url="http://127.0.0.1:8765")


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
    response = _client(manual).get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"


def test_a_file_named_like_a_photograph_is_not_served(manual):
    client = _client(manual)
    response = client.get("/photos/fake.jpg")
    assert response.status_code == 400 and "not an image" in response.json()["error"]
    assert b"a text file" not in response.content
    view = _get(client, "/api/photos/1").json()  # the page is told why, and can move past it
    assert view["file"] == "images/fake.jpg" and "not a readable image" in view["problem"]


def test_a_symlink_repointed_outside_after_start_is_refused(manual, tmp_path):
    link = manual / "images" / "link.png"
    link.symlink_to(manual / "images" / "a.png")
    client = _client(manual)
    assert client.get("/photos/link.png").status_code == 200
    link.unlink()
    link.symlink_to(tmp_path / "outside" / "secret.png")
    assert client.get("/photos/link.png").status_code == 404


def test_photographs_are_served_as_fundax_decodes_them(manual):
    client = _client(manual)
    for rel, seed in (("a.png", 0), ("sub/b.tif", 1)):
        response = client.get(f"/photos/{rel}")
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
    assert app_lib.allowed_hosts("0.0.0.0") == ["*"]


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
    ("disc=1,1&fovea=nan,1&width=10&height=10", "outside the image"),
    ("disc=1,1&fovea=5,1&width=0&height=10", "must be positive"),
    ("disc=1,1&fovea=5,1&width=5000&height=5000", "at most"),
    ("disc=1&fovea=5,1&width=10&height=10", "disc must be [x, y]"),
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
    (json.dumps({"findings": {}, "disc": [1, 2]}), 400, "fovea must be [x, y]"),
    (_reading({"drusen": [["macula"]]}), 400, "non-empty list of regions (names)"),
    (_reading(disc="12"), 400, "disc must be [x, y]"),
    (_reading(disc=(10 ** 400, 1)), 400, "disc must be [x, y]"),
    (_reading(seen=[[20.0, 18.0], 5]), 400, "centres_seen must be [disc, fovea]"),
    (_reading(seen=[[20.0, 18.0], "ab"]), 400, "centres_seen must be [disc, fovea]"),
    ("[1, 2]", 400, "must be a JSON object"),
    ("{", 400, "not JSON"),
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


def _error(argv) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert isinstance(e.value.code, str) and "\n" not in e.value.code, e.value.code
    return e.value.code


def test_bad_command_lines_stop_with_one_line_naming_what_and_where(manual, tmp_path, capsys):
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
        "--grader 'r 01': want 1 to 64 characters": ["--images", images, "--out", out, "--grader", "r 01"],
        # A name that is not UTF-8 (a lone surrogate) could be neither shown on the page nor written.
        "--grader 'r\\udcff01': want 1 to 64 characters": ["--images", images, "--out", out, "--grader",
                                                           "r\udcff01"],
        f"--host 127.0.0.1 --port {port}: cannot listen there (Address already in use)": [
            "--images", images, "--out", out, "--port", str(port)],
    }
    try:
        for expected, argv in cases.items():
            argv = argv if "--grader" in argv else [*argv, "--grader", "r01"]
            assert _error(argv).startswith(f"error: {expected}")
    finally:
        busy.close()
    with pytest.raises(SystemExit):
        cli.main(["--images", images, "--out", out, "--grader", "r01", "--port", "70000"])
    assert "error: argument --port: want a port in 0..65535, got 70000" in capsys.readouterr().err


def test_rejected_lines_of_an_existing_file_are_reported_and_kept(manual):
    path = manual / "annotations.jsonl"
    path.write_text(path.read_text() + '{"image_id": "x"}\n')
    session, notes = cli.open_session(str(manual / "images"), str(path), "r01")
    assert any("line 2: missing required key(s)" in note for note in notes)
    client = TestClient(app_lib.create_app(session), base_url="http://127.0.0.1")
    assert _post(client, 0, _reading(), session.token).status_code == 200
    assert path.read_text().splitlines()[1] == '{"image_id": "x"}'


def test_serving_beyond_this_machine_warns(manual, monkeypatch, capsys):
    import uvicorn

    served = {}

    def run(self, sockets):
        served["host"] = sockets[0].getsockname()[0]
        sockets[0].close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    argv = ["--images", str(manual / "images"), "--out", str(manual / "annotations.jsonl"), "--grader", "r01",
            "--port", "0"]
    assert cli.main([*argv, "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr()
    assert "warning: --host 0.0.0.0 lets other machines see the photographs" in err.err
    assert "3 photographs, 0 read" in err.out and served["host"] == "0.0.0.0"
    assert cli.main(argv) == 0 and "warning: --host" not in capsys.readouterr().err
    assert cli.is_loopback("127.0.0.2") and cli.is_loopback("::1") and not cli.is_loopback("example.org")


def test_a_failed_write_is_reported_to_the_page(manual, monkeypatch):
    from fundax.annotate import store

    def full_disk(*args):
        raise OSError(28, "No space left on device", str(manual / "annotations.jsonl"))

    monkeypatch.setattr(store.os, "replace", full_disk)
    response = _post(_client(manual), 0, _reading())
    assert response.status_code == 500 and "No space left on device" in response.json()["error"]
