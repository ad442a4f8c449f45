"""What a failed forward pass means for the worker, and how memory is handed back after one.

- `ERROR`: this batch failed (a poison image, a bug on one input). Retried in smaller batches.
- `OUT_OF_MEMORY`: the batch did not fit (CUDA or CPU allocator, or a cuDNN/cuBLAS workspace
  allocation). Retried in smaller batches once the failed batch's memory is released.
- `FATAL`: the device is unusable (illegal address, device-side assert, launch failure): every later
  CUDA call in this process fails too, so the worker stops and the process waits to be restarted.
"""

import gc
from enum import StrEnum

import torch


class Fault(StrEnum):
    ERROR = "error"
    OUT_OF_MEMORY = "out_of_memory"
    FATAL = "fatal"


# Allocation failures, as the CUDA caching allocator, the CPU allocator, cuDNN and cuBLAS word them.
_OUT_OF_MEMORY = (
    "out of memory",
    "DefaultCPUAllocator: can't allocate memory",
    "DefaultCPUAllocator: not enough memory",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDA_ERROR_OUT_OF_MEMORY",
)
# After these the CUDA context is broken (sticky errors).
_FATAL = (
    "CUDA error",
    "CUDA driver error",
    "device-side assert",
    "illegal memory access",
    "illegal instruction",
    "unspecified launch failure",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "CUBLAS_STATUS_INTERNAL_ERROR",
    "CUDNN_STATUS_EXECUTION_FAILED",
    "CUDNN_STATUS_MAPPING_ERROR",
)


def classify(error: BaseException) -> Fault:
    if isinstance(error, torch.OutOfMemoryError):
        return Fault.OUT_OF_MEMORY
    if not isinstance(error, RuntimeError):
        return Fault.ERROR
    message = str(error)
    if any(pattern in message for pattern in _OUT_OF_MEMORY):
        return Fault.OUT_OF_MEMORY
    if isinstance(error, torch.AcceleratorError) or any(pattern in message for pattern in _FATAL):
        return Fault.FATAL
    return Fault.ERROR


def release_memory(device: torch.device) -> None:
    """Free what a failed pass left behind, then return the CUDA allocator's cached blocks.

    The caller must already have dropped the exception (its traceback's frames hold the batch's
    tensors); the collection breaks any reference cycles among those frames.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
