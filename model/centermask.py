"""CenterMask assembled: bottom-up network + FPN → FCOS → SAG-Mask + MaskIoU. The network alone; what happens
to images before and after it is in `model.processing`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.backbone import build_bottom_up
from model.backends import Backend
from model.configs import ModelConfig
from model.fcos import FCOS, FCOSHeadOutputs, Proposals
from model.fpn import FPN, FPN_LEVELS
from model.fusion import fold_frozen_batch_norms
from model.layers import FrozenBatchNorm2d, NormFactory
from model.mask_head import MASK_LEVELS, CenterROIHeads, pool_rois
from model.processing import padded_shape
from model.quantize import quantize_pyramid

# RoIs per group of the mask and MaskIoU heads' batches (see CenterMask.segment).
ROI_GROUP = 8


class NetworkSteps:
    """What every backend of the network shares around its two tensor programs: normalising and padding,
    FCOS decoding and NMS, RoI pooling, splitting per image. A backend (`CenterMask` below, the ONNX Runtime
    one in `model.onnx_backend`) provides `features`, `predict_masks` and these attributes.
    """

    config: ModelConfig
    proposal_generator: FCOS  # for its decoding: `detect` and `locations`
    pixel_mean: torch.Tensor  # (3, 1, 1) BGR
    pixel_std: torch.Tensor
    compute_dtype: torch.dtype  # what `predict_masks` takes
    memory_format: torch.memory_format
    backend: Backend

    def features(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], FCOSHeadOutputs]:
        """Pyramid features (MASK_LEVELS at least) and FCOS head outputs for a padded, normalised batch."""
        raise NotImplementedError

    def predict_masks(
        self, roi_features: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`CenterROIHeads.predict`: (M, 28, 28) mask probabilities of each RoI's class, (M,) mask scores."""
        raise NotImplementedError

    def normalize_and_pad(
        self, images: list[torch.Tensor], shape: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Per image (3, h, w) float BGR 0-255 → one zero-padded (N, 3, Hp, Wp) batch.

        (Hp, Wp) is `shape`, or the largest image rounded up to multiples of 32 (the official batching).
        Normalisation comes before padding, so the padding equals the mean colour.
        """
        normalized = [(image - self.pixel_mean) / self.pixel_std for image in images]
        height = max(image.shape[1] for image in normalized)
        width = max(image.shape[2] for image in normalized)
        padded_h, padded_w = shape or padded_shape(height, width, self.config.size_divisibility)
        divisibility = self.config.size_divisibility
        if padded_h < height or padded_w < width or padded_h % divisibility or padded_w % divisibility:
            raise ValueError(f"cannot pad images of up to {height}x{width} to {padded_h}x{padded_w}")
        batch = normalized[0].new_zeros((len(normalized), 3, padded_h, padded_w))
        for slot, image in zip(batch, normalized, strict=True):
            slot[:, : image.shape[1], : image.shape[2]].copy_(image)
        return batch

    def detect(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[Proposals]]:
        """A padded, normalised batch (N, 3, Hp, Wp) → the pyramid and each image's FCOS detections.

        Decoding, NMS and the detections are float32 whatever precision the network runs in.
        """
        pyramid, head = self.features(batch)
        return pyramid, self.decode(head)

    def decode(self, head: FCOSHeadOutputs) -> list[Proposals]:
        """FCOS head outputs of a batch (N images) → each image's detections: decoding, NMS, top-k, in float32."""
        head = FCOSHeadOutputs(*([t.float() for t in outputs] for outputs in head))
        # Each level's class map has that level's size: the pyramid itself may hold only MASK_LEVELS.
        locations = self.proposal_generator.locations(head.cls_logits)
        return self.proposal_generator.detect(head, locations)

    def segment(
        self, pyramid: dict[str, torch.Tensor], proposals: list[Proposals], image_sizes: list[tuple[int, int]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Mask and MaskIoU heads on given boxes: per image, float32 mask probabilities (M, 28, 28) of each
        detection's class and mask scores (M,). image_sizes are the resized, unpadded (h, w)."""
        resolution = 2 * self.config.mask_resolution
        counts = [p.scores.numel() for p in proposals]
        if sum(counts) == 0:
            empty = torch.zeros((0, resolution, resolution), device=pyramid["p3"].device)
            return [(empty, p.scores) for p in proposals]
        # RoIAlign in float32 (torchvision has no bfloat16 kernel on the CPU, and it keeps box sampling exact).
        float_pyramid = {level: pyramid[level].float() for level in MASK_LEVELS}
        roi_features = pool_rois(
            [float_pyramid[level] for level in MASK_LEVELS],
            [p.boxes for p in proposals],
            image_sizes,
            self.config.mask_resolution,
        )
        classes = torch.cat([p.classes for p in proposals])
        scores = torch.cat([p.scores for p in proposals])
        # The heads run on a multiple of ROI_GROUP RoIs (zero rows added): kernels pick their blocking by
        # the batch size, so a fixed multiple makes each RoI's result independent of how many others
        # there are. That is what lets a request's selection drop detections before the heads.
        count = classes.numel()
        padding = -count % ROI_GROUP
        roi_features = F.pad(roi_features, (0, 0, 0, 0, 0, 0, 0, padding))
        roi_features = roi_features.to(dtype=self.compute_dtype, memory_format=self.memory_format)
        mask_probs, mask_scores = self.predict_masks(
            roi_features, F.pad(classes, (0, padding)), F.pad(scores, (0, padding))
        )
        return list(
            zip(
                mask_probs[:count].float().split(counts),
                mask_scores[:count].float().split(counts),
                strict=True,
            )
        )


class CenterMask(NetworkSteps, nn.Module):
    """CenterMask network. Module names follow centermask2's, so official state dicts load by key."""

    backend = Backend.TORCH

    def __init__(self, config: ModelConfig, norm: NormFactory = FrozenBatchNorm2d) -> None:
        super().__init__()
        self.config = config
        channels = config.fpn_channels
        self.backbone = FPN(build_bottom_up(config.backbone, norm), channels)
        self.proposal_generator = FCOS(
            channels=channels,
            num_classes=config.num_classes,
            num_convs=config.fcos_num_convs,
            strides=config.fpn_strides,
            inference_threshold=config.inference_threshold,
            pre_nms_topk=config.pre_nms_topk,
            nms_threshold=config.nms_threshold,
            post_nms_topk=config.post_nms_topk,
        )
        self.roi_heads = CenterROIHeads(
            in_channels=channels,
            num_classes=config.num_classes,
            mask_conv_dim=config.mask_conv_dim,
            mask_num_convs=config.mask_num_convs,
            maskiou_conv_dim=config.maskiou_conv_dim,
            maskiou_num_convs=config.maskiou_num_convs,
            resolution=config.mask_resolution,
        )
        # BGR mean/std as (3, 1, 1); not part of the state dict, as in official checkpoints.
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(3, 1, 1), persistent=False)
        # What the network computes in; `optimize_for_inference` changes them.
        self.input_dtype = self.compute_dtype = torch.float32
        self.memory_format = torch.contiguous_format

    def optimize_for_inference(
        self,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = True,
        calibration: list[torch.Tensor] | None = None,
    ) -> None:
        """Rewrite the loaded network for inference, in place: batch norms folded into the convolutions,
        weights cast to `dtype` and, with `channels_last`, laid out NHWC (much faster oneDNN convolutions).
        With `calibration` (normalised, padded batches), the backbone and FPN become int8 (model.quantize)
        and only the heads compute in `dtype`.

        The state dict no longer matches checkpoints afterwards, so this comes after loading and is final.
        """
        fold_frozen_batch_norms(self)
        if channels_last:
            self.to(memory_format=torch.channels_last)
            self.memory_format = torch.channels_last
        floating: tuple[nn.Module, ...] = (self.proposal_generator, self.roi_heads)
        if calibration is None:
            floating = (self.backbone, *floating)
            self.input_dtype = dtype
        else:
            batches = [batch.contiguous(memory_format=self.memory_format) for batch in calibration]
            self.backbone = quantize_pyramid(self.backbone, batches, output_dtype=dtype)
        for part in floating:  # not the pixel mean and std: normalisation stays in float32
            part.to(dtype=dtype)
        self.compute_dtype = dtype

    def features(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], FCOSHeadOutputs]:
        """Pyramid features {"p3".."p7"} and FCOS head outputs for a padded, normalised batch."""
        pyramid = self.backbone(batch.to(dtype=self.input_dtype, memory_format=self.memory_format))
        return pyramid, self.proposal_generator([pyramid[level] for level in FPN_LEVELS])

    def predict_masks(
        self, roi_features: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.roi_heads.predict(roi_features, classes, scores)

    def forward(
        self, batch: torch.Tensor, image_sizes: list[tuple[int, int]]
    ) -> list[tuple[Proposals, torch.Tensor, torch.Tensor]]:
        """The whole network on a padded batch: per image, (proposals, mask probabilities, mask scores)."""
        pyramid, proposals = self.detect(batch)
        masks = self.segment(pyramid, proposals, image_sizes)
        return [(p, probs, scores) for p, (probs, scores) in zip(proposals, masks, strict=True)]
