"""Feature pyramid on a bottom-up network's stride 8/16/32 outputs, with P6/P7 from P5 (detectron2 FPN +
LastLevelP6P7)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.network.backbones import BottomUp

FPN_LEVELS = ("p3", "p4", "p5", "p6", "p7")


class LastLevelP6P7(nn.Module):
    """P6 = conv(P5) (returned without activation); P7 = conv(ReLU(P6)). Both 3×3, stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, p5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p6 = self.p6(p5)
        return p6, self.p7(F.relu(p6))


class FPN(nn.Module):
    """Backbone + pyramid. Input (N, 3, H, W) with H, W multiples of 32 → {"p3".."p7"}, each (N, C, H/s, W/s)."""

    size_divisibility = 32

    def __init__(self, bottom_up: BottomUp, out_channels: int) -> None:
        super().__init__()
        self.bottom_up = bottom_up
        self.out_channels = out_channels
        self.in_features = bottom_up.out_features
        # Layers are named after the level, log2 of the input's stride, as in detectron2.
        levels = tuple(int(math.log2(bottom_up.strides[name])) for name in self.in_features)
        if levels != (3, 4, 5):
            strides = {name: bottom_up.strides[name] for name in self.in_features}
            raise ValueError(f"the FPN takes bottom-up outputs at strides 8, 16 and 32, got {strides}")
        for level, name in zip(levels, self.in_features, strict=True):
            self.add_module(f"fpn_lateral{level}", nn.Conv2d(bottom_up.out_channels[name], out_channels, 1))
            self.add_module(f"fpn_output{level}", nn.Conv2d(out_channels, out_channels, 3, 1, 1))
        self.top_block = LastLevelP6P7(out_channels)

    # Added by name in __init__ (detectron2's key layout), declared here for type checkers.
    fpn_lateral3: nn.Conv2d
    fpn_lateral4: nn.Conv2d
    fpn_lateral5: nn.Conv2d
    fpn_output3: nn.Conv2d
    fpn_output4: nn.Conv2d
    fpn_output5: nn.Conv2d

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.bottom_up(images)
        c3, c4, c5 = (features[name] for name in self.in_features)
        merged = self.fpn_lateral5(c5)
        p5 = self.fpn_output5(merged)
        # The top-down path upsamples the merged map, not the smoothed output P.
        merged = self.fpn_lateral4(c4) + F.interpolate(merged, scale_factor=2.0, mode="nearest")
        p4 = self.fpn_output4(merged)
        merged = self.fpn_lateral3(c3) + F.interpolate(merged, scale_factor=2.0, mode="nearest")
        p3 = self.fpn_output3(merged)
        p6, p7 = self.top_block(p5)
        return dict(zip(FPN_LEVELS, (p3, p4, p5, p6, p7), strict=True))
