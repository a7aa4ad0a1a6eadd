"""Tests for the regionally guided CNN (paper §2.2, Fig. 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fakes
from fundax.findings import FINDINGS, get_finding
from fundax.models import GuidedCNN, guided_cnn
from fundax.models.guided_cnn import activation_map_size
from fundax.regions import CellGrid

# Narrow widths keep every test to a fraction of a second on a CPU.
TINY = dict(stem_width=4, units_per_stage=(1, 1, 1), aspp_width=4)


def _images(batch: int, size_px: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(batch, size_px, size_px, 3)).astype(np.float32)


def _random_variables(model: GuidedCNN, images: np.ndarray, seed: int = 0):
    """Variables of the right structure with random weights, without running init.

    jitting ``model.init`` spends seconds compiling the random number generator;
    the tests that only need *some* weights fill the shapes from numpy instead.
    Running statistics start as BatchNorm's own init does: mean 0, variance 1.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "mean":
            return np.zeros(leaf.shape, np.float32)
        if name == "var":
            return np.ones(leaf.shape, np.float32)
        return rng.normal(0.0, 0.3, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _conv_calls(model: GuidedCNN, images) -> list[tuple[tuple[str, ...], int, jnp.dtype]]:
    """(module path, dilation, output dtype) of every conv the model runs, in order."""
    calls = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            calls.append((context.module.path, context.module.kernel_dilation, out.dtype))
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), images)
    return calls


def _apply(model: GuidedCNN, variables, images, train: bool = False):
    return jax.jit(model.apply, static_argnames="train")(variables, images, train=train)


@pytest.mark.parametrize("finding", FINDINGS)
def test_shapes_and_atrous_branches_follow_the_registry(finding):
    model = GuidedCNN.from_finding(finding, **TINY)
    images = jnp.zeros((2, 64, 64, 3))
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), images)[0])
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "logit": ((2,), jnp.float32),
        "logit_map": ((2, 4, 4), jnp.float32),
        "activation_map": ((2, 4, 4), jnp.float32),
    }

    rates = get_finding(finding).atrous_rates
    calls = _conv_calls(model, images)
    aspp = [dilation for path, dilation, _ in calls if path[0].startswith("aspp")]
    assert aspp == list(rates)
    # Only the pyramid dilates; the encoder and the 1x1 conv do not.
    assert all(d == 1 for path, d, _ in calls if not path[0].startswith("aspp"))
    params = jax.eval_shape(model.init, jax.random.key(0), images)["params"]
    assert sorted(k for k in params if k.startswith("aspp")) == sorted(f"aspp_rate{r}" for r in rates)


@pytest.mark.parametrize("finding", FINDINGS)
def test_reference_network_maps_512_px_to_32x32(finding):
    model = GuidedCNN.from_finding(finding)
    images = jax.ShapeDtypeStruct((1, 512, 512, 3), jnp.float32)
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], images)
    assert out["logit_map"].shape == (1, 32, 32)
    assert activation_map_size(512) == 32

    # The four concatenated reductions at the reference widths: 256, 128, 64, 32 px.
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    widths = [variables["params"][name]["conv"]["kernel"].shape[-1]
              for name in ("stem", "reduction2", "reduction3", "reduction4")]
    assert widths == [32, 64, 128, 256]
    first_aspp = variables["params"]["aspp_rate1"]["conv"]["kernel"]
    assert first_aspp.shape[2] == 32 + 64 + 128 + 256


def test_activation_map_size_rounds_up_like_the_network():
    assert [activation_map_size(s) for s in (64, 48, 50)] == [4, 3, 4]
    model = GuidedCNN.from_finding("drusen", **TINY)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, 50, 50, 3)))[0])
    assert out["logit_map"].shape == (1, 4, 4)


def test_receptive_fields_are_centred_within_half_a_pixel_of_the_cue_grid():
    # On even sides the reductions pad first, first, first, last: -0.5 - 1 - 2 + 4 = +0.5 px from the
    # middle of each cell, so cell j of a side that is a multiple of 16 is centred at 16 j + 8.5.
    assert guided_cnn.reduction_padding(128, pad_first=True) == (1, 0)
    assert guided_cnn.reduction_padding(128, pad_first=False) == (0, 1)
    assert guided_cnn.reduction_padding(25, pad_first=True) == (1, 1)  # odd: symmetric
    assert guided_cnn.receptive_field_grid(512) == CellGrid(32, 16.0, 8.5)
    assert guided_cnn.receptive_field_grid(128) == CellGrid(8, 16.0, 8.5)
    cue = CellGrid.uniform(8, 128)  # docs/REGIONS.md: cell j centred at (j + 0.5) * 16
    np.testing.assert_array_equal(guided_cnn.receptive_field_grid(128).centres() - cue.centres(), 0.5)
    # Probe: with positive weights and a positive input every ReLU is open, so the pixels a cell's
    # logit depends on (its gradient's support) are its whole receptive field: reduction 4's 87 px
    # plus the one 3x3 atrous branch (+-16 px) = 119 px, centred at 16 j + 8.5: pixels 77..195 for
    # cell 8, 29..147 for cell 5.
    model = GuidedCNN(atrous_rates=(1,), max_pool_before_gap=False, **TINY)
    images = np.ones((1, 256, 256, 3), np.float32)
    variables = _random_variables(model, images)
    variables = {"params": jax.tree.map(lambda w: np.abs(w) + 0.01, variables["params"]),
                 "batch_stats": variables["batch_stats"]}
    grad = jax.grad(lambda x: model.apply(variables, x)["logit_map"][0, 8, 5])(images)
    support = np.abs(np.asarray(grad[0])).sum(-1) > 0
    rows, cols = np.flatnonzero(support.any(1)), np.flatnonzero(support.any(0))
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (77, 195, 29, 147)
    centre = guided_cnn.receptive_field_grid(256).centres()
    assert ((rows.min() + rows.max() + 1) / 2, (cols.min() + cols.max() + 1) / 2) == (centre[8], centre[5])


def test_three_stages_are_required():
    model = GuidedCNN.from_finding("membrane", stem_width=4, units_per_stage=(1, 1, 1, 1), aspp_width=4)
    with pytest.raises(ValueError, match="units_per_stage"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def _max_pool_2x2_same(logit_map: np.ndarray) -> np.ndarray:
    """2x2 stride-2 max-pooling that pads odd sides with -inf at the bottom/right."""
    b, h, w = logit_map.shape
    padded = np.full((b, h + h % 2, w + w % 2), -np.inf, np.float32)
    padded[:, :h, :w] = logit_map
    return padded.reshape(b, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2).max(axis=(2, 4))


@pytest.mark.parametrize("size_px", [64, 48])  # 4x4 and 3x3 maps
@pytest.mark.parametrize("finding", ["hemorrhage", "macular_hole"])  # small, medium
def test_prediction_logit_is_gap_of_the_map_with_max_pool_for_small_lesions(finding, size_px):
    model = GuidedCNN.from_finding(finding, **TINY)
    images = _images(3, size_px)
    out = jax.tree.map(np.asarray, _apply(model, _random_variables(model, images), images))

    logit_map = out["logit_map"]
    if get_finding(finding).max_pool_before_gap:
        expected = _max_pool_2x2_same(logit_map).mean(axis=(1, 2))
        # Max-pooling must matter here, or the check would not tell the two apart.
        assert not np.allclose(expected, logit_map.mean(axis=(1, 2)), atol=1e-3)
    else:
        expected = logit_map.mean(axis=(1, 2))
    np.testing.assert_allclose(out["logit"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["activation_map"], 1 / (1 + np.exp(-logit_map)), rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    model = GuidedCNN.from_finding("rnfl_defect", dtype=jnp.bfloat16, **TINY)
    images = _images(2, 32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}

    calls = _conv_calls(model, images)
    assert all(dtype == jnp.bfloat16 for path, _, dtype in calls[:-1])
    assert calls[-1][0] == ("logit_conv",) and calls[-1][2] == jnp.float32

    variables = _random_variables(model, images)
    out = _apply(model, variables, images)
    assert {v.dtype for v in out.values()} == {jnp.dtype(jnp.float32)}
    reference = _apply(model.clone(dtype=jnp.float32), variables, images)
    np.testing.assert_allclose(out["logit"], reference["logit"], rtol=0.1, atol=0.1)


@pytest.fixture(scope="module")
def initialised():
    """A real ``init`` (Glorot) of a model with one wide-ish layer to measure.

    The "rbg" generator compiles in a fraction of threefry's time on a CPU; the
    initialiser and hence the distribution it draws from are the same.
    """
    model = GuidedCNN.from_finding("membrane", stem_width=8, units_per_stage=(1, 1, 1), aspp_width=16)
    images = _images(4, 32)
    return model, jax.jit(model.init)(jax.random.key(0, impl="rbg"), images), images


def test_glorot_uniform_kernels_and_zero_biases(initialised):
    model, variables, _ = initialised
    params = variables["params"]
    for path, kernel in jax.tree_util.tree_leaves_with_path(params):
        if path[-1].key != "kernel":
            continue
        receptive = int(np.prod(kernel.shape[:-2]))
        fan_in, fan_out = receptive * kernel.shape[-2], receptive * kernel.shape[-1]
        limit = np.sqrt(6 / (fan_in + fan_out))
        assert np.abs(kernel).max() <= limit, jax.tree_util.keystr(path)

    # 3*3*120*16 = 17280 draws: the sample variance is within ~1% of the truth.
    big = np.asarray(params["aspp_rate1"]["conv"]["kernel"])
    assert big.shape == (3, 3, 8 + 16 + 32 + 64, 16)
    fan_in, fan_out = 9 * big.shape[2], 9 * big.shape[3]
    assert big.var() == pytest.approx(2 / (fan_in + fan_out), rel=0.05)
    assert abs(big.mean()) < 0.05 * big.std()

    # Convs feeding BatchNorm carry no bias; the remaining biases start at zero.
    assert "bias" not in params["stem"]["conv"]
    np.testing.assert_array_equal(params["logit_conv"]["bias"], 0.0)
    np.testing.assert_array_equal(params["stem"]["bn"]["bias"], 0.0)
    np.testing.assert_array_equal(params["stem"]["bn"]["scale"], 1.0)


def test_batch_norm_uses_batch_statistics_in_training_and_running_ones_in_eval(initialised):
    model, variables, images = initialised
    momentum = 0.9
    model = model.clone(bn_momentum=momentum)
    out_train, updated = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
    )(variables, images)
    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))

    # Running statistics start at mean 0, var 1 and move (1 - momentum) of the
    # way to the batch's: undo that to recover the batch statistics.
    def batch_statistic(path, running):
        start = 1.0 if path[-1].key == "var" else 0.0
        return (np.asarray(running) - momentum * start) / (1 - momentum)

    batch_stats = jax.tree_util.tree_map_with_path(batch_statistic, updated["batch_stats"])
    # Evaluating with the statistics of the very batch reproduces training mode...
    out_eval = evaluate({**variables, "batch_stats": batch_stats}, images)
    np.testing.assert_allclose(out_eval["logit_map"], out_train["logit_map"], rtol=1e-3, atol=1e-3)
    # ...and evaluating with the initial statistics does not.
    out_before = evaluate(variables, images)
    assert not np.allclose(out_before["logit_map"], out_train["logit_map"], atol=1e-2)


_SHARD_MAP_SCRIPT = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from fundax.models import GuidedCNN

    mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    model = GuidedCNN.from_finding("hemorrhage", stem_width=4, units_per_stage=(1, 1, 1), aspp_width=4)
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(8, 32, 32, 3)).astype(np.float32)
    # Halves that differ, so per-device statistics differ from the batch's.
    images[4:] = images[4:] ** 3
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, s: np.ones(s.shape, np.float32) if p[-1].key == "var"
        else rng.normal(0, 0.3, s.shape).astype(np.float32) * (p[-1].key != "mean"),
        shapes,
    )

    def step(m):
        return lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"])

    full_out, full_stats = jax.jit(step(model))(variables, images)
    synced = jax.jit(jax.shard_map(step(model.clone(axis_name="data")), mesh=mesh,
                                   in_specs=(P(), P("data")), out_specs=(P("data"), P())))
    out, stats = synced(variables, images)
    local = jax.jit(jax.shard_map(lambda v, x: step(model)(v, x)[0], mesh=mesh,
                                  in_specs=(P(), P("data")), out_specs=P("data")))
    local_out = local(variables, images)

    def diff(a, b):
        return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    print(json.dumps({
        "devices": jax.device_count(),
        "stats": diff(stats, full_stats),
        "logits": diff(out["logit_map"], full_out["logit_map"]),
        "unsynced_logits": diff(local_out["logit_map"], full_out["logit_map"]),
    }))
    """
)


def test_batch_norm_axis_name_synchronises_statistics_under_shard_map():
    # Two host devices need XLA_FLAGS before jax starts, hence a fresh process.
    env = dict(os.environ, XLA_FLAGS=fakes.xla_flags(2), JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", _SHARD_MAP_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 2
    assert report["stats"] < 1e-5
    assert report["logits"] < 1e-4
    # Without the axis each device normalises by its own half: a different model.
    assert report["unsynced_logits"] > 1e-2
