"""Layers every backbone shares: detectron2's frozen batch norm and its convolution-with-norm.

A norm always directly follows its convolution, either as the next entry of an `nn.Sequential` or as the
`.norm` child of a `ConvNorm`, so a frozen norm can be folded into the convolution before it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Builds the norm layer of a given channel count: FrozenBatchNorm2d at inference, nn.BatchNorm2d in training.
NormFactory = Callable[[int], nn.Module]


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters, all stored as buffers (detectron2 layout).

    There is deliberately no `num_batches_tracked`: official checkpoints do not carry it.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class ConvNorm(nn.Conv2d):
    """detectron2's `Conv2d(..., norm=...)`: a bias-free convolution followed by its `.norm` child.

    State-dict keys read `conv1.weight`, `conv1.norm.running_var`, ... as in detectron2's ResNet.
    Input (N, in_channels, H, W) → (N, out_channels, H / stride, W / stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        norm: NormFactory,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.norm = norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))
