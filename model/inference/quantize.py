"""int8 inference on the CPU: the backbone and FPN, which do most of the work, as int8 convolutions.

Post-training static quantization (PyTorch FX, x86 backend: oneDNN/FBGEMM kernels using AVX-512 VNNI):
weights per output channel, activations per tensor with ranges observed on calibration images. The
detector and mask heads stay in bf16 (fp32 on CPUs without bf16): they are a small part of the work, and
GroupNorm and the mask logits are sensitive to rounding. Results are close to, not equal to, fp32: the bundled
model's AP with int8 is in its model card.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from model.inference.images import load_rgb
from model.weights import calibration_paths

logger = logging.getLogger(__name__)

# Scenes calibrated on when the caller gives none (shipped in model/weights/calibration/).
CALIBRATION_IMAGES = 8


class QuantizedPyramid(nn.Module):
    """A quantized backbone + FPN: float32 images in, the pyramid {"p3".."p7"} out in the heads' dtype."""

    def __init__(self, quantized: nn.Module, output_dtype: torch.dtype) -> None:
        super().__init__()
        self.quantized = quantized
        self.output_dtype = output_dtype

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {level: features.to(self.output_dtype) for level, features in self.quantized(images).items()}


def quantize_pyramid(
    pyramid: nn.Module, calibration_batches: Iterable[torch.Tensor], output_dtype: torch.dtype
) -> QuantizedPyramid:
    """An int8 copy of `pyramid`, calibrated on normalised (N, 3, H, W) float32 batches."""
    # The FX quantization API warns that it is being superseded; it is what runs on eager CPU kernels today.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "x86"
        batches = list(calibration_batches)
        logger.info("int8: calibrating the backbone and FPN on %d images (tens of seconds)", len(batches))
        observed = prepare_fx(pyramid, get_default_qconfig_mapping("x86"), example_inputs=(batches[0],))
        with torch.inference_mode():
            for batch in batches:
                observed(batch)
        return QuantizedPyramid(convert_fx(observed), output_dtype)


def default_calibration_images() -> list[np.ndarray]:
    """Images for int8 calibration when the caller gives none: the shipped shapes scenes (edges, flat and
    textured colours; `training.examples` renders them). Calibrating on images like the ones to be served
    gives better int8 accuracy."""
    return [load_rgb(path) for path in calibration_paths(CALIBRATION_IMAGES)]
