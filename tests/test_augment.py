"""On-device augmentation: the warp moves pixels where hand computation says, and the mask follows."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fundax.data.augment import (
    AugmentConfig,
    augment_batch,
    draw_augmentation,
    example_keys,
    random_affine,
    warp_image,
    warp_region_mask,
)
from fundax.regions import ALL_REGIONS_BITS, CellGrid, grid_mask, region_ids, region_map, region_mask

# A right eye (disc left of the fovea, L tilted slightly up) and a left eye, in a 96 px frame.
RIGHT_EYE = ((30.0, 50.0), (66.0, 47.0))
LEFT_EYE = ((67.0, 44.0), (31.0, 49.0))
S = 96

NO_AFFINE = dict(flip=False, scale=(1.0, 1.0), rotation_deg=0.0, translation=0.0, shear_deg=0.0)
FLIP_ONLY = AugmentConfig(**NO_AFFINE | dict(flip=True, intensity=(1.0, 1.0)))
STRONG = AugmentConfig(scale=(0.8, 1.25), rotation_deg=180.0, translation=0.1, shear_deg=20.0)

# Jitted once per shape, so the tests spend their time checking rather than dispatching.
augment_jit = jax.jit(augment_batch, static_argnames=("grid", "config", "train"))
warp_jit = jax.jit(warp_image, static_argnames=("output_size_px",))
keys_jit = jax.jit(example_keys)


@functools.partial(jax.jit, static_argnums=(1, 2))
def random_affines(keys, size, config):
    return jax.vmap(lambda k: random_affine(k, size, config))(keys)


@functools.partial(jax.jit, static_argnums=(1, 2))
def drawn_inverses(keys, size, config):
    """The inverse affines that augment_batch draws from these keys."""
    return jax.vmap(lambda k: draw_augmentation(k, size, config)[0])(keys)


def _batch_geometry(eye, batch):
    """(disc_xy, fovea_xy) arrays of shape (batch, 2) for one eye."""
    return tuple(jnp.tile(jnp.asarray([xy], jnp.float32), (batch, 1)) for xy in eye)


def _apply(matrix, x, y):
    p = np.asarray(matrix, np.float64) @ np.array([x, y, 1.0])
    return p[0], p[1]


# --- identity ----------------------------------------------------------------------------


@pytest.mark.parametrize("eye", [RIGHT_EYE, LEFT_EYE])
@pytest.mark.parametrize("size,map_size", [(64, 8), (96, 12), (96, 24), (90, 16)])
def test_identity_gives_images_over_255_and_numpy_region_masks(eye, size, map_size):
    rng = np.random.default_rng(size + map_size)
    batch = 6
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    bits = np.array([0, ALL_REGIONS_BITS, 1, 0b110, 0b1000, 0b11110001], np.int32)
    scale = size / S
    disc = np.asarray(eye[0]) * scale
    fovea = np.asarray(eye[1]) * scale
    # Not training ignores the config: both must give the plain images and geometry masks.
    config = AugmentConfig() if size == 96 else None
    out, masks = augment_jit(
        jnp.asarray(images),
        jnp.tile(jnp.asarray(disc, jnp.float32), (batch, 1)),
        jnp.tile(jnp.asarray(fovea, jnp.float32), (batch, 1)),
        jnp.asarray(bits),
        None,
        grid=CellGrid.uniform(map_size, size),
        config=config,
        train=False,
    )
    assert masks.dtype == jnp.float32 and out.dtype == jnp.float32
    out, masks = np.asarray(out), np.asarray(masks)
    # XLA may turn the division into a multiplication by 1/255: allow that last bit.
    np.testing.assert_array_max_ulp(out, images.astype(np.float32) / np.float32(255), maxulp=1)
    for b in range(batch):
        want = region_mask(map_size, map_size, disc, fovea, int(bits[b]), image_size=(size, size))
        np.testing.assert_array_equal(masks[b], want)


# --- hand-built affines ------------------------------------------------------------------


def _dot_image(size, row, col, value=200):
    image = np.zeros((size, size, 3), np.uint8)
    image[row, col] = (value, value // 2, 7)
    return image


def test_integer_translation_moves_the_pixel_by_that_many_pixels():
    image = _dot_image(32, row=10, col=5)
    # Output (x, y) samples input (x - 7, y + 3): content moves 7 right and 3 up.
    inverse = jnp.array([[1.0, 0.0, -7.0], [0.0, 1.0, 3.0], [0.0, 0.0, 1.0]])
    out = np.asarray(warp_jit(jnp.asarray(image), inverse))
    want = np.zeros((32, 32, 3), np.float32)
    want[7, 12] = (200, 100, 7)
    np.testing.assert_array_equal(out, want)


def test_half_pixel_shift_splits_the_pixel_between_two_neighbours():
    image = _dot_image(16, row=4, col=6)
    inverse = jnp.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = np.asarray(warp_jit(jnp.asarray(image), inverse))
    want = np.zeros((16, 16, 3), np.float32)
    want[4, 5] = want[4, 6] = (100, 50, 3.5)
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_rot90_and_flip_built_by_hand_match_numpy():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    # np.rot90: out[i, j] = in[j, W-1-i], i.e. output (x, y) samples input (W - y, x).
    rot90 = jnp.array([[0.0, -1.0, 24.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    mirror = jnp.array([[-1.0, 0.0, 24.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    np.testing.assert_allclose(np.asarray(warp_jit(jnp.asarray(image), rot90)), np.rot90(image), atol=1e-4)
    np.testing.assert_allclose(np.asarray(warp_jit(jnp.asarray(image), mirror)), image[:, ::-1], atol=1e-4)


def test_outside_the_input_is_black_and_output_size_is_honoured():
    image = np.full((20, 20, 3), 255, np.uint8)
    far = jnp.array([[1.0, 0.0, 40.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert not np.asarray(warp_jit(jnp.asarray(image), far)).any()
    # Sampling a 10 px output at twice the spacing, shifted so the last column reaches past the edge.
    half = jnp.array([[2.0, 0.0, 1.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    out = np.asarray(warp_jit(jnp.asarray(image), half, output_size_px=10))
    assert out.shape == (10, 10, 3)
    # Column j samples x = 2(j + 0.5) + 1, input column index 2j + 1.5: j = 9 reaches 19.5,
    # halfway between the last column and the black beyond it.
    np.testing.assert_allclose(out[:, :9], 255.0)
    np.testing.assert_allclose(out[:, 9], 127.5)


# --- random affines ----------------------------------------------------------------------


def _decompose(inverse, size):
    """(mirror, scale, theta, shear, shift) of forward = T(c + t) R Sh S F T(-c)."""
    forward = np.linalg.inv(np.asarray(inverse, np.float64))
    linear = forward[:2, :2]
    mirror = np.sign(np.linalg.det(linear))
    unflipped = linear @ np.diag([mirror, 1.0])
    scale = np.hypot(*unflipped[:, 0])
    theta = np.arctan2(unflipped[1, 0], unflipped[0, 0])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    shear_matrix = rot.T @ unflipped / scale
    np.testing.assert_allclose(shear_matrix[[0, 1, 1], [0, 0, 1]], [1.0, 0.0, 1.0], atol=1e-5)
    c = size / 2
    shift = forward[:2] @ np.array([c, c, 1.0]) - c
    return mirror, scale, theta, shear_matrix[0, 1], shift


def test_random_affine_parameters_stay_in_their_ranges_and_cover_them():
    config = AugmentConfig()
    keys = keys_jit(0, 0, jnp.arange(400))
    inverses = np.asarray(random_affines(keys, S, config))
    parts = [_decompose(m, S) for m in inverses]
    mirror = np.array([p[0] for p in parts])
    scale = np.array([p[1] for p in parts])
    theta = np.degrees([p[2] for p in parts])
    shear = np.degrees(np.arctan([p[3] for p in parts]))
    shift = np.array([p[4] for p in parts]) / S
    tol = 1e-4
    assert 0.3 < np.mean(mirror < 0) < 0.7
    assert scale.min() >= 0.9 - tol and scale.max() <= 1.1 + tol and np.ptp(scale) > 0.15
    assert np.abs(theta).max() <= 15 + 1e-2 and theta.min() < -12 and theta.max() > 12
    assert np.abs(shear).max() <= 5 + 1e-2 and shear.min() < -4 and shear.max() > 4
    assert np.abs(shift).max() <= 0.05 + tol and shift.min() < -0.04 and shift.max() > 0.04


def test_flip_only_config_gives_identity_or_mirror_about_the_centre():
    config = FLIP_ONLY
    inverses = np.asarray(random_affines(keys_jit(3, 0, jnp.arange(64)), 40, config))
    identity = np.eye(3)
    mirror = np.array([[-1.0, 0.0, 40.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    flipped = [np.allclose(m, mirror, atol=1e-5) for m in inverses]
    for m, is_flip in zip(inverses, flipped):
        assert is_flip or np.allclose(m, identity, atol=1e-5)
    assert 10 < sum(flipped) < 54


# --- the mask follows the image ----------------------------------------------------------


def _points_well_inside(rng, eye, count, margin_px):
    """Pixel centres whose whole disc of radius ``margin_px`` lies in one region."""
    disc, fovea = eye
    steps = np.arange(-margin_px, margin_px + 1)
    offsets = np.stack(np.meshgrid(steps, steps), -1).reshape(-1, 2)
    offsets = offsets[np.hypot(*offsets.T) <= margin_px]
    points, regions = [], []
    while len(points) < count:
        p = rng.integers(S // 6, S - S // 6, 2) + 0.5
        ids = region_ids(p[0] + offsets[:, 0], p[1] + offsets[:, 1], disc, fovea)
        if np.all(ids == ids[0]):
            points.append(p)
            regions.append(int(ids[0]))
    return np.array(points), np.array(regions, np.int32)


@pytest.mark.parametrize("config", [AugmentConfig(), STRONG], ids=["paper", "strong"])
@pytest.mark.parametrize("eye", [RIGHT_EYE, LEFT_EYE], ids=["right", "left"])
def test_lesion_still_lands_in_its_region_cell_after_random_affines(config, eye):
    batch, map_size = 64, 24
    cell = S / map_size
    # A cell centre is within half a cell diagonal of the lesion in the output frame; the inverse
    # stretches distances by at most 1/0.8 * 1.2 here, so 6 px in the original frame is enough.
    rng = np.random.default_rng(len(eye[0]) + int(config.rotation_deg))
    points, regions = _points_well_inside(rng, eye, batch, margin_px=6)
    images = np.zeros((batch, S, S, 3), np.uint8)
    for b, (x, y) in enumerate(points):
        # Dim enough that no gain clips it, so its warped centroid is where the lesion went.
        images[b, int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2] = 200
    disc, fovea = _batch_geometry(eye, batch)
    keys = keys_jit(7, 11, jnp.arange(batch))
    out, masks = augment_jit(
        jnp.asarray(images), disc, fovea, jnp.asarray(1 << regions), keys,
        grid=CellGrid.uniform(map_size, S), config=config, train=True,
    )
    out, masks = np.asarray(out), np.asarray(masks)
    inverses = np.asarray(drawn_inverses(keys, S, config))
    checked = 0
    for b in range(batch):
        x, y = _apply(np.linalg.inv(inverses[b]), *points[b])
        if not (4 <= x < S - 4 and 4 <= y < S - 4):
            continue
        checked += 1
        assert masks[b, int(y // cell), int(x // cell)] == 1.0, (b, points[b], regions[b], (x, y))
        # The image went the same way: the warped lesion is centred where the point was sent.
        weight = out[b].sum(-1)
        pixel_centres = np.arange(S) + 0.5
        centre = np.array([weight.sum(0) @ pixel_centres, weight.sum(1) @ pixel_centres]) / weight.sum()
        assert np.hypot(*(centre - (x, y))) <= 0.25, (b, (x, y), centre)
    assert checked >= batch * 3 // 4


def test_flipped_mask_equals_region_map_of_flipped_disc_and_fovea():
    config = FLIP_ONLY
    batch, map_size = 16, 16
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (batch, S, S, 3), dtype=np.uint8)
    keys = keys_jit(0, 4, jnp.arange(batch))
    # Each example once per region, with the same key, to read back its whole id map.
    per_region = np.repeat(np.arange(batch), 8)
    disc, fovea = _batch_geometry(RIGHT_EYE, batch * 8)
    bits = jnp.asarray(np.tile(1 << np.arange(8), batch), jnp.int32)
    out, masks = augment_jit(
        jnp.asarray(images[per_region]), disc, fovea, bits, keys[per_region],
        grid=CellGrid.uniform(map_size, S), config=config, train=True,
    )
    out, masks = np.asarray(out), np.asarray(masks).reshape(batch, 8, map_size, map_size)
    np.testing.assert_array_equal(masks.sum(1), 1.0)
    ids = np.einsum("bkij,k->bij", masks, np.arange(8.0)).astype(np.int32)
    (dx, dy), (fx, fy) = RIGHT_EYE
    original = region_map(map_size, map_size, (dx, dy), (fx, fy), image_size=(S, S))
    mirrored = region_map(map_size, map_size, (S - dx, dy), (S - fx, fy), image_size=(S, S))
    # The geometry is left/right symmetric: a mirrored right eye is a left eye with the mirrored map.
    np.testing.assert_array_equal(mirrored, original[:, ::-1])
    inverses = np.asarray(drawn_inverses(keys, S, config))
    flips = 0
    for b in range(batch):
        flipped = inverses[b, 0, 0] < 0
        flips += flipped
        image = images[b, :, ::-1] if flipped else images[b]
        np.testing.assert_array_max_ulp(out[8 * b], image.astype(np.float32) / np.float32(255), maxulp=1)
        np.testing.assert_array_equal(ids[b], mirrored if flipped else original)
    assert 2 < flips < batch - 2


@pytest.mark.parametrize("grid", [CellGrid.uniform(12, S), CellGrid(6, 16.0, 15.5)], ids=["uniform", "offset"])
def test_warp_region_mask_agrees_with_numpy_regions_of_mapped_cell_centres(grid):
    inverses = np.asarray(drawn_inverses(keys_jit(9, 0, jnp.arange(64)), S, STRONG))[:8]
    render = jax.jit(jax.vmap(warp_region_mask, in_axes=(0, None, None, None, None)), static_argnums=(4,))
    masks = np.asarray(render(jnp.asarray(inverses), *map(jnp.asarray, RIGHT_EYE), 1 << 0, grid))
    # Hand-computed centres: (j + 0.5) * 96 / 12 = 4, 12, ..., 92; or 15.5 + 16 j = 15.5, ..., 95.5.
    centres = {12: np.arange(4.0, 96.0, 8.0), 6: np.arange(15.5, 96.0, 16.0)}[grid.size]
    x, y = np.meshgrid(centres, centres)
    for inverse, mask in zip(inverses.astype(np.float64), masks):
        back = np.einsum("ij,jhw->ihw", inverse, np.stack([x, y, np.ones_like(x)]))
        macula = region_ids(back[0], back[1], *RIGHT_EYE) == 0
        assert macula.any()
        np.testing.assert_array_equal(mask, macula.astype(np.float32))
    # Without augmentation the mask is the grid's own numpy mask.
    _, plain = augment_jit(jnp.zeros((1, S, S, 3), jnp.uint8), *(jnp.asarray(v)[None] for v in RIGHT_EYE),
                           jnp.asarray([1], jnp.int32), None, grid=grid, config=None, train=False)
    np.testing.assert_array_equal(np.asarray(plain)[0], grid_mask(grid, *RIGHT_EYE, 1))


# --- keys --------------------------------------------------------------------------------


def _key_bits(keys):
    return np.asarray(jax.random.key_data(keys))


def test_example_keys_depend_only_on_seed_step_and_global_index():
    whole = _key_bits(example_keys(3, 10, jnp.arange(16)))
    # The second half of the batch on another device, and a single example on its own.
    np.testing.assert_array_equal(_key_bits(example_keys(3, 10, jnp.arange(8, 16))), whole[8:])
    np.testing.assert_array_equal(_key_bits(example_keys(3, 10, jnp.asarray([5, 2]))), whole[[5, 2]])
    np.testing.assert_array_equal(_key_bits(example_keys(3, 10, jnp.asarray(7))), whole[7])
    traced = jax.jit(example_keys)(jnp.int32(3), jnp.int32(10), jnp.arange(16))
    np.testing.assert_array_equal(_key_bits(traced), whole)
    assert len({row.tobytes() for row in whole}) == 16
    for other in (example_keys(4, 10, jnp.arange(16)), example_keys(3, 11, jnp.arange(16))):
        assert not (_key_bits(other) == whole).all(axis=-1).any()


def test_different_examples_get_different_affines_and_the_same_example_the_same():
    keys = keys_jit(0, 1, jnp.arange(8))
    inverses = np.asarray(random_affines(keys, S, AugmentConfig()))
    for a in range(8):
        for b in range(a + 1, 8):
            assert not np.allclose(inverses[a], inverses[b])
    again = random_affines(keys_jit(0, 1, jnp.asarray([3])), S, AugmentConfig())[0]
    np.testing.assert_array_equal(np.asarray(again), inverses[3])


# --- intensity ---------------------------------------------------------------------------


def test_intensity_gain_is_in_range_and_clipped_to_one():
    config = AugmentConfig(**NO_AFFINE, intensity=(0.5, 1.5))
    batch = 64
    images = np.full((batch, 32, 32, 3), 100, np.uint8)
    images[:, :, 16:] = 250
    keys = keys_jit(2, 0, jnp.arange(batch))
    disc, fovea = jnp.zeros((batch, 2)), jnp.ones((batch, 2))
    out, _ = augment_jit(
        jnp.asarray(images), disc, fovea, jnp.zeros(batch, jnp.int32), keys,
        grid=CellGrid.uniform(4, 32), config=config, train=True,
    )
    out = np.asarray(out)
    gains = out[:, 0, 0, 0] * 255 / 100
    assert gains.min() >= 0.5 - 1e-5 and gains.max() <= 1.5 + 1e-5 and np.ptp(gains) > 0.6
    # One gain per example, shared by all its pixels and channels; bright pixels clip at 1.
    gains = gains[:, None, None, None]
    half = (batch, 32, 16, 3)
    np.testing.assert_allclose(out[:, :, :16], np.broadcast_to(gains * 100 / 255, half), rtol=1e-5)
    bright = np.minimum(gains * 250, 255) / 255
    np.testing.assert_allclose(out[:, :, 16:], np.broadcast_to(bright, half), rtol=1e-5)
    assert (out[:, :, 16:] == 1.0).any()


def test_strong_augmentation_stays_in_unit_interval_and_empty_bits_give_empty_masks():
    batch = 64
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.integers(0, 256, (batch, S, S, 3), dtype=np.uint8))
    disc, fovea = _batch_geometry(RIGHT_EYE, batch)
    bits = np.where(np.arange(batch) % 2 == 0, 0, 0b1001).astype(np.int32)
    index = np.arange(batch)
    out, masks = augment_jit(
        images, disc, fovea, jnp.asarray(bits), keys_jit(0, 0, jnp.asarray(index)),
        grid=CellGrid.uniform(24, S), config=STRONG, train=True,
    )
    out, masks = np.asarray(out), np.asarray(masks)
    assert out.shape == (batch, S, S, 3) and masks.shape == (batch, 24, 24)
    assert out.min() >= 0.0 and out.max() <= 1.0 and out.max() > 0.9
    assert set(np.unique(masks)) == {0.0, 1.0}
    assert not masks[bits == 0].any() and masks[bits != 0].any(axis=(1, 2)).all()
    # Each example keeps its augmentation wherever it sits in the batch.
    order = np.roll(index, 5)
    moved_out, moved_masks = augment_jit(
        images[order], disc, fovea, jnp.asarray(bits[order]), keys_jit(0, 0, jnp.asarray(order)),
        grid=CellGrid.uniform(24, S), config=STRONG, train=True,
    )
    np.testing.assert_array_equal(np.asarray(moved_out), out[order])
    np.testing.assert_array_equal(np.asarray(moved_masks), masks[order])


def test_training_without_keys_or_with_non_square_images_is_refused():
    geometry = (jnp.zeros((2, 2)), jnp.ones((2, 2)), jnp.zeros(2, jnp.int32))
    square, oblong = jnp.zeros((2, 8, 8, 3), jnp.uint8), jnp.zeros((2, 8, 6, 3), jnp.uint8)
    with pytest.raises(ValueError, match="one key per example"):
        augment_batch(square, *geometry, None, grid=CellGrid.uniform(2, 8), config=AugmentConfig(), train=True)
    with pytest.raises(ValueError, match="square"):
        augment_batch(oblong, *geometry, None, grid=CellGrid.uniform(2, 8), config=None, train=False)


# --- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(flip=1), "flip"),
        (dict(scale=(0.0, 1.1)), "scale low end must be > 0"),
        (dict(scale=(1.2, 1.1)), "scale must have low <= high"),
        (dict(scale=[0.9, 1.1]), r"scale must be a \(low, high\) tuple"),
        (dict(scale=(0.9, float("inf"))), "scale must hold two finite numbers"),
        (dict(intensity=(-0.1, 1.0)), "intensity low end must be >= 0"),
        (dict(intensity=(1.3, 1.2)), "intensity must have low <= high"),
        (dict(rotation_deg=-1.0), r"rotation_deg must lie in \[0, 180.0\]"),
        (dict(rotation_deg=181.0), "rotation_deg"),
        (dict(translation=1.0), r"translation must lie in \[0, 1.0\)"),
        (dict(translation=float("nan")), "translation must be a finite number"),
        (dict(shear_deg=60.0), r"shear_deg must lie in \[0, 45.0\]"),
        (dict(shear_deg="5"), "shear_deg must be a finite number"),
    ],
)
def test_config_rejects_bad_ranges(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**kwargs)


def test_config_accepts_degenerate_ranges_and_is_hashable():
    config = AugmentConfig(**NO_AFFINE, intensity=(1.0, 1.0))
    assert hash(config) == hash(AugmentConfig(**NO_AFFINE, intensity=(1.0, 1.0)))
    inverse = random_affine(jax.random.key(0), 50, config)
    np.testing.assert_allclose(np.asarray(inverse), np.eye(3), atol=1e-6)
