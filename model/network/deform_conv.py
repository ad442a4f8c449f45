"""Modulated deformable convolution (DCNv2) as centermask2's DCN VoVNets use it, on `torchvision.ops`.

The layout (CENTERMASK_SPEC.md §2.6): one ordinary 3×3 convolution with bias predicts 27 channels per
location. Channels 0–17 are the offsets, as they are: for kernel tap k = 3·i + j, channel 2k is the
vertical and 2k+1 the horizontal displacement. Channels 18–26 through a sigmoid are the per-tap
modulation masks. This is exactly the layout `torchvision.ops.deform_conv2d` reads, which runs on CPU and
CUDA (detectron2's own kernel has no CPU version).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torchvision.ops import deform_conv2d


class SamplingPlan(NamedTuple):
    """What a modulated deformable convolution reads, for an input of (N, C, H, W) and a k×k kernel.

    features (N, C, H, W); offsets (N, 2·k², H, W), (dy, dx) per tap; masks (N, k², H, W) in [0, 1].
    """

    features: torch.Tensor
    offsets: torch.Tensor
    masks: torch.Tensor


class OffsetMaskConv(nn.Conv2d):
    """The `conv_offset` layer: a k×k convolution with bias predicting offsets and masks for every tap.

    Input (N, C, H, W) → SamplingPlan of that input. Zero-initialised, as in centermask2, so an untrained
    layer samples the regular grid with masks of 0.5.
    """

    def __init__(self, in_channels: int, kernel_size: int = 3) -> None:
        super().__init__(in_channels, 3 * kernel_size * kernel_size, kernel_size, 1, kernel_size // 2)
        nn.init.zeros_(self.weight)
        assert self.bias is not None  # built with one
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> SamplingPlan:  # type: ignore[override]
        predicted = super().forward(x)
        taps = self.kernel_size[0] * self.kernel_size[1]
        return SamplingPlan(x, predicted[:, : 2 * taps], predicted[:, 2 * taps :].sigmoid())


class ModulatedDeformConv2d(nn.Module):
    """DCNv2, stride 1: every kernel tap samples the input bilinearly at its displaced position (zero outside
    the image) and is scaled by its mask before the weighted sum.

    SamplingPlan of (N, in_channels, H, W) → (N, out_channels, H, W). `weight` has the layout of a
    Conv2d weight (out, in, k, k). `bias` is None, as in centermask2; when set, it is added after the sum,
    so a following batch norm folds into weight and bias as into a plain convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias: nn.Parameter | None = None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, plan: SamplingPlan) -> torch.Tensor:
        return deform_conv2d(
            plan.features, plan.offsets, self.weight, self.bias, padding=self.padding, mask=plan.masks
        )

    def extra_repr(self) -> str:
        out_channels, in_channels, kernel, _ = self.weight.shape
        return f"{in_channels}, {out_channels}, kernel_size={kernel}, padding={self.padding}"
