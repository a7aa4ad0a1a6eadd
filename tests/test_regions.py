"""The 8-region geometry of REGIONS.md: example points, symmetries, numpy/jax agreement, masks."""

import jax
import numpy as np
import pytest

from fundax import regions
from fundax.regions import REGIONS

# REGIONS.md's example, for an image of 32k rows by 48k columns: (x, y) of a point -> region id.
EXAMPLE = {(28, 17): 0, (12, 15.6): 1, (12, 16.4): 2, (40, 17): 3, (20, 2): 4, (20, 30): 5, (2, 2): 6, (2, 30): 7}


def test_canonical_names_and_ids():
    assert REGIONS == ("macula", "superior_disc", "inferior_disc", "temporal", "superotemporal",
                       "inferotemporal", "superonasal", "inferonasal")


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_every_example_point_of_the_spec(k):
    ids = regions.region_map(32 * k, 48 * k, (12 * k, 16 * k), (28 * k, 17 * k))
    assert ids.dtype == np.int32 and ids.shape == (32 * k, 48 * k)
    for (x, y), expected in EXAMPLE.items():
        # "the pixel holding" the point: row floor(y), column floor(x)
        assert ids[int(y * k), int(x * k)] == expected, (k, x, y)
        assert regions.region_ids(x * k, y * k, (12 * k, 16 * k), (28 * k, 17 * k)) == expected


def test_every_region_appears_and_all_pixels_get_an_id():
    ids = regions.region_map(96, 144, (36, 48), (84, 51))
    assert set(np.unique(ids)) == set(range(8))


def test_hand_computed_geometry():
    # Disc at the origin, fovea at (10, 0): D = 10, r_d = 4, r_f = 20/3, t_c = (100 + 16 - 400/9) / 20.
    disc, fovea = (0.0, 0.0), (10.0, 0.0)
    t_c = (100 + 16 - 400 / 9) / 20
    assert t_c == pytest.approx(0.358 * 10, abs=0.01)
    ids = lambda x, y: int(regions.region_ids(x, y, disc, fovea))  # noqa: E731
    assert ids(t_c - 0.01, -0.5) == 1  # disc circle, before the chord, above L (y up = s >= 0)
    assert ids(t_c + 0.01, -0.5) == 0  # past the chord: macula
    assert ids(-0.01, 3.99) == 2 and ids(-0.01, 4.01) == 7  # just inside / outside the disc circle, below L
    assert ids(0.0, 4.01) == 5  # t = 0 lies on the temporal side (t >= 0)
    assert ids(16.6, 0.0) == 0 and ids(16.7, 0.0) == 3  # fovea circle ends at 10 + 20/3
    assert ids(30.0, -6.6) == 3 and ids(30.0, -6.7) == 4  # the tangent half-line s = r_f
    assert ids(10.0, -6.7) == 4  # t <= D: no temporal band there
    assert ids(-0.01, 5.0) == 7 and ids(0.0, 5.0) == 5  # the perpendicular through OD, t = 0
    assert ids(-5.0, 0.0) == 6  # s = 0 counts as superior


def test_left_right_flip_symmetry():
    h, w = 64, 96
    disc, fovea = (30.0, 33.0), (62.0, 35.5)
    right = regions.region_map(h, w, disc, fovea)
    left = regions.region_map(h, w, (w - disc[0], disc[1]), (w - fovea[0], fovea[1]))
    np.testing.assert_array_equal(left, right[:, ::-1])


def _rotate(points, disc, fovea, angle_deg):
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return points @ rot.T, rot @ disc, rot @ fovea


@pytest.mark.parametrize("angle_deg", [5.0, 17.0, 45.0, -30.0, -60.0])
def test_invariance_under_rotating_the_whole_geometry(angle_deg):
    rng = np.random.default_rng(int(angle_deg) + 100)
    disc, fovea = np.array([3.0, -1.0]), np.array([11.0, 1.0])  # L about 14 degrees from horizontal
    points = rng.uniform(-30, 30, (4000, 2))
    before = regions.region_ids(points[:, 0], points[:, 1], disc, fovea)
    after = regions.region_ids(*_rotate(points, disc, fovea, angle_deg)[0].T, *_rotate(points, disc, fovea, angle_deg)[1:])
    np.testing.assert_array_equal(after, before)


def test_upside_down_photograph_swaps_superior_and_inferior():
    # "Superior" is the side of L that points up in the image, so turning the photograph
    # upside down (180 degrees) swaps the superior and inferior regions and nothing else.
    rng = np.random.default_rng(1)
    disc, fovea = np.array([3.0, -1.0]), np.array([11.0, 1.0])
    points = rng.uniform(-30, 30, (4000, 2))
    before = regions.region_ids(points[:, 0], points[:, 1], disc, fovea)
    p, d, f = _rotate(points, disc, fovea, 180.0)
    swap = np.array([0, 2, 1, 3, 5, 4, 7, 6])
    np.testing.assert_array_equal(regions.region_ids(p[:, 0], p[:, 1], d, f), swap[before])


@pytest.mark.parametrize("factor", [0.25, 3.0, 17.5])
def test_invariance_under_scaling(factor):
    rng = np.random.default_rng(7)
    disc, fovea = np.array([30.0, 40.0]), np.array([70.0, 44.0])
    points = rng.uniform(0, 120, (4000, 2))
    before = regions.region_ids(points[:, 0], points[:, 1], disc, fovea)
    p = points * factor
    after = regions.region_ids(p[:, 0], p[:, 1], disc * factor, fovea * factor)
    np.testing.assert_array_equal(before, after)


def test_grid_over_a_larger_image():
    # A 4x6 grid over a 32x48 image: cell (i, j) is centred at ((j + .5) * 8, (i + .5) * 8).
    disc, fovea = (12.0, 16.0), (28.0, 17.0)
    grid = regions.region_map(4, 6, disc, fovea, image_size=(32, 48))
    for i in range(4):
        for j in range(6):
            assert grid[i, j] == regions.region_ids((j + 0.5) * 8, (i + 0.5) * 8, disc, fovea)


def test_numpy_and_jax_agree():
    rng = np.random.default_rng(3)
    region_map_jax = jax.jit(regions.region_map_jax, static_argnums=(0, 1, 4))
    for _ in range(20):
        size = int(rng.integers(8, 80))
        disc = rng.uniform(0, size, 2)
        fovea = disc + rng.normal(0, size / 4, 2)
        expected = regions.region_map(size, size, disc, fovea, image_size=(512, 512))
        got = np.asarray(region_map_jax(size, size, disc, fovea, (512, 512)))
        # float32 vs float64 may disagree only for a cell centre on a boundary: none here.
        np.testing.assert_array_equal(got, expected)
    batch = jax.vmap(lambda d, f: regions.region_map_jax(16, 16, d, f))(
        np.array([[4.0, 8.0], [12.0, 8.0]]), np.array([[11.0, 8.5], [5.0, 8.5]]))
    np.testing.assert_array_equal(batch[1], np.asarray(batch[0])[:, ::-1])


def test_bits_and_masks():
    assert regions.regions_to_bits(["macula", "superior_disc"]) == 0b11
    assert regions.regions_to_bits(["temporal", "temporal"]) == 0b1000
    assert regions.regions_to_bits([]) == 0
    assert regions.bits_to_regions(0b1001) == ("macula", "temporal")
    assert regions.bits_to_regions(255) == REGIONS
    for bits in range(256):
        assert regions.regions_to_bits(regions.bits_to_regions(bits)) == bits
    ids = regions.region_map(32, 48, (12, 16), (28, 17))
    mask = regions.region_mask(32, 48, (12, 16), (28, 17), ["macula", "temporal"])
    np.testing.assert_array_equal(mask, np.isin(ids, [0, 3]).astype(np.float32))
    np.testing.assert_array_equal(regions.region_mask(32, 48, (12, 16), (28, 17), 0b1001), mask)
    assert mask.dtype == np.float32
    stacked = regions.mask_from_bits(np.stack([ids, ids]), np.array([1, 1 << 7])[:, None, None])
    np.testing.assert_array_equal(stacked[0], ids == 0)
    np.testing.assert_array_equal(stacked[1], ids == 7)


def test_bad_inputs():
    with pytest.raises(regions.RegionError, match="unknown region 'fovea'.*macula, superior_disc"):
        regions.regions_to_bits(["fovea"])
    with pytest.raises(regions.RegionError, match=r"\[0, 255\], got 256"):
        regions.bits_to_regions(256)
    with pytest.raises(regions.RegionError, match="coincide"):
        regions.region_map(4, 4, (1, 1), (1, 1))
    with pytest.raises(regions.RegionError, match="finite"):
        regions.region_map(4, 4, (1, np.nan), (2, 1))
    with pytest.raises(regions.RegionError, match=r"\(x, y\) pairs"):
        regions.region_map(4, 4, (1, 1, 1), (2, 1))
