"""Pictures of fundax's ideas: the region partition, regional masks, activation maps, ROC curves.

The activation-map pictures follow the paper's Fig. 3 (§3.2): each map is
upsampled bilinearly to the photograph, blurred with a 32×32 Gaussian (at the
paper's 512 px scale) and min-max normalised before it is laid over the image.
"""

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


HEATMAP_KERNEL_AT_512_PX = 32
"""Side of the paper's Gaussian blur (Fig. 3) for a 512 px photograph."""

MASK_COLOUR = np.array((0, 255, 170), np.float32)  # green-cyan: stands out on the orange fundus


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_path: str | os.PathLike, **savefig_kwargs) -> pathlib.Path:
    from fundax import storage

    out = storage.path(out_path)
    with storage.writing(out) as local:
        fig.savefig(local, **savefig_kwargs)
    _pyplot().close(fig)
    return out


def _check_photograph(image: np.ndarray, what: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be a uint8 (H, W, 3) RGB array, got {image.dtype} {image.shape}")
    return image


def _check_grid(grid: np.ndarray, what: str) -> np.ndarray:
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"{what} must be a non-empty (h, w) array, got shape {grid.shape}")
    if not np.all(np.isfinite(grid)):
        raise ValueError(f"{what} holds NaN or infinite values")
    return grid


def heatmap_kernel_px(size_px: int) -> int:
    """Side of the Fig. 3 Gaussian for a ``size_px`` photograph: 32 px at 512 px, scaled.

    ``round(32 · size_px / 512)`` (halves up), then 1 is added if even because
    OpenCV needs an odd side; so 512 → 33, 256 → 17, 299 → 19, and never below 1.
    """
    if size_px < 1:
        raise ValueError(f"size_px must be >= 1, got {size_px}")
    side = int(np.floor(HEATMAP_KERNEL_AT_512_PX * size_px / 512 + 0.5))
    return max(1, side | 1)


def smooth_heatmap(activation_map: np.ndarray, size_px: int, normalise: bool = True) -> np.ndarray:
    """The paper's Fig. 3 processing of an (h, w) activation map, as a float32 (size_px, size_px) in [0, 1].

    Bilinear upsampling with pixel centres aligned (``cv2.resize``, INTER_LINEAR),
    a Gaussian of side :func:`heatmap_kernel_px` with OpenCV's sigma for that side
    (0.3·((k − 1)/2 − 1) + 0.8, 5.3 px for k = 33), then min-max normalisation;
    a constant map, which has no hot spot to show, becomes all zeros. With
    ``normalise=False`` the activation keeps its own scale (A = sigmoid of the logit,
    clipped to [0, 1]), so a map near zero stays cold.
    """
    grid = _check_grid(activation_map, "activation_map").astype(np.float32)
    up = cv2.resize(grid, (size_px, size_px), interpolation=cv2.INTER_LINEAR)
    k = heatmap_kernel_px(size_px)
    blurred = cv2.GaussianBlur(up, (k, k), 0)
    if not normalise:
        return np.clip(blurred, 0.0, 1.0).astype(np.float32)
    low, high = float(blurred.min()), float(blurred.max())
    # Relative to the map's own range: with float32 round-off a constant map is not exactly flat.
    if high - low <= 1e-6 * max(1.0, abs(high)):
        return np.zeros_like(blurred)
    return ((blurred - low) / (high - low)).astype(np.float32)


def overlay_heatmap(image: np.ndarray, heatmap01: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """The photograph blended with the colour-mapped heatmap, uint8 RGB.

    Each pixel's blend weight is ``alpha · heat``: where the map is cold the
    photograph shows through untouched, so the lesion under a hot spot and the
    anatomy around it stay visible (a uniform blend would wash the whole
    fundus in the colour map's blue).
    """
    import matplotlib

    image = _check_photograph(image)
    heat = np.clip(_check_grid(heatmap01, "heatmap01"), 0.0, 1.0).astype(np.float32)
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heatmap01 {heat.shape} must match the image's (H, W) {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    colours = matplotlib.colormaps[cmap](heat)[..., :3].astype(np.float32) * 255
    weight = (alpha * heat)[..., None]
    blended = (1 - weight) * image.astype(np.float32) + weight * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def upsample_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest upsampling of an (h, w) grid: pixel (i, j) takes the cell holding its centre."""
    h, w = mask.shape
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


def mask_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """The regional mask over the photograph, uint8 RGB: tinted inside, outlined in white.

    ``mask`` is any (h, w) 0/1 grid (values above 0.5 count as inside). The
    outline is drawn on the inner side of the mask's edge, so every pixel
    outside the mask is the photograph unchanged.
    """
    image = _check_photograph(image)
    height, width = image.shape[:2]
    inside = upsample_mask(_check_grid(mask, "mask") > 0.5, height, width)
    out = image.astype(np.float32)
    out[inside] = (1 - alpha) * out[inside] + alpha * MASK_COLOUR
    # The image border is not an edge of the mask: pad with the mask itself.
    outside = ~np.pad(inside, 1, mode="edge")
    k = max(1, round(max(height, width) / 200))  # a line about 1/200 of the image survives downscaling
    near_outside = cv2.dilate(outside.astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8))[1:-1, 1:-1] > 0
    out[inside & near_outside] = 255
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _roc_curve_parts(curve: dict, index: int) -> tuple[np.ndarray, np.ndarray, float | None, tuple | None, str]:
    for key in ("fpr", "tpr"):
        if key not in curve:
            raise ValueError(f"curve {index} has no {key!r}; each curve needs fpr and tpr (auroc, operating_point, "
                             f"label optional), got keys {sorted(curve)}")
    fpr = np.asarray(curve["fpr"], np.float64)
    tpr = np.asarray(curve["tpr"], np.float64)
    if fpr.ndim != 1 or fpr.shape != tpr.shape or fpr.size < 2:
        raise ValueError(f"curve {index}: fpr and tpr must be 1-D of the same length >= 2, "
                         f"got {fpr.shape} and {tpr.shape}")
    if not (np.all((fpr >= 0) & (fpr <= 1)) and np.all((tpr >= 0) & (tpr <= 1))):
        raise ValueError(f"curve {index}: fpr and tpr must lie in [0, 1]")
    return fpr, tpr, curve.get("auroc"), curve.get("operating_point"), str(curve.get("label", ""))


def draw_rocs(curves: list[dict], out_path: str | os.PathLike, title: str = "") -> pathlib.Path:
    """Write a PNG of several ROC curves on one square plot.

    Each curve is a dict with ``fpr``, ``tpr`` and optionally ``auroc`` (shown in
    the legend), ``operating_point`` = (1 − specificity, sensitivity) (a dot,
    annotated "se … / sp …") and ``label``.
    """
    if not curves:
        raise ValueError("draw_rocs needs at least one curve")
    parts = [_roc_curve_parts(curve, i) for i, curve in enumerate(curves)]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
    for i, (fpr, tpr, auroc, operating_point, label) in enumerate(parts):
        legend = ", ".join(text for text in (label, None if auroc is None else f"AUROC {auroc:.3f}") if text)
        (line,) = ax.plot(fpr, tpr, lw=2, label=legend or None)
        if operating_point is not None:
            x, y = (float(v) for v in operating_point)
            ax.plot(x, y, "o", color=line.get_color(), markersize=7, mec="black", zorder=5)
            # Curves hug the top-left corner, so the notes go below-right, stacked per curve.
            ax.annotate(f"se {y:.2f} / sp {1 - x:.2f}", (x, y), xytext=(12, -14 - 14 * i),
                        textcoords="offset points", fontsize=9, color=line.get_color(),
                        arrowprops=dict(arrowstyle="-", color=line.get_color(), lw=0.8))
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    if title:
        ax.set_title(title, fontsize=11)
    return _save(fig, out_path, bbox_inches="tight")


def draw_roc(
    fpr: Sequence[float] | np.ndarray,
    tpr: Sequence[float] | np.ndarray,
    out_path: str | os.PathLike,
    *,
    auroc: float | None,
    operating_point: tuple[float, float] | None,
    title: str = "",
    label: str = "",
) -> pathlib.Path:
    """Write a PNG of one ROC curve; see :func:`draw_rocs`."""
    curve = dict(fpr=fpr, tpr=tpr, auroc=auroc, operating_point=operating_point, label=label)
    return draw_rocs([curve], out_path, title=title)


def _check_square(image: np.ndarray, what: str) -> np.ndarray:
    image = _check_photograph(image, what)
    if image.shape[0] != image.shape[1]:
        raise ValueError(f"{what} must be square, as the model sees it (images.preprocess), got {image.shape}")
    return image


def _check_row(row: dict, index: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[str], str]:
    if not isinstance(row, dict):
        raise ValueError(f"row {index} must be a dict, got {type(row).__name__}")
    missing = [key for key in ("image", "mask", "maps") if key not in row]
    if missing:
        raise ValueError(f"row {index} lacks {missing}; each row needs image, mask and maps "
                         f"(map_titles and label optional), got keys {sorted(row)}")
    image = _check_square(row["image"], f"row {index} image")
    mask = _check_grid(row["mask"], f"row {index} mask")
    maps = [_check_grid(m, f"row {index} map {j}") for j, m in enumerate(row["maps"])]
    if not maps:
        raise ValueError(f"row {index} has no activation maps")
    titles = list(row.get("map_titles", [""] * len(maps)))
    if len(titles) != len(maps):
        raise ValueError(f"row {index} has {len(maps)} maps but {len(titles)} map_titles")
    return image, mask, maps, titles, str(row.get("label", ""))


def _caption(ax, text: str) -> None:
    ax.text(0.5, -0.02, text, transform=ax.transAxes, ha="center", va="top", fontsize=9)


def draw_figure3(
    rows: list[dict],
    out_path: str | os.PathLike,
    *,
    column_titles: list[str] | None = None,
    title: str = "",
) -> pathlib.Path:
    """Write a PNG in the layout of the paper's Fig. 3: one photograph per row.

    Columns: the photograph, its regional mask, then each activation map of the
    row (with guidance, and without when given) smoothed and laid over it. A
    row is ``{"image": uint8 (S, S, 3), "mask": (h, w) 0/1, "maps": [(h, w), ...],
    "map_titles": [...], "label": "..."}``; map titles go under their cells and
    the label down the left side. Rows with fewer maps leave their last cells blank.
    """
    if not rows:
        raise ValueError("draw_figure3 needs at least one row")
    checked = [_check_row(row, i) for i, row in enumerate(rows)]
    num_columns = 2 + max(len(maps) for _, _, maps, _, _ in checked)
    if column_titles is None:
        column_titles = ["original", "regional mask", "with guidance", "without guidance"][:num_columns]
        column_titles += [""] * (num_columns - len(column_titles))
    if len(column_titles) != num_columns:
        raise ValueError(f"{num_columns} columns but {len(column_titles)} column_titles")
    plt = _pyplot()
    cell_in, caption_in, header_in = 3.0, 0.3, 0.35 + (0.35 if title else 0.0)  # 300 px per cell at dpi 100
    width_in = cell_in * num_columns
    height_in = (cell_in + caption_in) * len(rows) + header_in
    fig, axes = plt.subplots(len(rows), num_columns, squeeze=False, dpi=100, figsize=(width_in, height_in),
                             gridspec_kw=dict(wspace=0.03, hspace=caption_in / cell_in, left=0, right=1,
                                              top=1 - header_in / height_in, bottom=caption_in / height_in))
    for r, (image, mask, maps, map_titles, label) in enumerate(checked):
        size_px = image.shape[0]
        cells = [image, mask_overlay(image, mask)]
        cells += [overlay_heatmap(image, smooth_heatmap(m, size_px)) for m in maps]
        captions = ["", ""] + map_titles
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c < len(cells):
                ax.imshow(cells[c])
                _caption(ax, captions[c])
        if label:
            axes[r, 0].text(-0.03, 0.5, label, transform=axes[r, 0].transAxes, rotation=90,
                            ha="right", va="center", fontsize=9)
    for ax, column_title in zip(axes[0], column_titles):
        ax.set_title(column_title, fontsize=11, fontweight="bold")
    if title:
        fig.suptitle(title, fontsize=12, y=1 - 0.05 / height_in, va="top")
    return _save(fig, out_path, bbox_inches="tight", pad_inches=0.05)


def draw_heatmap(
    image: np.ndarray, activation_map: np.ndarray, out_path: str | os.PathLike, *, title: str = "",
    normalise: bool = False, decision: str = "",
) -> pathlib.Path:
    """Write a PNG of a photograph beside its smoothed activation map laid over it, with a colour bar.

    By default the map keeps its own scale (activation 0 to 1), so a photograph scored
    absent shows no hot spot; ``normalise=True`` stretches each map to its own range, as
    the paper's Fig. 3 does for positives. ``decision`` is printed on the overlay.
    """
    import matplotlib

    image = _check_square(image, "image")
    overlay = overlay_heatmap(image, smooth_heatmap(activation_map, image.shape[0], normalise))
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(8.6, 4.6 if title else 4.3), dpi=100,
                             gridspec_kw=dict(width_ratios=(1, 1, 0.05), wspace=0.04, left=0, right=0.93, bottom=0.02,
                                              top=0.86 if title else 0.93))
    for ax, picture, caption in zip(axes, (image, overlay), ("photograph", "activation map")):
        ax.imshow(picture)
        ax.set_title(caption, fontsize=10)
        ax.set_axis_off()
    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, 1), cmap="jet")
    bar = fig.colorbar(scale, cax=axes[2])
    bar.set_label("activation, this map's min to max" if normalise else "activation A", fontsize=9)
    if decision:
        axes[1].text(0.03, 0.03, decision, transform=axes[1].transAxes, fontsize=10, color="white",
                     va="bottom", ha="left", bbox=dict(facecolor="black", alpha=0.7, edgecolor="none"))
    if title:
        fig.suptitle(title, fontsize=11, y=0.99, va="top")
    return _save(fig, out_path, bbox_inches="tight", pad_inches=0.05)


def draw_guidance_pull(activation: np.ndarray, pulls: dict[str, np.ndarray], epsilon: float,
                       out_path: str | os.PathLike) -> pathlib.Path:
    """A PNG of how hard each guidance form pushes one outside cell's logit down, against its activation.

    ``pulls`` maps a label to −d(loss)/d(logit) per cell (times the number of cells), as
    computed from :func:`fundax.losses.guidance_loss` (docs/GUIDANCE.md).
    """
    activation = np.asarray(activation, np.float64)
    if not pulls:
        raise ValueError("draw_guidance_pull needs at least one curve")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    for label, pull in pulls.items():
        pull = np.asarray(pull, np.float64)
        if pull.shape != activation.shape:
            raise ValueError(f"pull {label!r} has shape {pull.shape}, activation {activation.shape}")
        ax.plot(activation, pull, lw=2, label=label)
    ax.axvline(epsilon, ls="--", lw=1, color="0.4")
    ax.annotate(f"ε = {epsilon:g}: eq. 2 stops here", (epsilon, 0.5), xytext=(8, 0), textcoords="offset points",
                fontsize=9, color="0.3")
    ax.set_xscale("logit")
    ax.set_xlim(activation.min(), activation.max())
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("activation a of a cell outside the regional cue")
    ax.set_ylabel("pull on its logit (per cell)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=9)
    return _save(fig, out_path, bbox_inches="tight")
