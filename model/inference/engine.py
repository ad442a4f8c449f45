"""What runs the network's two tensor programs for the predictor: an `Engine` per backend and precision.

Every engine takes the same inputs and gives the same outputs, so the predictor's pipeline (preprocessing,
FCOS decoding, RoI pooling, pasting: all weight-free, `model.inference.postprocess`) is one piece of code:

* `features`: a padded, normalised float32 batch (N, 3, Hp, Wp) → the pyramid (at least the mask levels
  P3-P5) and the FCOS head outputs of P3-P7;
* `predict_masks`: RoI features (M, C, 14, 14) in `compute_dtype`, classes (M,) int64 and scores (M,) →
  (M, 28, 28) mask probabilities of each RoI's class and (M,) mask scores = score × predicted IoU.

`TorchEngine` (here) runs the PyTorch modules on the CPU or CUDA in any precision; the onnxruntime engine is
`model.onnx.engine.OnnxEngine`.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from model.inference.backends import Backend
from model.inference.fusion import fold_frozen_batch_norms
from model.inference.quantize import quantize_pyramid
from model.network.centermask import CenterMask
from model.network.configs import ModelConfig
from model.network.fcos import FCOSHeadOutputs


class Engine(Protocol):
    """The network's two tensor programs on one backend (see the module's docstring)."""

    backend: Backend
    config: ModelConfig
    compute_dtype: torch.dtype  # what `predict_masks` takes
    memory_format: torch.memory_format  # the layout `predict_masks` takes

    def features(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], FCOSHeadOutputs]: ...

    def predict_masks(
        self, roi_features: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class TorchEngine:
    """A loaded CenterMask rewritten for inference, in place and for good (it owns the model afterwards):
    batch norms folded into the convolutions, weights cast to `dtype` and, with `channels_last`, laid out NHWC
    (much faster oneDNN and cuDNN convolutions). With `calibration` (normalised, padded batches) the backbone
    and FPN become int8 (`model.inference.quantize`) and only the heads compute in `dtype`.

    The state dict no longer matches checkpoints afterwards, which is why this comes after loading.
    """

    backend = Backend.TORCH

    def __init__(
        self,
        model: CenterMask,
        *,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
        calibration: list[torch.Tensor] | None = None,
    ) -> None:
        self.model = model.eval()
        self.config = model.config
        fold_frozen_batch_norms(model)
        self.memory_format = torch.contiguous_format
        if channels_last:
            model.to(memory_format=torch.channels_last)
            self.memory_format = torch.channels_last
        floating: tuple[nn.Module, ...] = (model.proposal_generator, model.roi_heads)
        # What `features` casts its input to: the backbone's dtype, float32 in front of an int8 backbone.
        self.input_dtype = dtype
        if calibration is None:
            floating = (model.backbone, *floating)
        else:
            batches = [batch.contiguous(memory_format=self.memory_format) for batch in calibration]
            model.backbone = quantize_pyramid(model.backbone, batches, output_dtype=dtype)
            self.input_dtype = torch.float32
        for part in floating:  # not the pixel mean and std: normalisation stays in float32
            part.to(dtype=dtype)
        self.compute_dtype = dtype

    def features(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], FCOSHeadOutputs]:
        """Pyramid features {"p3".."p7"} and FCOS head outputs for a padded, normalised batch."""
        return self.model(batch.to(dtype=self.input_dtype, memory_format=self.memory_format))

    def predict_masks(
        self, roi_features: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.roi_heads.predict(roi_features, classes, scores)
