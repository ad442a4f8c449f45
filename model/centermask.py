"""CenterMask assembled: VoVNetV2-FPN → FCOS → SAG-Mask + MaskIoU, with the official pre/postprocessing."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from model.configs import ModelConfig
from model.detections import Detections
from model.fcos import FCOS, FCOSHeadOutputs, Proposals
from model.fpn import FPN, FPN_LEVELS
from model.mask_head import CenterROIHeads
from model.vovnet import FrozenBatchNorm2d, NormFactory, VoVNet


def resized_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge: the short side to `short`, the long side capped at `max_size`.

    Unlike detectron2, a side is never rounded down to 0 (a 1×2000 image): it keeps at least 1 pixel.
    """
    scale = short / min(height, width)
    if height < width:
        new_h, new_w = short, scale * width
    else:
        new_h, new_w = scale * height, short
    if max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def padded_shape(height: int, width: int, divisibility: int = 32) -> tuple[int, int]:
    return math.ceil(height / divisibility) * divisibility, math.ceil(width / divisibility) * divisibility


def resize_image(image: np.ndarray, short: int, max_size: int) -> np.ndarray:
    """(H, W, 3) uint8 → resized (h, w, 3) uint8 with Pillow's antialiased bilinear, as the official model."""
    new_h, new_w = resized_shape(image.shape[0], image.shape[1], short, max_size)
    if (new_h, new_w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))


class ImageDetections(NamedTuple):
    """One image's detections in resized-image coordinates (before postprocessing).

    boxes (M, 4) unclipped, scores (M,), classes (M,), mask_probs (M, 28, 28), mask_scores (M,).
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    mask_probs: torch.Tensor
    mask_scores: torch.Tensor


class CenterMask(nn.Module):
    """CenterMask network. Module names follow centermask2's, so official state dicts load by key."""

    def __init__(self, config: ModelConfig, norm: NormFactory = FrozenBatchNorm2d) -> None:
        super().__init__()
        self.config = config
        channels = config.fpn_channels
        self.backbone = FPN(VoVNet(config.vovnet, norm), channels)
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

    def normalize_and_pad(self, images: list[torch.Tensor]) -> torch.Tensor:
        """Per image (3, h, w) float BGR 0-255 → one zero-padded (N, 3, Hp, Wp) batch, Hp, Wp multiples of 32.

        Normalisation comes before padding, so the padding equals the mean colour.
        """
        normalized = [(image - self.pixel_mean) / self.pixel_std for image in images]
        height = max(image.shape[1] for image in normalized)
        width = max(image.shape[2] for image in normalized)
        padded_h, padded_w = padded_shape(height, width, self.config.size_divisibility)
        batch = normalized[0].new_zeros((len(normalized), 3, padded_h, padded_w))
        for slot, image in zip(batch, normalized, strict=True):
            slot[:, : image.shape[1], : image.shape[2]].copy_(image)
        return batch

    def features(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], FCOSHeadOutputs]:
        """Pyramid features {"p3".."p7"} and FCOS head outputs for a padded, normalised batch."""
        pyramid = self.backbone(batch)
        return pyramid, self.proposal_generator([pyramid[level] for level in FPN_LEVELS])

    def forward(self, batch: torch.Tensor, image_sizes: list[tuple[int, int]]) -> list[ImageDetections]:
        """Inference on a padded batch (N, 3, Hp, Wp); image_sizes are the resized, unpadded (h, w)."""
        pyramid, head = self.features(batch)
        locations = self.proposal_generator.locations([pyramid[level] for level in FPN_LEVELS])
        proposals = self.proposal_generator.detect(head, locations)
        return self.segment(pyramid, proposals, image_sizes)

    def segment(
        self, pyramid: dict[str, torch.Tensor], proposals: list[Proposals], image_sizes: list[tuple[int, int]]
    ) -> list[ImageDetections]:
        """Run the mask and MaskIoU heads on the FCOS boxes of every image."""
        resolution = 2 * self.config.mask_resolution
        counts = [p.scores.numel() for p in proposals]
        if sum(counts) == 0:
            empty = pyramid["p3"].new_zeros((0, resolution, resolution))
            return [ImageDetections(p.boxes, p.scores, p.classes, empty, p.scores) for p in proposals]
        boxes = [p.boxes for p in proposals]
        roi_features = self.roi_heads.pool(pyramid, boxes, image_sizes)
        classes = torch.cat([p.classes for p in proposals])
        scores = torch.cat([p.scores for p in proposals])
        mask_probs, mask_scores = self.roi_heads.predict(roi_features, classes, scores)
        return [
            ImageDetections(p.boxes, p.scores, p.classes, probs, mask_score)
            for p, probs, mask_score in zip(
                proposals, mask_probs.split(counts), mask_scores.split(counts), strict=True
            )
        ]


def postprocess(
    detections: ImageDetections, resized_size: tuple[int, int], original_size: tuple[int, int]
) -> Detections:
    """detectron2 `detector_postprocess`: scale boxes to the original size, clip, drop empty boxes."""
    out_h, out_w = original_size
    scale_x, scale_y = out_w / resized_size[1], out_h / resized_size[0]
    boxes = detections.boxes.detach().float().cpu().clone()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    boxes[:, 0::2] = boxes[:, 0::2].clamp(min=0, max=out_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(min=0, max=out_h)
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    return Detections(
        image_size=(out_h, out_w),
        boxes=boxes[keep].numpy(),
        scores=detections.scores.detach().float().cpu()[keep].numpy(),
        class_ids=detections.classes.detach().cpu()[keep].numpy().astype(np.int64),
        mask_scores=detections.mask_scores.detach().float().cpu()[keep].numpy(),
        mask_probs=detections.mask_probs.detach().float().cpu()[keep].numpy(),
    )
