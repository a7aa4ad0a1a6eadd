"""The regionally guided CNN of Son et al. (§2.2, Fig. 2), in flax.linen.

At the reference widths and a 512 px input::

    image 512x512x3
    stem       3x3/2 conv-BN-ReLU                 -> 256x256x32   reduction 1
    stage 1    2 residual units, reduction 3x3/2  -> 128x128x64   reduction 2
    stage 2    3 residual units, reduction 3x3/2  ->  64x64x128   reduction 3
    stage 3    4 residual units, reduction 3x3/2  ->  32x32x256   reduction 4
    average-pool reductions 1-4 to 32x32, concatenate          ->  32x32x480
    atrous pyramid pooling, one 3x3 branch per dilation rate    ->  32x32x(64 * rates)
    1x1 conv, depth 1                                           ->  32x32 logit map
    [max-pool 2x2/2, small-lesion findings only] -> GAP         ->  prediction logit

The stem's stride-2 conv is a 3x3 conv-BN-ReLU with stride 2, exactly what the
paper calls a reduction layer, so it counts as reduction 1; with the three
stages' reductions that makes the four reductions the head concatenates and a
total stride of 2**4 = 16. A stage after the third would end in a fifth
reduction that nothing reads, so the model takes exactly three stages; their
depths (units per stage) and all widths are free.

Residual units are post-activation, as in the paper's reference [6] (He et al.,
CVPR 2016): conv-BN-ReLU, conv-BN, add the identity, ReLU.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fundax.findings import get_finding
from fundax.regions import CellGrid

TOTAL_STRIDE = 16
"""Input pixels per activation-map cell along each side: four stride-2 reductions."""

NUM_STAGES = 3
"""Stages after the stem: with the stem they give the four reductions the head reads."""

# The paper Xavier-initialises weights and biases; Glorot's scheme sets biases to
# zero. Convs followed by BatchNorm carry no bias (BN's offset replaces it).
_kernel_init = nn.initializers.glorot_uniform()

Outputs = dict[str, jax.Array]


def activation_map_size(image_size_px: int) -> int:
    """Side of the activation map for a square input of ``image_size_px``.

    Every stride-2 conv pads SAME, so a side not divisible by 16 rounds up.
    """
    return -(-image_size_px // TOTAL_STRIDE)


PAD_FIRST = (True, True, True, False)
"""Per reduction (stem, then stages 1-3): on an even side, whether its one padding pixel goes first.

A 3x3 stride-2 conv on an even side needs one pixel of padding. Where it goes moves
the output: padded last (XLA's SAME), output cell i is centred on input cell 2i + 1,
half an input cell after the middle of the two cells it replaces; padded first, on
2i, half a cell before. Each reduction doubles the step, so the four shifts are
±0.5, ±1, ±2 and ±4 px; first, first, first, last adds up to −0.5 − 1 − 2 + 4 = +0.5 px,
where all-SAME would put every cell 7.5 px off the centre that docs/REGIONS.md gives a
feature map's cell — the centre at which the regional cue is sampled (docs/GUIDANCE.md).
"""


def reduction_padding(side: int, pad_first: bool) -> tuple[int, int]:
    """(before, after) padding of a 3x3 stride-2 conv on ``side`` pixels, for ceil(side / 2) outputs."""
    total = max((-(-side // 2) - 1) * 2 + 3 - side, 0)  # 1 on an even side, 2 on an odd one
    if total == 1:
        return (1, 0) if pad_first else (0, 1)
    return total // 2, total - total // 2


def receptive_field_grid(image_size_px: int) -> CellGrid:
    """Where each activation cell's receptive field is centred on the input (pixel centres at m + 0.5).

    Through the four reductions of :data:`PAD_FIRST` cell j is centred at 16j + 8.5 on a
    side that is a multiple of 16: 0.5 px from the 16(j + 0.5) of the cue's grid
    (:func:`fundax.models.activation_grid`). The average-pooled reductions 1-3 the head
    concatenates are centred 0.5, 1.5 and 3.5 px before their cells; their receptive
    fields lie inside reduction 4's (87 px at the CPU widths, more at the paper's), and
    the atrous pyramid is symmetric, so a cell's whole receptive field is centred where
    reduction 4's is.
    """
    side, stride, offset = image_size_px, 1.0, 0.5
    for pad_first in PAD_FIRST:
        before, _ = reduction_padding(side, pad_first)
        offset += stride * (1 - before)  # output i is centred on input cell 2i + 1 - before
        side, stride = -(-side // 2), stride * 2
    return CellGrid(side, stride, offset)


class ConvBN(nn.Module):
    """3x3 conv (no bias) + BatchNorm, optionally followed by ReLU.

    Stride 1 pads SAME (symmetric); stride 2 pads as :func:`reduction_padding` says.
    """

    features: int
    strides: int = 1
    dilation: int = 1
    relu: bool = True
    pad_first: bool = False
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        padding = "SAME" if self.strides == 1 else tuple(
            reduction_padding(side, self.pad_first) for side in x.shape[1:3])
        x = nn.Conv(
            self.features,
            (3, 3),
            strides=self.strides,
            kernel_dilation=self.dilation,
            padding=padding,
            use_bias=False,
            kernel_init=_kernel_init,
            dtype=self.dtype,
            name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=self.bn_momentum,
            dtype=self.dtype,
            axis_name=self.axis_name,
            name="bn",
        )(x)
        return nn.relu(x) if self.relu else x


class ResidualUnit(nn.Module):
    """Post-activation residual unit: two 3x3 conv-BN, identity shortcut, ReLU."""

    features: int
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = dict(dtype=self.dtype, bn_momentum=self.bn_momentum, axis_name=self.axis_name)
        y = ConvBN(self.features, name="conv_bn1", **bn)(x, train)
        y = ConvBN(self.features, relu=False, name="conv_bn2", **bn)(y, train)
        return nn.relu(x + y)


class GuidedCNN(nn.Module):
    """Classifies one finding and localises it in a ``(h, w)`` activation map.

    ``__call__(images, train)`` takes ``(B, H, W, 3)`` images in [0, 1] and
    returns float32 arrays, whatever the compute dtype:

    * ``logit``: ``(B,)`` prediction logit; sigmoid gives the paper's y_pred.
    * ``logit_map``: ``(B, h, w)`` output of the depth-1 1x1 conv.
    * ``activation_map``: ``(B, h, w)`` sigmoid of the logit map, the paper's A.

    with ``h = activation_map_size(H)``. ``axis_name`` names the mesh axis over
    which BatchNorm averages batch statistics (e.g. ``"data"`` inside
    ``jax.shard_map``); leave it ``None`` under plain ``jax.jit``.
    """

    atrous_rates: tuple[int, ...]
    max_pool_before_gap: bool
    stem_width: int = 32
    units_per_stage: tuple[int, ...] = (2, 3, 4)
    aspp_width: int = 64
    max_pool_window: int = 2
    max_pool_stride: int = 2
    logit_bias_init: float = 0.0
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    axis_name: str | None = None

    @classmethod
    def from_finding(cls, name: str, **overrides: Any) -> GuidedCNN:
        """The model for finding ``name``, rates and max-pool from the registry."""
        finding = get_finding(name)
        fields = dict(
            atrous_rates=finding.atrous_rates,
            max_pool_before_gap=finding.max_pool_before_gap,
        )
        fields.update(overrides)
        return cls(**fields)

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> Outputs:
        if len(self.units_per_stage) != NUM_STAGES:
            raise ValueError(
                f"units_per_stage needs {NUM_STAGES} entries (the stem and three stage "
                f"reductions are the four the head reads), got {self.units_per_stage}"
            )
        if not self.atrous_rates:
            raise ValueError("atrous_rates is empty")
        dtype = jnp.dtype(self.dtype)
        bn = dict(dtype=dtype, bn_momentum=self.bn_momentum, axis_name=self.axis_name)

        x = images.astype(dtype)
        x = ConvBN(self.stem_width, strides=2, pad_first=PAD_FIRST[0], name="stem", **bn)(x, train)
        reductions = [x]
        width = self.stem_width
        for stage, num_units in enumerate(self.units_per_stage, start=1):
            for unit in range(1, num_units + 1):
                x = ResidualUnit(width, name=f"stage{stage}_unit{unit}", **bn)(x, train)
            width *= 2
            x = ConvBN(width, strides=2, pad_first=PAD_FIRST[stage], name=f"reduction{stage + 1}", **bn)(x, train)
            reductions.append(x)

        # Reduction k is 2**(4 - k) times larger than reduction 4 on each side;
        # SAME padding keeps the ceil-rounded sides consistent for odd inputs.
        pooled = []
        for k, r in enumerate(reductions, start=1):
            window = (2 ** (len(reductions) - k),) * 2
            pooled.append(nn.avg_pool(r, window, window, padding="SAME", count_include_pad=False))
        x = jnp.concatenate(pooled, axis=-1)

        x = jnp.concatenate(
            [
                ConvBN(self.aspp_width, dilation=rate, name=f"aspp_rate{rate}", **bn)(x, train)
                for rate in self.atrous_rates
            ],
            axis=-1,
        )

        # The depth-1 conv is the map the losses see: run it in float32.
        logit_map = nn.Conv(
            1, (1, 1), kernel_init=_kernel_init, bias_init=nn.initializers.constant(self.logit_bias_init),
            dtype=jnp.float32, name="logit_conv",
        )(x.astype(jnp.float32))
        pooled_map = logit_map
        if self.max_pool_before_gap:
            # Small lesions light few cells, so GAP alone stays low. SAME pads
            # with -inf: equal to VALID when the window tiles the map, and on odd
            # maps it keeps the border cells instead of dropping them.
            window = (self.max_pool_window,) * 2
            pooled_map = nn.max_pool(
                logit_map, window, (self.max_pool_stride,) * 2, padding="SAME"
            )
        logit_map = logit_map[..., 0]
        return {
            "logit": jnp.mean(pooled_map, axis=(1, 2, 3)),
            "logit_map": logit_map,
            "activation_map": jax.nn.sigmoid(logit_map),
        }

