"""The bottom-up interface the FPN builds on, and the one builder from a backbone spec to its network."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from model.network.backbones.mobilenet import MobileNetV2
from model.network.backbones.resnet import ResNet
from model.network.backbones.vovnet import VoVNet
from model.network.configs import BackboneSpec, MobileNetV2Spec, ResNetSpec, VoVNetSpec
from model.network.layers import FrozenBatchNorm2d, NormFactory


class BottomUp(Protocol):
    """A bottom-up network (an `nn.Module`): images (N, 3, H, W) → one feature map per name in `out_features`,
    in that order, each (N, out_channels[name], H / strides[name], W / strides[name])."""

    @property
    def out_features(self) -> tuple[str, ...]: ...

    @property
    def out_channels(self) -> Mapping[str, int]: ...

    @property
    def strides(self) -> Mapping[str, int]: ...

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


def build_bottom_up(spec: BackboneSpec, norm: NormFactory = FrozenBatchNorm2d) -> BottomUp:
    """The network a spec describes, with `norm` after every convolution (frozen at inference)."""
    match spec:
        case VoVNetSpec():
            return VoVNet(spec, norm)
        case ResNetSpec():
            return ResNet(spec, norm)
        case MobileNetV2Spec():
            return MobileNetV2(spec, norm)
    raise TypeError(f"no backbone for {type(spec).__name__}")
