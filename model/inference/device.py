"""Which device a predictor runs on, and the CUDA settings inference needs there."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from model.inference.precision import Precision


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA without it is an error, not a silent fallback."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available")
    return torch.device(device)


@contextlib.contextmanager
def cuda_numerics(precision: Precision) -> Iterator[None]:
    """CUDA settings for a predictor's work, restored afterwards: cuDNN autotuning per shape (left on), and TF32
    only in reduced precisions.

    TF32 (on by default for cuDNN convolutions on Ampere and later) rounds inputs to 10 mantissa bits, which
    would take fp32 results outside the official outputs' tolerances (CENTERMASK_SPEC.md §9.17). The flags are
    process-wide, so they are set around each call rather than once: an fp32 predictor beside a fp16 one (a
    benchmark, two models in one server) keeps IEEE float32. One predictor runs at a time in a process (the
    inference thread), so the flags never serve two at once.
    """
    torch.backends.cudnn.benchmark = True
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    allow = precision is not Precision.FP32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
