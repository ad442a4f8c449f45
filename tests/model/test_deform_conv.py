"""The DCN unit of the `*_dcn_*` VoVNets against an independent sampling reference and its plain-conv limits."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model.network.backbones.vovnet import conv_unit, deformable_unit
from model.network.layers import FrozenBatchNorm2d

IN, OUT, H, W = 3, 4, 5, 6


def unit(kind=deformable_unit, seed: int = 0) -> nn.Sequential:
    """A unit named like centermask2's, with random weights and random frozen statistics."""
    torch.manual_seed(seed)
    module = nn.Sequential(OrderedDict(kind("OSA3_1_0", IN, OUT, FrozenBatchNorm2d)))
    for name, tensor in module.state_dict().items():
        if name.endswith("running_var") or name.endswith("norm.weight"):
            tensor.copy_(0.5 + torch.rand_like(tensor))
        else:
            tensor.copy_(torch.randn_like(tensor) * 0.5)
    return module


def bilinear(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """image (C, H, W) sampled at float positions (...) → (C, ...); every corner outside the image reads zero."""
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    out = np.zeros((image.shape[0], *y.shape))
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        yy, xx = y0 + dy, x0 + dx
        weight = (1 - np.abs(y - yy)) * (1 - np.abs(x - xx))
        inside = (yy >= 0) & (yy < image.shape[1]) & (xx >= 0) & (xx < image.shape[2])
        out += (
            np.where(inside, weight, 0.0)
            * image[:, yy.clip(0, image.shape[1] - 1), xx.clip(0, image.shape[2] - 1)]
        )
    return out


def reference_unit(module: nn.Sequential, x: torch.Tensor) -> np.ndarray:
    """The spec's DCN unit in float64 numpy, one kernel tap at a time (CENTERMASK_SPEC.md §2.6)."""
    state = {k.split("/", 1)[1]: v.double().numpy() for k, v in module.state_dict().items()}
    inputs = x.double().numpy()
    predicted = F.conv2d(x.double(), torch.from_numpy(state["conv_offset.weight"]),
                         torch.from_numpy(state["conv_offset.bias"]), padding=1).numpy()  # fmt: skip
    offsets, masks = predicted[:, :18], 1 / (1 + np.exp(-predicted[:, 18:]))
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    out = np.zeros((x.shape[0], OUT, H, W))
    for n in range(x.shape[0]):
        for i in range(3):
            for j in range(3):
                tap = 3 * i + j
                y = rows - 1 + i + offsets[n, 2 * tap]
                x_ = cols - 1 + j + offsets[n, 2 * tap + 1]
                sampled = bilinear(inputs[n], y, x_) * masks[n, tap]  # (IN, H, W)
                out[n] += np.einsum("oc,chw->ohw", state["conv.weight"][:, :, i, j], sampled)
    scale = state["norm.weight"] / np.sqrt(state["norm.running_var"] + 1e-5)
    shift = state["norm.bias"] - state["norm.running_mean"] * scale
    return np.maximum(out * scale[:, None, None] + shift[:, None, None], 0.0)


def test_matches_an_independent_bilinear_sampling_reference() -> None:
    module = unit()
    x = torch.randn(2, IN, H, W)
    with torch.no_grad():
        offsets = module[0](x).offsets
        ours = module(x)
    # The random offsets move samples by several pixels, across the border too: the test reaches the zero padding.
    assert offsets.abs().max() > 2
    np.testing.assert_allclose(ours.numpy(), reference_unit(module, x), rtol=1e-5, atol=1e-5)


def test_zero_offsets_and_unit_masks_give_the_plain_convolution() -> None:
    deformable, plain = unit(), unit(conv_unit, seed=1)
    offset_conv = deformable[0]
    with torch.no_grad():
        offset_conv.weight.zero_()
        offset_conv.bias.copy_(
            torch.cat([torch.zeros(18), torch.full((9,), 40.0)])
        )  # sigmoid(40) == 1 in fp32
        plain.load_state_dict({k: v for k, v in deformable.state_dict().items() if "conv_offset" not in k})
        x = torch.randn(2, IN, H, W)
        torch.testing.assert_close(deformable(x), plain(x), rtol=1e-5, atol=1e-5)


def test_untrained_offsets_sample_the_grid_at_half_strength() -> None:
    """Zero-initialised, as centermask2: regular grid, every mask sigmoid(0) = 0.5."""
    deformable = nn.Sequential(OrderedDict(deformable_unit("u", IN, OUT, FrozenBatchNorm2d)))
    offset_conv, conv = deformable[0], deformable[1]
    x = torch.randn(1, IN, H, W)
    with torch.no_grad():
        torch.testing.assert_close(conv(offset_conv(x)), 0.5 * F.conv2d(x, conv.weight, padding=1))


def test_offsets_are_dy_then_dx_per_tap() -> None:
    """A whole-pixel offset of (dy, dx) = (1, 0) on every tap samples the image one row further down."""
    deformable = unit()
    offset_conv, conv = deformable[0], deformable[1]
    with torch.no_grad():
        offset_conv.weight.zero_()
        offset_conv.bias.copy_(torch.cat([torch.tensor([1.0, 0.0]).repeat(9), torch.full((9,), 40.0)]))
        x = torch.randn(1, IN, H, W)
        # Tap i of output row h reads input row h + i: zero padding one column each side, two rows below.
        padded = F.pad(x, (1, 1, 0, 2))
        torch.testing.assert_close(conv(offset_conv(x)), F.conv2d(padded, conv.weight), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_computes_what_the_cpu_computes() -> None:
    module = unit()
    x = torch.randn(2, IN, H, W)
    with torch.no_grad():
        expected = module(x)
        torch.testing.assert_close(module.cuda()(x.cuda()).cpu(), expected, rtol=1e-5, atol=1e-5)
