"""A lesion's pixels → the regions that hold it: the regional cue of a segmented finding.

A grader lists the regions a finding lies in (DATA_FORMAT.md); a segmentation gives its
pixels instead. :func:`regions_of_lesion` turns the one into the other: a region is listed
when it holds at least ``min_share`` of the lesion's pixels, so that a few stray pixels
over a boundary do not widen the cue (``docs/DATASETS.md``). Pixel (i, j) belongs to the
region of its centre (j + 0.5, i + 0.5), as in :func:`fundax.regions.region_map`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fundax import regions as regions_lib

DEFAULT_MIN_SHARE = 0.05
"""The smallest share of a lesion's pixels that puts a region in its cue."""


def region_shares(mask: np.ndarray, disc_xy: Sequence[float], fovea_xy: Sequence[float]) -> np.ndarray:
    """The share (float64, summing to 1) of ``mask``'s pixels in each region, in :data:`REGIONS` order.

    All zeros for an empty mask. Only the lesion's pixels are placed, not the whole grid:
    a 4288×2848 photograph with a few thousand lesion pixels costs a few thousand points.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a lesion mask is (H, W), got shape {mask.shape}")
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return np.zeros(regions_lib.NUM_REGIONS)
    ids = regions_lib.region_ids(cols + 0.5, rows + 0.5, disc_xy, fovea_xy)
    return np.bincount(ids, minlength=regions_lib.NUM_REGIONS) / rows.size


def regions_of_lesion(mask: np.ndarray, disc_xy: Sequence[float], fovea_xy: Sequence[float],
                      min_share: float = DEFAULT_MIN_SHARE) -> list[str]:
    """The regions, in canonical order, holding at least ``min_share`` of the lesion's pixels.

    ``[]`` for an empty mask. Above 1/8 no region may reach ``min_share`` (a lesion spread
    evenly over all eight); the region with the largest share is then the cue, so that a
    lesion always has one.
    """
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must lie in (0, 1], got {min_share}")
    shares = region_shares(mask, disc_xy, fovea_xy)
    if not shares.any():
        return []
    held = shares >= min_share
    if not held.any():
        held = shares == shares.max()
    return [name for name, keep in zip(regions_lib.REGIONS, held) if keep]
