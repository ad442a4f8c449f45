"""One CenterMask training step: forward a batch of samples and return the named losses."""

from __future__ import annotations

from typing import Any

import torch

from model.inference.postprocess import MASK_LEVELS, FcosDecoder, pool_rois
from model.inference.preprocess import normalize_and_pad
from model.network.centermask import CenterMask
from model.network.fpn import FPN_LEVELS
from training.losses import fcos_losses, fcos_targets, mask_losses, mask_targets, select_mask_rois

MAX_MASK_ROIS_PER_IMAGE = 64


def training_losses(
    model: CenterMask,
    samples: list[dict[str, Any]],
    class_exclusion_weight: float = 0.0,
    background_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Samples as `training.data.coco.CocoInstances` yields them (RGB uint8 images), on the model's device.

    class_exclusion_weight, background_weight: see `training.losses.fcos_losses`.
    """
    device = model.pixel_mean.device
    images = [sample["image"].to(device).flip(0).float() for sample in samples]  # RGB → BGR, as at inference
    image_sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]
    gt_boxes = [sample["boxes"].to(device) for sample in samples]
    gt_classes = [sample["classes"].to(device) for sample in samples]
    config = model.config
    batch = normalize_and_pad(images, model.pixel_mean, model.pixel_std, config.size_divisibility)

    pyramid, head = model(batch)
    decoder = FcosDecoder.from_config(config)
    locations = decoder.locations([pyramid[level] for level in FPN_LEVELS])
    targets = fcos_targets(locations, decoder.strides, gt_boxes, gt_classes, config.num_classes)
    losses = fcos_losses(head, targets, config.num_classes, class_exclusion_weight, background_weight)

    with torch.no_grad():
        detached = type(head)(*([t.detach().float() for t in level] for level in head))
        proposals = decoder.detect(detached, locations)
    rois = [
        select_mask_rois(p.boxes, boxes, MAX_MASK_ROIS_PER_IMAGE)
        for p, boxes in zip(proposals, gt_boxes, strict=True)
    ]
    resolution = 2 * model.config.mask_resolution
    targets_and_ratios = [
        mask_targets(sample["masks"].to(device), roi, resolution)
        for sample, roi in zip(samples, rois, strict=True)
    ]
    roi_features = pool_rois(
        [pyramid[level] for level in MASK_LEVELS],
        [roi.boxes for roi in rois],
        image_sizes,
        config.mask_resolution,
    )
    classes = torch.cat([c[roi.gt_index] for c, roi in zip(gt_classes, rois, strict=True)])
    mask_logits = model.roi_heads.mask_head(roi_features)
    rows = torch.arange(len(classes), device=device)
    mask_probs = mask_logits[rows, classes][:, None].float().sigmoid().detach()
    predicted_iou = model.roi_heads.maskiou_head(roi_features, mask_probs.to(roi_features.dtype))
    losses |= mask_losses(
        mask_logits,
        predicted_iou,
        classes,
        torch.cat([t for t, _ in targets_and_ratios]),
        torch.cat([r for _, r in targets_and_ratios]),
    )
    return losses
