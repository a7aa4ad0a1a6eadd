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
* :data:`MIN_SIDE_PX`: ``prepare`` refuses a photograph whose shorter side is
  under 32 px, also read from the header. Such a file is a thumbnail or a
  placeholder: resized to the prepared square it would be mostly interpolation,
  with no lesion left to grade.
* Every image is decoded in full, so a truncated file is an error. This relies
  on ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` keeping its default, False.
"""

from __future__ import annotations

import contextlib
import dataclasses

import os
import pathlib
import stat
from collections.abc import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 50_000_000
MIN_SIDE_PX = 32
"""The shortest side, in pixels, of a photograph that ``prepare`` accepts."""
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


def check_header(im: Image.Image, path: pathlib.Path, max_pixels: int, modes: tuple[str, ...] = _MODES,
                 min_side_px: int = 1) -> None:
    """ImageError naming ``path`` unless the opened (not yet decoded) image is one prepare can read."""
    if im.format not in _FORMATS:
        raise ImageError(f"{path}: unsupported format {im.format}; want JPEG, PNG or TIFF")
    width, height = im.size
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: {width}×{height} = {width * height} pixels, over the limit of {max_pixels}"
        )
    if min(width, height) < min_side_px:
        raise ImageError(f"{path}: {width}×{height} pixels; the shorter side must be at least {min_side_px} px")
    frames = getattr(im, "n_frames", 1)
    if im.format != "MPO" and frames > 1:
        raise ImageError(f"{path}: holds {frames} frames; want a single picture")
    if "16" in im.mode or any(";16" in raw for raw in _raw_modes(im)):
        raise ImageError(
            f"{path}: 16-bit samples (mode {im.mode}) are not supported; want 8-bit RGB or grayscale"
        )
    if im.mode not in modes:
        raise ImageError(f"{path}: pixel mode {im.mode} is not supported; want 8-bit RGB or grayscale")


@contextlib.contextmanager
def _opened(path: pathlib.Path, max_pixels: int, modes: tuple[str, ...], min_side_px: int) -> Iterator[Image.Image]:
    """The image at ``path`` opened and its header checked, not yet decoded; ImageError naming the file."""
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
            check_header(im, path, max_pixels, modes, min_side_px)
            yield im


def image_size(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               modes: tuple[str, ...] = _MODES, min_side_px: int = 1) -> tuple[int, int]:
    """(width, height) of the photograph at ``path`` from its header, checked as :func:`load_image` checks it."""
    with _opened(pathlib.Path(path), max_pixels, modes, min_side_px) as im:
        return im.size


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               modes: tuple[str, ...] = _MODES, min_side_px: int = 1) -> np.ndarray:
    """The photograph at ``path`` as uint8 (H, W, 3) RGB; ImageError naming the file if unusable.

    ``max_pixels`` and ``min_side_px`` bound its size, checked before it is decoded.
    """
    path = pathlib.Path(path)
    with _opened(path, max_pixels, modes, min_side_px) as im:
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


@dataclasses.dataclass(frozen=True)
class SquareCrop:
    """The prepare-time transform of one photograph: crop to the fundus, pad to a centred square, resize.

    A point (x, y) goes to ((x − left + pad_left)·scale, (y − top + pad_top)·scale) with
    scale = size_px / side; a lesion mask of the photograph goes through the same crop.
    """

    top: int
    left: int
    bottom: int
    right: int
    size_px: int

    @classmethod
    def of(cls, image: np.ndarray, size_px: int) -> SquareCrop:
        if size_px < 1:
            raise ValueError(f"size_px must be >= 1, got {size_px}")
        return cls(*fundus_box(image), size_px)

    @property
    def side(self) -> int:
        return max(self.bottom - self.top, self.right - self.left)

    @property
    def pads(self) -> tuple[int, int]:
        """(top, left) padding inside the square."""
        return (self.side - (self.bottom - self.top)) // 2, (self.side - (self.right - self.left)) // 2

    def _square(self, image: np.ndarray) -> np.ndarray:
        pad_top, pad_left = self.pads
        height, width = self.bottom - self.top, self.right - self.left
        square = np.zeros((self.side, self.side, *image.shape[2:]), image.dtype)
        square[pad_top : pad_top + height, pad_left : pad_left + width] = image[self.top : self.bottom,
                                                                                 self.left : self.right]
        return square

    def image(self, image: np.ndarray) -> np.ndarray:
        """The uint8 (size_px, size_px, 3) photograph."""
        square = self._square(image)
        if self.side != self.size_px:
            interpolation = cv2.INTER_AREA if self.side > self.size_px else cv2.INTER_CUBIC
            square = cv2.resize(square, (self.size_px, self.size_px), interpolation=interpolation)
        return square

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """A bool (H, W) mask of the photograph as a bool (size_px, size_px) mask.

        A prepared pixel is on the mask when any part of it covers the original mask
        (area resampling, then > 0), so a lesion a few pixels wide is never lost.
        """
        square = self._square(mask.astype(np.float32))
        if self.side != self.size_px:
            interpolation = cv2.INTER_AREA if self.side > self.size_px else cv2.INTER_NEAREST
            square = cv2.resize(square, (self.size_px, self.size_px), interpolation=interpolation)
        return square > 0

    def point(self, point: Sequence[float]) -> tuple[float, float]:
        pad_top, pad_left = self.pads
        scale = self.size_px / self.side
        return (float(point[0]) - self.left + pad_left) * scale, (float(point[1]) - self.top + pad_top) * scale


def preprocess(
    image: np.ndarray, disc: Sequence[float], fovea: Sequence[float], size_px: int
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Crop to the fundus, pad to a centred black square, resize to ``size_px``².

    Returns the uint8 (size_px, size_px, 3) image and disc and fovea carried
    through the same transform (:class:`SquareCrop`).
    """
    crop = SquareCrop.of(image, size_px)
    return crop.image(image), crop.point(disc), crop.point(fovea)


def load_mask(path: str | os.PathLike, shape: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A lesion mask file as bool (H, W): nonzero is lesion; ImageError naming the file if unusable.

    It must be a 1- or 8-bit image (bilevel, grayscale, RGB or palette) of the photograph's ``shape`` (H, W).
    """
    rgb = load_image(path, max_pixels=max_pixels, modes=(*_MODES, "1"))
    if rgb.shape[:2] != tuple(shape):
        raise ImageError(f"{path}: the lesion mask is {rgb.shape[1]}×{rgb.shape[0]} pixels but the photograph "
                         f"is {shape[1]}×{shape[0]}")
    return rgb.max(axis=2) > 0
