"""Tests for the paper's losses (§2.3, eqs. 1-3) against hand-computed values."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fundax.losses import EPSILON, classification_loss, guidance_loss, total_loss

# Logits 0, ln 3, -ln 3 give y_pred = 1/2, 3/4, 1/4.
LOGITS = jnp.array([0.0, math.log(3.0), -math.log(3.0)])
LABELS = jnp.array([1.0, 1.0, 0.0])
# Per example: -ln(1/2) = ln 2;  -ln(3/4) = ln(4/3);  -ln(1 - 1/4) = ln(4/3).
BCE = [math.log(2.0), math.log(4 / 3), math.log(4 / 3)]

# Example 0: three cells outside the mask, a = 0.5, 1e-4 (below epsilon), 0.9;
# the cell inside the mask (a = 0.1) does not count:
#   ln 0.5 + ln 1e-3 + ln 0.9 = ln(4.5e-4).
# Example 1: all inside the mask, contributes 0.
ACTIVATION = jnp.array([[[0.5, 0.1], [1e-4, 0.9]], [[0.3, 0.7], [0.2, 0.6]]])
MASK = jnp.array([[[0, 1], [0, 0]], [[1, 1], [1, 1]]])
GUIDE_0 = math.log(4.5e-4)


def test_classification_loss_is_the_mean_binary_cross_entropy():
    loss = classification_loss(LOGITS, LABELS, jnp.ones(3))
    assert loss.dtype == jnp.float32
    # (ln 2 + 2 ln(4/3)) / 3 = ln(32/9) / 3
    assert float(loss) == pytest.approx(math.log(32 / 9) / 3, rel=1e-6)
    assert float(loss) == pytest.approx(sum(BCE) / 3, rel=1e-6)


def test_zero_weight_removes_an_example_from_classification():
    loss = classification_loss(LOGITS, LABELS, jnp.array([1.0, 0.0, 1.0]))
    # (ln 2 + ln(4/3)) / 2 = ln(8/3) / 2
    assert float(loss) == pytest.approx(math.log(8 / 3) / 2, rel=1e-6)
    alone = classification_loss(LOGITS[::2], LABELS[::2], jnp.ones(2))
    assert float(loss) == pytest.approx(float(alone), rel=1e-6)


def test_classification_loss_is_finite_for_confident_mistakes():
    # y_pred = sigmoid(-100) underflows as a probability; from logits it is 100.
    loss = classification_loss(jnp.array([-100.0, 100.0]), jnp.array([1.0, 0.0]), jnp.ones(2))
    assert float(loss) == pytest.approx(100.0, rel=1e-5)


def test_guidance_loss_by_hand():
    loss = guidance_loss(ACTIVATION[:1], MASK[:1], jnp.ones(1))
    assert float(loss) == pytest.approx(GUIDE_0 / 4, rel=1e-6)  # 1 example x 2 x 2 cells
    both = guidance_loss(ACTIVATION, MASK, jnp.ones(2))
    assert float(both) == pytest.approx(GUIDE_0 / 8, rel=1e-6)  # 2 examples x 4 cells
    assert float(both) < 0  # the paper's sign: a sum of logs of numbers below 1


def test_guidance_loss_floor_is_log_epsilon():
    # Activation at or below epsilon everywhere, no mask: every cell gives ln eps.
    loss = guidance_loss(jnp.full((2, 3, 3), 1e-6), jnp.zeros((2, 3, 3)), jnp.ones(2))
    assert float(loss) == pytest.approx(math.log(EPSILON), rel=1e-6)


def test_guidance_gradient_is_zero_inside_the_mask_and_below_epsilon():
    grad = jax.grad(guidance_loss)(ACTIVATION, MASK, jnp.ones(2))
    # d/da of ln(a) / (k h w) = 1 / (8 a) outside the mask where a > eps.
    expected = np.array([[[1 / (8 * 0.5), 0.0], [0.0, 1 / (8 * 0.9)]], np.zeros((2, 2))])
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    # Descending it lowers activation outside the mask: the gradient is positive there.
    assert grad[0, 0, 0] > 0 and grad[0, 1, 1] > 0


def test_zero_weight_removes_an_example_from_guidance():
    # Example 1 now has activation outside an empty mask, but weighs 0.
    activation = ACTIVATION.at[1].set(0.5)
    mask = MASK.at[1].set(0)
    loss = guidance_loss(activation, mask, jnp.array([1.0, 0.0]))
    assert float(loss) == pytest.approx(GUIDE_0 / 4, rel=1e-6)
    grad = jax.grad(guidance_loss)(activation, mask, jnp.array([1.0, 0.0]))
    np.testing.assert_array_equal(grad[1], 0.0)


def test_all_zero_weights_give_zero_loss_and_gradient():
    weights = jnp.zeros(2)
    logits, labels = LOGITS[:2], LABELS[:2]
    total, parts = total_loss(logits, ACTIVATION, labels, MASK, weights)
    assert float(total) == 0.0 and float(parts["classification"]) == 0.0 and float(parts["guidance"]) == 0.0
    grads = jax.grad(lambda z, a: total_loss(z, a, labels, MASK, weights)[0], argnums=(0, 1))(logits, ACTIVATION)
    assert all(np.all(np.isfinite(g)) and not np.any(g) for g in grads)


def test_total_loss_adds_lambda_times_guidance():
    logits, labels, weights = LOGITS[:2], LABELS[:2], jnp.ones(2)
    total, parts = total_loss(logits, ACTIVATION, labels, MASK, weights, guidance_weight=0.5)
    classification = (BCE[0] + BCE[1]) / 2
    assert float(parts["classification"]) == pytest.approx(classification, rel=1e-6)
    assert float(parts["guidance"]) == pytest.approx(GUIDE_0 / 8, rel=1e-6)
    # The two parts nearly cancel, so compare absolutely.
    assert float(total) == pytest.approx(classification + 0.5 * GUIDE_0 / 8, abs=1e-6)
    assert float(parts["total"]) == float(total)


def test_lambda_zero_is_the_model_without_guidance():
    logits, labels, weights = LOGITS[:2], LABELS[:2], jnp.ones(2)
    total, _ = total_loss(logits, ACTIVATION, labels, MASK, weights, guidance_weight=0.0)
    assert float(total) == pytest.approx(float(classification_loss(logits, labels, weights)), rel=1e-7)
    grad = jax.grad(lambda a: total_loss(logits, a, labels, MASK, weights, guidance_weight=0.0)[0])(ACTIVATION)
    np.testing.assert_array_equal(grad, 0.0)


def test_losses_are_float32_for_bfloat16_inputs():
    total, parts = total_loss(
        LOGITS[:2].astype(jnp.bfloat16), ACTIVATION.astype(jnp.bfloat16), LABELS[:2], MASK, jnp.ones(2)
    )
    assert {v.dtype for v in (total, *parts.values())} == {jnp.dtype(jnp.float32)}


def test_log_complement_ablation_by_hand():
    # Example 0, outside the mask: -ln(1 - 0.5) - ln(1 - 1e-4) - ln(1 - 0.9) = ln 2 - ln(0.9999) + ln 10.
    expected = math.log(2) - math.log(0.9999) + math.log(10)
    loss = guidance_loss(ACTIVATION[:1], MASK[:1], jnp.ones(1), form="log_complement")
    assert float(loss) == pytest.approx(expected / 4, rel=1e-6)
    assert float(loss) > 0  # a cross entropy against 0: it never goes below 0
    # Its ceiling is -ln(eps), where eq. 2's floor is ln(eps): a = 1 - 1e-6 everywhere, no mask.
    top = guidance_loss(jnp.full((1, 2, 2), 1 - 1e-6), jnp.zeros((1, 2, 2)), jnp.ones(1), form="log_complement")
    assert float(top) == pytest.approx(-math.log(EPSILON), rel=1e-5)


def test_in_logit_space_eq2_pulls_dark_cells_hardest_and_the_ablation_bright_ones():
    # d/dz of each form's per-cell term, with a = sigmoid(z): eq. 2 gives 1 - a, the ablation a.
    z = jnp.array([[[-3.0, 0.0], [2.0, 4.0]]])
    a = jax.nn.sigmoid(z)
    outside, one = jnp.zeros_like(z), jnp.ones(1)
    eq2 = jax.grad(lambda z: guidance_loss(jax.nn.sigmoid(z), outside, one))(z) * 4
    ablation = jax.grad(lambda z: guidance_loss(jax.nn.sigmoid(z), outside, one, form="log_complement"))(z) * 4
    np.testing.assert_allclose(eq2, 1 - a, rtol=1e-5)
    np.testing.assert_allclose(ablation, a, rtol=1e-5)
    assert np.all(np.diff(np.asarray(eq2).ravel()) < 0) and np.all(np.diff(np.asarray(ablation).ravel()) > 0)


def test_unknown_guidance_form_is_refused():
    with pytest.raises(ValueError, match="guidance form must be one of 'eq2', 'log_complement', got 'l2'"):
        guidance_loss(ACTIVATION, MASK, jnp.ones(2), form="l2")


def test_lambda_may_be_a_traced_scalar():
    logits, labels, weights = LOGITS[:2], LABELS[:2], jnp.ones(2)
    jitted = jax.jit(lambda lam: total_loss(logits, ACTIVATION, labels, MASK, weights, guidance_weight=lam)[0])
    eager = total_loss(logits, ACTIVATION, labels, MASK, weights, guidance_weight=0.25)[0]
    assert float(jitted(jnp.float32(0.25))) == pytest.approx(float(eager), abs=1e-6)
