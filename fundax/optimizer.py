"""The optimiser of eq. 3's training: SGD with Nesterov momentum, its schedules and warm-up.

The learning rate lives in the optimiser state (``optax.inject_hyperparams``), so the
plateau schedule of the loop can lower it in a running state and a checkpoint keeps it.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

LR_SCHEDULES = ("plateau", "cosine", "constant")
"""The values of ``config.lr_schedule``."""


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
    elif config.lr_schedule in LR_SCHEDULES:
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


def base_learning_rate(state: Any) -> float:
    """The schedule's learning rate in a train state (``plateau`` lowers it), before the warm-up factor."""
    return float(state.opt_state[0].hyperparams["learning_rate"])


def learning_rate(state: Any, config: ml_collections.ConfigDict) -> float:
    """The learning rate of the next update: the schedule's, times the warm-up factor."""
    return base_learning_rate(state) * float(warmup_factor(state.step, config.warmup_steps))


def set_learning_rate(state: Any, value: float) -> Any:
    """The state with the schedule's learning rate set to ``value`` (the plateau schedule's decay)."""
    injected = state.opt_state[0]
    old = injected.hyperparams["learning_rate"]
    new = jax.device_put(np.asarray(value, old.dtype), old.sharding)
    injected = injected._replace(hyperparams=dict(injected.hyperparams, learning_rate=new))
    return state.replace(opt_state=(injected, *state.opt_state[1:]))
