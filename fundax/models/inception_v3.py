"""Inception-v3 (Szegedy et al., CVPR 2016), the paper's baseline, with a class activation map.

The paper compares its network with "the widely used network" of Gulshan et al.,
an Inception-v3 trained with binary cross-entropy alone. This is the reference
architecture (TF-slim / Keras layout, names from the reference), at a 299 px input::

    image 299x299x3
    conv_1a 3x3/2 V, conv_2a 3x3 V, conv_2b 3x3, max-pool 3x3/2 V   ->  73x73x64
    conv_3b 1x1, conv_4a 3x3 V, max-pool 3x3/2 V                    ->  35x35x192
    mixed_5b, 5c, 5d   (block A: 1x1 | 5x5 | double 3x3 | pool)     ->  35x35x288
    mixed_6a           (grid reduction, stride 2 V)                 ->  17x17x768
    mixed_6b .. 6e     (block C: factorised 7x7)                    ->  17x17x768   [auxiliary head]
    mixed_7a           (grid reduction, stride 2 V)                 ->   8x8x1280
    mixed_7b, 7c       (block E: expanded 3x3)                      ->   8x8x2048
    classifier, one output per cell (CAM)                           ->   8x8 logit map
    global average                                                  ->  prediction logit

(V = VALID padding, the rest SAME.) Every conv is conv-BatchNorm-ReLU without a
conv bias; BatchNorm has an offset but no scale (the reference's choice: the
ReLU after it makes a scale redundant), epsilon 1e-3.

Class activation map (Zhou et al., CVPR 2016): the classifier's weights applied
to every cell of the last features give the logit map, and its global average is
the prediction logit. That is exactly the reference head (global average pool,
then the dense classifier), because the classifier is linear; what it adds is a
map with the same meaning as the guided CNN's, so AIR and heatmaps exist for the
baseline too. The paper reports only the baseline's AUROC. AIR reads the regional mask
at the map cells' centres spread evenly over the photograph, the way a CAM is laid over it.

Input size: any square side of at least 75 px (``MIN_IMAGE_SIZE_PX``). Seven
VALID reductions shrink 75 px to a 1x1 map and anything smaller to nothing, so
a smaller input is refused. The map side is ``activation_map_size(S)``: 8 at
299 px, 2 at 128, 14 at 512. The optional auxiliary head reads mixed_6e through
a 5x5/3 average pool and a 5x5 VALID conv, as in the reference, which needs
``MIN_AUX_IMAGE_SIZE_PX`` = 299 px.

Differences from the reference, on purpose: no dropout before the classifier
(the train step is a deterministic function of the batch, which keeps any number
of devices bit-compatible); Glorot-uniform weights like the guided CNN; and
``width_multiplier`` scales every conv's channel count (1 = the reference) so
that the baseline can be trained at CPU scale.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fundax.regions import CellGrid

MIN_IMAGE_SIZE_PX = 75
"""Smallest input side with at least one cell left after the seven VALID reductions."""

MIN_AUX_IMAGE_SIZE_PX = 299
"""Smallest input side whose mixed_6e map (17x17) fits the auxiliary head's 5x5/3 pool and 5x5 conv."""

_kernel_init = nn.initializers.glorot_uniform()

Outputs = dict[str, jax.Array]


def _valid(side: int, kernel: int = 3, stride: int = 2) -> int:
    return (side - kernel) // stride + 1


def _mixed_6e_size(image_size_px: int) -> int:
    side = _valid(image_size_px)  # conv_1a
    side = _valid(side, stride=1)  # conv_2a
    side = _valid(side)  # max-pool
    side = _valid(side, stride=1)  # conv_4a
    side = _valid(side)  # max-pool
    return _valid(side)  # mixed_6a


def activation_map_size(image_size_px: int) -> int:
    """Side of the logit map for a square input of ``image_size_px`` (after mixed_7a)."""
    return _valid(_mixed_6e_size(image_size_px))


# The strided or VALID layers on the path to the CAM, as (kernel, stride); SAME stride-1
# layers are centred and move nothing.
_REDUCTIONS = ((3, 2), (3, 1), (3, 2), (3, 1), (3, 2), (3, 2), (3, 2))


def receptive_field_grid(image_size_px: int) -> CellGrid:
    """Where each CAM cell's receptive field is centred on the input (pixel centres at m + 0.5).

    A VALID layer's output cell i covers input cells stride·i .. stride·i + kernel − 1,
    so it is centred on input cell stride·i + (kernel − 1)/2; composed over the seven
    VALID layers, cell j is centred at 32j + 37.5 px (8 cells at 37.5 ... 261.5 at
    299 px, symmetric about the image centre). The reference architecture's VALID
    reductions drop the border, so these centres are up to 18.8 px from the
    (j + 0.5)·299/8 at which docs/REGIONS.md places a feature map's cells and the cue
    is sampled: Inception-v3's AIR is the coarser for it (docs/GUIDANCE.md).
    """
    stride, offset = 1.0, 0.5  # input pixel m is centred at m + 0.5
    for kernel, step in _REDUCTIONS:
        offset += stride * (kernel - 1) / 2
        stride *= step
    return CellGrid(activation_map_size(image_size_px), stride, offset)


def check_image_size(image_size_px: int, aux_logits: bool) -> None:
    """Refuse an input side the network cannot read, naming the smallest it can."""
    if image_size_px < MIN_IMAGE_SIZE_PX:
        raise ValueError(f"inception_v3 needs image_size >= {MIN_IMAGE_SIZE_PX} px "
                         f"(its VALID reductions leave no cells below that), got {image_size_px}")
    if aux_logits and image_size_px < MIN_AUX_IMAGE_SIZE_PX:
        raise ValueError(f"inception_v3.aux_logits needs image_size >= {MIN_AUX_IMAGE_SIZE_PX} px "
                         f"(the reference auxiliary head), got {image_size_px}")


class ConvBN(nn.Module):
    """Conv (no bias), BatchNorm (offset, no scale), ReLU: the reference's only conv layer."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: str = "SAME"
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Conv(self.features, self.kernel, strides=self.strides, padding=self.padding, use_bias=False,
                    kernel_init=_kernel_init, dtype=self.dtype, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-3,
                         use_scale=False, dtype=self.dtype, axis_name=self.axis_name, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    # The reference (TensorFlow) averages over the cells inside the image only.
    return nn.avg_pool(x, (3, 3), (1, 1), padding="SAME", count_include_pad=False)


def _max_pool_3x3_2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionV3(nn.Module):
    """Inception-v3 with one output and a CAM, the interface of :class:`GuidedCNN`.

    ``__call__(images, train)`` takes ``(B, S, S, 3)`` images in [0, 1] and returns
    float32 ``logit`` ``(B,)``, ``logit_map`` and ``activation_map`` ``(B, h, w)``
    with ``h = activation_map_size(S)``, and in training with ``aux_logits`` also
    ``aux_logit`` ``(B,)``, the auxiliary head's logit.
    """

    aux_logits: bool = False
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    axis_name: str | None = None

    def _width(self, channels: int) -> int:
        return max(1, round(channels * self.width_multiplier))

    def _conv(self, name: str, channels: int, kernel: tuple[int, int], strides: int = 1,
              padding: str = "SAME") -> ConvBN:
        return ConvBN(self._width(channels), kernel, strides, padding, dtype=jnp.dtype(self.dtype),
                      bn_momentum=self.bn_momentum, axis_name=self.axis_name, name=name)

    def _block_a(self, x: jax.Array, name: str, pool_channels: int, train: bool) -> jax.Array:
        b1 = self._conv(f"{name}_1x1", 64, (1, 1))(x, train)
        b5 = self._conv(f"{name}_5x5_reduce", 48, (1, 1))(x, train)
        b5 = self._conv(f"{name}_5x5", 64, (5, 5))(b5, train)
        b3 = self._conv(f"{name}_3x3dbl_reduce", 64, (1, 1))(x, train)
        b3 = self._conv(f"{name}_3x3dbl_1", 96, (3, 3))(b3, train)
        b3 = self._conv(f"{name}_3x3dbl_2", 96, (3, 3))(b3, train)
        bp = self._conv(f"{name}_pool", pool_channels, (1, 1))(_avg_pool_3x3(x), train)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)

    def _reduction_a(self, x: jax.Array, train: bool) -> jax.Array:
        b3 = self._conv("mixed_6a_3x3", 384, (3, 3), 2, "VALID")(x, train)
        bd = self._conv("mixed_6a_3x3dbl_reduce", 64, (1, 1))(x, train)
        bd = self._conv("mixed_6a_3x3dbl_1", 96, (3, 3))(bd, train)
        bd = self._conv("mixed_6a_3x3dbl_2", 96, (3, 3), 2, "VALID")(bd, train)
        return jnp.concatenate([b3, bd, _max_pool_3x3_2(x)], axis=-1)

    def _block_c(self, x: jax.Array, name: str, channels_7x7: int, train: bool) -> jax.Array:
        c = channels_7x7
        b1 = self._conv(f"{name}_1x1", 192, (1, 1))(x, train)
        b7 = self._conv(f"{name}_7x7_reduce", c, (1, 1))(x, train)
        b7 = self._conv(f"{name}_7x7_1", c, (1, 7))(b7, train)
        b7 = self._conv(f"{name}_7x7_2", 192, (7, 1))(b7, train)
        bd = self._conv(f"{name}_7x7dbl_reduce", c, (1, 1))(x, train)
        bd = self._conv(f"{name}_7x7dbl_1", c, (7, 1))(bd, train)
        bd = self._conv(f"{name}_7x7dbl_2", c, (1, 7))(bd, train)
        bd = self._conv(f"{name}_7x7dbl_3", c, (7, 1))(bd, train)
        bd = self._conv(f"{name}_7x7dbl_4", 192, (1, 7))(bd, train)
        bp = self._conv(f"{name}_pool", 192, (1, 1))(_avg_pool_3x3(x), train)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)

    def _reduction_b(self, x: jax.Array, train: bool) -> jax.Array:
        b3 = self._conv("mixed_7a_3x3_reduce", 192, (1, 1))(x, train)
        b3 = self._conv("mixed_7a_3x3", 320, (3, 3), 2, "VALID")(b3, train)
        b7 = self._conv("mixed_7a_7x7x3_reduce", 192, (1, 1))(x, train)
        b7 = self._conv("mixed_7a_7x7x3_1", 192, (1, 7))(b7, train)
        b7 = self._conv("mixed_7a_7x7x3_2", 192, (7, 1))(b7, train)
        b7 = self._conv("mixed_7a_7x7x3_3", 192, (3, 3), 2, "VALID")(b7, train)
        return jnp.concatenate([b3, b7, _max_pool_3x3_2(x)], axis=-1)

    def _block_e(self, x: jax.Array, name: str, train: bool) -> jax.Array:
        b1 = self._conv(f"{name}_1x1", 320, (1, 1))(x, train)
        b3 = self._conv(f"{name}_3x3_reduce", 384, (1, 1))(x, train)
        b3 = jnp.concatenate([self._conv(f"{name}_3x3_1x3", 384, (1, 3))(b3, train),
                              self._conv(f"{name}_3x3_3x1", 384, (3, 1))(b3, train)], axis=-1)
        bd = self._conv(f"{name}_3x3dbl_reduce", 448, (1, 1))(x, train)
        bd = self._conv(f"{name}_3x3dbl_1", 384, (3, 3))(bd, train)
        bd = jnp.concatenate([self._conv(f"{name}_3x3dbl_1x3", 384, (1, 3))(bd, train),
                              self._conv(f"{name}_3x3dbl_3x1", 384, (3, 1))(bd, train)], axis=-1)
        bp = self._conv(f"{name}_pool", 192, (1, 1))(_avg_pool_3x3(x), train)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)

    def _auxiliary(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.avg_pool(x, (5, 5), (3, 3), padding="VALID")
        x = self._conv("aux_1x1", 128, (1, 1))(x, train)
        x = self._conv("aux_5x5", 768, (5, 5), padding="VALID")(x, train)
        # 1x1 at 299 px; larger inputs leave more cells, averaged like the main head.
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(1, kernel_init=_kernel_init, name="aux_classifier")(x)[:, 0]

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> Outputs:
        if self.width_multiplier <= 0:
            raise ValueError(f"inception_v3.width_multiplier must be positive, got {self.width_multiplier}")
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"inception_v3 reads square images, got {images.shape[1]}x{images.shape[2]}")
        check_image_size(images.shape[1], self.aux_logits)

        x = images.astype(jnp.dtype(self.dtype))
        x = self._conv("conv_1a_3x3", 32, (3, 3), 2, "VALID")(x, train)
        x = self._conv("conv_2a_3x3", 32, (3, 3), padding="VALID")(x, train)
        x = self._conv("conv_2b_3x3", 64, (3, 3))(x, train)
        x = _max_pool_3x3_2(x)
        x = self._conv("conv_3b_1x1", 80, (1, 1), padding="VALID")(x, train)
        x = self._conv("conv_4a_3x3", 192, (3, 3), padding="VALID")(x, train)
        x = _max_pool_3x3_2(x)
        for name, pool_channels in (("mixed_5b", 32), ("mixed_5c", 64), ("mixed_5d", 64)):
            x = self._block_a(x, name, pool_channels, train)
        x = self._reduction_a(x, train)
        for name, channels_7x7 in (("mixed_6b", 128), ("mixed_6c", 160), ("mixed_6d", 160), ("mixed_6e", 192)):
            x = self._block_c(x, name, channels_7x7, train)
        aux = self._auxiliary(x, train) if self.aux_logits else None
        x = self._reduction_b(x, train)
        for name in ("mixed_7b", "mixed_7c"):
            x = self._block_e(x, name, train)

        # CAM: the dense classifier applied per cell is a 1x1 conv; run it in float32,
        # the map the losses and AIR read.
        logit_map = nn.Dense(1, kernel_init=_kernel_init, bias_init=nn.initializers.zeros,
                             dtype=jnp.float32, name="classifier")(x.astype(jnp.float32))[..., 0]
        outputs = {
            "logit": jnp.mean(logit_map, axis=(1, 2)),
            "logit_map": logit_map,
            "activation_map": jax.nn.sigmoid(logit_map),
        }
        if aux is not None and train:
            outputs["aux_logit"] = aux
        return outputs
