"""MobileNetV2 bottom-up network as centermask2's lite Mv2 config builds it (`build_fcos_mobilenetv2_fpn_backbone`).

Module names are centermask2's (`features.{i}` for the stem conv and every inverted residual, whose layers sit
in `features.{i}.conv.{j}`), so official state dicts load by key. ReLU6 throughout, no classifier and no
final 1280-channel conv. CENTERMASK_SPEC.md §2.7.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.network.configs import MobileNetV2Spec
from model.network.layers import FrozenBatchNorm2d, NormFactory


class InvertedResidual(nn.Module):
    """1×1 expansion (absent when the expansion is 1) → depthwise 3×3 → linear 1×1 projection.

    (N, in_channels, H, W) → (N, out_channels, H / stride, W / stride); the input is added back when the
    stride is 1 and the width unchanged. Every conv is bias-free and followed by its norm.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int, expansion: int, norm: NormFactory
    ) -> None:
        super().__init__()
        hidden = round(in_channels * expansion)
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), norm(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            norm(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            norm(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Bottom-up MobileNetV2. Input (N, 3, H, W) → {"res3": stride 8, "res4": 16, "res5": 32} (for width 1.0:
    32, 96 and 320 channels), the outputs of `features[i]` for i in `spec.out_indices`."""

    def __init__(self, spec: MobileNetV2Spec, norm: NormFactory = FrozenBatchNorm2d) -> None:
        super().__init__()
        stem = nn.Sequential(
            nn.Conv2d(3, spec.stem_channels, 3, 2, 1, bias=False),
            norm(spec.stem_channels),
            nn.ReLU6(inplace=True),
        )
        self.features = nn.ModuleList([stem])
        self.output_names: dict[int, str] = {}  # index into `features` → output name
        self.strides: dict[str, int] = {}
        self.out_channels: dict[str, int] = {}
        stride, in_channels = 2, spec.stem_channels
        for stage in spec.stages:
            for block in range(stage.blocks):
                block_stride = stage.stride if block == 0 else 1
                self.features.append(
                    InvertedResidual(
                        in_channels, stage.channels, stride=block_stride, expansion=stage.expansion, norm=norm
                    )
                )
                stride, in_channels = stride * block_stride, stage.channels
                if len(self.features) - 1 in spec.out_indices:
                    name = f"res{int(math.log2(stride))}"
                    self.output_names[len(self.features) - 1] = name
                    self.strides[name], self.out_channels[name] = stride, in_channels
        self.out_features = tuple(self.output_names.values())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.output_names:
                outputs[self.output_names[index]] = x
        return outputs
