"""Network architectures: the regionally guided CNN of the paper (§2.2) and its Inception-v3 baseline.

Each module gives ``receptive_field_grid(image_size_px)``: where the receptive fields of its
activation map's cells are centred on the input (:class:`fundax.regions.CellGrid`). This
package's functions build the config's model (``config.model``) and say what its
activation map is.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from fundax.models import guided_cnn, inception_v3
from fundax.models.guided_cnn import GuidedCNN
from fundax.models.inception_v3 import InceptionV3
from fundax.parallel import AXIS
from fundax.regions import CellGrid

__all__ = ["GuidedCNN", "InceptionV3", "MODELS", "activation_grid", "activation_map_size", "check_model",
           "create_model"]

MODELS = ("guided_cnn", "inception_v3")
"""The values of ``config.model``."""


def check_model(config: ml_collections.ConfigDict) -> list[str]:
    """What is wrong with the model name, its compute dtype, and what its architecture asks of the
    image size and the loss: one sentence a problem (empty when nothing is)."""
    if not isinstance(config.model, str) or config.model not in MODELS:
        # A config.json written before config.model named the model holds a section there.
        got = repr(config.model) if isinstance(config.model, str) else f"a {type(config.model).__name__}"
        return [f"model must be one of {', '.join(map(repr, MODELS))}, got {got}"]
    problems = []
    if config.dtype not in ("float32", "bfloat16"):
        problems.append(f"dtype must be 'float32' or 'bfloat16', got {config.dtype!r}")
    if config.model == "guided_cnn" and config.image_size % guided_cnn.TOTAL_STRIDE:
        problems.append(f"image_size {config.image_size} must be a multiple of 16 for guided_cnn "
                        "(four stride-2 reductions)")
    if config.model == "inception_v3":
        try:
            inception_v3.check_image_size(config.image_size, config.inception_v3.aux_logits)
        except ValueError as e:
            problems.append(str(e))
        if config.guidance_weight != 0:
            problems.append(f"guidance_weight {config.guidance_weight} with model inception_v3: the baseline "
                            "is trained with BCE alone, set --config.guidance_weight=0")
    return problems


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The config's model for its finding, with BatchNorm synchronised over ``data``."""
    problems = check_model(config)
    if problems:
        raise ValueError("; ".join(problems))
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
