"""Tests of fundax.data.images: every failure kind, modes, the fundus box and the exact transform."""

from __future__ import annotations

import os
import pathlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from fundax.data import images


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def save(path: pathlib.Path, array: np.ndarray, **kwargs) -> pathlib.Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def field(height: int, width: int, box: tuple[int, int, int, int], value: int = 100) -> np.ndarray:
    """A black image with a uniform rectangular field of view (top, left, bottom, right)."""
    image = np.zeros((height, width, 3), np.uint8)
    top, left, bottom, right = box
    image[top:bottom, left:right] = value
    return image


# --- loading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.png", "a.tif", "a.tiff"])
def test_lossless_round_trip(tmp_path, name):
    array = rgb(30, 50)
    loaded = images.load_image(save(tmp_path / name, array))
    assert loaded.dtype == np.uint8 and loaded.flags.writeable
    np.testing.assert_array_equal(loaded, array)


def test_jpeg_loads_as_rgb(tmp_path):
    array = np.zeros((40, 60, 3), np.uint8)
    array[..., 0] = 200  # red, so that a BGR/RGB swap would show
    loaded = images.load_image(save(tmp_path / "a.jpg", array, quality=95))
    assert loaded.shape == (40, 60, 3)
    assert abs(int(loaded[..., 0].mean()) - 200) <= 2 and loaded[..., 2].max() <= 5


def test_format_comes_from_content_not_extension(tmp_path):
    array = rgb(10, 12)
    path = save(tmp_path / "a.jpg", array, format="PNG")
    np.testing.assert_array_equal(images.load_image(path), array)


def test_mpo_reads_as_its_primary_picture(tmp_path):
    primary, second = Image.fromarray(field(20, 30, (0, 0, 20, 30), 200)), Image.fromarray(rgb(20, 30))
    primary.save(tmp_path / "a.jpg", format="MPO", save_all=True, append_images=[second])
    loaded = images.load_image(tmp_path / "a.jpg")
    assert loaded.shape == (20, 30, 3) and abs(loaded.astype(int) - 200).max() <= 2


def test_grayscale_is_replicated_to_rgb(tmp_path):
    gray = rgb(20, 30)[..., 0]
    loaded = images.load_image(save(tmp_path / "g.png", gray))
    assert loaded.shape == (20, 30, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], gray)


def test_alpha_is_dropped_and_palette_expanded(tmp_path):
    array = rgb(20, 30)
    rgba = np.concatenate([array, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(images.load_image(save(tmp_path / "a.png", rgba)), array)
    palette = Image.fromarray(array).quantize(16)
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(images.load_image(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))


def test_exif_orientation_is_not_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(rgb(20, 50)).save(tmp_path / "a.jpg", exif=exif)
    assert images.load_image(tmp_path / "a.jpg").shape == (20, 50, 3)


def test_missing_file(tmp_path):
    with pytest.raises(images.ImageError, match=r"nope\.png: no such file$"):
        images.load_image(tmp_path / "nope.png")


def test_directory(tmp_path):
    (tmp_path / "d.png").mkdir()
    with pytest.raises(images.ImageError, match=r"d\.png: not a regular file$"):
        images.load_image(tmp_path / "d.png")


def test_text_file_named_png(tmp_path):
    (tmp_path / "t.png").write_text("not a picture\n")
    with pytest.raises(images.ImageError, match=r"t\.png: not an image in a known format"):
        images.load_image(tmp_path / "t.png")


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated(tmp_path, ext):
    ok, encoded = cv2.imencode(ext, rgb(120, 150))
    assert ok
    path = tmp_path / f"cut{ext}"
    path.write_bytes(encoded.tobytes()[: encoded.size // 2])
    with pytest.raises(images.ImageError, match=r"cut\.(png|jpg): truncated or corrupt"):
        images.load_image(path)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP"])
def test_unsupported_format(tmp_path, fmt):
    path = save(tmp_path / "a.png", rgb(10, 10), format=fmt)
    with pytest.raises(images.ImageError, match=f"a.png: unsupported format {fmt}; want JPEG, PNG or TIFF"):
        images.load_image(path)


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png(tmp_path, channels):
    # PIL would read 16-bit RGB as 8-bit RGB without a word; cv2 writes both kinds.
    array = np.full((10, 12, channels), 40000, np.uint16).squeeze()
    path = tmp_path / "deep.png"
    assert cv2.imwrite(os.fspath(path), array)
    with pytest.raises(images.ImageError, match=r"deep\.png: 16-bit samples .* want 8-bit RGB or grayscale"):
        images.load_image(path)


@pytest.mark.parametrize(
    "array, mode, ext",
    [
        (np.full((8, 8), 0.5, np.float32), "F", ".tif"),
        (np.full((8, 8, 3), 80, np.uint8), "CMYK", ".jpg"),
        (np.full((8, 8), 255, np.uint8), "1", ".png"),
    ],
)
def test_unsupported_mode(tmp_path, array, mode, ext):
    path = tmp_path / f"m{ext}"
    Image.fromarray(array).convert(mode).save(path)
    reason = f"pixel mode {mode} is not supported; want 8-bit RGB or grayscale"
    with pytest.raises(images.ImageError, match=reason):
        images.load_image(path)


def test_several_frames(tmp_path):
    first, second = Image.fromarray(rgb(8, 8, 1)), Image.fromarray(rgb(8, 8, 2))
    first.save(tmp_path / "pages.tif", save_all=True, append_images=[second])
    with pytest.raises(images.ImageError, match="holds 2 frames; want a single picture"):
        images.load_image(tmp_path / "pages.tif")


def test_over_max_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    path = save(tmp_path / "big.png", rgb(40, 50))
    assert images.load_image(path, max_pixels=2000).shape == (40, 50, 3)
    decode = lambda self: pytest.fail("decoded an image over the limit")  # noqa: E731
    monkeypatch.setattr(ImageFile.ImageFile, "load", decode)
    with pytest.raises(images.ImageError, match=r"big\.png: 50×40 = 2000 pixels, over the limit of 1999"):
        images.load_image(path, max_pixels=1999)


@pytest.mark.parametrize("height, width", [(1, 1), (31, 400), (400, 31)])
def test_under_min_side_is_refused_before_decoding(tmp_path, monkeypatch, height, width):
    path = save(tmp_path / "small.png", rgb(height, width))
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded an image under the limit"))
    with pytest.raises(images.ImageError, match=rf"small\.png: {width}×{height} pixels; the shorter side must be "
                                                rf"at least {images.MIN_SIDE_PX} px"):
        images.load_image(path, min_side_px=images.MIN_SIDE_PX)


def test_min_side_is_inclusive_and_off_by_default(tmp_path):
    assert images.MIN_SIDE_PX == 32
    assert images.load_image(save(tmp_path / "a.png", rgb(32, 40)), min_side_px=32).shape == (32, 40, 3)
    assert images.load_image(save(tmp_path / "b.png", rgb(1, 1))).shape == (1, 1, 3)


def test_pil_decompression_bomb_error(tmp_path, monkeypatch):
    path = save(tmp_path / "bomb.png", rgb(40, 50))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(images.ImageError, match=r"bomb\.png: too many pixels"):
        images.load_image(path)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode"
)
def test_unreadable_file(tmp_path):
    path = save(tmp_path / "secret.png", rgb(8, 8))
    path.chmod(0)
    try:
        with pytest.raises(images.ImageError, match=r"secret\.png: cannot be read \(Permission denied\)"):
            images.load_image(path)
    finally:
        path.chmod(0o600)


def test_unreadable_file_simulated(tmp_path, monkeypatch):
    path = save(tmp_path / "secret.png", rgb(8, 8))

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", refuse, raising=False)
    with pytest.raises(images.ImageError, match=r"secret\.png: cannot be read \(Permission denied\)"):
        images.load_image(path)


# --- check_inside -----------------------------------------------------------------------------


def test_check_inside_accepts_the_closed_frame():
    images.check_inside((0, 0), (40, 30), width=40, height=30)


@pytest.mark.parametrize(
    "disc, fovea, name",
    [
        ((-0.1, 5), (10, 5), "disc"),
        ((5, 5), (40.5, 5), "fovea"),
        ((5, 30.01), (10, 5), "disc"),
        ((5, 5), (10, float("nan")), "fovea"),
    ],
)
def test_check_inside_rejects_outside(disc, fovea, name):
    reason = rf"^{name} .* lies outside the image: x must be in \[0, 40\], y in \[0, 30\]"
    with pytest.raises(images.ImageError, match=reason):
        images.check_inside(disc, fovea, width=40, height=30)


# --- fundus_box -------------------------------------------------------------------------------


def disk_image(height: int, width: int, centre: tuple[int, int], radius: int, seed: int = 0) -> np.ndarray:
    """A reddish disk on a noisy black surround with salt specks and a burned-in label."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 12, (height, width, 3), np.uint8)
    rows, cols = np.mgrid[:height, :width]
    inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 < radius**2
    image[inside] = (150, 70, 30)
    specks = rng.integers(0, [height, width], (15, 2))
    image[specks[:, 0], specks[:, 1]] = 255
    image[height - 6 : height - 3, 2:12] = 255  # a small text-like mark in the corner
    return image


def test_fundus_box_of_a_disk_ignores_noise_specks_and_labels():
    image = disk_image(150, 190, centre=(70, 100), radius=60)
    # The disk covers rows 11..129 and columns 41..159 (distance < 60 from the centre).
    assert images.fundus_box(image) == (11, 41, 130, 160)


def test_fundus_box_of_a_full_frame():
    assert images.fundus_box(np.full((20, 30, 3), 90, np.uint8)) == (0, 0, 20, 30)


def test_fundus_box_of_a_rectangle_is_exact():
    assert images.fundus_box(field(60, 80, (7, 9, 50, 71))) == (7, 9, 50, 71)


def test_no_fundus_in_a_black_or_speckled_image():
    image = np.zeros((50, 60, 3), np.uint8)
    with pytest.raises(images.ImageError, match="no fundus found"):
        images.fundus_box(image)
    image[10, 10] = image[30, 40] = 255
    with pytest.raises(images.ImageError, match="no fundus found"):
        images.fundus_box(image)


# --- preprocess -------------------------------------------------------------------------------


def test_preprocess_hand_computed():
    # Field rows 10..89, columns 20..139: 80×120, padded to 120×120 with 20 rows on top, halved.
    image = field(100, 160, (10, 20, 90, 140))
    out, disc, fovea = images.preprocess(image, (50.0, 40.0), (110.5, 60.25), size_px=60)
    assert out.shape == (60, 60, 3) and out.dtype == np.uint8
    assert disc == (15.0, 25.0)
    assert fovea == (45.25, 35.125)
    assert (out[:10] == 0).all() and (out[50:] == 0).all() and (out[10:50] == 100).all()


def test_preprocess_without_resizing_only_crops_and_pads():
    image = field(50, 40, (5, 10, 35, 31))  # a 30×21 field: 4 black columns left, 5 right
    out, disc, fovea = images.preprocess(image, (10, 5), (31, 35), size_px=30)
    np.testing.assert_array_equal(out, field(30, 30, (0, 4, 30, 25)))
    assert disc == (4.0, 0.0) and fovea == (25.0, 30.0)


@pytest.mark.parametrize(
    "height, width, box, size_px",
    [
        (180, 120, (5, 10, 175, 110), 64),  # tall, shrunk by a non-integer factor
        (120, 200, (20, 3, 100, 197), 64),  # wide, shrunk
        (120, 200, (20, 3, 100, 197), 97),  # wide, shrunk by less than 2
        (70, 90, (5, 0, 65, 90), 150),  # wide, enlarged
        (90, 60, (0, 6, 90, 54), 131),  # tall, enlarged
    ],
)
def test_a_bright_pixel_lands_where_its_centre_is_carried(height, width, box, size_px):
    top, left, bottom, right = box
    rng = np.random.default_rng(height * width + size_px)
    for _ in range(6):
        row, col = rng.integers(top + 2, bottom - 2), rng.integers(left + 2, right - 2)
        image = field(height, width, box)
        image[row, col] = 255
        out, centre, _ = images.preprocess(image, (col + 0.5, row + 0.5), (left, top), size_px)
        brightness = out.astype(int).sum(axis=2)
        out_row, out_col = np.unravel_index(np.argmax(brightness), brightness.shape)
        assert abs(out_col + 0.5 - centre[0]) <= 0.5 + 1e-9
        assert abs(out_row + 0.5 - centre[1]) <= 0.5 + 1e-9


@pytest.mark.parametrize("height, width", [(120, 60), (60, 120)])
def test_non_square_inputs_are_centred_on_black(height, width):
    image = field(height, width, (0, 0, height, width))
    out, disc, fovea = images.preprocess(image, (0, 0), (width, height), 40)
    assert out.shape == (40, 40, 3)
    if height > width:
        assert (out[:, :10] == 0).all() and (out[:, 30:] == 0).all() and (out[:, 10:30] == 100).all()
        assert disc == (10.0, 0.0) and fovea == (30.0, 40.0)
    else:
        assert (out[:10] == 0).all() and (out[30:] == 0).all() and (out[10:30] == 100).all()
        assert disc == (0.0, 10.0) and fovea == (40.0, 30.0)


def test_preprocess_rejects_a_bad_size():
    with pytest.raises(ValueError, match="size_px"):
        images.preprocess(field(10, 10, (0, 0, 10, 10)), (1, 1), (5, 5), 0)
