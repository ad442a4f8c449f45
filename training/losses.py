"""CenterMask training losses: FCOS (focal, GIoU, centerness) and the mask and MaskIoU branches.

Target assignment and normalisation follow FCOS as used by centermask2 (AdelaiDet): center sampling with
radius 1.5, per-level size ranges, regression targets in units of the level's stride, the GIoU loss
weighted by centerness targets, and every loss weighted 1.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, roi_align, sigmoid_focal_loss

from model.network.fcos import FCOSHeadOutputs

INF = float("inf")
SIZES_OF_INTEREST = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, INF))
CENTER_SAMPLING_RADIUS = 1.5
# Background scores the optional background loss leaves to the focal loss alone.
BACKGROUND_FLOOR = 0.05


class FCOSTargets(NamedTuple):
    """Targets for every location of every image, levels concatenated in P3..P7 order.

    labels: (N, L) int64, num_classes for background. regression: (N, L, 4) l, t, r, b in stride units.
    centerness: (N, L) float32 (meaningful at foreground locations only). outside: (N, L) bool, whether a
    location lies outside every ground-truth box (None: not computed).
    """

    labels: torch.Tensor
    regression: torch.Tensor
    centerness: torch.Tensor
    outside: torch.Tensor | None = None


def fcos_targets(
    locations: list[torch.Tensor],
    strides: tuple[int, ...],
    boxes: list[torch.Tensor],
    classes: list[torch.Tensor],
    num_classes: int,
) -> FCOSTargets:
    """Assign each location the smallest ground-truth box that contains its centre region and fits its level.

    locations: per level (L_l, 2). boxes: per image (G, 4) x1 y1 x2 y2; classes: per image (G,).
    """
    points = torch.cat(locations)
    level_sizes = [len(loc) for loc in locations]
    stride_of = torch.cat(
        [points.new_full((n,), float(s)) for n, s in zip(level_sizes, strides, strict=True)]
    )
    size_range = torch.cat(
        [
            points.new_tensor(r).expand(n, 2)
            for n, r in zip(level_sizes, SIZES_OF_INTEREST[: len(level_sizes)], strict=True)
        ]
    )
    labels, regression, centerness, outside = [], [], [], []
    for gt_boxes, gt_classes in zip(boxes, classes, strict=True):
        if gt_boxes.numel() == 0:
            labels.append(torch.full((len(points),), num_classes, dtype=torch.int64, device=points.device))
            regression.append(points.new_zeros((len(points), 4)))
            centerness.append(points.new_zeros((len(points),)))
            outside.append(torch.ones((len(points),), dtype=torch.bool, device=points.device))
            continue
        xs, ys = points[:, 0, None], points[:, 1, None]
        ltrb = torch.stack(
            (xs - gt_boxes[:, 0], ys - gt_boxes[:, 1], gt_boxes[:, 2] - xs, gt_boxes[:, 3] - ys), dim=2
        )  # (L, G, 4)
        # Center sampling: only locations within radius·stride of the box centre (and inside the box).
        centre_x = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2
        centre_y = (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
        radius = stride_of[:, None] * CENTER_SAMPLING_RADIUS
        inner = torch.stack(
            (
                xs - torch.maximum(centre_x - radius, gt_boxes[:, 0]),
                ys - torch.maximum(centre_y - radius, gt_boxes[:, 1]),
                torch.minimum(centre_x + radius, gt_boxes[:, 2]) - xs,
                torch.minimum(centre_y + radius, gt_boxes[:, 3]) - ys,
            ),
            dim=2,
        )
        in_centre = inner.min(dim=2).values > 0
        reach = ltrb.max(dim=2).values
        fits_level = (reach >= size_range[:, :1]) & (reach <= size_range[:, 1:])
        areas = ((gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1]))[None].expand_as(reach)
        areas = torch.where(in_centre & fits_level, areas, torch.full_like(areas, INF))
        best_area, best = areas.min(dim=1)
        image_labels = gt_classes[best].clone()
        image_labels[best_area == INF] = num_classes
        chosen = ltrb[torch.arange(len(points), device=points.device), best] / stride_of[:, None]
        lr, tb = chosen[:, 0::2], chosen[:, 1::2]
        ctr = (lr.min(dim=1).values / lr.max(dim=1).values.clamp(min=1e-6)) * (
            tb.min(dim=1).values / tb.max(dim=1).values.clamp(min=1e-6)
        )
        labels.append(image_labels)
        regression.append(chosen)
        centerness.append(torch.sqrt(ctr.clamp(min=0)))
        outside.append(~(ltrb.min(dim=2).values > 0).any(dim=1))
    return FCOSTargets(
        torch.stack(labels), torch.stack(regression), torch.stack(centerness), torch.stack(outside)
    )


def giou_loss(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted sum of 1 − GIoU for boxes given as (l, t, r, b) distances from a shared point. (P, 4) each."""
    pred_area = (prediction[:, 0] + prediction[:, 2]) * (prediction[:, 1] + prediction[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    inter_w = torch.minimum(prediction[:, 0], target[:, 0]) + torch.minimum(prediction[:, 2], target[:, 2])
    inter_h = torch.minimum(prediction[:, 1], target[:, 1]) + torch.minimum(prediction[:, 3], target[:, 3])
    hull_w = torch.maximum(prediction[:, 0], target[:, 0]) + torch.maximum(prediction[:, 2], target[:, 2])
    hull_h = torch.maximum(prediction[:, 1], target[:, 1]) + torch.maximum(prediction[:, 3], target[:, 3])
    intersection = inter_w * inter_h
    union = pred_area + target_area - intersection
    hull = hull_w * hull_h + 1e-7
    iou = (intersection + 1.0) / (union + 1.0)
    giou = iou - (hull - union) / hull
    return ((1 - giou) * weight).sum()


def _flatten(per_level: list[torch.Tensor]) -> torch.Tensor:
    """Per level (N, C, H, W) → (N, ΣH·W, C), rows in the row-major location order."""
    return torch.cat([t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1]) for t in per_level], dim=1)


def fcos_losses(
    outputs: FCOSHeadOutputs,
    targets: FCOSTargets,
    num_classes: int,
    class_exclusion_weight: float = 0.0,
    background_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The FCOS losses; with ``class_exclusion_weight`` > 0, also an unmodulated BCE pushing every other
    class's score towards 0 at foreground locations; with ``background_weight`` > 0, an unmodulated BCE
    pushing every class score above ``BACKGROUND_FLOOR`` towards 0 at background locations outside every
    object's box.

    The focal loss down-weights a wrong class that already scores low (0.2 → weight 0.04), yet such a score
    still passes a 0.3 detection threshold after the centerness geometric mean, and the per-class NMS keeps
    it beside the right class on the same box. The extra term, off by default (the official recipe), trains
    those cross-class duplicates away without touching the architecture or the inference.

    The background term is the same idea for false positives: a background location scoring 0.4 gets a
    focal weight of about 0.1, so a model that never saw photographs stays at 0.3-0.6 on them even after
    seeing photo-like negatives. Unmodulated, such a score costs its full BCE; scores below the floor (nearly
    all background locations) are left alone, so only candidate detections are pushed down. Locations inside
    an object's box but not assigned to it (its rim, or a large object seen from a finer level) score its
    class legitimately and stay the focal loss's business: pushed at full strength, they drag the object's
    own scores down. Both extra terms
    are normalised like the focal loss, by the number of foreground locations.
    """
    logits = _flatten(outputs.cls_logits).float()
    regression = _flatten(outputs.box_regression).float()
    centerness = _flatten(outputs.centerness).float()[..., 0]
    foreground = targets.labels != num_classes
    num_foreground = max(float(foreground.sum()), 1.0)
    one_hot = F.one_hot(targets.labels, num_classes + 1)[..., :num_classes].to(logits.dtype)
    cls_loss = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0, reduction="sum") / num_foreground
    ctr_targets = targets.centerness[foreground]
    reg_loss = giou_loss(regression[foreground], targets.regression[foreground], ctr_targets) / max(
        float(ctr_targets.sum()), 1e-6
    )
    ctr_loss = (
        F.binary_cross_entropy_with_logits(centerness[foreground], ctr_targets, reduction="sum")
        / num_foreground
    )
    losses = {"loss_fcos_cls": cls_loss, "loss_fcos_loc": reg_loss, "loss_fcos_ctr": ctr_loss}
    if class_exclusion_weight > 0:
        wrong = F.binary_cross_entropy_with_logits(
            logits[foreground], one_hot[foreground], reduction="none"
        ) * (1 - one_hot[foreground])
        losses["loss_fcos_exclusion"] = class_exclusion_weight * wrong.sum() / num_foreground
    if background_weight > 0:
        clear = ~foreground if targets.outside is None else targets.outside & ~foreground
        background = logits[clear]
        candidates = background[background.sigmoid() > BACKGROUND_FLOOR]
        false_positives = F.binary_cross_entropy_with_logits(
            candidates, torch.zeros_like(candidates), reduction="sum"
        )
        losses["loss_fcos_background"] = background_weight * false_positives / num_foreground
    return losses


class MaskRoIs(NamedTuple):
    """RoIs for the mask branch of one image: boxes (R, 4) and the index of the ground truth each belongs to."""

    boxes: torch.Tensor
    gt_index: torch.Tensor


def select_mask_rois(
    proposals: torch.Tensor, gt_boxes: torch.Tensor, max_rois: int, iou_threshold: float = 0.5
) -> MaskRoIs:
    """Ground-truth boxes (always, so the mask head learns from the first step) plus detector proposals that
    overlap a ground truth by IoU ≥ 0.5, subsampled to at most max_rois."""
    boxes, owners = [gt_boxes], [torch.arange(len(gt_boxes), device=gt_boxes.device)]
    if proposals.numel() and gt_boxes.numel():
        best_iou, best_gt = box_iou(proposals, gt_boxes).max(dim=1)
        positive = best_iou >= iou_threshold
        boxes.append(proposals[positive])
        owners.append(best_gt[positive])
    all_boxes, all_owners = torch.cat(boxes), torch.cat(owners)
    if len(all_boxes) > max_rois:
        keep = torch.randperm(len(all_boxes), device=all_boxes.device)[:max_rois]
        all_boxes, all_owners = all_boxes[keep], all_owners[keep]
    return MaskRoIs(all_boxes, all_owners)


def mask_targets(
    gt_masks: torch.Tensor, rois: MaskRoIs, resolution: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary (R, res, res) mask targets cropped from the ground truth inside each RoI (detectron2's
    crop_and_resize), and the fraction of each ground-truth mask's area that falls inside its RoI."""
    masks = gt_masks[:, None].float()
    indexed = torch.cat((rois.gt_index[:, None].to(rois.boxes.dtype), rois.boxes), dim=1)
    targets = (
        roi_align(masks, indexed, resolution, spatial_scale=1.0, sampling_ratio=0, aligned=True)[:, 0] >= 0.5
    )
    full_area = gt_masks.flatten(1).sum(dim=1).float()[rois.gt_index]
    height, width = gt_masks.shape[-2:]
    inside = []
    for (x0, y0, x1, y1), owner in zip(rois.boxes.tolist(), rois.gt_index.tolist(), strict=True):
        xa, ya = max(int(x0), 0), max(int(y0), 0)
        xb, yb = min(int(x1 + 0.999), width), min(int(y1 + 0.999), height)
        inside.append(gt_masks[owner, ya:yb, xa:xb].sum() if xb > xa and yb > ya else gt_masks.new_zeros(()))
    inside_area = torch.stack(inside).float() if inside else full_area.new_zeros((0,))
    return targets.float(), inside_area / full_area.clamp(min=1.0)


def mask_losses(
    mask_logits: torch.Tensor,
    predicted_iou: torch.Tensor,
    classes: torch.Tensor,
    targets: torch.Tensor,
    area_ratios: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """SAG-Mask per-pixel BCE on the RoI's own class, and MaskIoU regression (L2) towards the IoU of the
    binarised prediction with the ground truth, whose full area is estimated from the area ratio."""
    if len(classes) == 0:
        zero = mask_logits.sum() * 0 + predicted_iou.sum() * 0  # keeps the graph connected
        return {"loss_mask": zero, "loss_maskiou": zero}
    rows = torch.arange(len(classes), device=classes.device)
    logits = mask_logits[rows, classes].float()
    mask_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="mean")
    with torch.no_grad():
        binary = (logits > 0).float()
        intersection = (binary * targets).sum(dim=(1, 2))
        gt_area = targets.sum(dim=(1, 2)) / area_ratios.clamp(min=1e-3)
        iou_targets = intersection / (binary.sum(dim=(1, 2)) + gt_area - intersection).clamp(min=1.0)
    iou_loss = F.mse_loss(predicted_iou[rows, classes].float(), iou_targets, reduction="mean")
    return {"loss_mask": mask_loss, "loss_maskiou": iou_loss}
