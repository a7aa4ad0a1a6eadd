"""The paper's 8 anatomical regions (§2.1), exactly as ``docs/REGIONS.md`` fixes them.

Coordinates are image pixels, x to the right and y down; an image of H rows and
W columns spans [0, W] × [0, H]. OD is the optic disc centre, F the fovea
centre, D = |F − OD|. With u = (F − OD)/D and n the unit normal of u pointing up
in the image, a point p has t = (p − OD)·u and s = (p − OD)·n, and its region is
the first of these that holds:

====  ==================  =========================================
id    name                where
====  ==================  =========================================
1     ``superior_disc``   |p − OD| < 2D/5, t < t_c, s ≥ 0
2     ``inferior_disc``   |p − OD| < 2D/5, t < t_c, s < 0
0     ``macula``          |p − F| < 2D/3, t ≥ t_c
3     ``temporal``        t > D and |s| < 2D/3
4     ``superotemporal``  t ≥ 0, s ≥ 0
5     ``inferotemporal``  t ≥ 0, s < 0
6     ``superonasal``     t < 0, s ≥ 0
7     ``inferonasal``     t < 0, s < 0
====  ==================  =========================================

with t_c = (D² + r_d² − r_f²)/(2D) the chord through the two circles'
intersections. The geometry is written once over an array namespace, so that
the numpy functions and their jax twins (usable inside ``jit`` and ``vmap``)
are the same code.

``python -m fundax.regions_figure --demo=OUT.png`` draws the partition over a photograph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

REGIONS: tuple[str, ...] = (
    "macula",
    "superior_disc",
    "inferior_disc",
    "temporal",
    "superotemporal",
    "inferotemporal",
    "superonasal",
    "inferonasal",
)
"""Region names in canonical id order: ``REGIONS[k]`` has id k and mask bit k."""

NUM_REGIONS = len(REGIONS)
DISC_RADIUS = 2.0 / 5.0  # of D
FOVEA_RADIUS = 2.0 / 3.0  # of D
ALL_REGIONS_BITS = (1 << NUM_REGIONS) - 1

_ID = {name: k for k, name in enumerate(REGIONS)}


class RegionError(ValueError):
    """An unknown region name, a bad bitmask or a degenerate disc/fovea pair."""


def _region_ids(xp: Any, x: Any, y: Any, disc_xy: Any, fovea_xy: Any) -> Any:
    """Region id of each point (x, y): the one implementation behind numpy and jax.

    Everything is measured in units of D (hypot neither overflows nor underflows),
    so the partition is the same for a disc-fovea distance of 1e-300 or 1e300.
    """
    odx, ody = disc_xy[..., 0], disc_xy[..., 1]
    dx, dy = fovea_xy[..., 0] - odx, fovea_xy[..., 1] - ody
    dist = xp.hypot(dx, dy)
    ux, uy = dx / dist, dy / dist
    # The normal of u that points up (n_y < 0); for a vertical L, the one with n_x < 0.
    flip = (ux < 0) | ((ux == 0) & (uy > 0))
    nx = xp.where(flip, -uy, uy)
    ny = xp.where(flip, ux, -ux)
    px, py = (x - odx) / dist, (y - ody) / dist
    t = px * ux + py * uy
    s = px * nx + py * ny
    t_c = (1.0 + DISC_RADIUS**2 - FOVEA_RADIUS**2) / 2.0
    in_disc = t * t + s * s < DISC_RADIUS**2
    in_fovea = (t - 1.0) ** 2 + s * s < FOVEA_RADIUS**2
    superior = s >= 0
    ids = xp.where(superior, 6, 7)
    ids = xp.where(t >= 0, xp.where(superior, 4, 5), ids)
    ids = xp.where((t > 1.0) & (xp.abs(s) < FOVEA_RADIUS), 3, ids)
    ids = xp.where(in_fovea & (t >= t_c), 0, ids)
    ids = xp.where(in_disc & (t < t_c), xp.where(superior, 1, 2), ids)
    return ids.astype(xp.int32)


def _cell_centres(xp: Any, height: int, width: int, image_size: Sequence[float] | None, dtype: Any):
    rows, cols = (height, width) if image_size is None else image_size
    y = (xp.arange(height, dtype=dtype) + 0.5) * (rows / height)
    x = (xp.arange(width, dtype=dtype) + 0.5) * (cols / width)
    return x[None, :], y[:, None]


def _check_pair(disc_xy: Any, fovea_xy: Any) -> tuple[np.ndarray, np.ndarray]:
    disc = np.asarray(disc_xy, dtype=np.float64)
    fovea = np.asarray(fovea_xy, dtype=np.float64)
    if disc.shape != (2,) or fovea.shape != (2,):
        raise RegionError(f"disc and fovea must be (x, y) pairs, got {disc_xy!r} and {fovea_xy!r}")
    if not (np.all(np.isfinite(disc)) and np.all(np.isfinite(fovea))):
        raise RegionError(f"disc {disc_xy!r} and fovea {fovea_xy!r} must be finite")
    if np.hypot(*(fovea - disc)) == 0:
        raise RegionError(f"disc and fovea coincide at {tuple(disc.tolist())}: the regions are undefined")
    if not np.all(np.isfinite(fovea - disc)):
        raise RegionError(f"disc {disc_xy!r} and fovea {fovea_xy!r} are too far apart to measure")
    return disc, fovea


def region_ids(x: Any, y: Any, disc_xy: Sequence[float], fovea_xy: Sequence[float]) -> np.ndarray:
    """Region id (int32) of each point (x, y), in the frame of ``disc_xy`` and ``fovea_xy``."""
    disc, fovea = _check_pair(disc_xy, fovea_xy)
    # Points far outside the photograph may overflow to inf: they still get an id.
    with np.errstate(over="ignore", invalid="ignore"):
        return _region_ids(np, np.asarray(x, np.float64), np.asarray(y, np.float64), disc, fovea)


def region_map(
    height: int,
    width: int,
    disc_xy: Sequence[float],
    fovea_xy: Sequence[float],
    image_size: Sequence[float] | None = None,
) -> np.ndarray:
    """Region ids of a ``height``×``width`` grid laid over an image of ``image_size`` (rows, cols).

    Cell (i, j) is centred at ((j + 0.5)·W/w, (i + 0.5)·H/h); ``image_size`` defaults
    to the grid itself (one cell per pixel).
    """
    x, y = _cell_centres(np, height, width, image_size, np.float64)
    return region_ids(x, y, disc_xy, fovea_xy)


def region_ids_jax(x: Any, y: Any, disc_xy: Any, fovea_xy: Any) -> Any:
    """The jax twin of :func:`region_ids`: traceable, no checks (D must be > 0)."""
    import jax.numpy as jnp

    disc = jnp.asarray(disc_xy, jnp.float32)
    fovea = jnp.asarray(fovea_xy, jnp.float32)
    return _region_ids(jnp, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), disc, fovea)


@dataclasses.dataclass(frozen=True)
class CellGrid:
    """Where a square grid of ``size`` × ``size`` cells samples an image: its cells' centres.

    Cell j along either axis is centred at ``offset_px + j * stride_px`` image pixels
    (continuous coordinates, pixel k spans [k, k + 1]). A network's activation map is
    such a grid, its centres those of the cells' receptive fields (``fundax.models``);
    :meth:`uniform` is the grid that tiles the image evenly. Hashable, so it can be
    static under ``jit``.
    """

    size: int
    stride_px: float
    offset_px: float

    @classmethod
    def uniform(cls, size: int, image_size_px: float) -> CellGrid:
        """``size`` cells tiling ``image_size_px``: cell j centred at (j + 0.5)·image_size_px/size."""
        return cls(size, image_size_px / size, image_size_px / size / 2)

    def centres(self, xp: Any = np, dtype: Any = np.float64) -> Any:
        """The ``size`` centres along either axis."""
        return self.offset_px + self.stride_px * xp.arange(self.size, dtype=dtype)


def grid_region_ids(grid: CellGrid, disc_xy: Sequence[float], fovea_xy: Sequence[float]) -> np.ndarray:
    """Region ids (int32, ``grid.size`` squared) of the cell centres of ``grid``."""
    c = grid.centres()
    return region_ids(c[None, :], c[:, None], disc_xy, fovea_xy)


def grid_region_ids_jax(grid: CellGrid, disc_xy: Any, fovea_xy: Any) -> Any:
    """The jax twin of :func:`grid_region_ids`; ``grid`` is static, disc and fovea may be traced."""
    import jax.numpy as jnp

    c = grid.centres(jnp, jnp.float32)
    return region_ids_jax(c[None, :], c[:, None], disc_xy, fovea_xy)


def grid_mask(grid: CellGrid, disc_xy: Sequence[float], fovea_xy: Sequence[float],
              regions: Iterable[str] | int) -> np.ndarray:
    """Float32 mask of ``grid``: 1 at the cells whose centre lies in the given regions."""
    bits = regions if isinstance(regions, (int, np.integer)) else regions_to_bits(regions)
    bits_to_regions(bits)  # validates the range
    return mask_from_bits(grid_region_ids(grid, disc_xy, fovea_xy), np.int32(bits)).astype(np.float32)


def region_map_jax(
    height: int,
    width: int,
    disc_xy: Any,
    fovea_xy: Any,
    image_size: Sequence[float] | None = None,
) -> Any:
    """The jax twin of :func:`region_map` for one image; ``vmap`` it over a batch.

    ``height``, ``width`` and ``image_size`` are static; the disc and fovea may be traced.
    """
    import jax.numpy as jnp

    x, y = _cell_centres(jnp, height, width, image_size, jnp.float32)
    return region_ids_jax(x, y, disc_xy, fovea_xy)


def regions_to_bits(names: Iterable[str]) -> int:
    """The 8-bit mask (bit k for id k) of a collection of region names."""
    bits = 0
    for name in names:
        if name not in _ID:
            raise RegionError(f"unknown region {name!r}; valid regions are: {', '.join(REGIONS)}")
        bits |= 1 << _ID[name]
    return bits


def bits_to_regions(bits: int) -> tuple[str, ...]:
    """Region names, in canonical order, of an 8-bit mask."""
    bits = int(bits)
    if not 0 <= bits <= ALL_REGIONS_BITS:
        raise RegionError(f"region bitmask must lie in [0, {ALL_REGIONS_BITS}], got {bits}")
    return tuple(name for k, name in enumerate(REGIONS) if bits >> k & 1)


def mask_from_bits(ids: Any, bits: Any) -> Any:
    """Binary mask (same dtype as ``ids``) of the cells whose region is in ``bits``.

    Works on numpy and jax arrays alike; ``bits`` may be a scalar or broadcast
    against ``ids`` (e.g. shape (batch, 1, 1) for a batch of maps).
    """
    return (bits >> ids) & 1


def region_mask(
    height: int,
    width: int,
    disc_xy: Sequence[float],
    fovea_xy: Sequence[float],
    regions: Iterable[str] | int,
    image_size: Sequence[float] | None = None,
) -> np.ndarray:
    """Float32 mask of a grid: 1 in the given regions (names or a bitmask), 0 elsewhere."""
    bits = regions if isinstance(regions, (int, np.integer)) else regions_to_bits(regions)
    bits_to_regions(bits)  # validates the range
    ids = region_map(height, width, disc_xy, fovea_xy, image_size)
    return mask_from_bits(ids, np.int32(bits)).astype(np.float32)
