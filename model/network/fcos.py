"""FCOS's head: the anchor-free detector whose boxes are CenterMask's proposals (centermask2 `modeling/fcos`).

The layers only; decoding their outputs into boxes (thresholds, top-k, NMS) needs no weights and lives in
`model.inference.postprocess`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class Scale(nn.Module):
    """A learnable scalar multiplier, one per pyramid level."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class FCOSHeadOutputs(NamedTuple):
    """Raw head outputs, one tensor per level (N = batch, K = classes, H×W = that level's map).

    cls_logits: (N, K, H, W). box_regression: (N, 4, H, W) distances (left, top, right, bottom) in units of
    the level's stride, already through ReLU. centerness: (N, 1, H, W) logits.
    """

    cls_logits: list[torch.Tensor]
    box_regression: list[torch.Tensor]
    centerness: list[torch.Tensor]


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, 1, 1), nn.GroupNorm(32, channels), nn.ReLU()]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Shared classification and box towers; centerness branches off the box tower."""

    def __init__(self, channels: int, num_classes: int, num_convs: int, num_levels: int = 5) -> None:
        super().__init__()
        self.cls_tower = _tower(channels, num_convs)
        self.bbox_tower = _tower(channels, num_convs)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, 1, 1)
        self.ctrness = nn.Conv2d(channels, 1, 3, 1, 1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        self.reset_parameters()

    def reset_parameters(self, prior_probability: float = 0.01) -> None:
        """FCOS initialisation: N(0, 0.01) convs, zero biases, and a class bias giving the prior probability."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and module.bias is not None:  # every conv here has one
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        assert self.cls_logits.bias is not None
        prior_logit = -torch.log(torch.tensor((1 - prior_probability) / prior_probability))
        with torch.no_grad():
            self.cls_logits.bias.fill_(prior_logit)

    def forward(self, features: list[torch.Tensor]) -> FCOSHeadOutputs:
        logits, regressions, centerness = [], [], []
        for level, feature in enumerate(features):
            cls_features = self.cls_tower(feature)
            box_features = self.bbox_tower(feature)
            logits.append(self.cls_logits(cls_features))
            centerness.append(self.ctrness(box_features))
            regressions.append(F.relu(self.scales[level](self.bbox_pred(box_features))))
        return FCOSHeadOutputs(logits, regressions, centerness)


class FCOS(nn.Module):
    """The FCOS head under the official module names (`proposal_generator.fcos_head.*`), so that official
    state dicts load by key. (N, C, H_l, W_l) pyramid levels P3..P7 → `FCOSHeadOutputs`."""

    def __init__(self, channels: int, num_classes: int, num_convs: int, num_levels: int) -> None:
        super().__init__()
        self.fcos_head = FCOSHead(channels, num_classes, num_convs, num_levels)

    def forward(self, features: list[torch.Tensor]) -> FCOSHeadOutputs:
        return self.fcos_head(features)
