"""VoVNetV2 backbone: One-Shot Aggregation modules with identity residual and effective Squeeze-Excitation.

Module names reproduce centermask2's, so official state dicts load by key: units are named
`"{name}/conv"`, `"{name}/norm"`, ... (a `/` inside a module name is legal in PyTorch). The DCN bodies
replace the 3×3 layers of their deformable stages by modulated deformable units (`model/deform_conv.py`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from model.network.configs import VoVNetSpec
from model.network.deform_conv import ModulatedDeformConv2d, OffsetMaskConv
from model.network.layers import FrozenBatchNorm2d, NormFactory


def conv_unit(
    name: str, in_channels: int, out_channels: int, norm: NormFactory, kernel_size: int = 3, stride: int = 1
) -> list[tuple[str, nn.Module]]:
    """Conv (no bias) → norm → ReLU, named `{name}/conv|norm|relu`."""
    return [
        (
            f"{name}/conv",
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        ),
        (f"{name}/norm", norm(out_channels)),
        (f"{name}/relu", nn.ReLU(inplace=True)),
    ]


def depthwise_unit(
    name: str, channels: int, norm: NormFactory, stride: int = 1
) -> list[tuple[str, nn.Module]]:
    """Depthwise 3×3 → pointwise 1×1 → norm → ReLU; nothing between the two convs."""
    return [
        (f"{name}/dw_conv3x3", nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)),
        (f"{name}/pw_conv1x1", nn.Conv2d(channels, channels, 1, 1, 0, bias=False)),
        (f"{name}/pw_norm", norm(channels)),
        (f"{name}/pw_relu", nn.ReLU(inplace=True)),
    ]


def deformable_unit(
    name: str, in_channels: int, out_channels: int, norm: NormFactory
) -> list[tuple[str, nn.Module]]:
    """Offsets and masks from the input → modulated deformable 3×3 conv (no bias) → norm → ReLU (DCN stages)."""
    return [
        (f"{name}/conv_offset", OffsetMaskConv(in_channels)),
        (f"{name}/conv", ModulatedDeformConv2d(in_channels, out_channels)),
        (f"{name}/norm", norm(out_channels)),
        (f"{name}/relu", nn.ReLU(inplace=True)),
    ]


class EffectiveSE(nn.Module):
    """eSE: one C→C 1×1 conv on the global average, hard sigmoid, channel-wise rescale."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = F.relu6(self.fc(F.adaptive_avg_pool2d(x, 1)) + 3.0) / 6.0
        return x * attention


class OSAModule(nn.Module):
    """One-Shot Aggregation: a chain of 3×3 units whose outputs, with the input first, are concatenated once.

    Input (N, in_channels, H, W) → output (N, concat_channels, H, W).
    """

    def __init__(
        self,
        name: str,
        in_channels: int,
        stage_channels: int,
        concat_channels: int,
        num_layers: int,
        identity: bool,
        depthwise: bool,
        deformable: bool,
        norm: NormFactory,
    ) -> None:
        super().__init__()
        self.identity = identity
        self.conv_reduction: nn.Module | None = None
        if depthwise and in_channels != stage_channels:
            self.conv_reduction = nn.Sequential(
                OrderedDict(
                    conv_unit(f"{name}_reduction_0", in_channels, stage_channels, norm, kernel_size=1)
                )
            )
        self.layers = nn.ModuleList()
        layer_in = in_channels
        for i in range(num_layers):
            if depthwise:
                unit = depthwise_unit(f"{name}_{i}", stage_channels, norm)
            elif deformable:
                unit = deformable_unit(f"{name}_{i}", layer_in, stage_channels, norm)
            else:
                unit = conv_unit(f"{name}_{i}", layer_in, stage_channels, norm)
            self.layers.append(nn.Sequential(OrderedDict(unit)))
            layer_in = stage_channels
        aggregated = in_channels + num_layers * stage_channels
        self.concat = nn.Sequential(
            OrderedDict(conv_unit(f"{name}_concat", aggregated, concat_channels, norm, kernel_size=1))
        )
        self.ese = EffectiveSE(concat_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        y = x if self.conv_reduction is None else self.conv_reduction(x)
        for layer in self.layers:
            y = layer(y)
            features.append(y)
        out = self.ese(self.concat(torch.cat(features, dim=1)))
        # VoVNetV2's identity mapping: no activation after the sum.
        return out + x if self.identity else out


class VoVNet(nn.Module):
    """VoVNetV2 bottom-up network. Input (N, 3, H, W) → {"stage3": stride 8, "stage4": 16, "stage5": 32}.

    Stage 2 is computed but not returned.
    """

    out_features = ("stage3", "stage4", "stage5")

    def __init__(self, spec: VoVNetSpec, norm: NormFactory = FrozenBatchNorm2d) -> None:
        super().__init__()
        s0, s1, s2 = spec.stem_channels
        stem = conv_unit("stem_1", 3, s0, norm, stride=2)
        if spec.depthwise:
            stem += depthwise_unit("stem_2", s1, norm) + depthwise_unit("stem_3", s2, norm, stride=2)
        else:
            stem += conv_unit("stem_2", s0, s1, norm) + conv_unit("stem_3", s1, s2, norm, stride=2)
        self.stem = nn.Sequential(OrderedDict(stem))

        # Stem stride 4, stage 2 keeps it, every later stage halves the resolution with its pooling.
        self.strides = {"stage3": 8, "stage4": 16, "stage5": 32}
        self.out_channels: dict[str, int] = {}
        in_channels = s2
        for index, stage in enumerate(range(2, 6)):
            modules: list[tuple[str, nn.Module]] = []
            if stage != 2:
                modules.append(("Pooling", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)))
            for block in range(1, spec.blocks_per_stage[index] + 1):
                osa = OSAModule(
                    name=f"OSA{stage}_{block}",
                    in_channels=in_channels,
                    stage_channels=spec.stage_conv_channels[index],
                    concat_channels=spec.stage_out_channels[index],
                    num_layers=spec.layers_per_block,
                    identity=block > 1,
                    depthwise=spec.depthwise,
                    deformable=stage in spec.deformable_stages,
                    norm=norm,
                )
                modules.append((f"OSA{stage}_{block}", osa))
                in_channels = spec.stage_out_channels[index]
            self.add_module(f"stage{stage}", nn.Sequential(OrderedDict(modules)))
            if f"stage{stage}" in self.out_features:
                self.out_channels[f"stage{stage}"] = in_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        outputs: dict[str, torch.Tensor] = {}
        for stage in range(2, 6):
            x = getattr(self, f"stage{stage}")(x)
            if f"stage{stage}" in self.out_features:
                outputs[f"stage{stage}"] = x
        return outputs
