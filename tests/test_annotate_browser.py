"""The annotation tool in a real browser: Debian's chromium, headless, driven by Playwright.

A grader confirms the disc and fovea fundax.landmarks suggests on a right eye and
marks a macular hole in two regions, places them on a left eye with one drag, marks it
normal, reloads, and lands on the first photograph not read; marks that one normal
without confirming the suggestion, and on an imported line (an image-level label, no
centres, extra keys) confirms the centres and marks the label's region; on a photograph
without a fundus the locator is unsure, nothing is placed and the page will not save it
without centres. The file then holds exactly that, the imported line's keys kept. Where the pointer is, the page must
name the region fundax.regions gives that cell.

Set FUNDAX_ANNOTATE_SCREENSHOT=docs/annotate.png to write the README's picture.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import threading

import cv2
import numpy as np
import pytest

from fundax import landmarks, regions
from fundax.annotate import app as app_lib
from fundax.annotate import cli
from fundax.data import annotations, synthetic

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
playwright_api = pytest.importorskip("playwright.sync_api",
                                    reason="playwright is not installed (pip install -e '.[test]')")
pytestmark = [
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"no chromium at {CHROMIUM}: `apt-get install -y chromium` installs it (.ci/run does)"),
    pytest.mark.timeout(120),
]


def _eyes(manual: pathlib.Path) -> list[synthetic.SyntheticEye]:
    """A right eye, a left eye and two more, written as images/1.png … 4.png."""
    # The README's picture wants a sharper photograph than the test needs.
    height_px = 560 if os.environ.get("FUNDAX_ANNOTATE_SCREENSHOT") else 200
    config = synthetic.SyntheticConfig(num_train=40, num_test=0, height_px=height_px, seed=3)
    wanted, eyes = ["right", "left", "right", "left"], []
    for index in range(config.num_train):
        eye = synthetic.synthesize_eye(config, "train", index)
        if eye.eye == wanted[len(eyes)]:
            eyes.append(eye)
            cv2.imwrite(str(manual / "images" / f"{len(eyes)}.png"), cv2.cvtColor(eye.image, cv2.COLOR_RGB2BGR))
            if len(eyes) == len(wanted):
                return eyes
    raise AssertionError("the synthetic set holds too few eyes of each side")


IMPORTED = {"image_id": "4", "file": "images/4.png", "split": "train",
            "annotations": [{"annotator": "r01", "assessed": ["drusen", "macular_hole"],
                             "findings": {"drusen": None, "macular_hole": None}, "row": 4}],
            "lesion_masks": {"drusen": "masks/4.png"}, "camera": "x"}


@pytest.fixture
def served(tmp_path):
    """The tool serving a manual directory on a free loopback port: (url, manual dir, eyes).

    Only 4.png has a line: an import's, r01's image-level label, no centres. 5.png is black.
    """
    import uvicorn

    manual = tmp_path / "manual"
    (manual / "images").mkdir(parents=True)
    eyes = _eyes(manual)
    cv2.imwrite(str(manual / "images" / "5.png"), np.zeros((200, 260, 3), np.uint8))
    (manual / "annotations.jsonl").write_text(json.dumps(IMPORTED) + "\n")
    session, _ = cli.open_session(str(manual / "images"), str(manual / "annotations.jsonl"), "r01")
    sock = cli.listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app_lib.create_app(session), log_config=None, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/", manual, eyes
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.problems = []
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
        yield page
        browser.close()


class Canvas:
    """Where things are on the page's canvas: photograph pixels ↔ page coordinates."""

    def __init__(self, page, eye: synthetic.SyntheticEye):
        self.page = page
        self.box = page.locator("#view").bounding_box()
        self.grid_w, self.grid_h = page.evaluate("[document.getElementById('view').width,"
                                                 " document.getElementById('view').height]")
        self.height, self.width = eye.image.shape[:2]
        assert abs(self.box["width"] - self.grid_w) < 0.01  # one canvas cell per CSS pixel

    def at(self, xy) -> tuple[float, float]:
        """The page point over photograph point ``xy``."""
        return (self.box["x"] + xy[0] * self.grid_w / self.width, self.box["y"] + xy[1] * self.grid_h / self.height)

    def click(self, xy) -> None:
        self.page.mouse.click(*self.at(xy))

    def region_of_cell(self, page_xy, disc, fovea) -> str:
        """What fundax.regions says of the cell under a page point: the region of its centre."""
        col, row = int(page_xy[0] - self.box["x"]), int(page_xy[1] - self.box["y"])
        x, y = (col + 0.5) * self.width / self.grid_w, (row + 0.5) * self.height / self.grid_h
        return regions.REGIONS[int(regions.region_ids(x, y, disc, fovea))]


def _centres(page) -> tuple[list[float], list[float]]:
    return page.evaluate("[window.fundaxAnnotate.state.disc, window.fundaxAnnotate.state.fovea]")


def _check_regions_under_the_pointer(page, canvas: Canvas) -> None:
    """The page names, under the pointer, the region fundax.regions gives that cell.

    Checked at cells all over the canvas and on both sides of region boundaries,
    where a pointer mapped one cell off would name the wrong region.
    """
    disc, fovea = _centres(page)
    ids = regions.region_map(canvas.grid_h, canvas.grid_w, disc, fovea, image_size=(canvas.height, canvas.width))
    cells = [(int(fy * canvas.grid_h), int(fx * canvas.grid_w))
             for fx in np.linspace(0.02, 0.98, 6) for fy in np.linspace(0.03, 0.97, 5)]
    rng = np.random.default_rng(0)
    for dy, dx in ((0, 1), (1, 0)):
        edge = np.argwhere(ids[: ids.shape[0] - dy, : ids.shape[1] - dx] != ids[dy:, dx:])
        for row, col in edge[rng.choice(len(edge), 10, replace=False)]:
            cells += [(row, col), (row + dy, col + dx)]
    for row, col in cells:
        page.mouse.move(canvas.box["x"] + col + 0.5, canvas.box["y"] + row + 0.5)
        expected = regions.REGIONS[ids[row, col]]
        playwright_api.expect(page.locator("#hover")).to_have_attribute("data-region", expected)
    assert len({ids[cell] for cell in cells}) >= 6  # the cells reach most regions, not just the big ones


def _place(page, canvas: Canvas, disc, fovea) -> None:
    """Place both centres anew (D, F), over the suggested ones."""
    page.keyboard.press("d")
    canvas.click(disc)
    page.keyboard.press("f")
    canvas.click(fovea)
    playwright_api.expect(page.locator("#view")).to_have_attribute("data-centres", "placed")
    playwright_api.expect(page.locator("#view")).to_have_attribute("data-ready", "regions")


def _suggested(page, eye: synthetic.SyntheticEye) -> landmarks.Landmarks:
    """Checks that the page shows the locator's disc and fovea as suggested, not placed; what it found."""
    found = landmarks.locate(eye.image)
    expect = playwright_api.expect
    expect(page.locator("#view")).to_have_attribute("data-centres", "suggested")
    expect(page.locator("#suggestion")).to_contain_text(
        f"disc {found.disc_confidence:.2f}, fovea {found.fovea_confidence:.2f}) — confirm (C) or drag them")
    expect(page.locator("#confirm")).to_be_enabled()
    assert _centres(page) == [list(found.disc), list(found.fovea)]
    return found


def test_annotate_photographs_reload_resume_suggested_and_imported(served, page):
    url, manual, (right, left, third, imported) = served
    expect = playwright_api.expect
    page.goto(url)
    expect(page.locator("#progress")).to_have_text("Image 1 of 5 · 1 read")

    # A right eye: the suggested centres, confirmed; check the regions, mark a macular hole in two regions.
    canvas = Canvas(page, right)
    found = _suggested(page, right)
    page.keyboard.press("6")
    canvas.click(right.fovea_xy + 0.5 * np.subtract(right.fovea_xy, right.disc_xy))
    expect(page.locator("#message")).to_contain_text("Confirm the suggested disc and fovea first")
    expect(page.locator('#findings button[data-finding="macular_hole"] .where')).to_have_text("")
    page.keyboard.press("c")
    expect(page.locator("#view")).to_have_attribute("data-centres", "placed")
    expect(page.locator("#view")).to_have_attribute("data-ready", "regions")
    expect(page.locator("#photo-info")).to_contain_text("right eye")
    _check_regions_under_the_pointer(page, canvas)
    disc, fovea = np.array(_centres(page)[0]), np.array(_centres(page)[1])
    along = (fovea - disc) / np.linalg.norm(fovea - disc)
    clicks = [fovea + 0.25 * np.linalg.norm(fovea - disc) * along, fovea + 1.0 * (fovea - disc)]
    expect(page.locator('#findings button[data-finding="macular_hole"]')).to_have_attribute("aria-pressed", "true")
    for xy in clicks:
        canvas.click(xy)
    chosen = {canvas.region_of_cell(canvas.at(xy), disc, fovea) for xy in clicks}
    assert chosen == {"macula", "temporal"}
    for name in chosen:
        expect(page.locator(f'#regions button[data-region="{name}"]')).to_have_attribute("aria-pressed", "true")
    expect(page.locator('#findings button[data-finding="macular_hole"] .where')).to_have_text("macula, temporal")
    if os.environ.get("FUNDAX_ANNOTATE_SCREENSHOT"):
        page.mouse.move(*canvas.at(clicks[1]))
        page.screenshot(path=os.environ["FUNDAX_ANNOTATE_SCREENSHOT"])
    page.keyboard.press("Enter")
    expect(page.locator("#progress")).to_have_text("Image 2 of 5 · 2 read")

    # A left eye: the centres placed over the suggestion, the fovea off, dragged home (the overlay follows),
    # then "normal".
    canvas = Canvas(page, left)
    _suggested(page, left)
    off = (left.fovea_xy[0], left.fovea_xy[1] + 25.0)
    _place(page, canvas, left.disc_xy, off)
    expect(page.locator("#photo-info")).to_contain_text("left eye")
    page.mouse.move(*canvas.at(off))
    page.mouse.down()
    page.mouse.move(*canvas.at(left.fovea_xy), steps=8)
    page.mouse.up()
    expect(page.locator("#view")).to_have_attribute("data-ready", "regions")
    dropped = _centres(page)[1]
    assert np.allclose(dropped, left.fovea_xy, atol=1.0)
    _check_regions_under_the_pointer(page, canvas)
    page.keyboard.press("n")
    expect(page.locator("#progress")).to_have_text("Image 3 of 5 · 3 read")

    # The grader comes back: the first photograph not read. Normal, the suggestion not confirmed.
    page.reload()
    expect(page.locator("#progress")).to_have_text("Image 3 of 5 · 3 read")
    _suggested(page, third)
    page.keyboard.press("n")
    expect(page.locator("#message")).to_contain_text("Saved images/3.png as normal, without the suggested (not confirmed) disc and fovea")

    # The imported line: its image-level labels shown as such; the centres confirmed, one label marked.
    expect(page.locator("#progress")).to_have_text("Image 4 of 5 · 4 read")
    canvas = Canvas(page, imported)
    found_imported = _suggested(page, imported)
    where = page.locator('#findings button[data-finding="macular_hole"] .where')
    expect(where).to_have_text("present, regions not marked")
    expect(page.locator('#findings button[data-finding="drusen"] .where')).to_have_text("present, regions not marked")
    page.keyboard.press("c")
    page.keyboard.press("6")
    expect(page.locator("#view")).to_have_attribute("data-ready", "regions")
    canvas.click(imported.fovea_xy)
    expect(where).to_have_text("macula")
    canvas.click(imported.fovea_xy)  # its last region unmarked: image-level again
    expect(where).to_have_text("present, regions not marked")
    canvas.click(imported.fovea_xy)
    expect(where).to_have_text("macula")
    page.keyboard.press("4")
    page.keyboard.press("Delete")  # the drusen label dropped from the reading
    expect(page.locator('#findings button[data-finding="drusen"] .where')).to_have_text("")
    page.keyboard.press("Enter")
    expect(page.locator("#progress")).to_have_text("Image 5 of 5 · 4 read")

    # No fundus: the locator is unsure, so nothing is placed, and the page keeps it unsaved without centres.
    expect(page.locator("#suggestion")).to_contain_text("The locator is unsure here (no field of view")
    expect(page.locator("#view")).to_have_attribute("data-centres", "none")
    page.keyboard.press("n")
    expect(page.locator("#message")).to_contain_text("Place the disc and the fovea first (D, F): the locator cannot")
    assert page.problems == []

    lines = [json.loads(line) for line in (manual / "annotations.jsonl").read_text().splitlines()]
    assert [(line["file"], line["annotations"]) for line in lines] == [
        ("images/4.png", [{**IMPORTED["annotations"][0], "findings": {"macular_hole": ["macula"]}}]),
        ("images/1.png", [{"annotator": "r01", "findings": {"macular_hole": ["macula", "temporal"]}}]),
        ("images/2.png", [{"annotator": "r01", "findings": {}}]),
        ("images/3.png", [{"annotator": "r01", "findings": {}}])]
    assert lines[0] == {**IMPORTED, "annotations": lines[0]["annotations"], "disc": list(found_imported.disc),
                        "fovea": list(found_imported.fovea)}
    assert (lines[1]["disc"], lines[1]["fovea"]) == (list(found.disc), list(found.fovea))  # confirmed as suggested
    cell = left.image.shape[1] / canvas.grid_w  # a click is good to one canvas cell
    assert lines[2]["fovea"] == dropped and np.allclose(lines[2]["disc"], left.disc_xy, atol=cell)
    assert "disc" not in lines[3] and "fovea" not in lines[3]  # suggested, never confirmed: not written
    result = annotations.read_annotations(manual / "annotations.jsonl")
    assert [r.line_number for r in result.rejections] == [4]  # prepare --locate_missing places its centres
    assert "prepare --locate_missing" in result.rejections[0].reason
