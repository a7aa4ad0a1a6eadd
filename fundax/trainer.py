"""The train state, the data-parallel train step, the eval step, and the training loop.

One global batch is split over the mesh axis ``data``; the per-device work is
written with ``jax.shard_map``. Every device augments its examples (keys from
seed, step and the example's position in the global batch, so any number of
devices computes the same batch), runs the model, and computes its share of the
combined loss (eq. 3); gradients (by shard_map's autodiff) and metrics (by
``lax.psum``) are summed over devices and BatchNorm statistics are averaged
across them. The same code runs
on one CPU and on every device of an accelerator host.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from fundax import losses
from fundax.data import augment
from fundax.models import guided_cnn, inception_v3
from fundax.regions import CellGrid

AXIS = "data"


@flax.struct.dataclass
class TrainState:
    """Everything the train step changes; plain arrays, so Orbax saves it as is."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    guidance_start: jax.Array
    """int32: the step at which lambda starts rising (see :func:`guidance_weight_at`); −1: not yet."""


def make_mesh(devices: list[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over all (global) devices, axis ``data``."""
    devices = jax.devices() if devices is None else devices
    return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


MODELS = ("guided_cnn", "inception_v3")
"""The values of ``config.model``."""


def check_model(config: ml_collections.ConfigDict) -> None:
    """The model name, its compute dtype, and what its architecture asks of the image size and the loss."""
    if not isinstance(config.model, str) or config.model not in MODELS:
        # A config.json written before config.model named the model holds a section there.
        got = repr(config.model) if isinstance(config.model, str) else f"a {type(config.model).__name__}"
        raise ValueError(f"model must be one of {', '.join(map(repr, MODELS))}, got {got}")
    if config.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
    if config.model == "guided_cnn" and config.image_size % guided_cnn.TOTAL_STRIDE:
        raise ValueError(f"image_size {config.image_size} must be a multiple of 16 for guided_cnn "
                         "(four stride-2 reductions)")
    if config.model == "inception_v3":
        inception_v3.check_image_size(config.image_size, config.inception_v3.aux_logits)
        if config.guidance_weight != 0:
            raise ValueError(f"guidance_weight {config.guidance_weight} with model inception_v3: the baseline "
                             "is trained with BCE alone, set --config.guidance_weight=0")


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The config's model for its finding, with BatchNorm synchronised over ``data``."""
    check_model(config)
    if config.model == "inception_v3":
        c = config.inception_v3
        return inception_v3.InceptionV3(
            aux_logits=c.aux_logits, width_multiplier=c.width_multiplier, bn_momentum=c.bn_momentum,
            dtype=jnp.dtype(config.dtype), axis_name=AXIS)
    c = config.guided_cnn
    return guided_cnn.GuidedCNN.from_finding(
        config.finding,
        stem_width=c.stem_width,
        units_per_stage=tuple(c.units_per_stage),
        aspp_width=c.aspp_width,
        logit_bias_init=c.logit_bias_init,
        bn_momentum=c.bn_momentum,
        dtype=jnp.dtype(config.dtype),
        axis_name=AXIS,
    )


def activation_map_size(config: ml_collections.ConfigDict) -> int:
    """Side of the config's model's activation map, the resolution of the regional masks."""
    if config.model == "inception_v3":
        return inception_v3.activation_map_size(config.image_size)
    return guided_cnn.activation_map_size(config.image_size)


def activation_grid(config: ml_collections.ConfigDict) -> CellGrid:
    """The grid the regional cue and the lesion cells are sampled on: docs/REGIONS.md's for a feature map.

    Cell j is centred at (j + 0.5)·S/m; the guided CNN's receptive fields are centred
    within half a pixel of it (:func:`fundax.models.guided_cnn.receptive_field_grid`).
    """
    return CellGrid.uniform(activation_map_size(config), config.image_size)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SGD with Nesterov momentum; the learning rate lives in the optimiser state.

    For ``plateau`` the loop lowers it after validation (:func:`set_learning_rate`);
    ``cosine`` decays it over ``num_train_steps``; ``constant`` keeps it. With
    ``warmup_steps``, every update is scaled by a factor that rises linearly from
    1/warmup_steps to 1 over the first ``warmup_steps`` steps, whatever the schedule.
    """
    if config.lr_schedule == "cosine":
        learning_rate = optax.cosine_decay_schedule(
            config.learning_rate, config.num_train_steps, alpha=config.min_learning_rate / config.learning_rate)
    elif config.lr_schedule in ("plateau", "constant"):
        learning_rate = config.learning_rate
    else:
        raise ValueError(f"lr_schedule must be 'plateau', 'cosine' or 'constant', got {config.lr_schedule!r}")

    def sgd(learning_rate: Any) -> optax.GradientTransformation:
        return optax.chain(
            optax.add_decayed_weights(config.weight_decay),
            optax.sgd(learning_rate, momentum=config.momentum, nesterov=True),
        )

    warmup = functools.partial(warmup_factor, warmup_steps=config.warmup_steps)
    return optax.chain(optax.inject_hyperparams(sgd)(learning_rate=learning_rate), optax.scale_by_schedule(warmup))


def warmup_factor(count: jax.Array | int, warmup_steps: int) -> jax.Array:
    """The learning-rate warm-up's factor at update ``count`` (0-based): (count + 1) / warmup_steps, at most 1."""
    if warmup_steps <= 0:
        return jnp.ones((), jnp.float32)
    return jnp.minimum(1.0, (jnp.asarray(count, jnp.float32) + 1.0) / warmup_steps)


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


def base_learning_rate(state: TrainState) -> float:
    """The schedule's learning rate (``plateau`` lowers it), before the warm-up factor."""
    return float(state.opt_state[0].hyperparams["learning_rate"])


def learning_rate(state: TrainState, config: ml_collections.ConfigDict) -> float:
    """The learning rate of the next update: the schedule's, times the warm-up factor."""
    return base_learning_rate(state) * float(warmup_factor(state.step, config.warmup_steps))


def set_learning_rate(state: TrainState, value: float) -> TrainState:
    """The state with the schedule's learning rate set to ``value`` (the plateau schedule's decay)."""
    injected = state.opt_state[0]
    old = injected.hyperparams["learning_rate"]
    new = jax.device_put(np.asarray(value, old.dtype), old.sharding)
    injected = injected._replace(hyperparams=dict(injected.hyperparams, learning_rate=new))
    return state.replace(opt_state=(injected, *state.opt_state[1:]))


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
                  config: ml_collections.ConfigDict, guidance_weight: jax.Array | float
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Eq. 3 with lambda = ``guidance_weight`` (this step's, see :func:`guidance_weight_at`), plus
    ``inception_v3.aux_weight`` times the auxiliary head's BCE when the model has one.

    The auxiliary term counts in training only, as in the reference; validation losses leave it out.
    """
    total, parts = losses.total_loss(
        logits=outputs["logit"], activation_map=outputs["activation_map"], labels=labels,
        region_mask=region_mask, weights=weights, guidance_weight=guidance_weight,
        epsilon=config.epsilon, guidance_form=config.guidance_form)
    if "aux_logit" in outputs:
        total = total + config.inception_v3.aux_weight * losses.classification_loss(
            outputs["aux_logit"], labels, weights)
        parts = dict(parts, total=total)
    return total, parts


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """``train_step(state, batch) -> (state, metrics)``, jitted, state donated.

    ``batch``: global arrays ``image`` uint8 (B, S, S, 3), ``disc`` and ``fovea``
    (B, 2), ``region_bits`` int32 (B,), ``label`` and ``weight`` float32 (B,).
    """
    grid = activation_grid(config)
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
        lam = guidance_weight_at(state.step, state.guidance_start, config)

        def loss_fn(params):
            outputs, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, images, train=True,
                mutable=["batch_stats"])
            total, parts = training_loss(outputs, batch["label"], masks, batch["weight"], config, lam)
            return total * share, (parts, updates["batch_stats"])

        # The params enter replicated; shard_map's autodiff transposes that broadcast
        # into a psum, so these gradients are already summed over the devices.
        grads, (parts, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updated = state.replace(params=optax.apply_updates(state.params, updates),
                                batch_stats=batch_stats, opt_state=opt_state)
        names = {"loss": "total", "bce": "classification", "guidance": "guidance"}
        metrics = {name: jax.lax.psum(parts[part] * share, AXIS) for name, part in names.items()}
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

    Returns, per example: ``probability``, ``label``, ``weight``, ``record_index``,
    ``activation_map`` and the ``logit_map`` it is the sigmoid of, the per-example losses ``bce``
    and ``guidance``, and the AIR terms ``air_inside`` (sum of A inside the regional cue) and
    ``air_total`` (sum of A).
    """
    grid = activation_grid(config)

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


@dataclasses.dataclass
class LoopState:
    """The host-side state of the loop: model selection, the plateau schedule, the stall detector."""

    finding: str
    model_name: str
    learning_rate: float
    guidance_start: int | None = None  # the step at which lambda started rising (None: not yet)
    best_score: float | None = None  # the selection metric, as a number to minimise
    best_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    evals_at_floor: int = 0  # evaluations in a row in eq. 2's stuck state (fundax.stall)

    def observe(self, step: int, score: float, config: ml_collections.ConfigDict) -> bool:
        """Record a validation score (lower is better); True when it is the best so far.

        The score is the selection metric's (:func:`fundax.checkpoints.selection_score`):
        it picks the best checkpoint, and its stagnation lowers the learning rate
        (``plateau``) and stops the run early.
        """
        improved = self.best_score is None or score < self.best_score
        if improved:
            self.best_score, self.best_step, self.evals_since_best = score, step, 0
            return True
        self.evals_since_best += 1
        if config.lr_schedule == "plateau" and self.evals_since_best % config.lr_plateau_patience == 0:
            self.learning_rate = max(self.learning_rate * config.lr_plateau_factor, config.min_learning_rate)
        patience = config.early_stopping_patience
        self.stopped_early = patience > 0 and self.evals_since_best >= patience
        return False

    def observe_floor(self, at_floor: bool, config: ml_collections.ConfigDict) -> bool:
        """Record whether an evaluation was at eq. 2's floor; True while the run is stalled."""
        self.evals_at_floor = self.evals_at_floor + 1 if at_floor else 0
        return self.evals_at_floor >= config.stall_patience

    def as_json(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        return dict(dataclasses.asdict(self), config=config.to_dict())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoopState:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def gather_eval(eval_step, state: TrainState, batches, sharding: NamedSharding) -> dict[str, np.ndarray]:
    """Run the eval step over batches and bring every real example's outputs to the host."""
    from fundax.data import pipeline

    chunks = []
    for batch in batches:
        out = eval_step(state, pipeline.to_global(batch, sharding))
        out = jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), out)
        chunks.append(out)
    merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    keep = merged["record_index"] >= 0
    return {k: v[keep] for k, v in merged.items()}


def validation_metrics(outputs: dict[str, np.ndarray], guidance_weight: float, epsilon: float) -> dict[str, float]:
    """Weighted validation losses (eq. 1–3), AUROC over the scored examples, and the floor numbers.

    ``val_loss`` is eq. 3 with the full ``guidance_weight`` (the paper's lambda), whatever the
    guidance warm-up has reached. ``val_floor_bce`` and ``val_positives_at_floor`` are the stall
    detector's (:mod:`fundax.stall`).
    """
    from sklearn.metrics import roc_auc_score

    from fundax import stall

    w = outputs["weight"]
    total = float(w.sum())
    bce = float((w * outputs["bce"]).sum() / total) if total else 0.0
    guidance = float((w * outputs["guidance"]).sum() / total) if total else 0.0
    scored = w > 0
    labels = outputs["label"][scored]
    metrics = {"val_loss": bce + guidance_weight * guidance, "val_bce": bce, "val_guidance": guidance,
               "val_examples": int(scored.sum())}
    if 0 < labels.sum() < len(labels):
        metrics["val_auroc"] = float(roc_auc_score(labels, outputs["probability"][scored]))
    return metrics | stall.floor_metrics(outputs, epsilon)
