"""detectron2's ResNet / ResNeXt bottom-up network (`build_resnet_backbone`), as centermask2's R/X configs use it.

Module names are detectron2's (`stem.conv1`, `res{2..5}.{block}.{shortcut,conv1,conv2,conv3}`, each
convolution carrying its `.norm`), so official state dicts load by key. CENTERMASK_SPEC.md §2.7.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.network.configs import ResNetSpec
from model.network.layers import ConvNorm, FrozenBatchNorm2d, NormFactory


class BasicStem(nn.Module):
    """7×7 stride-2 conv + norm + ReLU, then 3×3 stride-2 max pooling. (N, 3, H, W) → (N, C, H/4, W/4)."""

    def __init__(self, out_channels: int, norm: NormFactory) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_channels, 7, stride=2, padding=3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu_(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1×1 → grouped 3×3 → 1×1, each with its norm, ReLU after the first two and after the residual sum.

    (N, in_channels, H, W) → (N, out_channels, H / stride, W / stride). The stride sits in the first 1×1
    or in the 3×3; the shortcut is a strided 1×1 conv + norm where the width changes, else the identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        *,
        stride: int,
        num_groups: int,
        stride_in_1x1: bool,
        norm: NormFactory,
    ) -> None:
        super().__init__()
        self.shortcut = (
            ConvNorm(in_channels, out_channels, 1, stride=stride, norm=norm)
            if in_channels != out_channels
            else None
        )
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, stride=stride_1x1, norm=norm)
        self.conv2 = ConvNorm(
            bottleneck_channels,
            bottleneck_channels,
            3,
            stride=stride_3x3,
            padding=1,
            groups=num_groups,
            norm=norm,
        )
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out + shortcut)


class ResNet(nn.Module):
    """Bottom-up ResNet. Input (N, 3, H, W) → {"res3": stride 8, "res4": 16, "res5": 32}.

    res2 (stride 4) is computed but not returned. detectron2's FREEZE_AT (2 in these configs) only stops
    gradients to the stem and res2 in training; this project trains every layer, as for the other backbones.
    """

    out_features = ("res3", "res4", "res5")

    def __init__(self, spec: ResNetSpec, norm: NormFactory = FrozenBatchNorm2d) -> None:
        super().__init__()
        self.stem = BasicStem(spec.stem_channels, norm)
        self.strides = {"res3": 8, "res4": 16, "res5": 32}
        self.out_channels: dict[str, int] = {}
        in_channels, out_channels = spec.stem_channels, spec.res2_out_channels
        bottleneck_channels = spec.num_groups * spec.width_per_group
        for stage, num_blocks in zip(range(2, 6), spec.blocks_per_stage, strict=True):
            blocks = [
                BottleneckBlock(
                    in_channels if block == 0 else out_channels,
                    out_channels,
                    bottleneck_channels,
                    # res2 follows the stem's pooling at stride 4; each later stage halves in its first block.
                    stride=2 if block == 0 and stage > 2 else 1,
                    num_groups=spec.num_groups,
                    stride_in_1x1=spec.stride_in_1x1,
                    norm=norm,
                )
                for block in range(num_blocks)
            ]
            self.add_module(f"res{stage}", nn.Sequential(*blocks))
            if f"res{stage}" in self.out_features:
                self.out_channels[f"res{stage}"] = out_channels
            in_channels, out_channels, bottleneck_channels = (
                out_channels,
                2 * out_channels,
                2 * bottleneck_channels,
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        outputs: dict[str, torch.Tensor] = {}
        for stage in range(2, 6):
            x = getattr(self, f"res{stage}")(x)
            if f"res{stage}" in self.out_features:
                outputs[f"res{stage}"] = x
        return outputs
