"""Which device a predictor runs on, and the CUDA settings inference needs there."""

from __future__ import annotations

import torch

from model.inference.precision import Precision


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA without it is an error, not a silent fallback."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available")
    return torch.device(device)


def configure_cuda(precision: Precision) -> None:
    """Process-wide CUDA settings for inference: cuDNN autotuning per shape, and in fp32 no TF32.

    TF32 (on by default for cuDNN convolutions on Ampere and later) rounds inputs to 10 mantissa bits, which
    would take fp32 results outside the official outputs' tolerances (CENTERMASK_SPEC.md §9.17).
    """
    torch.backends.cudnn.benchmark = True
    exact = precision is Precision.FP32
    torch.backends.cudnn.allow_tf32 = not exact
    torch.backends.cuda.matmul.allow_tf32 = not exact
