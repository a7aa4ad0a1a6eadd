"""The paper's objective (§2.3, eqs. 1-3): classification plus regional guidance.

Every loss takes per-example ``weights`` of shape ``(B,)``: 1 for an example
that counts, 0 for one that must not (an uncertain grade excluded from
training, or padding that fills the last batch). Where the paper divides by the
mini-batch size k, these losses divide by the sum of the weights, so a batch
with padding gives the loss of its real examples alone, and a batch with no
weight at all gives 0 rather than 0/0.

All arithmetic is float32, whatever dtype the network computed in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

EPSILON = 1e-3
"""The paper's epsilon inside the logarithm of eq. 2 (§3.1)."""


def _weighted_mean(values: jax.Array, weights: jax.Array, count_per_example: int = 1) -> jax.Array:
    """``sum(weights * values) / (sum(weights) * count_per_example)``, 0 if no weight."""
    total = jnp.sum(weights) * count_per_example
    safe_total = jnp.where(total > 0, total, 1.0)
    return jnp.where(total > 0, jnp.sum(weights * values) / safe_total, 0.0)


def classification_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Eq. 1: binary cross entropy of y_pred = sigmoid(logit) against y_true.

    Args:
      logits: ``(B,)`` prediction logits.
      labels: ``(B,)`` y_true in {0, 1}.
      weights: ``(B,)`` per-example weights (0 excludes an example).

    Computed from logits, not probabilities, so a confident wrong prediction
    costs a large finite loss instead of log(0).
    """
    logits = logits.astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
    return _weighted_mean(bce, weights.astype(jnp.float32))


GUIDANCE_FORMS = ("eq2", "log_complement")
"""``eq2``: the paper's guidance. ``log_complement``: an ablation, −(1 − m)·log(max(1 − a, ε))."""


def guidance_loss(
    activation_map: jax.Array,
    region_mask: jax.Array,
    weights: jax.Array,
    epsilon: float = EPSILON,
    form: str = "eq2",
) -> jax.Array:
    """Eq. 2: mean over examples and cells of ``(1 - m) * log(max(a, epsilon))``.

    Args:
      activation_map: ``(B, h, w)`` activations A in (0, 1).
      region_mask: ``(B, h, w)`` regional cue M in {0, 1} (1 where the finding
        may be), at the activation map's resolution.
      weights: ``(B,)`` per-example weights (0 excludes an example).
      epsilon: floor inside the logarithm.

    The sign is the paper's: the loss is at most 0, and minimising it pushes
    activation outside the mask down to epsilon, where it bottoms out at
    log(epsilon) and its gradient vanishes. Inside the mask (m = 1) it has no
    effect at all. The mean divides by sum(weights) * h * w.

    ``form="log_complement"`` is an ablation, not the paper's loss: the mean of
    ``-(1 - m) * log(max(1 - a, epsilon))``, the binary cross entropy of each
    outside cell against 0. It is at least 0, and in logit space it pulls a cell
    down by ``a`` — hardest on the brightest cells, where eq. 2 pulls by
    ``1 - a``, hardest on cells already dark (docs/GUIDANCE.md).
    """
    activation_map = activation_map.astype(jnp.float32)
    outside = 1.0 - region_mask.astype(jnp.float32)
    if form == "eq2":
        per_cell = outside * jnp.log(jnp.maximum(activation_map, epsilon))
    elif form == "log_complement":
        per_cell = -outside * jnp.log(jnp.maximum(1.0 - activation_map, epsilon))
    else:
        raise ValueError(f"guidance form must be one of {', '.join(map(repr, GUIDANCE_FORMS))}, got {form!r}")
    per_example = jnp.sum(per_cell, axis=(1, 2))
    cells = activation_map.shape[1] * activation_map.shape[2]
    return _weighted_mean(per_example, weights.astype(jnp.float32), cells)


def total_loss(
    logits: jax.Array,
    activation_map: jax.Array,
    labels: jax.Array,
    region_mask: jax.Array,
    weights: jax.Array,
    guidance_weight: float | jax.Array = 1.0,
    epsilon: float = EPSILON,
    guidance_form: str = "eq2",
    guidance_weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Eq. 3: ``L_class + lambda * L_guide`` with lambda = ``guidance_weight``.

    ``guidance_weights`` (default ``weights``) are the per-example weights of the guidance term:
    0 for a positive without a regional cue (an image-level label), whose BCE still counts.

    lambda = 1 is the paper's setting; lambda = 0 is its "without guidance"
    model; during a guidance warm-up (:func:`fundax.trainer.guidance_weight_at`)
    lambda is a traced scalar. Returns the total and its parts, keyed ``total``,
    ``classification`` and ``guidance`` (the guidance part before lambda).
    """
    classification = classification_loss(logits, labels, weights)
    guidance = guidance_loss(activation_map, region_mask, weights if guidance_weights is None else guidance_weights,
                             epsilon, guidance_form)
    total = classification + guidance_weight * guidance
    return total, {"total": total, "classification": classification, "guidance": guidance}
