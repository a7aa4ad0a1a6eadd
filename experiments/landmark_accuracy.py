"""How close fundax.landmarks comes to the true disc and fovea, in units of D (disc–fovea distance).

    python experiments/landmark_accuracy.py [--synthetic=200] [--retina=100] [--seed=0]

Two sets: photographs of fundax's synthetic generator (both eyes, 320–512 px high), whose
disc and fovea it knows; and ``skimage.data.retina()`` (a left eye) re-posed — mirrored into
a right eye half the time, rotated ±15°, scaled 0.6–1.2, shifted, its exposure and gamma
changed — with the disc and fovea placed by hand once on the original (:data:`RETINA_DISC`,
:data:`RETINA_FOVEA`) and carried through each pose. Prints per set and landmark the median
and 95th percentile error, the share flagged, and the time per photograph.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from fundax import landmarks
from fundax.data import synthetic

RETINA_DISC = (232.0, 658.0)
"""The disc centre of skimage.data.retina() (1411×1411), placed by hand: the middle of the pale disc."""
RETINA_FOVEA = (705.0, 696.0)
"""... and the fovea: the darkest point of the macula."""


def pose(image: np.ndarray, points: np.ndarray, *, mirror: bool, angle_deg: float, scale: float,
         shift: tuple[float, float], size_px: int, gain: float = 1.0, gamma: float = 1.0
         ) -> tuple[np.ndarray, np.ndarray]:
    """``image`` fitted to a ``size_px`` square, mirrored, turned, scaled about its centre and shifted
    (fractions of ``size_px``), exposure times ``gain`` and ``gamma``; ``points`` (N, 2) carried along."""
    height, width = image.shape[:2]
    fit = size_px / max(height, width)
    centre = np.array([width / 2, height / 2])
    affine = cv2.getRotationMatrix2D((0.0, 0.0), angle_deg, fit * scale)
    if mirror:
        affine[:, 0] *= -1
    affine[:, 2] = size_px / 2 + np.asarray(shift) * size_px - affine[:, :2] @ centre
    # cv2 maps pixel centres (i, i): move to and from the frame whose centres are at i + 0.5.
    to_cv = affine.copy()
    to_cv[:, 2] += affine[:, :2] @ [0.5, 0.5] - 0.5
    interpolation = cv2.INTER_AREA if fit * scale < 1 else cv2.INTER_LINEAR
    posed = cv2.warpAffine(image, to_cv, (size_px, size_px), flags=interpolation, borderValue=(0, 0, 0))
    if gain != 1.0 or gamma != 1.0:
        table = np.clip(255.0 * gain * (np.arange(256) / 255.0) ** gamma, 0, 255).round().astype(np.uint8)
        posed = cv2.LUT(posed, table)
    return posed, np.asarray(points, np.float64) @ affine[:, :2].T + affine[:, 2]


def retina_poses(count: int, seed: int) -> list[dict]:
    """``count`` random poses, alternately mirrored (a right eye) and not."""
    rng = np.random.default_rng(seed)
    return [dict(mirror=bool(k % 2), angle_deg=float(rng.uniform(-15, 15)), scale=float(rng.uniform(0.6, 1.2)),
                 shift=tuple(rng.uniform(-0.06, 0.06, 2)), size_px=int(rng.integers(320, 513)),
                 gain=float(rng.uniform(0.7, 1.3)), gamma=float(rng.uniform(0.7, 1.4))) for k in range(count)]


def retina_set(count: int, seed: int):
    """(name, image, disc, fovea) of ``count`` re-posed copies of skimage.data.retina()."""
    from skimage import data

    original = data.retina()
    truth = np.array([RETINA_DISC, RETINA_FOVEA])
    for k, p in enumerate(retina_poses(count, seed)):
        image, (disc, fovea) = pose(original, truth, **p)
        yield f"retina-{k:03d}", image, disc, fovea


def synthetic_set(count: int, seed: int):
    """(name, image, disc, fovea) of ``count`` synthetic photographs, 320–512 px high, both eyes."""
    rng = np.random.default_rng(seed)
    for k in range(count):
        height_px = int(rng.integers(320, 513))
        config = synthetic.SyntheticConfig(num_train=0, num_test=count, seed=seed, height_px=height_px)
        eye = synthetic.synthesize_eye(config, "test", k)
        yield eye.image_id, eye.image, np.array(eye.disc_xy), np.array(eye.fovea_xy)


def errors(photographs) -> dict[str, np.ndarray]:
    """Per photograph: disc and fovea error in units of D, whether flagged, and seconds taken."""
    out = {"disc": [], "fovea": [], "flagged": [], "seconds": []}
    for _, image, disc, fovea in photographs:
        start = time.perf_counter()
        found = landmarks.locate(image)
        out["seconds"].append(time.perf_counter() - start)
        d = float(np.hypot(*(fovea - disc)))
        out["disc"].append(np.hypot(*(np.array(found.disc) - disc)) / d)
        out["fovea"].append(np.hypot(*(np.array(found.fovea) - fovea)) / d)
        out["flagged"].append(not found.confident)
    return {k: np.asarray(v) for k, v in out.items()}


def table(rows: dict[str, dict[str, np.ndarray]]) -> str:
    lines = ["| set | n | disc median (D) | disc p95 (D) | fovea median (D) | fovea p95 (D) | flagged "
             "| over 0.25 D, unflagged | ms / photo |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, e in rows.items():
        lines.append(f"| {name} | {len(e['disc'])} | {np.median(e['disc']):.3f} | {np.percentile(e['disc'], 95):.3f} "
                     f"| {np.median(e['fovea']):.3f} | {np.percentile(e['fovea'], 95):.3f} "
                     f"| {np.mean(e['flagged']):.0%} "
                     f"| {np.sum((np.maximum(e['disc'], e['fovea']) > 0.25) & ~e['flagged'])} "
                     f"| {1000 * np.median(e['seconds']):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=200, help="Synthetic photographs.")
    parser.add_argument("--retina", type=int, default=100, help="Re-posed copies of skimage.data.retina().")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # the time per photograph on one core
    rows = {}
    if args.synthetic:
        rows["synthetic"] = errors(synthetic_set(args.synthetic, args.seed))
    if args.retina:
        rows["retina() re-posed"] = errors(retina_set(args.retina, args.seed))
    print(table(rows))


if __name__ == "__main__":
    main()
