"""Tests for the Inception-v3 baseline: the reference's size, its CAM, and the config that chooses it."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.special import expit

import fakes
from fundax import trainer
from fundax.models import InceptionV3
from fundax.models.inception_v3 import activation_map_size, receptive_field_grid
from fundax.regions import CellGrid
from fundax import configs
from fundax import models


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _shapes(model: InceptionV3, size_px: int):
    return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, size_px, size_px, 3), jnp.float32))


def test_reference_network_has_the_reference_parameter_count():
    variables = _shapes(InceptionV3(), 299)
    # Keras' InceptionV3 counts 23,851,784 (its BatchNorm moving mean and variance included)
    # with a 2048 x 1000 classifier and 1000 biases; ours has one output.
    assert _count(variables["params"]) + _count(variables["batch_stats"]) == 23_851_784 - 2_049_000 + 2_049
    # 94 conv-BN layers over 17,216 channels: an offset each, and a mean and a variance.
    assert _count(variables["batch_stats"]) == 2 * 17_216
    assert _count(variables["params"]) == 21_770_401
    bn = variables["params"]["conv_1a_3x3"]["bn"]
    assert set(bn) == {"bias"}  # no scale: the ReLU after it makes one redundant
    assert variables["params"]["classifier"]["kernel"].shape == (2048, 1)

    with_aux = _shapes(InceptionV3(aux_logits=True), 299)["params"]
    # 1x1 conv 768->128 and its 128 offsets; 5x5 conv 128->768 and 768 offsets; 768 weights + 1 bias.
    assert _count(with_aux) - _count(variables["params"]) == 98_304 + 128 + 2_457_600 + 768 + 769


@pytest.mark.parametrize("width_multiplier, channels", [(1.0, 2048), (0.5, 1024), (0.125, 256)])
def test_width_multiplier_scales_every_conv(width_multiplier, channels):
    # mixed_7c concatenates 320 + 2 * 384 + 2 * 384 + 192 channels, each branch scaled and rounded.
    params = _shapes(InceptionV3(width_multiplier=width_multiplier), 75)["params"]
    assert params["classifier"]["kernel"].shape == (channels, 1)
    assert params["conv_4a_3x3"]["conv"]["kernel"].shape == (3, 3, round(80 * width_multiplier),
                                                             round(192 * width_multiplier))


@pytest.mark.parametrize("size_px, side", [(75, 1), (128, 2), (144, 3), (299, 8), (512, 14)])
def test_output_shapes_follow_the_valid_reductions(size_px, side):
    model = InceptionV3(width_multiplier=0.125)
    images = jax.ShapeDtypeStruct((2, size_px, size_px, 3), jnp.float32)
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], images)
    assert {k: (v.shape, v.dtype) for k, v in out.items()} == {
        "logit": ((2,), jnp.float32), "logit_map": ((2, side, side), jnp.float32),
        "activation_map": ((2, side, side), jnp.float32)}
    assert activation_map_size(size_px) == side


def test_cam_receptive_fields_are_centred_inside_the_valid_border():
    # Seven VALID layers: a 3x3 one centres output i on input k i + 1 (stride k), so the offsets add
    # 1 + 2 + 2 + 4 + 4 + 8 + 16 = 37 to pixel 0's centre 0.5; the stride is 2*2*2*2*2 = 32.
    assert receptive_field_grid(299) == CellGrid(8, 32.0, 37.5)
    centres = receptive_field_grid(299).centres()
    np.testing.assert_array_equal(centres + centres[::-1], 299.0)  # symmetric about the image centre
    assert receptive_field_grid(75).centres().tolist() == [37.5]  # the one cell of the smallest input: its centre
    assert receptive_field_grid(144).centres().tolist() == [37.5, 69.5, 101.5]
    # docs/REGIONS.md's grid, where the cue is sampled, has (j + 0.5) * 299 / 8: up to 18.8 px away.
    offsets = centres - CellGrid.uniform(8, 299).centres()
    assert offsets[0] == pytest.approx(18.8125) and offsets[-1] == pytest.approx(-18.8125)


def test_auxiliary_logit_in_training_only():
    model = InceptionV3(width_multiplier=0.125, aux_logits=True)
    images = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
    variables = _shapes(model, 299)
    train = jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0], variables, images)
    assert train["aux_logit"].shape == (2,)
    assert "aux_logit" not in jax.eval_shape(lambda v, x: model.apply(v, x), variables, images)


def test_too_small_inputs_are_refused_by_name():
    with pytest.raises(ValueError, match=r"inception_v3 needs image_size >= 75 px .* got 74"):
        _shapes(InceptionV3(), 74)
    with pytest.raises(ValueError, match=r"inception_v3.aux_logits needs image_size >= 299 px .* got 298"):
        _shapes(InceptionV3(aux_logits=True), 298)
    with pytest.raises(ValueError, match="width_multiplier must be positive, got 0"):
        _shapes(InceptionV3(width_multiplier=0), 75)


def test_every_batch_norm_averages_over_the_named_axis():
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm):
            seen.append(context.module.axis_name)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        _shapes(InceptionV3(width_multiplier=0.125, aux_logits=True, axis_name="data"), 299)
    assert len(seen) == 94 + 2 and set(seen) == {"data"}


def test_class_activation_map_is_the_classifier_on_every_cell():
    """logit = GAP(features) . w + b (the reference head) = mean of the map (features . w + b)."""
    model = InceptionV3(width_multiplier=0.0625)
    images = np.random.default_rng(0).uniform(size=(2, 144, 144, 3)).astype(np.float32)
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: (np.ones if path[-1].key == "var" else np.zeros)(s.shape, np.float32)
        if path[0].key == "batch_stats" else rng.normal(0, 0.3, s.shape).astype(np.float32), _shapes(model, 144))
    features = []

    def capture(next_fun, args, kwargs, context):
        if context.module.name == "classifier":
            features.append(args[0])
        return next_fun(*args, **kwargs)

    def forward(v, x):
        with nn.intercept_methods(capture):
            return model.apply(v, x), features[-1]

    out, feats = jax.tree.map(np.asarray, jax.jit(forward)(variables, images))
    kernel, bias = variables["params"]["classifier"]["kernel"], variables["params"]["classifier"]["bias"]
    assert feats.shape == (2, 3, 3, 20 + 2 * 24 + 2 * 24 + 12)  # mixed_7c at width 1/16
    np.testing.assert_allclose(out["logit"], feats.mean(axis=(1, 2)) @ kernel[:, 0] + bias[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["logit_map"], feats @ kernel[:, 0] + bias[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["activation_map"], expit(out["logit_map"]), rtol=1e-5)
    # The cells differ, so the check tells the mean of the map from any one cell of it.
    assert np.ptp(out["logit_map"], axis=(1, 2)).min() > 1e-3


def test_training_loss_adds_the_auxiliary_bce_with_its_weight():
    config = fakes.tiny_config(model="inception_v3", guidance_weight=0.0)
    labels, weights = jnp.array([1.0, 0.0]), jnp.ones(2)
    outputs = {"logit": jnp.zeros(2), "activation_map": jnp.full((2, 2, 2), 0.5),
               "aux_logit": jnp.array([math.log(3.0), 0.0])}
    mask = jnp.zeros((2, 2, 2))
    total, parts = trainer.training_loss(outputs, labels, mask, weights, config, 0.0)
    # BCE(0 | 1) = BCE(0 | 0) = ln 2; BCE(ln 3 | 1) = -ln(3/4).
    assert float(parts["classification"]) == pytest.approx(math.log(2))
    assert float(total) == pytest.approx(math.log(2) + 0.4 * (math.log(4 / 3) + math.log(2)) / 2)
    assert float(parts["total"]) == pytest.approx(float(total))
    del outputs["aux_logit"]
    assert float(trainer.training_loss(outputs, labels, mask, weights, config, 0.0)[0]) == pytest.approx(math.log(2))


@pytest.mark.parametrize("overrides, message", [
    (dict(model="resnet"), "model must be one of 'guided_cnn', 'inception_v3', got 'resnet'"),
    (dict(model="inception_v3", image_size=128),
     "guidance_weight 1.0 with model inception_v3: the baseline is trained with BCE alone, "
     "set --config.guidance_weight=0"),
    (dict(model="inception_v3", guidance_weight=0.0, image_size=64), "inception_v3 needs image_size >= 75 px"),
    (dict(image_size=40), "image_size 40 must be a multiple of 16 for guided_cnn"),
])
def test_model_config_errors_name_the_key(overrides, message):
    with pytest.raises(ValueError, match="bad config: ") as error:
        configs.validate(fakes.tiny_config(**overrides), 1)
    assert message in str(error.value) and "\n" not in str(error.value)
    configs.validate(fakes.tiny_config(model="inception_v3", guidance_weight=0.0, image_size=80), 1)


def test_a_config_with_a_model_section_is_refused_in_one_line():
    # A config.json from before config.model named the model: a section of widths there.
    config = ml_collections.ConfigDict({**fakes.tiny_config().to_dict(), "model": {"stem_width": 4}})
    with pytest.raises(ValueError, match=r"^model must be one of 'guided_cnn', 'inception_v3', got a ConfigDict$"):
        models.create_model(config)
