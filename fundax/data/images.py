"""Loading, checking and preprocessing fundus photographs of a manual directory.

Choices callers rely on:

* Formats: JPEG, PNG and TIFF, recognised from the content, not the extension.
  MPO (a JPEG with further pictures appended, written by some cameras) reads as
  its primary picture; any other file holding several frames is rejected.
* Pixel modes: 8-bit RGB and grayscale (replicated to RGB). RGBA and LA lose
  their alpha channel, palette images are expanded to RGB. 16-bit samples (also
  16-bit RGB, which PIL would silently cut to 8 bits), 32-bit integer, float,
  CMYK, bilevel and other modes are rejected.
* EXIF orientation is not applied: the disc and fovea coordinates of
  ``annotations.jsonl`` refer to the pixels as stored.
* :data:`DEFAULT_MAX_PIXELS` is 50 million pixels, about twice the largest
  fundus cameras (6000×4000) and 150 MB decoded; the size is read from the
  header before anything is decoded. PIL's own check still applies on top: it
  warns above ``Image.MAX_IMAGE_PIXELS`` (89 million by default) and refuses
  twice that, which becomes an ImageError. Its warning is left a warning: with
  the default limit such images are refused here anyway, and changing warning
  filters is not thread-safe (images are decoded in threads when preparing).
* Every image is decoded in full, so a truncated file is an error. This relies
  on ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` keeping its default, False.
"""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 50_000_000
FUNDUS_THRESHOLD = 15
"""Brightness (0-255, on the denoised max over channels) above which a pixel is fundus."""

_FORMATS = ("JPEG", "MPO", "PNG", "TIFF")
_MODES = ("RGB", "L", "RGBA", "LA", "P")
_DENOISE_KSIZE = 5
# Parts of the field of view smaller than this fraction of the largest (burned-in
# text, specks) do not widen the fundus box.
_MIN_PART = 0.05


class ImageError(ValueError):
    """Why an image cannot be used (message = the reason)."""


def _raw_modes(im: Image.Image) -> Iterator[str]:
    """The sample layouts PIL will decode from (e.g. 'RGB;16B'), before ``load``."""
    for tile in im.tile:
        args = tile.args
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str):
            yield raw


def _check_header(im: Image.Image, path: pathlib.Path, max_pixels: int) -> None:
    if im.format not in _FORMATS:
        raise ImageError(f"{path}: unsupported format {im.format}; want JPEG, PNG or TIFF")
    width, height = im.size
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}×{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    frames = getattr(im, "n_frames", 1)
    if im.format != "MPO" and frames > 1:
        raise ImageError(f"{path}: holds {frames} frames; want a single picture")
    if "16" in im.mode or any(";16" in raw for raw in _raw_modes(im)):
        raise ImageError(
            f"{path}: 16-bit samples (mode {im.mode}) are not supported; want 8-bit RGB or grayscale"
        )
    if im.mode not in _MODES:
        raise ImageError(f"{path}: pixel mode {im.mode} is not supported; want 8-bit RGB or grayscale")


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The photograph at ``path`` as uint8 (H, W, 3) RGB; ImageError naming the file if unusable."""
    path = pathlib.Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ImageError(f"{path}: not a regular file")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ImageError(f"{path}: cannot be read ({e.strerror})") from None
    with f:
        try:
            im = Image.open(f)
        except Image.DecompressionBombError as e:
            raise ImageError(f"{path}: too many pixels ({e})") from None
        except Image.UnidentifiedImageError:
            raise ImageError(f"{path}: not an image in a known format; want JPEG, PNG or TIFF") from None
        # Decoders of untrusted files fail in many ways; each means the file is unusable.
        except Exception as e:
            raise ImageError(f"{path}: corrupt image header ({type(e).__name__}: {e})") from None
        with im:
            _check_header(im, path, max_pixels)
            try:
                im.load()
            except Exception as e:
                raise ImageError(f"{path}: truncated or corrupt ({type(e).__name__}: {e})") from None
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.array(rgb, dtype=np.uint8)


def check_inside(
    disc: Sequence[float], fovea: Sequence[float], width: int, height: int
) -> None:
    """ImageError unless disc and fovea (x, y) lie in [0, width] × [0, height]."""
    for name, (x, y) in (("disc", disc), ("fovea", fovea)):
        if not (0 <= x <= width and 0 <= y <= height):
            raise ImageError(
                f"{name} ({x:g}, {y:g}) lies outside the image: x must be in [0, {width}], y in [0, {height}]"
            )


def _check_rgb(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"want a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")


def fundus_box(image: np.ndarray, threshold: int = FUNDUS_THRESHOLD) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), bottom and right exclusive, of the fundus field of view.

    A pixel is fundus where the median-filtered maximum over channels exceeds
    ``threshold``, which drops specks and JPEG noise in the black surround; the
    box holds the largest connected part of the fundus and every part at least
    5% as large, which leaves out burned-in text.
    """
    _check_rgb(image)
    brightness = cv2.medianBlur(np.ascontiguousarray(image.max(axis=2)), _DENOISE_KSIZE)
    fundus = (brightness > threshold).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(fundus, connectivity=8)
    if count <= 1:
        raise ImageError(f"no fundus found: no part of the image is brighter than {threshold}")
    parts = stats[1:]
    areas = parts[:, cv2.CC_STAT_AREA]
    parts = parts[areas >= _MIN_PART * areas.max()]
    left, top = parts[:, cv2.CC_STAT_LEFT], parts[:, cv2.CC_STAT_TOP]
    right, bottom = left + parts[:, cv2.CC_STAT_WIDTH], top + parts[:, cv2.CC_STAT_HEIGHT]
    return int(top.min()), int(left.min()), int(bottom.max()), int(right.max())


def preprocess(
    image: np.ndarray, disc: Sequence[float], fovea: Sequence[float], size_px: int
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Crop to the fundus, pad to a centred black square, resize to ``size_px``².

    Returns the uint8 (size_px, size_px, 3) image and disc and fovea carried
    through the same transform: x' = (x − left + pad_left)·scale and
    y' = (y − top + pad_top)·scale with scale = size_px / side of the square.
    """
    if size_px < 1:
        raise ValueError(f"size_px must be >= 1, got {size_px}")
    top, left, bottom, right = fundus_box(image)
    height, width = bottom - top, right - left
    side = max(height, width)
    pad_top, pad_left = (side - height) // 2, (side - width) // 2
    square = np.zeros((side, side, 3), np.uint8)
    square[pad_top : pad_top + height, pad_left : pad_left + width] = image[top:bottom, left:right]
    if side != size_px:
        interpolation = cv2.INTER_AREA if side > size_px else cv2.INTER_CUBIC
        square = cv2.resize(square, (size_px, size_px), interpolation=interpolation)
    scale = size_px / side

    def carry(point: Sequence[float]) -> tuple[float, float]:
        return (float(point[0]) - left + pad_left) * scale, (float(point[1]) - top + pad_top) * scale

    return square, carry(disc), carry(fovea)
