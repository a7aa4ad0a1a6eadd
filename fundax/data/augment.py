"""On-device augmentation (paper §3.1): a random affine and intensity rescale per example.

The host only decodes; inside the jitted train step each example gets a random
horizontal flip, scale, rotation, translation and shear, composed about the
image centre c, then a random multiplicative intensity rescale, then /255.

Sampling works backwards, so what is built is the *inverse* warp: for every
output pixel centre we ask where it came from in the original image.

    original frame                       augmented frame
    +-----------------+   forward A      +-----------------+
    |   OD     F      |  ----------->    |      F'         |
    |    *  . x       |                  |   x'    OD'     |
    |                 |  <-----------    |                 |
    +-----------------+  inverse A^-1    +-----------------+
         region_ids_jax here                  pixel / mask cell centres here

The regional mask is rendered at activation-map resolution by sending each
cell centre of the augmented frame (the centre of the cell's receptive field,
given by the model as a :class:`~fundax.regions.CellGrid`) back through the same
inverse and asking the region geometry of the original image (OD, F untouched)
which region it falls in. Image and mask therefore share one transform, whatever it is, and
the disc and fovea never need to be moved.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp

from fundax.regions import CellGrid, mask_from_bits, region_ids_jax


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random affine and intensity rescale; hashable, so it can be static under ``jit``.

    The forward map (original → augmented) is ``T(c + t) · R(θ) · Sh(φ) · S(s) · F · T(−c)``
    with c the image centre, F a horizontal flip (probability 0.5 when ``flip``),
    S(s) an isotropic scale, Sh(φ) the shear x += tan(φ)·y, R(θ) a rotation and
    t a translation; every parameter is drawn uniformly from its range.
    """

    flip: bool = True
    scale: tuple[float, float] = (0.9, 1.1)
    rotation_deg: float = 15.0
    translation: float = 0.05
    shear_deg: float = 5.0
    intensity: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip must be True or False, got {self.flip!r}")
        _check_range("scale", self.scale, lowest=0.0, inclusive=False)
        _check_range("intensity", self.intensity, lowest=0.0, inclusive=True)
        _check_bound("rotation_deg", self.rotation_deg, upper=180.0, upper_inclusive=True)
        _check_bound("translation", self.translation, upper=1.0, upper_inclusive=False)
        # tan(φ) blows up at 90°; beyond 45° the image is more smeared than sheared.
        _check_bound("shear_deg", self.shear_deg, upper=45.0, upper_inclusive=True)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(name: str, value: object, *, lowest: float, inclusive: bool) -> None:
    if not (isinstance(value, tuple) and len(value) == 2):
        raise ValueError(f"{name} must be a (low, high) tuple, got {value!r}")
    low, high = value
    if not all(_is_finite_number(v) for v in value):
        raise ValueError(f"{name} must hold two finite numbers, got {value!r}")
    if low < lowest or (low == lowest and not inclusive):
        bound = f">= {lowest}" if inclusive else f"> {lowest}"
        raise ValueError(f"{name} low end must be {bound}, got {value!r}")
    if low > high:
        raise ValueError(f"{name} must have low <= high, got {value!r}")


def _check_bound(name: str, value: object, *, upper: float, upper_inclusive: bool) -> None:
    if not _is_finite_number(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_big = value > upper if upper_inclusive else value >= upper
    if value < 0 or too_big:
        interval = f"[0, {upper}]" if upper_inclusive else f"[0, {upper})"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def example_keys(seed: int | jax.Array, step: jax.Array | int, example_index: jax.Array) -> jax.Array:
    """One PRNG key per example, from (seed, step, global example index).

    Each key depends on its own index alone, so an example is augmented the same
    way however the global batch is split across devices or hosts.
    """
    step_key = jax.random.fold_in(jax.random.key(seed), step)
    index = jnp.asarray(example_index)
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(index.reshape(-1))
    return keys.reshape(index.shape)


def random_affine(key: jax.Array, image_size_px: int, config: AugmentConfig) -> jax.Array:
    """A random 3×3 map from augmented-frame to original-frame coordinates (the inverse warp).

    Coordinates are continuous pixels, x right and y down, the frame [0, S] × [0, S].
    """
    u = jax.random.uniform(key, (6,), jnp.float32)
    mirror = jnp.where(u[0] < 0.5, -1.0, 1.0) if config.flip else 1.0
    low, high = config.scale
    scale = low + (high - low) * u[1]
    theta = math.radians(config.rotation_deg) * (2.0 * u[2] - 1.0)
    shift = config.translation * image_size_px * (2.0 * u[3:5] - 1.0)
    shear = jnp.tan(math.radians(config.shear_deg) * (2.0 * u[5] - 1.0))
    centre = image_size_px / 2.0
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    # The inverse of T(c + t) R Sh S F T(-c), factor by factor, so no matrix inversion is traced.
    f32 = jnp.float32
    to_centred = jnp.array([[1, 0, -centre - shift[0]], [0, 1, -centre - shift[1]], [0, 0, 1]], f32)
    unrotate = jnp.array([[cos, sin, 0], [-sin, cos, 0], [0, 0, 1]], f32)
    unshear = jnp.array([[1, -shear, 0], [0, 1, 0], [0, 0, 1]], f32)
    unscale_unflip = jnp.array([[mirror / scale, 0, centre], [0, 1 / scale, centre], [0, 0, 1]], f32)
    # HIGHEST keeps the 3x3 products in full float32 where matmuls default to bf16 passes (TPU).
    product = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
    return product(product(product(unscale_unflip, unshear), unrotate), to_centred)


def draw_augmentation(
    key: jax.Array, image_size_px: int, config: AugmentConfig
) -> tuple[jax.Array, jax.Array]:
    """The random draws of one example: its inverse affine and its intensity gain."""
    affine_key, intensity_key = jax.random.split(key)
    low, high = config.intensity
    gain = jax.random.uniform(intensity_key, (), jnp.float32, low, high)
    return random_affine(affine_key, image_size_px, config), gain


def _through(inverse_affine: jax.Array, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    m = jnp.asarray(inverse_affine, jnp.float32)
    return m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]


def warp_image(
    image_u8: jax.Array, inverse_affine: jax.Array, output_size_px: int | None = None
) -> jax.Array:
    """Bilinear resampling of an (H, W, C) image through ``inverse_affine``; float32, 0 outside."""
    height, width, channels = image_u8.shape
    out_h, out_w = (height, width) if output_size_px is None else (output_size_px, output_size_px)
    x, y = _through(
        inverse_affine,
        jnp.arange(out_w, dtype=jnp.float32)[None, :] + 0.5,
        jnp.arange(out_h, dtype=jnp.float32)[:, None] + 0.5,
    )
    # Pixel (r, c) is centred at (c + 0.5, r + 0.5); clamping first keeps the int cast finite
    # for points far outside, which are black anyway.
    col = jnp.clip(x - 0.5, -2.0, width + 1.0)
    row = jnp.clip(y - 0.5, -2.0, height + 1.0)
    col0, row0 = jnp.floor(col), jnp.floor(row)
    fc, fr = col - col0, row - row0
    col0, row0 = col0.astype(jnp.int32), row0.astype(jnp.int32)
    pixels = image_u8.reshape(height * width, channels)
    taps = ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc))
    out = jnp.zeros((out_h, out_w, channels), jnp.float32)
    # One gather of whole pixels (all channels) per tap, in the input dtype to move fewer
    # bytes; stacking the four taps into one gather ran ~20x slower under XLA:CPU.
    for d_row, d_col, weight in taps:
        rows, cols = row0 + d_row, col0 + d_col
        inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
        index = jnp.clip(rows, 0, height - 1) * width + jnp.clip(cols, 0, width - 1)
        values = pixels.at[index].get(mode="promise_in_bounds").astype(jnp.float32)
        out = out + jnp.where(inside, weight, 0.0)[..., None] * values
    return out


def warp_region_mask(
    inverse_affine: jax.Array,
    disc_xy: jax.Array,
    fovea_xy: jax.Array,
    region_bits: jax.Array | int,
    grid: CellGrid,
) -> jax.Array:
    """Float32 (grid.size, grid.size) region mask of the augmented frame.

    Cell (i, j) is centred at (grid.centres()[j], grid.centres()[i]); that centre is sent
    back through ``inverse_affine`` and classified by the original image's disc and fovea.
    """
    centres = grid.centres(jnp, jnp.float32)
    x, y = _through(inverse_affine, centres[None, :], centres[:, None])
    ids = region_ids_jax(x, y, disc_xy, fovea_xy)
    return mask_from_bits(ids, jnp.asarray(region_bits, jnp.int32)).astype(jnp.float32)


def augment_batch(
    images_u8: jax.Array,
    disc_xy: jax.Array,
    fovea_xy: jax.Array,
    region_bits: jax.Array,
    keys: jax.Array | None,
    *,
    grid: CellGrid,
    config: AugmentConfig | None,
    train: bool,
) -> tuple[jax.Array, jax.Array]:
    """Images in [0, 1] (B, S, S, C) and region masks (B, grid.size, grid.size), both float32.

    With ``train`` and a ``config``, each example is warped and rescaled from its own
    key (see :func:`example_keys`); otherwise the images are only divided by 255 and
    the masks drawn straight from the geometry (``keys`` may then be None).
    """
    _, height, width, _ = images_u8.shape
    if height != width:
        raise ValueError(f"augment_batch wants square images, got {height}x{width}")
    if not train or config is None:
        render = functools.partial(warp_region_mask, grid=grid)
        identity = jnp.eye(3, dtype=jnp.float32)
        masks = jax.vmap(render, in_axes=(None, 0, 0, 0))(identity, disc_xy, fovea_xy, region_bits)
        return images_u8.astype(jnp.float32) / 255.0, masks
    if keys is None:
        raise ValueError("augment_batch needs one key per example when training")

    def one(image, disc, fovea, bits, key):
        inverse, gain = draw_augmentation(key, height, config)
        image = jnp.clip(warp_image(image, inverse) * gain, 0.0, 255.0) / 255.0
        return image, warp_region_mask(inverse, disc, fovea, bits, grid)

    return jax.vmap(one)(images_u8, disc_xy, fovea_xy, region_bits, keys)
