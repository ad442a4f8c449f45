"""CenterMask assembled: bottom-up network + FPN → FCOS head, and the SAG-Mask + MaskIoU heads on RoI features.

The network alone (nn.Modules, loaded from official state dicts by key). What runs it for inference, and
what happens before, between and after its two tensor programs, is `model.inference`.
"""

from __future__ import annotations

import torch
from torch import nn

from model.network.backbones import build_bottom_up
from model.network.configs import ModelConfig
from model.network.fcos import FCOS, FCOSHeadOutputs
from model.network.fpn import FPN, FPN_LEVELS
from model.network.layers import FrozenBatchNorm2d, NormFactory
from model.network.mask_head import CenterROIHeads


class CenterMask(nn.Module):
    """CenterMask network. Module names follow centermask2's, so official state dicts load by key.

    Two tensor programs: `forward` (the dense part: backbone, FPN, FCOS head) on a padded, normalised batch,
    and `roi_heads.predict` (mask and MaskIoU heads) on RoI features pooled from the pyramid between them.
    """

    # The FPN on its bottom-up network; at inference in int8, an int8 copy of it (model.inference.quantize).
    backbone: nn.Module
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(self, config: ModelConfig, norm: NormFactory = FrozenBatchNorm2d) -> None:
        super().__init__()
        self.config = config
        channels = config.fpn_channels
        self.backbone = FPN(build_bottom_up(config.backbone, norm), channels)
        self.proposal_generator = FCOS(
            channels=channels,
            num_classes=config.num_classes,
            num_convs=config.fcos_num_convs,
            num_levels=len(config.fpn_strides),
        )
        self.roi_heads = CenterROIHeads(
            in_channels=channels,
            num_classes=config.num_classes,
            mask_conv_dim=config.mask_conv_dim,
            mask_num_convs=config.mask_num_convs,
            maskiou_conv_dim=config.maskiou_conv_dim,
            maskiou_num_convs=config.maskiou_num_convs,
            resolution=config.mask_resolution,
        )
        # BGR mean/std as (3, 1, 1); not part of the state dict, as in official checkpoints.
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(3, 1, 1), persistent=False)

    def forward(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], FCOSHeadOutputs]:
        """A padded, normalised batch (N, 3, Hp, Wp) → the pyramid {"p3".."p7"}, each (N, C, Hp/s, Wp/s), and
        the FCOS head's outputs on it."""
        pyramid = self.backbone(batch)
        return pyramid, self.proposal_generator([pyramid[level] for level in FPN_LEVELS])
