"""Seeded synthetic fundus photographs with graders' regional annotations of every finding.

The paper's photographs are private; this generator makes fundax runnable and
testable anywhere. It writes an ordinary manual directory (``DATA_FORMAT.md``),
so synthetic data goes through the same reader as real annotations.

A picture is a macula-centred photograph of a left or right eye (in a right eye
the disc lies right of the fovea): a circular field of view on black, an
orange-red fundus with vignetting and texture, a yellowish disc with its cup, a
darker macula and fovea, and vessels along the arcades and nasally. Every
registered finding has a lesion model placed where it occurs clinically
(``_LESIONS``); its ground truth is the set of regions (:mod:`fundax.regions`)
holding its lesion pixels inside the field. Simulated graders miss findings,
drop a true region or add a neighbouring one, and invent a few findings.

Shortcut: with ``shortcut_finding`` set, a light label with dark text ("A7-03")
is burned into the black surround at the nasal top (else bottom) corner of the
field of view's bounding box: outside the field, inside the box preprocessing
crops to, and (superonasal or inferonasal) clear of the finding's regions in
that eye, except for the few eyes whose hemorrhages or peripheral pigment reach
both. In ``train`` the stamp agrees with the finding's true label with
probability ``shortcut_strength``; in ``test`` it appears half the time, whatever the label.

Each picture comes from random streams derived from (seed, split, index) alone,
so pictures can be made in any order and in parallel; each finding has its own
stream, so changing one prevalence leaves the other lesions as they were.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
import pathlib
import sys
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any, NamedTuple

import cv2
import numpy as np

from fundax.findings import FINDINGS, get_finding
from fundax.regions import REGIONS, region_ids, region_map

SPLITS: tuple[str, ...] = ("train", "test")
WRITER_VERSION = 2
"""What a written manual directory holds; 2: lesion masks beside the photographs."""
_SPLIT_CODE = {"train": 0, "test": 1}
_SHIFT = 4  # cv2 draws with 4 fractional bits, so lesions sit at sub-pixel positions
# zlib level 1 and the SUB filter alone (OpenCV >= 4.10): twice as fast as the defaults, files ~5% larger.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1] + (
    [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB] if hasattr(cv2, "IMWRITE_PNG_FILTER") else [])
_FUNDUS = np.array([0.82, 0.36, 0.17], np.float32)
_DISC = np.array([0.98, 0.80, 0.48], np.float32)
_CUP = np.array([1.0, 0.93, 0.72], np.float32)
_VEIN_MUL = np.array([0.62, 0.38, 0.48], np.float32)
_ARTERY_MUL = np.array([0.80, 0.56, 0.64], np.float32)


def from_config(section: Any) -> SyntheticConfig:
    """The generator settings a training config's ``synthetic`` section asks for; the others keep their defaults."""
    return SyntheticConfig(
        num_train=section.num_train, num_test=section.num_test, seed=section.seed,
        shortcut_finding=section.shortcut_finding or None, shortcut_strength=section.shortcut_strength,
        height_px=section.height_px, prevalence=parse_prevalence(section.prevalence))


def parse_prevalence(text: str) -> dict[str, float] | None:
    """``"macular_hole=0.5,drusen=0.3"`` -> ``{"macular_hole": 0.5, "drusen": 0.3}``; ``""`` -> None.

    The form of ``config.synthetic.prevalence``; a malformed item is a ValueError naming it
    (names and ranges are checked by :class:`SyntheticConfig`).
    """
    if not text:
        return None
    out = {}
    for item in str(text).split(","):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"synthetic.prevalence item {item!r} is not FINDING=P (e.g. macular_hole=0.5)")
    return out


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Findings occur independently, each with its own prevalence.

    ``prevalence`` overrides ``default_prevalence`` per finding. Graders are ``g1``,
    ``g2``, ..., one per miss rate. An empty ``shortcut_finding`` means none.
    """

    num_train: int = 200
    num_test: int = 100
    seed: int = 0
    height_px: int = 320  # photo height; width = round(aspect * height)
    aspect: float = 1.3
    prevalence: Mapping[str, float] | None = None
    default_prevalence: float = 0.25
    shortcut_finding: str | None = None
    shortcut_strength: float = 0.9
    grader_miss_rates: tuple[float, ...] = (0.05, 0.10, 0.15)
    grader_region_noise: float = 0.1  # per listed finding
    grader_false_positive_rate: float = 0.01  # per absent finding

    def __post_init__(self) -> None:
        object.__setattr__(self, "shortcut_finding", self.shortcut_finding or None)
        object.__setattr__(self, "grader_miss_rates", tuple(self.grader_miss_rates))
        for name, low in (("num_train", 0), ("num_test", 0), ("seed", 0), ("height_px", 64)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 1.0 <= self.aspect <= 2.0:
            raise ValueError(f"aspect (width / height) must lie in [1, 2], got {self.aspect!r}")
        for name in [*(self.prevalence or {}), *([self.shortcut_finding] if self.shortcut_finding else [])]:
            get_finding(name)  # an unknown name lists the valid ones
        if not self.grader_miss_rates:
            raise ValueError("grader_miss_rates must hold one rate per grader, got none")
        rates = {f"prevalence[{k!r}]": v for k, v in (self.prevalence or {}).items()}
        rates |= {f"grader_miss_rates[{k}]": v for k, v in enumerate(self.grader_miss_rates)}
        rates |= {k: getattr(self, k) for k in ("default_prevalence", "shortcut_strength", "grader_region_noise",
                                                 "grader_false_positive_rate")}
        for name, value in rates.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")

    @property
    def width_px(self) -> int:
        return round(self.aspect * self.height_px)

    @property
    def grader_ids(self) -> tuple[str, ...]:
        return tuple(f"g{k + 1}" for k in range(len(self.grader_miss_rates)))

    def prevalence_of(self, finding: str) -> float:
        return float((self.prevalence or {}).get(finding, self.default_prevalence))


@dataclasses.dataclass(frozen=True)
class SyntheticEye:
    """One synthetic photograph, its ground truth and its graders' annotations."""

    image_id: str
    split: str  # "train" | "test"
    image: np.ndarray  # uint8 (H, W, 3) RGB
    disc_xy: tuple[float, float]
    fovea_xy: tuple[float, float]
    eye: str  # "left" | "right"
    findings: Mapping[str, tuple[str, ...]]  # finding -> regions (canonical order) holding its lesion pixels
    lesion_masks: Mapping[str, np.ndarray]  # finding -> bool (H, W), inside the field of view
    shortcut: bool  # whether the stamp was drawn
    annotations: tuple[dict, ...]  # the graders' entries, as written to annotations.jsonl
    fov_xy: tuple[float, float]  # centre of the circular field of view
    fov_radius_px: float


@dataclasses.dataclass(frozen=True)
class _Anatomy:
    """Where things are. Points are placed in (t, s): t along L (disc → fovea), s towards superior."""

    height: int
    width: int
    eye: str
    fov_xy: np.ndarray
    fov_r: float
    disc: np.ndarray
    fovea: np.ndarray
    dist: float  # D
    u: np.ndarray
    n: np.ndarray
    disc_r: float  # the optic disc itself, about D/5 (not the region circle of 2D/5)
    arcades: np.ndarray  # rows (superior, inferior): the arcade's height and rise length

    def xy(self, t: np.ndarray | float, s: np.ndarray | float) -> np.ndarray:
        t, s = np.asarray(t, np.float64)[..., None], np.asarray(s, np.float64)[..., None]
        return self.disc + t * self.u + s * self.n

    def arcade_s(self, t: np.ndarray | float, sign: np.ndarray | float) -> np.ndarray:
        """s of the arcade vessels: they leave the disc steeply, then run temporally around the macula."""
        height, rise = self.arcades[np.where(np.asarray(sign) > 0, 0, 1)].T
        return np.sign(sign) * height * (1.0 - np.exp(-np.asarray(t) / rise))


def _sample_anatomy(rng: np.random.Generator, height: int, width: int, eye: str | None) -> _Anatomy:
    drawn_eye = "right" if rng.random() < 0.5 else "left"
    eye = eye or drawn_eye
    fov_r = 0.5 * height * rng.uniform(0.94, 1.1)
    fov = np.array([width / 2, height / 2]) + rng.normal(0.0, 0.01 * height, 2)
    dist = rng.uniform(0.30, 0.40) * width
    tilt = np.deg2rad(np.clip(rng.normal(6.0, 4.0), -6.0, 16.0))  # the fovea lies a little below the disc
    u = np.array([(-1.0 if eye == "right" else 1.0) * np.cos(tilt), np.sin(tilt)])
    disc_r = rng.uniform(0.17, 0.21) * dist
    fovea = fov + rng.normal(0.0, 0.03 * fov_r, 2)
    disc = fovea - dist * u
    # Keep the whole disc in the field: slide disc and fovea together along u until it is.
    p, inner = disc - fov, fov_r - 1.6 * disc_r
    if p @ p > inner * inner:
        shift = -(p @ u) - np.sqrt(max((p @ u) ** 2 - p @ p + inner * inner, 0.0))
        disc, fovea = disc + shift * u, fovea + shift * u
    # The written coordinates are rounded; everything downstream uses exactly them.
    disc, fovea = np.round(disc, 2), np.round(fovea, 2)
    dist = float(np.hypot(*(fovea - disc)))
    u = (fovea - disc) / dist
    n = np.array([u[1], -u[0]]) if (u[0] > 0 or (u[0] == 0 and u[1] > 0)) else np.array([-u[1], u[0]])  # n_y < 0
    arcades = np.stack([rng.uniform([0.6, 0.15], [0.8, 0.25]) * dist for _ in range(2)])
    return _Anatomy(height, width, eye, fov, float(fov_r), disc, fovea, dist, u, n, float(disc_r), arcades)


@functools.lru_cache(maxsize=8)
def _pixel_centres(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """x (1, W) and y (H, 1) of the pixel centres; cached, so read-only."""
    x, y = (np.arange(width, dtype=np.float32) + 0.5)[None, :], (np.arange(height, dtype=np.float32) + 0.5)[:, None]
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _cv(xy: np.ndarray) -> np.ndarray:
    """Image-frame points (pixel centres at +0.5) as cv2's fixed-point integers."""
    return np.rint((np.asarray(xy, np.float64) - 0.5) * (1 << _SHIFT)).astype(np.int32)


def _polar(centre: np.ndarray, rho: np.ndarray, phi: np.ndarray) -> np.ndarray:
    return centre + rho[:, None] * np.stack([np.cos(phi), np.sin(phi)], 1)


def _blobs(anat: _Anatomy, centres: np.ndarray, axes: np.ndarray, angles_deg: np.ndarray | float = 0.0,
           canvas: np.ndarray | None = None) -> np.ndarray:
    """Filled ellipses on a uint8 canvas; semi-axes (N, 2), or radii (N,), in px, at least 0.6."""
    canvas = np.zeros((anat.height, anat.width), np.uint8) if canvas is None else canvas
    axes = np.asarray(axes, np.float64)
    axes = np.broadcast_to(np.maximum(axes if axes.ndim == 2 else axes[:, None], 0.6), (len(centres), 2))
    angles = np.broadcast_to(np.asarray(angles_deg, np.float64), (len(centres),))
    for c, a, angle in zip(_cv(centres), np.rint(axes * (1 << _SHIFT)).astype(np.int32), angles):
        cv2.ellipse(canvas, (int(c[0]), int(c[1])), (int(a[0]), int(a[1])), float(angle), 0, 360, 255, -1,
                    cv2.LINE_8, _SHIFT)
    return canvas


def _stroke(canvas: np.ndarray, pts: np.ndarray, width_start: float, width_end: float) -> None:
    """An anti-aliased polyline whose width tapers; one cv2 call per run of equal thickness."""
    thick = np.maximum(1, np.rint(np.linspace(width_start, width_end, len(pts) - 1))).astype(int)
    cv_pts, start = _cv(pts), 0
    for end in range(1, len(thick) + 1):
        if end == len(thick) or thick[end] != thick[start]:
            cv2.polylines(canvas, [cv_pts[start : end + 1]], False, 255, int(thick[start]), cv2.LINE_AA, _SHIFT)
            start = end


def _paint(img: np.ndarray, footprint: np.ndarray, sigma: float, strength: float, mul, add) -> np.ndarray:
    """Blend a softened ``footprint`` into ``img`` (where full, img becomes img·mul + add); the footprint."""
    x, y, w, h = cv2.boundingRect(footprint)
    pad = int(np.ceil(3 * sigma)) + 1
    rows = slice(max(0, y - pad), min(img.shape[0], y + h + pad))
    cols = slice(max(0, x - pad), min(img.shape[1], x + w + pad))
    alpha = footprint[rows, cols]
    if sigma > 0 and w > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)  # in uint8: tails below 1/255 do not matter
    # Only touched pixels: vessels and dots cover a small part of their bounding box.
    touched = alpha > 0
    a = alpha[touched][:, None] * np.float32(strength / 255.0)
    window = img[rows, cols]
    mul, add = np.asarray(mul, np.float32), np.asarray(add, np.float32)
    window[touched] = window[touched] * (1.0 - a * (1.0 - mul)) + a * add
    return footprint


def _wander(rng: np.random.Generator, t0: float, s0: float, heading: float, length: float, steps: int = 10):
    """A gently curving path in (t, s), as vessels run."""
    angles = heading + np.cumsum(rng.normal(0.0, 0.12, steps))
    t = t0 + np.concatenate([[0.0], np.cumsum(np.cos(angles))]) * (length / steps)
    s = s0 + np.concatenate([[0.0], np.cumsum(np.sin(angles))]) * (length / steps)
    return t, s


def _fundus(anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """The lesion-free fundus, float32 (H, W, 3) in about [0, 1]."""
    h, w, d, f = anat.height, anat.width, anat.dist, 4
    # Vignette, texture and the darker macula vary slowly: compute them on a 4× coarser grid.
    x, y = _pixel_centres(-(-h // f), -(-w // f))
    x, y, low_size = x * f, y * f, (x.shape[1], y.shape[0])
    q = ((x - anat.fov_xy[0]) ** 2 + (y - anat.fov_xy[1]) ** 2) * np.float32(1.0 / anat.fov_r**2)
    coarse = cv2.resize(rng.standard_normal((h // 24 + 2, w // 24 + 2)).astype(np.float32), low_size,
                        interpolation=cv2.INTER_CUBIC)
    texture = 1.0 + 0.06 * coarse + 0.03 * rng.standard_normal(q.shape).astype(np.float32)
    df2 = (x - np.float32(anat.fovea[0])) ** 2 + (y - np.float32(anat.fovea[1])) ** 2
    macula = 1.0 - 0.3 * np.exp(df2 * np.float32(-0.5 / (0.3 * d) ** 2))
    shade = cv2.resize((1.0 - 0.35 * q - 0.15 * q * q) * texture * macula, (w, h), interpolation=cv2.INTER_LINEAR)
    img = shade[..., None] * (_FUNDUS * (1.0 + rng.normal(0.0, 0.05, 3))).astype(np.float32)
    _paint(img, _blobs(anat, anat.fovea[None], [0.07 * d]), 0.035 * d, 0.6, 0.55, 0.0)
    _paint(img, _blobs(anat, anat.disc[None], [anat.disc_r]), 0.12 * anat.disc_r, 1.0, 0.25, 0.75 * _DISC)
    cup_r = rng.uniform(0.35, 0.55) * anat.disc_r
    _vessels(img, anat, rng)
    # After the vessels: they dive into the cup and vanish there.
    _paint(img, _blobs(anat, anat.xy(0.15 * anat.disc_r, 0.0)[None], [cup_r]), 0.25 * cup_r, 0.85, 0.3, 0.7 * _CUP)
    return img


def _vessels(img: np.ndarray, anat: _Anatomy, rng: np.random.Generator) -> None:
    """Veins and arteries: both arcades with macular and peripheral branches, and nasal vessels."""
    d, scale = anat.dist, anat.height / 320.0
    for mul, width in ((_VEIN_MUL, 5.0 * scale), (_ARTERY_MUL, 3.6 * scale)):
        layer = np.zeros((anat.height, anat.width), np.uint8)
        for sign in (1.0, -1.0):
            t = np.linspace(0.0, rng.uniform(1.7, 2.1) * d, 18)
            _stroke(layer, anat.xy(t, anat.arcade_s(t, sign) * rng.uniform(0.88, 1.05)), width, 0.35 * width)
            for tb in np.sort(rng.uniform(0.35, 1.4, 3)) * d:
                sb = float(anat.arcade_s(tb, sign))
                towards_fovea = np.arctan2(-sb, d - tb) + rng.normal(0.0, 0.3)
                _stroke(layer, anat.xy(*_wander(rng, tb, sb, towards_fovea, rng.uniform(0.3, 0.5) * d)),
                        0.5 * width, 0.2 * width)
                outwards = sign * rng.uniform(0.5, 1.3)
                _stroke(layer, anat.xy(*_wander(rng, tb, sb, outwards, rng.uniform(0.35, 0.7) * d)),
                        0.55 * width, 0.2 * width)
        for heading in np.pi + rng.uniform(-1.1, 1.1, 3):
            _stroke(layer, anat.xy(*_wander(rng, 0.0, 0.0, heading, rng.uniform(0.6, 1.1) * d)),
                    0.7 * width, 0.25 * width)
        _paint(img, layer, 0.0, 1.0, mul, 0.0)  # anti-aliased lines need no further softening


def _pole_points(anat: _Anatomy, rng: np.random.Generator, n: int, t_range, s_half: float) -> np.ndarray:
    """Up to ``n`` points of the posterior pole (t, s in units of D), inside the field and off the disc."""
    xy = anat.xy(rng.uniform(*t_range, 8 * n) * anat.dist, rng.uniform(-s_half, s_half, 8 * n) * anat.dist)
    ok = (np.hypot(*(xy - anat.fov_xy).T) < 0.9 * anat.fov_r) & (np.hypot(*(xy - anat.disc).T) > 1.4 * anat.disc_r)
    return xy[ok][:n]


# Lesion models: each paints its lesions into the image and returns their footprint.

def _macular_hole(img: np.ndarray, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """A round, sharp, dark-red hole at the fovea, a third to half a disc diameter across, in a faint cuff."""
    centre = (anat.fovea + rng.normal(0.0, 0.015 * anat.dist, 2))[None]
    radius = rng.uniform(1 / 3, 1 / 2) * anat.disc_r
    _paint(img, _blobs(anat, centre, [radius * rng.uniform(1.6, 2.0)]), 0.3 * radius, 0.3, 0.85, [0.2, 0.17, 0.15])
    return _paint(img, _blobs(anat, centre, [radius]), 0.6, 1.0, [0.55, 0.25, 0.25], [0.06, 0.0, 0.0])


def _membrane(img: np.ndarray, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """A glistening sheen over the macula with fine striae pointing at where it contracts."""
    d = anat.dist
    centre = anat.fovea + rng.normal(0.0, 0.06 * d, 2)
    sheen = _paint(img, _blobs(anat, centre[None], rng.uniform(0.3, 0.5, (1, 2)) * d, rng.uniform(0, 180)),
                   0.08 * d, 0.6, 0.8, [0.3, 0.3, 0.33])
    wrinkles = np.zeros_like(sheen)
    for angle in rng.uniform(0.0, 2 * np.pi, rng.integers(6, 12)):
        radial, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
        r0, r1 = rng.uniform(0.05, 0.15) * d, rng.uniform(0.2, 0.4) * d
        bend = rng.normal(0.0, 0.03 * d)
        path = np.array([[r0, 0], [(r0 + r1) / 2, bend], [r1, 0]]) @ np.stack([radial, across])
        _stroke(wrinkles, centre + path, 1, 1)
    return np.maximum(sheen, _paint(img, wrinkles, 0.3, 0.5, 0.8, [0.35, 0.33, 0.33]))


def _rnfl_defect(img: np.ndarray, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """A dark wedge from the disc margin that widens along the superior or inferior arcade."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    t = np.linspace(0.0, rng.uniform(0.8, 1.25) * anat.dist, 32)
    centre = anat.xy(t, anat.arcade_s(t, sign) * rng.uniform(0.9, 1.1))
    centre = centre[np.hypot(*(centre - anat.disc).T) >= 0.9 * anat.disc_r]
    tangent = np.gradient(centre, axis=0)
    normal = tangent[:, ::-1] * [-1.0, 1.0] / np.hypot(*tangent.T)[:, None]
    half = np.linspace(0.03, rng.uniform(0.09, 0.16), len(centre))[:, None] * anat.dist
    wedge = np.zeros((anat.height, anat.width), np.uint8)
    outline = np.concatenate([centre + half * normal, (centre - half * normal)[::-1]])
    cv2.fillPoly(wedge, [_cv(outline)], 255, cv2.LINE_8, _SHIFT)
    return _paint(img, wedge, 0.02 * anat.dist, 1.0, [0.68, 0.66, 0.72], 0.0)


def _drusen(img: np.ndarray, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Small yellow dots scattered around the macula."""
    n = rng.integers(6, 26)
    centres = _polar(anat.fovea, 0.6 * anat.dist * np.sqrt(rng.uniform(0.02, 1.0, n)), rng.uniform(0, 2 * np.pi, n))
    dots = _blobs(anat, centres, rng.uniform(0.012, 0.03, n) * anat.dist)
    return _paint(img, dots, 0.5, 0.9, 0.35, [0.62, 0.52, 0.22])


def _hemorrhage(img: np.ndarray, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Dark-red blots and flames over the posterior pole; flames lie along the fibres, radial from the disc."""
    centres = _pole_points(anat, rng, int(rng.integers(2, 9)), (-0.1, 1.8), 0.95)
    k = len(centres)
    flame = rng.random(k) < 0.5
    axes = np.where(flame[:, None], rng.uniform([0.04, 0.015], [0.08, 0.03], (k, 2)), rng.uniform(0.02, 0.05, (k, 1)))
    angles = np.degrees(np.arctan2(*(centres - anat.disc).T[::-1]))
    return _paint(img, _blobs(anat, centres, axes * anat.dist, angles), 0.6, 1.0, [0.5, 0.18, 0.15], [0.05, 0, 0])


def _hard_exudate(img: np.ndarray, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Clusters of small bright waxy-yellow dots in the posterior pole."""
    dots = np.zeros((anat.height, anat.width), np.uint8)
    for centre in _pole_points(anat, rng, int(rng.integers(1, 4)), (0.3, 1.7), 0.7):
        m = rng.integers(4, 20)
        spots = centre + rng.normal(0.0, rng.uniform(0.04, 0.1) * anat.dist, (m, 2))
        _blobs(anat, spots, rng.uniform(0.008, 0.02, m) * anat.dist, canvas=dots)
    return _paint(img, dots, 0.4, 1.0, 0.15, [0.85, 0.8, 0.3])


def _cotton_wool_patch(img: np.ndarray, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Fluffy white patches beside the arcades, where the nerve fibre layer is thickest."""
    k = rng.integers(1, 5)
    sign, t = np.where(rng.random(k) < 0.5, 1.0, -1.0), rng.uniform(0.15, 1.3, k) * anat.dist
    centres = anat.xy(t, anat.arcade_s(t, sign) + rng.normal(0.0, 0.08 * anat.dist, k))
    patches = _blobs(anat, centres, rng.uniform([0.05, 0.03], [0.09, 0.05], (k, 2)) * anat.dist, rng.uniform(0, 180, k))
    return _paint(img, patches, 0.03 * anat.dist, 0.85, 0.3, [0.72, 0.7, 0.64])


def _retinal_pigmentary_change(img: np.ndarray, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Dark mottling at the macula, or spicule-like clumps in the mid-periphery."""
    if rng.random() < 0.5:
        n = rng.integers(10, 35)
        centres = _polar(anat.fovea, 0.45 * anat.dist * np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n))
        clumps = _blobs(anat, centres, rng.uniform(0.01, 0.025, n) * anat.dist)
    else:
        n = rng.integers(8, 25)
        centres = _polar(anat.fov_xy, rng.uniform(0.62, 0.9, n) * anat.fov_r, rng.uniform(0, 2 * np.pi, n))
        clumps = _blobs(anat, centres, rng.uniform([0.03, 0.008], [0.06, 0.015], (n, 2)) * anat.dist,
                        rng.uniform(0, 180, n))
    return _paint(img, clumps, 0.5, 1.0, [0.3, 0.28, 0.3], 0.0)


class _LesionModel(NamedTuple):
    draw: Callable[[np.ndarray, _Anatomy, np.random.Generator], np.ndarray]
    usual_regions: tuple[str, ...]  # where a grader's false positive goes


_LESIONS: dict[str, _LesionModel] = {
    "hemorrhage": _LesionModel(_hemorrhage, ("superotemporal", "inferotemporal", "macula")),
    "hard_exudate": _LesionModel(_hard_exudate, ("macula", "temporal")),
    "cotton_wool_patch": _LesionModel(_cotton_wool_patch, ("superotemporal", "inferotemporal")),
    "drusen": _LesionModel(_drusen, ("macula",)),
    "retinal_pigmentary_change": _LesionModel(_retinal_pigmentary_change, ("macula", "temporal")),
    "macular_hole": _LesionModel(_macular_hole, ("macula",)),
    "membrane": _LesionModel(_membrane, ("macula",)),
    "rnfl_defect": _LesionModel(_rnfl_defect, ("superotemporal", "inferotemporal")),
}
assert set(_LESIONS) == set(FINDINGS), "every registered finding needs a lesion model"


@functools.lru_cache(maxsize=1)
def adjacent_regions() -> dict[str, tuple[str, ...]]:
    """The regions bordering each region, read off a fine map of REGIONS.md's example geometry."""
    ids = region_map(256, 384, (96.0, 128.0), (224.0, 136.0))
    pairs: set[tuple[int, int]] = set()
    for a, b in ((ids[:, 1:], ids[:, :-1]), (ids[1:], ids[:-1])):
        pairs |= set(zip(a[a != b].tolist(), b[a != b].tolist()))
    return {name: tuple(REGIONS[j] for j in range(len(REGIONS)) if (i, j) in pairs or (j, i) in pairs)
            for i, name in enumerate(REGIONS)}


def _grade(truth: Mapping[str, tuple[str, ...]], config: SyntheticConfig, rng: np.random.Generator) -> tuple[dict, ...]:
    """Each grader's findings: misses, a dropped or an added neighbouring region, false positives."""
    entries = []
    for grader, miss_rate in zip(config.grader_ids, config.grader_miss_rates):
        u = rng.random((len(FINDINGS), 4))  # a fixed number of draws, so the truth never shifts later graders
        seen: dict[str, list[str]] = {}
        for k, name in enumerate(FINDINGS):
            if name in truth:
                if u[k, 0] < miss_rate:
                    continue
                regions = set(truth[name])
                if u[k, 1] < config.grader_region_noise:
                    listed = [r for r in REGIONS if r in regions]
                    wrong = [r for r in REGIONS if r not in regions and set(adjacent_regions()[r]) & regions]
                    if len(listed) > 1 and (u[k, 2] < 0.5 or not wrong):
                        regions.discard(listed[int(u[k, 3] * len(listed))])
                    elif wrong:
                        regions.add(wrong[int(u[k, 3] * len(wrong))])
            elif u[k, 0] < config.grader_false_positive_rate:
                usual = _LESIONS[name].usual_regions
                regions = {usual[int(u[k, 3] * len(usual))]}
            else:
                continue
            seen[name] = [r for r in REGIONS if r in regions]
        entries.append({"annotator": grader, "findings": seen})
    return tuple(entries)


def _stamp(image: np.ndarray, anat: _Anatomy, avoid: Collection[str]) -> None:
    """Burn the shortcut's label into the nasal black surround (see the module docstring)."""
    (cx, cy), r, h, w = anat.fov_xy, anat.fov_r, anat.height, anat.width
    sh, sw, margin = round(0.05 * h), round(0.12 * h), round(0.015 * h)
    x0 = round(min(cx + r, w) - margin - sw) if anat.eye == "right" else round(max(cx - r, 0) + margin)
    tops = (round(max(cy - r, 0) + margin), round(min(cy + r, h) - margin - sh))
    fits = []
    for y0 in tops:
        x, y = np.meshgrid(np.arange(x0, x0 + sw) + 0.5, np.arange(y0, y0 + sh) + 0.5)
        if 0 <= x0 and x0 + sw <= w and 0 <= y0 and y0 + sh <= h and np.all(np.hypot(x - cx, y - cy) > r + 1):
            overlap = bool({REGIONS[i] for i in np.unique(region_ids(x, y, anat.disc, anat.fovea))} & set(avoid))
            fits.append((overlap, y0))
    y0 = min(fits)[1] if fits else tops[0]  # the top unless only the bottom is clear of the finding's regions
    label = np.full((sh, sw, 3), 235, np.uint8)
    (tw, th), _ = cv2.getTextSize("A7-03", cv2.FONT_HERSHEY_PLAIN, 1.0, 1)
    cv2.putText(label, "A7-03", (round(0.075 * sw), round(0.8 * sh)), cv2.FONT_HERSHEY_PLAIN,
                min(0.85 * sw / tw, 0.6 * sh / th), (20, 20, 20), 1, cv2.LINE_8)
    image[y0 : y0 + sh, x0 : x0 + sw] = label


def _synthesize(config: SyntheticConfig, split: str, index: int, *, present: Collection[str] | None = None,
                eye: str | None = None) -> SyntheticEye:
    """Picture (split, index) of ``config``; ``present`` and ``eye`` override what is drawn at random."""
    anatomy_seq, grader_seq, shortcut_seq, camera_seq, *finding_seqs = np.random.SeedSequence(
        [config.seed, _SPLIT_CODE[split], index]).spawn(4 + len(FINDINGS))
    rng = np.random.default_rng(anatomy_seq)
    anat = _sample_anatomy(rng, config.height_px, config.width_px, eye)
    img = _fundus(anat, rng)
    x, y = _pixel_centres(anat.height, anat.width)
    r = np.sqrt((x - np.float32(anat.fov_xy[0])) ** 2 + (y - np.float32(anat.fov_xy[1])) ** 2)
    fov = r < anat.fov_r
    truth: dict[str, tuple[str, ...]] = {}
    masks: dict[str, np.ndarray] = {}
    for name, seq in zip(FINDINGS, finding_seqs):
        finding_rng = np.random.default_rng(seq)
        drawn = finding_rng.random() < config.prevalence_of(name)
        if not (drawn if present is None else name in present):
            continue
        mask = (_LESIONS[name].draw(img, anat, finding_rng) > 0) & fov
        points = cv2.findNonZero(mask.view(np.uint8))
        if points is not None:  # a lesion wholly outside the field is no finding
            cols, rows = (points.reshape(-1, 2) + 0.5).T
            truth[name] = tuple(REGIONS[i] for i in np.unique(region_ids(cols, rows, anat.disc, anat.fovea)))
            masks[name] = mask
    # Exposure, focus and sensor noise vary between photographs.
    camera = np.random.default_rng(camera_seq)
    exposure = np.float32(255.0 * camera.uniform(0.75, 1.15))
    blur = camera.uniform(0.0, 1.0) * anat.height / 320.0
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    noise = np.frombuffer(camera.bytes(fov.size), np.uint8).reshape(fov.shape)  # uniform: cheaper than normal
    img += (noise * np.float32(0.02 / 255) - np.float32(0.01))[..., None]
    img *= (np.clip(np.float32(anat.fov_r + 0.5) - r, 0.0, 1.0) * exposure)[..., None]  # soft rim, black outside
    image = cv2.convertScaleAbs(np.maximum(img, 0.0, out=img))  # rounds, and saturates at 255
    stamped = False
    if config.shortcut_finding is not None:
        label = config.shortcut_finding in truth
        p = 0.5 if split == "test" else (config.shortcut_strength if label else 1.0 - config.shortcut_strength)
        stamped = bool(np.random.default_rng(shortcut_seq).random() < p)
        if stamped:
            _stamp(image, anat, truth.get(config.shortcut_finding, ()))
    return SyntheticEye(
        image_id=f"syn-{split}-{index:06d}", split=split, image=image, disc_xy=tuple(anat.disc.tolist()),
        fovea_xy=tuple(anat.fovea.tolist()), eye=anat.eye, findings=truth, lesion_masks=masks, shortcut=stamped,
        annotations=_grade(truth, config, np.random.default_rng(grader_seq)),
        fov_xy=tuple(anat.fov_xy.tolist()), fov_radius_px=anat.fov_r)


def synthesize_eye(config: SyntheticConfig, split: str, index: int) -> SyntheticEye:
    """Picture ``index`` of ``split``: a function of (config, split, index) alone."""
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be an integer >= 0, got {index!r}")
    return _synthesize(config, split, int(index))


def demo_eye(height_px: int = 512) -> SyntheticEye:
    """A right eye with a macular hole, drusen, an RNFL defect and hemorrhages, for pictures."""
    config = SyntheticConfig(num_train=1, num_test=0, height_px=height_px, grader_miss_rates=(0.0, 0.0, 0.0),
                             grader_region_noise=0.0, grader_false_positive_rate=0.0)
    return _synthesize(config, "train", 0, present=("macular_hole", "drusen", "rnfl_defect", "hemorrhage"), eye="right")


def lesion_mask_file(eye: SyntheticEye, finding: str) -> str:
    """Where the manual directory keeps the mask of one finding's lesion pixels in ``eye``."""
    return f"masks/{eye.split}/{eye.image_id}.{finding}.png"


def annotation_line(eye: SyntheticEye) -> dict:
    """The ``annotations.jsonl`` object of ``eye`` (DATA_FORMAT.md): its lesion masks, and extra keys
    eye, source, shortcut."""
    return {"image_id": eye.image_id, "file": f"images/{eye.split}/{eye.image_id}.png", "split": eye.split,
            "disc": list(eye.disc_xy), "fovea": list(eye.fovea_xy), "annotations": list(eye.annotations),
            "lesion_masks": {name: lesion_mask_file(eye, name) for name in eye.lesion_masks},
            "eye": eye.eye, "source": "synthetic", "shortcut": eye.shortcut}


def _write_image(config: SyntheticConfig, out_dir: str, split: str, index: int) -> str:
    """Generate and write one picture (temp file + rename); its JSON line."""
    eye = synthesize_eye(config, split, index)
    line = annotation_line(eye)
    files = {line["file"]: cv2.cvtColor(eye.image, cv2.COLOR_RGB2BGR)}
    files |= {line["lesion_masks"][name]: mask.view(np.uint8) * np.uint8(255)
              for name, mask in eye.lesion_masks.items()}
    for file, pixels in files.items():
        ok, png = cv2.imencode(".png", pixels, _PNG_PARAMS)
        if not ok:
            raise OSError(f"PNG encoding failed for {eye.image_id}")
        path = os.path.join(out_dir, file)
        with open(path + ".tmp", "wb") as f:
            f.write(png.tobytes())
        os.replace(path + ".tmp", path)
    return json.dumps(line)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; cv2's own threads would only contend


def write_manual_dir(out_dir: str | os.PathLike, config: SyntheticConfig, *, workers: int | None = None,
                     progress: Callable[[int], None] | None = None) -> pathlib.Path:
    """Write ``out_dir/images/<split>/<image_id>.png``, the lesion masks
    ``out_dir/masks/<split>/<image_id>.<finding>.png`` and ``out_dir/annotations.jsonl``; the latter's path.

    ``annotations.jsonl`` is removed first and written last (temp file + rename), so
    an interrupted run never looks complete. ``workers`` processes (default: all
    cores) write the same bytes as one. ``progress(n)`` is told of each ``n``
    pictures finished (n = 1, as tqdm's ``update`` wants).
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = pathlib.Path(out_dir)
    target = out / "annotations.jsonl"
    target.unlink(missing_ok=True)
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
    splits = ["train"] * config.num_train + ["test"] * config.num_test
    indices = [*range(config.num_train), *range(config.num_test)]
    write = functools.partial(_write_image, config, os.fspath(out))
    pool = None
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    spawnable = main_file is None or os.path.exists(main_file)  # spawn re-imports the caller's script; stdin cannot be
    if workers > 1 and len(splits) > 1 and spawnable:
        # spawn, not fork: the caller may hold jax, whose threads do not survive a fork.
        pool = ProcessPoolExecutor(min(workers, len(splits)), multiprocessing.get_context("spawn"), _init_worker)
    lines = []
    try:
        chunk = max(1, min(32, len(splits) // (4 * workers)))
        for line in pool.map(write, splits, indices, chunksize=chunk) if pool else map(write, splits, indices):
            lines.append(line)
            if progress is not None:
                progress(1)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    tmp = out / "annotations.jsonl.tmp"
    tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    os.replace(tmp, target)
    return target
