"""Fig. 3 heatmaps, mask and heatmap overlays, ROC and figure PNGs: hand-computed values and invariants."""

import numpy as np
import pytest
from PIL import Image

from fundax import pictures


def one_hot(grid: int, row: int, col: int) -> np.ndarray:
    activation_map = np.zeros((grid, grid), np.float32)
    activation_map[row, col] = 1.0
    return activation_map


def half_max_width(heatmap: np.ndarray) -> int:
    """Pixels at or above half the peak along the row through the peak."""
    row, _ = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    return int((heatmap[row] >= 0.5 * heatmap.max()).sum())


def grey(size_px: int, level: int = 100) -> np.ndarray:
    return np.full((size_px, size_px, 3), level, np.uint8)


def open_png(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


# --- smooth_heatmap ---------------------------------------------------------------------------


@pytest.mark.parametrize("size_px, side", [(512, 33), (256, 17), (1024, 65), (299, 19), (24, 3), (16, 1), (1, 1)])
def test_kernel_is_32_px_at_512_scaled_and_made_odd_upwards(size_px, side):
    assert pictures.heatmap_kernel_px(size_px) == side


def test_kernel_of_an_empty_picture_is_an_error():
    with pytest.raises(ValueError, match="size_px"):
        pictures.heatmap_kernel_px(0)


def test_smoothed_map_is_float32_square_and_spans_zero_to_one():
    activation_map = np.random.default_rng(0).random((16, 16))
    heat = pictures.smooth_heatmap(activation_map, 256)
    assert heat.shape == (256, 256) and heat.dtype == np.float32
    assert heat.min() == 0.0 and heat.max() == 1.0


@pytest.mark.parametrize("grid, size_px, row, col",
                         [(8, 256, 2, 5), (32, 512, 16, 16), (16, 256, 3, 12), (7, 300, 4, 1)])
def test_a_hot_cell_peaks_at_its_centre(grid, size_px, row, col):
    heat = pictures.smooth_heatmap(one_hot(grid, row, col), size_px)
    peak_row, peak_col = np.unravel_index(np.argmax(heat), heat.shape)
    cell_px = size_px / grid
    # Pixel (i, j) is centred at (j + 0.5, i + 0.5); cell (r, c) at ((c + 0.5)·cell, (r + 0.5)·cell).
    assert abs(peak_col + 0.5 - (col + 0.5) * cell_px) <= 1.0
    assert abs(peak_row + 0.5 - (row + 0.5) * cell_px) <= 1.0


def test_blur_is_the_papers_at_512_px_and_scales_with_the_picture():
    # A hot cell of a 32×32 map is a bilinear tent of half-max width one cell (16 px at 512);
    # the 33 px Gaussian (sigma 5.3) widens it to about 20 px. At 256 px both halve: a kernel
    # left at 33 px would give about 14 px instead of 10.
    assert 18 <= half_max_width(pictures.smooth_heatmap(one_hot(32, 16, 16), 512)) <= 22
    assert 9 <= half_max_width(pictures.smooth_heatmap(one_hot(32, 16, 16), 256)) <= 11


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_a_constant_map_has_no_hot_spot(value):
    heat = pictures.smooth_heatmap(np.full((5, 5), value), 77)
    assert heat.shape == (77, 77) and heat.dtype == np.float32 and not heat.any()


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 1)), np.zeros(4), np.array([[0.0, np.nan]])])
def test_smoothing_rejects_what_is_not_a_finite_grid(bad):
    with pytest.raises(ValueError, match="activation_map"):
        pictures.smooth_heatmap(bad, 64)


# --- overlay_heatmap --------------------------------------------------------------------------


def test_heat_overlay_leaves_cold_pixels_alone_and_reddens_hot_ones():
    image = grey(64)
    heat = np.zeros((64, 64), np.float32)
    heat[:, 32:] = 1.0
    out = pictures.overlay_heatmap(image, heat)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :32], image[:, :32])
    red_minus_blue = out[..., 0].astype(int) - out[..., 2].astype(int)
    assert red_minus_blue[:, 32:].min() > red_minus_blue[:, :32].max()
    # jet(1) is dark red (127.5, 0, 0), blended half and half with grey 100.
    np.testing.assert_allclose(out[0, 40], (114, 50, 50), atol=1)


def test_heat_overlay_with_zero_alpha_is_the_photograph():
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    heat = np.random.default_rng(2).random((32, 32))
    np.testing.assert_array_equal(pictures.overlay_heatmap(image, heat, alpha=0.0), image)


def test_heat_overlay_needs_a_matching_heatmap_and_an_rgb_photograph():
    with pytest.raises(ValueError, match="must match"):
        pictures.overlay_heatmap(grey(32), np.zeros((16, 16)))
    with pytest.raises(ValueError, match="uint8"):
        pictures.overlay_heatmap(grey(32).astype(np.float32), np.zeros((32, 32)))


# --- mask_overlay -----------------------------------------------------------------------------


def test_mask_upsampling_gives_each_pixel_the_cell_holding_its_centre():
    # 10 pixels over 3 cells: centres (i + 0.5)·3/10 fall in cells 0,0,0,1,1,1,1,2,2,2.
    mask = np.array([[0, 1, 0]])
    up = pictures.upsample_mask(mask, 1, 10)
    np.testing.assert_array_equal(up[0], [0, 0, 0, 1, 1, 1, 1, 0, 0, 0])


def test_mask_overlay_tints_inside_outlines_its_edge_and_keeps_outside():
    image = grey(64)
    mask = np.zeros((4, 4))
    mask[1, 2] = 1  # rows 16..31, columns 32..47 of the photograph
    out = pictures.mask_overlay(image, mask)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    inside = np.zeros((64, 64), bool)
    inside[16:32, 32:48] = True
    changed = (out != image).any(axis=-1)
    np.testing.assert_array_equal(changed, inside)
    assert (out[16, 32:48] == 255).all() and (out[16:32, 47] == 255).all()  # the outline
    centre = out[24, 40]
    assert centre[1] > centre[0] and (centre < 255).any()  # tinted, not outlined


def test_a_mask_over_everything_has_no_outline_at_the_image_border():
    out = pictures.mask_overlay(grey(32), np.ones((2, 2)))
    assert not (out == 255).all(axis=-1).any()


def test_an_empty_mask_leaves_the_photograph_unchanged():
    image = np.random.default_rng(3).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(pictures.mask_overlay(image, np.zeros((3, 3))), image)


# --- ROC curves -------------------------------------------------------------------------------


def roc(power: float) -> tuple[np.ndarray, np.ndarray]:
    fpr = np.linspace(0, 1, 41)
    return fpr, fpr**power


def test_draw_roc_writes_a_square_png_into_new_folders(tmp_path):
    fpr, tpr = roc(0.2)
    out = pictures.draw_roc(fpr, tpr, tmp_path / "a" / "b" / "roc.png", auroc=0.95,
                            operating_point=(0.12, 0.93), title="macular hole", label="guided")
    assert out == tmp_path / "a" / "b" / "roc.png"
    width, height = open_png(out)
    assert 400 <= width <= 800 and 400 <= height <= 800 and abs(width - height) < 0.15 * width


def test_draw_roc_without_auroc_or_operating_point(tmp_path):
    fpr, tpr = roc(0.5)
    out = pictures.draw_roc(fpr, tpr, tmp_path / "roc.png", auroc=None, operating_point=None)
    assert min(open_png(out)) >= 400


def test_draw_rocs_puts_several_runs_on_one_plot(tmp_path):
    curves = [dict(zip(("fpr", "tpr"), roc(p)), auroc=a, operating_point=(0.2, 0.8), label=name)
              for p, a, name in ((0.2, 0.95, "guided"), (0.4, 0.87, "unguided"))]
    out = pictures.draw_rocs(curves, tmp_path / "rocs.png", title="two runs")
    assert min(open_png(out)) >= 400


@pytest.mark.parametrize("curve, match", [
    (dict(fpr=[0, 1]), "no 'tpr'"),
    (dict(fpr=[0, 0.5, 1], tpr=[0, 1]), "same length"),
    (dict(fpr=[0, 2], tpr=[0, 1]), r"\[0, 1\]"),
])
def test_draw_rocs_rejects_bad_curves(tmp_path, curve, match):
    with pytest.raises(ValueError, match=match):
        pictures.draw_rocs([curve], tmp_path / "roc.png")
    assert not (tmp_path / "roc.png").exists()


# --- Fig. 3 and single heatmaps ---------------------------------------------------------------


def fig3_row(index: int, num_maps: int) -> dict:
    rng = np.random.default_rng(index)
    mask = np.zeros((8, 8))
    mask[2:5, 3:7] = 1
    maps = [one_hot(8, 3, 4) + 0.1 * rng.random((8, 8)), rng.random((8, 8))][:num_maps]
    titles = ["with guidance (p=0.97)", "without guidance (p=0.91)"][:num_maps]
    image = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    return dict(image=image, mask=mask, maps=maps, map_titles=titles, label=f"syn-test-{index:06d} (macular hole)")


def test_figure3_has_about_300_px_per_cell_in_four_or_three_columns(tmp_path):
    four = open_png(pictures.draw_figure3([fig3_row(0, 2), fig3_row(1, 2)], tmp_path / "four.png", title="Fig. 3"))
    three = open_png(pictures.draw_figure3([fig3_row(0, 1), fig3_row(1, 1)], tmp_path / "three.png"))
    assert 4 * 250 <= four[0] <= 4 * 350 and 2 * 250 <= four[1] <= 2 * 400
    assert 3 * 250 <= three[0] <= 3 * 350 and 2 * 250 <= three[1] <= 2 * 400
    assert four[0] - three[0] == pytest.approx(300, abs=30)


def test_figure3_leaves_blank_cells_for_rows_with_fewer_maps(tmp_path):
    width, _ = open_png(pictures.draw_figure3([fig3_row(0, 2), fig3_row(1, 1)], tmp_path / "mixed.png"))
    assert 4 * 250 <= width <= 4 * 350


def test_figure3_names_what_a_row_lacks(tmp_path):
    row = fig3_row(1, 2)
    del row["image"]
    with pytest.raises(ValueError, match=r"row 1 lacks \['image'\]"):
        pictures.draw_figure3([fig3_row(0, 2), row], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("change, match", [
    (dict(map_titles=["only one"]), "2 maps but 1 map_titles"),
    (dict(maps=[]), "no activation maps"),
    (dict(image=np.zeros((128, 96, 3), np.uint8)), "square"),
    (dict(mask=np.zeros((2, 2, 2))), "mask"),
])
def test_figure3_rejects_malformed_rows(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        pictures.draw_figure3([{**fig3_row(0, 2), **change}], tmp_path / "bad.png")


def test_figure3_column_titles_must_match_the_columns(tmp_path):
    with pytest.raises(ValueError, match="4 columns but 3 column_titles"):
        pictures.draw_figure3([fig3_row(0, 2)], tmp_path / "bad.png", column_titles=["a", "b", "c"])


def test_draw_heatmap_shows_photograph_and_overlay_side_by_side(tmp_path):
    out = pictures.draw_heatmap(grey(128), one_hot(8, 3, 4), tmp_path / "pred" / "heat.png", title="p=0.97")
    width, height = open_png(out)
    assert 600 <= width <= 900 and 300 <= height <= 500
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    # The hot cell shows as red on the right panel only.
    red = (pixels[..., 0] - pixels[..., 2] > 60)
    columns = np.flatnonzero(red.any(axis=0))
    assert columns.size and columns.min() > width / 2


def test_absolute_heatmap_of_an_absent_prediction_stays_cold_where_the_normalised_one_glows():
    # A photograph scored absent: the whole map near 0.006, the macula a little warmer.
    activation = np.full((8, 8), 0.006, np.float32)
    activation[3:5, 3:5] = 0.012
    absolute = pictures.smooth_heatmap(activation, 64, normalise=False)
    assert absolute.max() <= 0.012 + 1e-6 and absolute.min() >= 0.006 - 1e-6  # blurring adds no heat
    normalised = pictures.smooth_heatmap(activation, 64)
    assert normalised.max() == pytest.approx(1.0)
    image = grey(64)
    # alpha · heat ≤ 0.006: the photograph shows through within a grey level.
    assert np.abs(pictures.overlay_heatmap(image, absolute).astype(int) - image).max() <= 1
    assert np.abs(pictures.overlay_heatmap(image, normalised).astype(int) - image).max() > 40


def test_absolute_heatmap_keeps_a_confident_map_and_clips_to_one():
    hot = np.ones((4, 4), np.float32) * 1.5  # beyond A's range: clipped, not rescaled
    np.testing.assert_array_equal(pictures.smooth_heatmap(hot, 32, normalise=False), np.ones((32, 32), np.float32))
    np.testing.assert_allclose(pictures.smooth_heatmap(np.full((4, 4), 0.7, np.float32), 32, normalise=False), 0.7,
                               rtol=1e-6)


def test_draw_heatmap_prints_the_decision_and_a_colour_bar(tmp_path):
    quiet = pictures.draw_heatmap(grey(128), np.full((8, 8), 0.006, np.float32), tmp_path / "a.png")
    told = pictures.draw_heatmap(grey(128), np.full((8, 8), 0.006, np.float32), tmp_path / "b.png",
                                 decision="absent: p = 0.006 < threshold 0.310")
    a = np.asarray(Image.open(quiet).convert("RGB")).astype(int)
    b = np.asarray(Image.open(told).convert("RGB")).astype(int)
    assert a.shape == b.shape
    # The decision box is dark on the overlay panel, nowhere on the photograph (the left panel,
    # grey 100 from the left edge up to the gap between the panels).
    changed = np.abs(a - b).sum(axis=-1) > 60
    columns = np.flatnonzero(changed.any(axis=0))
    photograph_end = np.flatnonzero((a[a.shape[0] // 2] != 100).any(axis=-1) & (np.arange(a.shape[1]) > 20))[0]
    assert columns.size and columns.min() > photograph_end
    # The colour bar: a column of jet colours right of the overlay, red at its top, blue at its bottom.
    red = (a[..., 0] > 150) & (a[..., 2] < 80)
    blue = (a[..., 2] > 150) & (a[..., 0] < 80)
    assert red.any() and blue.any()
    assert np.flatnonzero(red.any(axis=1)).min() < np.flatnonzero(blue.any(axis=1)).max()
