"""Pictures of fundax's geometric ideas: the region partition over a photograph."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import cv2
import numpy as np

from fundax import regions

# One colour per region id (tab10-like), for overlays and legends.
REGION_COLOURS = np.array(
    [
        (255, 214, 0),  # macula
        (0, 176, 240),  # superior_disc
        (0, 112, 192),  # inferior_disc
        (146, 208, 80),  # temporal
        (255, 99, 71),  # superotemporal
        (199, 21, 133),  # inferotemporal
        (186, 85, 211),  # superonasal
        (255, 165, 0),  # inferonasal
    ],
    dtype=np.float32,
)


def region_overlay(
    image: np.ndarray, disc_xy: Sequence[float], fovea_xy: Sequence[float], alpha: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """The photograph tinted by region with white boundaries, and its pixel region map."""
    height, width = image.shape[:2]
    ids = regions.region_map(height, width, disc_xy, fovea_xy)
    tinted = (1 - alpha) * image.astype(np.float32) + alpha * REGION_COLOURS[ids]
    boundary = np.zeros(ids.shape, bool)
    boundary[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    boundary[1:, :] |= ids[1:, :] != ids[:-1, :]
    # Thicken to about 1/300 of the image so the lines survive downscaling.
    k = max(1, round(max(height, width) / 300))
    boundary = cv2.dilate(boundary.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    tinted[boundary] = 255
    return np.clip(tinted, 0, 255).astype(np.uint8), ids


def label_points(ids: np.ndarray) -> dict[str, tuple[float, float]]:
    """For each region present in ``ids``, its point deepest inside it (x, y).

    Regions are not convex (superotemporal wraps around the macula), so a
    centroid can fall outside its region; the distance-transform peak cannot.
    """
    points = {}
    for k, name in enumerate(regions.REGIONS):
        inside = np.pad((ids == k).astype(np.uint8), 1)
        if not inside.any():
            continue
        depth = cv2.distanceTransform(inside, cv2.DIST_L2, 5)[1:-1, 1:-1]
        row, col = np.unravel_index(np.argmax(depth), depth.shape)
        points[name] = (col + 0.5, row + 0.5)
    return points


def draw_regions(
    image: np.ndarray,
    disc_xy: Sequence[float],
    fovea_xy: Sequence[float],
    out_path: str | os.PathLike,
    title: str = "",
) -> pathlib.Path:
    """Write a PNG of the 8 regions, named, over ``image`` with the disc and fovea marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tinted, ids = region_overlay(image, disc_xy, fovea_xy)
    height, width = ids.shape
    fig, ax = plt.subplots(figsize=(8, 8 * height / width), dpi=100)
    ax.imshow(tinted)
    for name, (x, y) in label_points(ids).items():
        # Keep the names off the disc and fovea markers.
        if min(np.hypot(x - px, y - py) for px, py in (disc_xy, fovea_xy)) < 0.05 * height:
            y += 0.08 * height
        ax.text(x, y, name, ha="center", va="center", fontsize=9, color="black",
                bbox=dict(boxstyle="round,pad=0.2", fc="white", alpha=0.8, lw=0))
    ax.plot(*disc_xy, marker="+", color="white", markersize=14, mew=2.5, zorder=5)
    ax.plot(*fovea_xy, marker="x", color="white", markersize=11, mew=2.5, zorder=5)
    ax.set_title(title + "  (+ optic disc, × fovea)", fontsize=10)
    ax.set_axis_off()
    out = pathlib.Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out
