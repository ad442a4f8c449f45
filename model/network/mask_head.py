"""CenterMask's RoI branch: the SAG-Mask head and the MaskIoU head on RoI features.

Which pyramid level each box is pooled from (CenterMask's adaptive RoI assignment) and the pooling itself
need no weights: `model.inference.postprocess`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialAttention(nn.Module):
    """Channel-wise mean and max maps → 3×3 conv (no bias) → sigmoid → rescale the features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat((x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True)[0]), dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class SAGMaskHead(nn.Module):
    """Spatial-attention-guided mask head. (M, C, 14, 14) RoI features → (M, K, 28, 28) mask logits."""

    def __init__(self, in_channels: int, conv_dim: int, num_convs: int, num_classes: int) -> None:
        super().__init__()
        self.num_convs = num_convs
        for k in range(1, num_convs + 1):
            self.add_module(f"mask_fcn{k}", nn.Conv2d(in_channels if k == 1 else conv_dim, conv_dim, 3, 1, 1))
        self.spatialAtt = SpatialAttention()
        self.deconv = nn.ConvTranspose2d(conv_dim, conv_dim, 2, 2, 0)
        self.predictor = nn.Conv2d(conv_dim, num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for k in range(1, self.num_convs + 1):
            conv = getattr(self, f"mask_fcn{k}")
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.kaiming_normal_(self.deconv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.predictor.weight, std=0.001)
        for layer in (self.deconv, self.predictor):
            assert layer.bias is not None  # built with biases
            nn.init.zeros_(layer.bias)

    def upsampled_features(self, x: torch.Tensor) -> torch.Tensor:
        """(M, C, 14, 14) RoI features → (M, D, 28, 28), the predictor's input."""
        for k in range(1, self.num_convs + 1):
            x = F.relu(getattr(self, f"mask_fcn{k}")(x))
        x = self.spatialAtt(x)
        return F.relu(self.deconv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.upsampled_features(x))

    def class_logits(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """(M, 28, 28) logits of one class per RoI: `forward(x)[range(M), classes]` without the other classes."""
        features = self.upsampled_features(x)
        assert self.predictor.bias is not None  # built with one
        weight = self.predictor.weight[classes, :, 0, 0]
        bias = self.predictor.bias[classes]
        return torch.einsum("mdhw,md->mhw", features, weight) + bias[:, None, None]


class MaskIoUHead(nn.Module):
    """Predicts each mask's IoU with its object. Input: RoI features (M, C, 14, 14) and mask probabilities
    (M, 1, 28, 28) → (M, K) IoU estimates per class."""

    def __init__(
        self, in_channels: int, conv_dim: int, num_convs: int, num_classes: int, resolution: int = 14
    ):
        super().__init__()
        self.num_convs = num_convs
        for k in range(1, num_convs + 1):
            stride = 2 if k == num_convs else 1
            conv = nn.Conv2d(in_channels + 1 if k == 1 else conv_dim, conv_dim, 3, stride, 1)
            self.add_module(f"maskiou_fcn{k}", conv)
        pooled = resolution // 2
        self.maskiou_fc1 = nn.Linear(conv_dim * pooled * pooled, 1024)
        self.maskiou_fc2 = nn.Linear(1024, 1024)
        self.maskiou = nn.Linear(1024, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for k in range(1, self.num_convs + 1):
            conv = getattr(self, f"maskiou_fcn{k}")
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        for fc in (self.maskiou_fc1, self.maskiou_fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.maskiou.weight, std=0.01)
        nn.init.zeros_(self.maskiou.bias)

    def forward(self, features: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
        x = torch.cat((features, F.max_pool2d(mask_probs, kernel_size=2, stride=2)), dim=1)
        for k in range(1, self.num_convs + 1):
            x = F.relu(getattr(self, f"maskiou_fcn{k}")(x))
        x = F.relu(self.maskiou_fc1(torch.flatten(x, 1)))
        x = F.relu(self.maskiou_fc2(x))
        return self.maskiou(x)


class CenterROIHeads(nn.Module):
    """Mask and MaskIoU branches on the FCOS boxes."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mask_conv_dim: int,
        mask_num_convs: int,
        maskiou_conv_dim: int,
        maskiou_num_convs: int,
        resolution: int = 14,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.mask_head = SAGMaskHead(in_channels, mask_conv_dim, mask_num_convs, num_classes)
        self.maskiou_head = MaskIoUHead(
            in_channels, maskiou_conv_dim, maskiou_num_convs, num_classes, resolution
        )

    def predict(
        self, roi_features: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks and mask scores of detections with known classes.

        Returns mask probabilities (M, 28, 28) of each detection's own class and
        mask_scores (M,) = score × predicted IoU of that class.
        """
        rows = torch.arange(classes.numel(), device=classes.device)
        mask_probs = self.mask_head.class_logits(roi_features, classes)[:, None].sigmoid()
        iou = self.maskiou_head(roi_features, mask_probs)
        return mask_probs[:, 0], scores * iou[rows, classes]
