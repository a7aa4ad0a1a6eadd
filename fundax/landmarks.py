"""Find the optic disc and the fovea in a colour fundus photograph, by classical image analysis.

    python -m fundax.landmarks --images=DIR [--out=landmarks.csv] [--picture=DIR]

:func:`locate` works on the photograph scaled to :data:`WORKING_SIDE_PX` and reports the
centres in pixels of the photograph it was given (x right, y down, a pixel's centre at
+0.5, as ``annotations.jsonl`` has them). Either eye: the disc may lie left or right.

* Field of view: the largest bright part of the photograph; its width is the field's
  diameter (a field cut at the top and bottom keeps its width).
* Disc: vessels are closed away (a grey closing wider than a vessel), then the brightest
  blob of about a disc's size, as a difference of two masked Gaussians of the green
  channel, relative to its surround.
* Fovea: the darkest blob of about half a disc's size, in the red channel (vessels and
  hemorrhages are dark mostly in green), in a band on the temporal side of the disc
  (towards the middle of the field), 0.2–0.6 field diameters from it, within 35° of the
  horizontal through it and 0.3 diameters of the field's middle; a prior favours the
  middle (photographs are centred on the macula) and the horizontal.
* Confidence: each blob's contrast with its surround and how far it stands above the next
  best candidate; the fovea's also how plausibly it lies from the disc. A confidence under
  :data:`CONFIDENT` is named in ``flags``; the centres are then a guess, not to be used.

The command writes one CSV row per photograph (image, disc_x, disc_y, fovea_x, fovea_y,
disc_confidence, fovea_confidence, flags, the flags joined by ``;``) and, with
``--picture``, a PNG per photograph with both centres drawn. An unreadable photograph is
one ``error:`` line naming it; the others are still done, and the exit status is 1.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import sys

import cv2
import numpy as np
from absl import flags

from fundax import cli
from fundax.data import images

WORKING_SIDE_PX = 256
"""The longer side of the photograph as :func:`locate` analyses it."""
CONFIDENT = 0.5
"""A confidence under this is flagged."""
DISC_RADIUS_FOV = 1 / 14
"""The expected disc radius, in field-of-view diameters (discs are 1/6 to 1/9 of the field across)."""
FOVEA_DISTANCE_FOV = (0.2, 0.6)
"""Where the fovea is sought: its distance from the disc, in field-of-view diameters."""
FOVEA_ANGLE_DEG = 35.0
"""... and at most this far off the horizontal through the disc ..."""
FOVEA_FROM_CENTRE_FOV = 0.3
"""... and at most this far from the middle of the field, in its diameters (clear of the darker rim)."""
VESSEL_CLOSE_DISC_R = 0.5
"""The grey closing that removes vessels is this many disc radii across."""
FOVEA_CONTRAST = 0.03
"""A clear fovea's darkness, as a share of the field's median red."""
FOVEA_CENTRE_WEIGHT = 33.0
"""The fovea's prior, in units of a clear fovea's contrast: this times (distance from the field's middle
in its diameters)², ..."""
FOVEA_LEVEL_WEIGHT = 1.7
"""... plus this times (angle off the horizontal through the disc / FOVEA_ANGLE_DEG)²."""
_FOV_THRESHOLD = 15  # as fundax.data.images.FUNDUS_THRESHOLD: brighter than this (0-255) is fundus
_LOW = ("low disc confidence", "low fovea confidence")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class Landmarks:
    """Disc and fovea centres (x, y) in pixels of the photograph, with how far to trust each."""

    disc: tuple[float, float]
    fovea: tuple[float, float]
    disc_confidence: float
    fovea_confidence: float
    flags: tuple[str, ...] = ()

    @property
    def confident(self) -> bool:
        return not self.flags


@dataclasses.dataclass(frozen=True)
class _Field:
    """The field of view on the working image: its mask, centre and diameter in working pixels."""

    mask: np.ndarray
    centre: tuple[float, float]
    diameter: float


def _field_of_view(rgb: np.ndarray) -> _Field | None:
    brightness = cv2.medianBlur(np.ascontiguousarray(rgb.max(axis=2)), 5)
    count, labels, stats, _ = cv2.connectedComponentsWithStats((brightness > _FOV_THRESHOLD).astype(np.uint8), 8)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    left, top, width, height, area = stats[largest]
    if area < 0.05 * brightness.size:
        return None
    mask = labels == largest
    rows = np.nonzero(mask.any(axis=1))[0]
    return _Field(mask, (left + width / 2, float(rows.mean()) + 0.5), float(max(width, height)))


def _erode(mask: np.ndarray, size_px: int) -> np.ndarray:
    """``mask`` less a rim of about ``size_px / 2``, also where it meets the image's edge."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size_px, size_px))
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


def _masked_blur(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """The Gaussian mean of ``values`` over ``mask`` only, so the black surround does not darken the rim."""
    weight = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    return cv2.GaussianBlur(values * mask, (0, 0), sigma) / np.maximum(weight, 1e-3)


def _peak(response: np.ndarray, allowed: np.ndarray, exclusion_px: float) -> tuple[np.ndarray, float, float]:
    """The sub-pixel (x, y) of the largest ``response`` on ``allowed``, its value, and the next best
    value at least ``exclusion_px`` away."""
    masked = np.where(allowed, response, -np.inf)
    row, col = np.unravel_index(int(np.argmax(masked)), masked.shape)
    best = float(masked[row, col])
    y, x = np.ogrid[: masked.shape[0], : masked.shape[1]]
    away = (x - col) ** 2 + (y - row) ** 2 > exclusion_px**2
    second = float(np.max(np.where(away, masked, -np.inf), initial=-np.inf))
    # The centroid of the top of the peak, for a centre finer than a working pixel.
    r = max(1, int(round(exclusion_px / 2)))
    window = masked[max(0, row - r): row + r + 1, max(0, col - r): col + r + 1]
    floor = best - 0.25 * (best - np.min(window[np.isfinite(window)]))
    weight = np.where(np.isfinite(window), np.maximum(window - floor, 0.0), 0.0)
    wy, wx = np.mgrid[max(0, row - r): row + r + 1, max(0, col - r): col + r + 1]
    total = weight.sum()
    centre = np.array([(wx * weight).sum() / total, (wy * weight).sum() / total]) if total > 0 else np.array([col, row])
    return centre + 0.5, best, second


def _confidence(contrast: float, full_contrast: float, best: float, second: float) -> float:
    """From 0 (no blob, or a rival as strong) to 1 (a blob of ``full_contrast``, half that above the next candidate)."""
    if not np.isfinite(contrast) or not np.isfinite(best):
        return 0.0
    strength = np.clip(contrast / full_contrast, 0.0, 1.0)
    margin = 1.0 if not np.isfinite(second) else np.clip((best - second) / (0.5 * full_contrast), 0.0, 1.0)
    return float(strength * (0.4 + 0.6 * margin))


def _fovea_response(small: np.ndarray, inner: np.ndarray, disc_r: float, close_px: int) -> np.ndarray:
    """How much darker than its surround each point is, in red, in units of a clear fovea's contrast.

    Red, not green: the fovea is dark in every channel, while vessels and hemorrhages, which
    would outbid it, are dark mostly in green.
    """
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_px, close_px))
    red = cv2.morphologyEx(small[..., 0].astype(np.float32), cv2.MORPH_CLOSE, kernel)
    level = max(float(np.median(red[inner])), 1.0)
    return (_masked_blur(red, inner, 3.0 * disc_r) - _masked_blur(red, inner, 0.5 * disc_r)) / (level * FOVEA_CONTRAST)


def locate(image: np.ndarray) -> Landmarks:
    """Disc and fovea of a uint8 (H, W, 3) RGB fundus photograph; flags name what is not to be trusted."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"want a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    scale = min(1.0, WORKING_SIDE_PX / max(height, width))
    small = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else image
    sx, sy = small.shape[1] / width, small.shape[0] / height
    field = _field_of_view(small)
    if field is None:
        middle = (width / 2, height / 2)
        return Landmarks(middle, middle, 0.0, 0.0, ("no field of view", *_LOW))
    disc_r = DISC_RADIUS_FOV * field.diameter
    green = small[..., 1].astype(np.float32)
    vessel_px = max(3, int(round(VESSEL_CLOSE_DISC_R * disc_r)) | 1)
    green = cv2.morphologyEx(green, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (vessel_px,) * 2))
    mask = field.mask
    inner = _erode(mask, vessel_px)
    surround = _masked_blur(green, inner, 2.5 * disc_r)
    level = max(float(np.median(green[inner])), 1.0) if inner.any() else 1.0
    disc_response = (_masked_blur(green, inner, 0.6 * disc_r) - surround) / level
    rim = int(round(0.8 * disc_r)) * 2 + 1
    search = _erode(inner, rim)
    if not search.any():
        middle = (width / 2, height / 2)
        return Landmarks(middle, middle, 0.0, 0.0, ("field of view too small", *_LOW))
    disc, disc_best, disc_second = _peak(disc_response, search, 2.0 * disc_r)
    disc_confidence = _confidence(disc_best, 0.25, disc_best, disc_second)

    dark_response = _fovea_response(small, inner, disc_r, vessel_px)
    y, x = np.mgrid[: green.shape[0], : green.shape[1]] + 0.5
    temporal = 1.0 if field.centre[0] >= disc[0] else -1.0
    dx, dy = temporal * (x - disc[0]), y - disc[1]
    distance = np.hypot(dx, dy) / field.diameter
    angle = np.degrees(np.arctan2(np.abs(dy), dx))
    central = np.hypot(x - field.centre[0], y - field.centre[1]) <= FOVEA_FROM_CENTRE_FOV * field.diameter
    near, far = FOVEA_DISTANCE_FOV
    band = search & central & (distance >= near) & (distance <= far) & (angle <= FOVEA_ANGLE_DEG)
    if band.any():
        # Photographs are centred on the macula, and the fovea lies about level with the disc.
        prior = (FOVEA_CENTRE_WEIGHT * (np.hypot(x - field.centre[0], y - field.centre[1]) / field.diameter) ** 2
                 + FOVEA_LEVEL_WEIGHT * (angle / FOVEA_ANGLE_DEG) ** 2)
        fovea, fovea_best, fovea_second = _peak(dark_response - prior, band, 1.5 * disc_r)
        col, row = np.clip(np.floor(fovea).astype(int), 0, np.array(band.shape[::-1]) - 1)
        fovea_confidence = _confidence(float(dark_response[row, col]), 1.0, fovea_best, fovea_second)
    else:
        fovea, fovea_confidence = disc + [temporal * 0.4 * field.diameter, 0.0], 0.0
    fovea_confidence = min(fovea_confidence, disc_confidence)  # the fovea is sought from the disc
    named = tuple(flag for flag, c in zip(_LOW, (disc_confidence, fovea_confidence)) if c < CONFIDENT)
    return Landmarks((float(disc[0] / sx), float(disc[1] / sy)), (float(fovea[0] / sx), float(fovea[1] / sy)),
                     round(disc_confidence, 3), round(fovea_confidence, 3), named)


LOCATOR_VERSION = "fundax.landmarks 1"
"""Names the locator in a prepared dataset's parameters (``prepare --locate_missing``): another
version may place the centres elsewhere, so a dataset prepared with it is not reused."""


def locate_photograph(path: str | os.PathLike, max_pixels: int = images.DEFAULT_MAX_PIXELS
                      ) -> tuple[tuple[float, float], tuple[float, float], dict]:
    """Disc and fovea of the photograph at ``path``, for a line that has none (``prepare --locate_missing``).

    Returns the centres and what was found (confidences, the locator); raises
    :class:`fundax.data.annotations.AnnotationError` when either is not placed with confidence:
    a flagged answer is never used.
    """
    from fundax.data import annotations

    try:
        image = images.load_image(path, max_pixels)
    except images.ImageError as e:
        raise annotations.AnnotationError(str(e)) from None
    found = locate(image)
    info = {"locator": LOCATOR_VERSION, "disc_confidence": round(found.disc_confidence, 4),
            "fovea_confidence": round(found.fovea_confidence, 4)}
    if not found.confident:
        raise annotations.AnnotationError(
            f"no disc and fovea given, and the locator could not place them with confidence ({', '.join(found.flags)}: "
            f"disc {found.disc_confidence:.2f}, fovea {found.fovea_confidence:.2f}); add them by hand "
            "(python -m fundax.annotate)")
    return found.disc, found.fovea, info


def draw(image: np.ndarray, found: Landmarks) -> np.ndarray:
    """A copy of the RGB photograph with the disc (cyan) and fovea (yellow) centres marked; a flagged one grey."""
    picture = image.copy()
    size = max(6, round(0.02 * max(image.shape[:2])))
    thickness = max(1, size // 6)
    for name, (x, y), colour in (("disc", found.disc, (0, 255, 255)), ("fovea", found.fovea, (255, 255, 0))):
        colour = (128, 128, 128) if f"low {name} confidence" in found.flags else colour
        centre = (int(round(x - 0.5)), int(round(y - 0.5)))
        cv2.drawMarker(picture, centre, colour, cv2.MARKER_CROSS, 2 * size, thickness)
        cv2.circle(picture, centre, size, colour, thickness)
        cv2.putText(picture, name, (centre[0] + size + 2, centre[1] - size), cv2.FONT_HERSHEY_SIMPLEX,
                    size / 25, colour, thickness)
    return picture


FLAGS = flags.FlagValues()
flags.DEFINE_string("images", None, "A folder of photographs (JPEG, PNG or TIFF).", flag_values=FLAGS)
flags.DEFINE_string("out", "landmarks.csv", "The CSV written.", flag_values=FLAGS)
flags.DEFINE_string("picture", None, "A folder for one PNG per photograph with the centres drawn.", flag_values=FLAGS)
flags.mark_flag_as_required("images", flag_values=FLAGS)

COLUMNS = ("image", "disc_x", "disc_y", "fovea_x", "fovea_y", "disc_confidence", "fovea_confidence", "flags")


def main(argv: list[str]) -> int:
    cli.no_arguments(argv)
    folder = pathlib.Path(FLAGS.images)
    if not folder.is_dir():
        raise cli.UsageError(f"--images={folder}: not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not paths:
        print(f"error: {folder}: no photographs (JPEG, PNG or TIFF)", file=sys.stderr)
        return 1
    pictures = pathlib.Path(FLAGS.picture) if FLAGS.picture else None
    if pictures is not None:
        pictures.mkdir(parents=True, exist_ok=True)
    failures = 0
    out = pathlib.Path(FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for path in paths:
            try:
                image = images.load_image(path)
            except images.ImageError as e:
                print(f"error: {cli.one_line(str(e))}", file=sys.stderr)
                failures += 1
                continue
            found = locate(image)
            writer.writerow([path.name, *(f"{v:.2f}" for v in (*found.disc, *found.fovea)),
                             f"{found.disc_confidence:.3f}", f"{found.fovea_confidence:.3f}", ";".join(found.flags)])
            if pictures is not None:
                cv2.imwrite(str(pictures / f"{path.stem}.png"), cv2.cvtColor(draw(image, found), cv2.COLOR_RGB2BGR))
    print(f"{len(paths) - failures} of {len(paths)} photographs located; {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    cli.run(main, flag_values=FLAGS)
