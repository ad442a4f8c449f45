"""Inference-time rewrites of a loaded model that keep its function: frozen batch norms folded into convolutions.

A FrozenBatchNorm2d after a convolution is an affine map per output channel, so it can be absorbed into the
convolution's weight and bias: ``y = (conv(x) - mean) / sqrt(var + eps) * gamma + beta`` becomes a single
convolution with ``W' = W * s`` and ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``. The results
differ from the unfolded model only by float rounding (about 1e-6 relative).

Two layouts are recognised, which between them cover every backbone here:

* a convolution (plain or modulated deformable) immediately followed by its norm inside an ``nn.Sequential``
  (VoVNet units, DCN units, MobileNetV2);
* a convolution module that owns its norm as a ``.norm`` child and applies it after the convolution
  (detectron2's ``Conv2d(norm=...)`` layout, used by the ResNet bottlenecks).

The folded norm is replaced by ``nn.Identity``, so module names stay as they were; the state dict of a folded
model no longer matches a checkpoint, which is why folding happens after loading and only for inference.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from model.network.deform_conv import ModulatedDeformConv2d
from model.network.layers import FrozenBatchNorm2d

# Layers computing a weighted sum with a (out, in, k, k) weight, plus an optional bias added after it.
CONVOLUTIONS = (nn.Conv2d, ModulatedDeformConv2d)


@torch.no_grad()
def fold_into_conv(conv: nn.Conv2d | ModulatedDeformConv2d, norm: FrozenBatchNorm2d) -> None:
    """Absorb `norm`, applied to `conv`'s output, into `conv`'s weight and bias (in place)."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    folded_bias = (bias - norm.running_mean) * scale + norm.bias
    if conv.bias is None:
        conv.bias = nn.Parameter(folded_bias, requires_grad=False)
    else:
        conv.bias.copy_(folded_bias)


def fold_frozen_batch_norms(model: nn.Module) -> int:
    """Fold every foldable FrozenBatchNorm2d of `model` into its convolution, in place. Returns the count."""
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            for (_, first), (name, second) in itertools.pairwise(children):
                if isinstance(first, CONVOLUTIONS) and isinstance(second, FrozenBatchNorm2d):
                    fold_into_conv(first, second)
                    setattr(module, name, nn.Identity())
                    folded += 1
        norm = getattr(module, "norm", None)
        if isinstance(module, nn.Conv2d) and isinstance(norm, FrozenBatchNorm2d):
            fold_into_conv(module, norm)
            module.norm = nn.Identity()
            folded += 1
    return folded
