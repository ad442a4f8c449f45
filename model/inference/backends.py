"""Which runtime executes the network: one value, chosen when the predictor is built, checked up front.

* ``torch``: the network as PyTorch modules, on the CPU or CUDA, in every precision (model.inference.precision).
* ``onnxruntime``: the network exported to ONNX (model.onnx.export) and run by ONNX Runtime on the CPU, in fp32.
  Decoding, NMS, RoI pooling and mask pasting are the same Python code as with torch. Needs the `[onnx]`
  extra.
"""

from __future__ import annotations

import importlib.util
from enum import StrEnum

import torch

from model.inference.precision import Precision, PrecisionUnavailable

ONNX_EXTRA = "pip install 'centermask-serve[onnx]'"


class Backend(StrEnum):
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here: a missing package, or a device or precision it lacks."""


def backend_device(backend: Backend, device: str) -> str:
    """The device `auto` means for a backend: ONNX Runtime (CPUExecutionProvider) always runs on the CPU."""
    return "cpu" if backend is Backend.ONNXRUNTIME and device == "auto" else device


def check_backend(backend: Backend, precision: Precision, device: torch.device) -> None:
    """Raise, saying what would work instead, if `backend` cannot run `precision` on `device`."""
    if backend is Backend.TORCH:
        return
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendUnavailable(f"the onnxruntime backend needs {' and '.join(missing)}: {ONNX_EXTRA}")
    if device.type != "cpu":
        raise BackendUnavailable(
            f"the onnxruntime backend runs on the CPU only, not on {device}: use device cpu, or the torch "
            "backend on CUDA (or serve the exported graphs with Triton, docs/deploy.md)"
        )
    if precision is not Precision.FP32:
        raise PrecisionUnavailable(
            f"the onnxruntime backend runs in fp32 only (the exported graphs are float32), not {precision}: "
            "use precision fp32, or the torch backend"
        )
