"""The train state, the data-parallel train step and the eval step: what runs on the devices.

One global batch is split over the mesh axis ``data``; the per-device work is
written with ``jax.shard_map``. Every device augments its examples (keys from
seed, step and the example's position in the global batch, so any number of
devices computes the same batch), runs the model, and computes its share of the
combined loss (eq. 3); gradients (by shard_map's autodiff) and metrics (by
``lax.psum``) are summed over devices and BatchNorm statistics are averaged
across them. The same code runs
on one CPU and on every device of an accelerator host.

The model comes from :mod:`fundax.models`, the optimiser from :mod:`fundax.optimizer`, the
mesh from :mod:`fundax.parallel`; the host-side loop around these steps is :mod:`fundax.loop`.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fundax import losses, models
from fundax.data import augment
from fundax.parallel import AXIS


@flax.struct.dataclass
class TrainState:
    """Everything the train step changes; plain arrays, so Orbax saves it as is."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    guidance_start: jax.Array
    """int32: the step at which lambda starts rising (see :func:`guidance_weight_at`); −1: not yet."""


def guidance_weight_at(step: jax.Array | int, start: jax.Array | int,
                       config: ml_collections.ConfigDict) -> jax.Array:
    """lambda of eq. 3 at train step ``step`` (0-based), the ramp having started at ``start``.

    0 before ``start`` (and while ``start`` is −1: the ramp has not started), then rising
    linearly to ``guidance_weight`` over ``guidance_ramp_steps``, then ``guidance_weight`` to
    the end. The loop starts the ramp (:func:`set_guidance_start`) at ``guidance_delay_steps``
    or earlier, when the classifier has learnt (``guidance_start_bce``, docs/GUIDANCE.md). With
    both steps 0 and no gate — the paper's setting — it is ``guidance_weight`` from the start.
    """
    step, start = jnp.asarray(step, jnp.float32), jnp.asarray(start, jnp.float32)
    after_start = jnp.where(start >= 0, step - start, -1.0)
    if config.guidance_ramp_steps > 0:
        ramp = jnp.clip((after_start + 1.0) / config.guidance_ramp_steps, 0.0, 1.0)
    else:
        ramp = (after_start >= 0).astype(jnp.float32)
    return config.guidance_weight * ramp


def initial_guidance_start(config: ml_collections.ConfigDict) -> int:
    """Where the ramp of lambda starts in a new run: at ``guidance_delay_steps``, or −1 (the gate decides)."""
    return -1 if config.guidance_start_bce > 0 else int(config.guidance_delay_steps)


def set_guidance_start(state: TrainState, step: int) -> TrainState:
    """The state with the ramp of lambda starting at ``step``."""
    old = state.guidance_start
    return state.replace(guidance_start=jax.device_put(np.asarray(step, old.dtype), old.sharding))


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> TrainState:
    """Initial state, replicated over the mesh; the same on every process (seeded)."""
    size = config.image_size

    def init() -> TrainState:
        images = jnp.zeros((1, size, size, 3), jnp.float32)
        # Initialisation runs outside shard_map, where there is no axis to average over.
        variables = model.clone(axis_name=None).init(jax.random.PRNGKey(config.seed), images, train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables["batch_stats"], opt_state=tx.init(params),
                          guidance_start=jnp.asarray(initial_guidance_start(config), jnp.int32))

    return jax.jit(init, out_shardings=NamedSharding(mesh, P()))()


def abstract_train_state(
    model: nn.Module, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> TrainState:
    """Shapes, dtypes and shardings of the train state, for restoring without initialising."""
    shapes = jax.eval_shape(lambda: create_train_state(model, tx, config, mesh))
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)


def augment_config(config: ml_collections.ConfigDict) -> augment.AugmentConfig | None:
    if not config.augment.enabled:
        return None
    a = config.augment
    return augment.AugmentConfig(
        flip=a.flip, scale=tuple(a.scale), rotation_deg=a.rotation_deg, translation=a.translation,
        shear_deg=a.shear_deg, intensity=tuple(a.intensity))


def _global_positions(batch: dict[str, jax.Array]) -> jax.Array:
    """Positions of this device's examples in the global batch."""
    local = batch["label"].shape[0]
    return jax.lax.axis_index(AXIS) * local + jnp.arange(local)


def training_loss(outputs: dict[str, jax.Array], labels: jax.Array, region_mask: jax.Array, weights: jax.Array,
                  config: ml_collections.ConfigDict, guidance_weight: jax.Array | float,
                  guidance_weights: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Eq. 3 with lambda = ``guidance_weight`` (this step's, see :func:`guidance_weight_at`), plus
    ``inception_v3.aux_weight`` times the auxiliary head's BCE when the model has one.

    The auxiliary term counts in training only, as in the reference; validation losses leave it out.
    """
    total, parts = losses.total_loss(
        logits=outputs["logit"], activation_map=outputs["activation_map"], labels=labels,
        region_mask=region_mask, weights=weights, guidance_weight=guidance_weight,
        epsilon=config.epsilon, guidance_form=config.guidance_form, guidance_weights=guidance_weights)
    if "aux_logit" in outputs:
        total = total + config.inception_v3.aux_weight * losses.classification_loss(
            outputs["aux_logit"], labels, weights)
        parts = dict(parts, total=total)
    return total, parts


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """``train_step(state, batch) -> (state, metrics)``, jitted, state donated.

    ``batch``: global arrays ``image`` uint8 (B, S, S, 3), ``disc`` and ``fovea``
    (B, 2), ``region_bits`` int32 (B,), ``label`` and ``weight`` float32 (B,), and optionally
    ``guided`` float32 (B,): 0 for a positive without a regional cue, whose guidance term is left
    out (default: 1 for every example).
    """
    grid = models.activation_grid(config)
    aug = augment_config(config)
    seed = config.seed

    def per_device(state: TrainState, batch: dict[str, jax.Array]):
        keys = augment.example_keys(seed, state.step, _global_positions(batch))
        images, masks = augment.augment_batch(
            batch["image"], batch["disc"], batch["fovea"], batch["region_bits"], keys,
            grid=grid, config=aug, train=aug is not None)
        local_weight = jnp.sum(batch["weight"])
        total_weight = jax.lax.psum(local_weight, AXIS)
        # Each device's loss is a weighted mean over its examples; scaled by its share
        # of the weight, the psum over devices is the weighted mean over the global batch.
        share = jnp.where(total_weight > 0, local_weight / jnp.maximum(total_weight, 1e-12), 0.0)
        # The guidance term is a mean over the examples that have a regional cue: its own share.
        guide_weights = batch["weight"] * batch["guided"] if "guided" in batch else batch["weight"]
        local_guided = jnp.sum(guide_weights)
        total_guided = jax.lax.psum(local_guided, AXIS)
        share_guided = jnp.where(total_guided > 0, local_guided / jnp.maximum(total_guided, 1e-12), 0.0)
        lam = guidance_weight_at(state.step, state.guidance_start, config)

        def loss_fn(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, images, train=True,
                mutable=["batch_stats"])
            total, parts = training_loss(outputs, batch["label"], masks, batch["weight"], config, lam,
                                         guidance_weights=guide_weights)
            # total * share weighs the guidance term by share; move it to share_guided (the same
            # number, and exactly so, when every example has a cue).
            objective = total * share + lam * parts["guidance"] * (share_guided - share)
            return objective, (dict(parts, objective=objective), updates["batch_stats"])

        # The params enter replicated; shard_map's autodiff transposes that broadcast
        # into a psum, so these gradients are already summed over the devices.
        grads, (parts, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updated = state.replace(params=optax.apply_updates(state.params, updates),
                                batch_stats=batch_stats, opt_state=opt_state)
        metrics = {"loss": jax.lax.psum(parts["objective"], AXIS),
                   "bce": jax.lax.psum(parts["classification"] * share, AXIS),
                   "guidance": jax.lax.psum(parts["guidance"] * share_guided, AXIS)}
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["weight"] = total_weight
        metrics["guidance_weight"] = lam
        # A non-finite step never reaches the parameters: the state stays as it was and
        # the loop decides (stop, or count and go on) without a host sync every step.
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
        metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        return new_state.replace(step=state.step + 1), metrics

    step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()))
    return jax.jit(step, donate_argnums=(0,))


def make_eval_step(model: nn.Module, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """``eval_step(state, batch) -> per-example outputs``, jitted; no augmentation.

    Returns, per example: ``probability``, ``label``, ``weight``, ``guided`` (0: a positive without a
    regional cue, see :func:`make_train_step`), ``record_index``,
    ``activation_map`` and the ``logit_map`` it is the sigmoid of, the per-example losses ``bce``
    and ``guidance``, and the AIR terms ``air_inside`` (sum of A inside the regional cue) and
    ``air_total`` (sum of A).
    """
    grid = models.activation_grid(config)

    def per_device(state: TrainState, batch: dict[str, jax.Array]):
        images, masks = augment.augment_batch(
            batch["image"], batch["disc"], batch["fovea"], batch["region_bits"], None,
            grid=grid, config=None, train=False)
        outputs = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images, train=False)
        activation = outputs["activation_map"]
        one = jnp.ones((1,), jnp.float32)
        bce = jax.vmap(lambda z, y: losses.classification_loss(z[None], y[None], one))(
            outputs["logit"], batch["label"])
        guidance = jax.vmap(lambda a, m: losses.guidance_loss(
            a[None], m[None], one, config.epsilon, config.guidance_form))(activation, masks)
        return {
            "probability": jax.nn.sigmoid(outputs["logit"]),
            "label": batch["label"],
            "weight": batch["weight"],
            "guided": batch["guided"] if "guided" in batch else jnp.ones_like(batch["weight"]),
            "record_index": batch["record_index"],
            "activation_map": activation,
            "logit_map": outputs["logit_map"],
            "bce": bce,
            "guidance": guidance,
            "air_inside": jnp.sum(activation * masks, axis=(1, 2)),
            "air_total": jnp.sum(activation, axis=(1, 2)),
        }

    step = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=P(AXIS))
    return jax.jit(step)
