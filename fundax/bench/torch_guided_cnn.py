"""The guided CNN, its losses and its train step in PyTorch, for side-by-side timing.

The same architecture, widths, losses (eqs. 1-3), augmentation and optimiser as
:mod:`fundax.models.guided_cnn` and :func:`fundax.trainer.make_train_step`, written
the way a PyTorch user would: NCHW modules run in channels_last, autocast for
bfloat16, ``torch.compile`` optional. Only the benchmark imports it (``pip install
'fundax[bench]'``); nothing here trains a model that fundax keeps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fundax.models.guided_cnn import PAD_FIRST, GuidedCNN, reduction_padding


class ReductionPad(nn.Module):
    """The padding of a stride-2 reduction, on the side fundax's guided CNN pads (``PAD_FIRST``)."""

    def __init__(self, pad_first: bool):
        super().__init__()
        self.pad_first = pad_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (top, bottom), (left, right) = (reduction_padding(side, self.pad_first) for side in x.shape[-2:])
        return F.pad(x, (left, right, top, bottom))


class ConvBN(nn.Sequential):
    """3x3 conv (no bias) + BatchNorm (+ ReLU), as fundax's ConvBN."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, relu: bool = True,
                 bn_momentum: float = 0.9, pad_first: bool = False):
        reduction = stride == 2
        layers: list[nn.Module] = [ReductionPad(pad_first)] if reduction else []
        layers += [
            nn.Conv2d(cin, cout, 3, stride=stride, padding=0 if reduction else dilation, dilation=dilation,
                      bias=False),
            # flax keeps momentum * old + (1 - momentum) * new; torch weighs the new value by its momentum.
            nn.BatchNorm2d(cout, momentum=1.0 - bn_momentum),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualUnit(nn.Module):
    def __init__(self, width: int, bn_momentum: float):
        super().__init__()
        self.conv_bn1 = ConvBN(width, width, bn_momentum=bn_momentum)
        self.conv_bn2 = ConvBN(width, width, relu=False, bn_momentum=bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv_bn2(self.conv_bn1(x)))


class TorchGuidedCNN(nn.Module):
    """Returns ``(logit (B,), activation_map (B, h, w))`` like :class:`GuidedCNN`."""

    def __init__(self, reference: GuidedCNN):
        super().__init__()
        m = reference.bn_momentum
        width = reference.stem_width
        self.stem = ConvBN(3, width, stride=2, bn_momentum=m, pad_first=PAD_FIRST[0])
        self.stages = nn.ModuleList()
        widths = [width]
        for stage, units in enumerate(reference.units_per_stage, start=1):
            blocks: list[nn.Module] = [ResidualUnit(width, m) for _ in range(units)]
            blocks.append(ConvBN(width, 2 * width, stride=2, bn_momentum=m, pad_first=PAD_FIRST[stage]))
            width *= 2
            widths.append(width)
            self.stages.append(nn.Sequential(*blocks))
        self.aspp = nn.ModuleList(
            [ConvBN(sum(widths), reference.aspp_width, dilation=r, bn_momentum=m) for r in reference.atrous_rates])
        self.logit_conv = nn.Conv2d(reference.aspp_width * len(reference.atrous_rates), 1, 1)
        self.max_pool = reference.max_pool_before_gap
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(images)
        reductions = [x]
        for stage in self.stages:
            x = stage(x)
            reductions.append(x)
        side = reductions[-1].shape[-1]
        pooled = [r if r.shape[-1] == side else F.avg_pool2d(r, r.shape[-1] // side) for r in reductions]
        x = torch.cat(pooled, dim=1)
        x = torch.cat([branch(x) for branch in self.aspp], dim=1)
        logit_map = self.logit_conv(x).float()
        pooled_map = F.max_pool2d(logit_map, 2, 2, ceil_mode=True) if self.max_pool else logit_map
        return pooled_map.mean(dim=(1, 2, 3)), torch.sigmoid(logit_map[:, 0])


def combined_loss(logit: torch.Tensor, activation_map: torch.Tensor, label: torch.Tensor, mask: torch.Tensor,
                  weight: torch.Tensor, guidance_weight: float, epsilon: float) -> torch.Tensor:
    """Eqs. 1-3 with per-example weights, as :func:`fundax.losses.total_loss`."""
    total = weight.sum().clamp_min(1e-12)
    bce = (weight * F.binary_cross_entropy_with_logits(logit, label, reduction="none")).sum() / total
    per_cell = (1.0 - mask) * torch.log(activation_map.clamp_min(epsilon))
    cells = activation_map.shape[1] * activation_map.shape[2]
    guidance = (weight * per_cell.sum(dim=(1, 2))).sum() / (total * cells)
    return bce + guidance_weight * guidance


def random_affine(batch: int, generator: torch.Generator, *, scale=(0.9, 1.1), rotation_deg=15.0,
                  translation=0.05, shear_deg=5.0) -> torch.Tensor:
    """``(B, 2, 3)`` inverse affines in ``affine_grid``'s normalised coordinates."""
    # Drawn where the generator lives: on a GPU, no host round trip (and no sync) a step.
    u = torch.rand(batch, 6, generator=generator, device=generator.device)
    mirror = torch.where(u[:, 0] < 0.5, -1.0, 1.0)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 1]
    theta = math.radians(rotation_deg) * (2 * u[:, 2] - 1)
    shift = 2 * translation * (2 * u[:, 3:5] - 1)
    shear = torch.tan(math.radians(shear_deg) * (2 * u[:, 5] - 1))
    cos, sin = torch.cos(theta), torch.sin(theta)
    # (F S)^-1 Sh^-1 R^-1 applied to (p - t), as fundax.data.augment.random_affine.
    a = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    a = torch.stack([a[:, 0] - shear[:, None] * a[:, 1], a[:, 1]], 1)
    a = torch.stack([a[:, 0] * (mirror / s)[:, None], a[:, 1] / s[:, None]], 1)
    b = -(a @ shift[..., None])[..., 0]
    return torch.cat([a, b[..., None]], dim=-1)


def augment(images_u8: torch.Tensor, masks_full: torch.Tensor, map_size: int, generator: torch.Generator,
            intensity=(0.8, 1.2)) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp images (bilinear) and full-resolution region masks (nearest, at map size) by one affine."""
    batch = images_u8.shape[0]
    theta = random_affine(batch, generator)
    images = images_u8.float()
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gain = intensity[0] + (intensity[1] - intensity[0]) * torch.rand(batch, generator=generator,
                                                                     device=generator.device)
    images = (images * gain[:, None, None, None]).clamp(0, 255) / 255.0
    cells = F.affine_grid(theta, [batch, 1, map_size, map_size], align_corners=False)
    masks = F.grid_sample(masks_full, cells, mode="nearest", align_corners=False)[:, 0]
    return images.contiguous(memory_format=torch.channels_last), masks


def make_train_step(model: TorchGuidedCNN, *, learning_rate: float, momentum: float, weight_decay: float,
                    guidance_weight: float, epsilon: float, map_size: int, bfloat16: bool, augmented: bool,
                    compiled: bool, seed: int = 0) -> Any:
    """``step(batch) -> loss``: augmentation, forward, both losses, backward, SGD-Nesterov update."""
    device = next(model.parameters()).device
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum, nesterov=True,
                                weight_decay=weight_decay)
    generator = torch.Generator(device=device).manual_seed(seed)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16)

    def forward_backward(images, masks, label, weight):
        with autocast:
            logit, activation_map = model(images)
        loss = combined_loss(logit.float(), activation_map.float(), label, masks, weight, guidance_weight, epsilon)
        loss.backward()
        return loss

    run = torch.compile(forward_backward) if compiled else forward_backward

    def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if augmented:
            images, masks = augment(batch["image"], batch["mask_full"], map_size, generator)
        else:
            images, masks = batch["image"].float() / 255.0, batch["mask"]
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        loss = run(images, masks, batch["label"], batch["weight"])
        optimizer.step()
        return loss

    return step
