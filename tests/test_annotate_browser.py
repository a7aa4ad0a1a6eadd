"""The annotation tool in a real browser: Debian's chromium, headless, driven by Playwright.

A grader places disc and fovea on a right eye, marks a macular hole in two regions,
places them on a left eye with one drag, marks it normal, reloads, and lands on the
first photograph not read; the file then holds exactly that and the reader takes it.
Where the pointer is, the page must name the region fundax.regions gives that cell.

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

from fundax import regions
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
    """A right eye, a left eye and one more, written as images/1.png, 2.png, 3.png."""
    # The README's picture wants a sharper photograph than the test needs.
    height_px = 560 if os.environ.get("FUNDAX_ANNOTATE_SCREENSHOT") else 200
    config = synthetic.SyntheticConfig(num_train=40, num_test=0, height_px=height_px, seed=3)
    wanted, eyes = ["right", "left", "right"], []
    for index in range(config.num_train):
        eye = synthetic.synthesize_eye(config, "train", index)
        if eye.eye == wanted[len(eyes)]:
            eyes.append(eye)
            cv2.imwrite(str(manual / "images" / f"{len(eyes)}.png"), cv2.cvtColor(eye.image, cv2.COLOR_RGB2BGR))
            if len(eyes) == len(wanted):
                return eyes
    raise AssertionError("the synthetic set holds too few eyes of each side")


@pytest.fixture
def served(tmp_path):
    """The tool serving a fresh manual directory on a free loopback port: (url, manual dir, eyes)."""
    import uvicorn

    manual = tmp_path / "manual"
    (manual / "images").mkdir(parents=True)
    eyes = _eyes(manual)
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
    playwright_api.expect(page.locator("#view")).to_have_attribute("data-ready", "place")
    canvas.click(disc)
    canvas.click(fovea)
    playwright_api.expect(page.locator("#view")).to_have_attribute("data-ready", "regions")


def test_annotate_two_photographs_reload_and_resume(served, page):
    url, manual, (right, left, _) = served
    expect = playwright_api.expect
    page.goto(url)
    expect(page.locator("#progress")).to_have_text("Image 1 of 3 · 0 read")

    # A right eye: place the centres, check the regions, mark a macular hole in two regions.
    canvas = Canvas(page, right)
    _place(page, canvas, right.disc_xy, right.fovea_xy)
    expect(page.locator("#photo-info")).to_contain_text("right eye")
    _check_regions_under_the_pointer(page, canvas)
    disc, fovea = np.array(_centres(page)[0]), np.array(_centres(page)[1])
    along = (fovea - disc) / np.linalg.norm(fovea - disc)
    clicks = [fovea + 0.25 * np.linalg.norm(fovea - disc) * along, fovea + 1.0 * (fovea - disc)]
    page.keyboard.press("6")
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
    expect(page.locator("#progress")).to_have_text("Image 2 of 3 · 1 read")

    # A left eye: the fovea placed off, dragged home (the overlay follows), then "normal".
    canvas = Canvas(page, left)
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
    expect(page.locator("#progress")).to_have_text("Image 3 of 3 · 2 read")

    # The grader comes back: the first photograph not read.
    page.reload()
    expect(page.locator("#progress")).to_have_text("Image 3 of 3 · 2 read")
    expect(page.locator("#view")).to_have_attribute("data-ready", "place")
    assert page.problems == []

    result = annotations.read_annotations(manual / "annotations.jsonl")
    assert result.rejections == []
    lines = [json.loads(line) for line in (manual / "annotations.jsonl").read_text().splitlines()]
    assert [(line["file"], line["annotations"]) for line in lines] == [
        ("images/1.png", [{"annotator": "r01", "findings": {"macular_hole": ["macula", "temporal"]}}]),
        ("images/2.png", [{"annotator": "r01", "findings": {}}])]
    cell = right.image.shape[1] / canvas.grid_w  # a click is good to one canvas cell
    assert np.allclose(lines[0]["disc"], right.disc_xy, atol=cell)
    assert np.allclose(lines[0]["fovea"], right.fovea_xy, atol=cell)
    assert lines[1]["fovea"] == dropped and np.allclose(lines[1]["disc"], left.disc_xy, atol=cell)
