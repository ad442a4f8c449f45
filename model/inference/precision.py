"""Numeric precision of inference: one value, chosen when the predictor is built, checked against the hardware.

* ``fp32``: exact to the official outputs (CENTERMASK_SPEC.md); on CUDA with TF32 off, so convolutions and
  matmuls stay IEEE float32.
* ``bf16``: weights and activations in bfloat16 on CPUs with AVX-512 BF16 or AMX, and on CUDA GPUs that support
  it. Box decoding, NMS, RoI pooling and mask pasting stay in float32.
* ``fp16``: the same with float16, on CUDA only (CPUs have no fast float16 convolutions).
* ``int8``: CPUs with AVX-512 VNNI (or AMX): the backbone and FPN as int8 convolutions calibrated on sample
  images (model.inference.quantize), the heads in bf16 where the CPU has it, else fp32.
"""

from __future__ import annotations

from enum import StrEnum

import torch


class Precision(StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"

    @property
    def dtype(self) -> torch.dtype:
        """What the network's floating-point layers compute in (for int8: the heads)."""
        if self is Precision.INT8:
            return torch.bfloat16 if cpu_has_bf16() else torch.float32
        return _DTYPES[self]


_DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


class PrecisionUnavailable(RuntimeError):
    """The requested precision cannot run (fast, or at all) on the chosen device."""


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); without it bf16 is emulated, slowly."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def check_supported(precision: Precision, device: torch.device) -> None:
    """Raise PrecisionUnavailable, saying what would work instead, if `device` cannot run `precision`."""
    if precision is Precision.FP32:
        return
    if device.type == "cuda":
        if precision is Precision.INT8:
            raise PrecisionUnavailable("int8 runs on the CPU only: on CUDA use fp16 or bf16")
        if precision is Precision.BF16 and not torch.cuda.is_bf16_supported():
            raise PrecisionUnavailable(
                f"{torch.cuda.get_device_name(device)} has no bfloat16 support: use precision fp16 or fp32"
            )
        return
    if precision is Precision.FP16:
        raise PrecisionUnavailable("fp16 runs on CUDA devices only: on the CPU use bf16 or fp32")
    if precision is Precision.INT8 and not (
        torch.cpu._is_vnni_supported() or torch.cpu._is_amx_tile_supported()
    ):
        raise PrecisionUnavailable(
            "this CPU has neither AVX-512 VNNI nor AMX, so int8 would not be faster than fp32: use bf16 or fp32"
        )
    if precision is Precision.BF16 and not cpu_has_bf16():
        raise PrecisionUnavailable(
            "this CPU has neither AVX-512 BF16 nor AMX, so bf16 would be emulated and slower than fp32: "
            "use precision fp32"
        )
