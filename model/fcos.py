"""FCOS: the anchor-free detector whose boxes are CenterMask's proposals (centermask2 `modeling/fcos`)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms


class Scale(nn.Module):
    """A learnable scalar multiplier, one per pyramid level."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class FCOSHeadOutputs(NamedTuple):
    """Raw head outputs, one tensor per level (N = batch, K = classes, H×W = that level's map).

    cls_logits: (N, K, H, W). box_regression: (N, 4, H, W) distances (left, top, right, bottom) in units of
    the level's stride, already through ReLU. centerness: (N, 1, H, W) logits.
    """

    cls_logits: list[torch.Tensor]
    box_regression: list[torch.Tensor]
    centerness: list[torch.Tensor]


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, 1, 1), nn.GroupNorm(32, channels), nn.ReLU()]
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Shared classification and box towers; centerness branches off the box tower."""

    def __init__(self, channels: int, num_classes: int, num_convs: int, num_levels: int = 5) -> None:
        super().__init__()
        self.cls_tower = _tower(channels, num_convs)
        self.bbox_tower = _tower(channels, num_convs)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, 1, 1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, 1, 1)
        self.ctrness = nn.Conv2d(channels, 1, 3, 1, 1)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        self.reset_parameters()

    def reset_parameters(self, prior_probability: float = 0.01) -> None:
        """FCOS initialisation: N(0, 0.01) convs, zero biases, and a class bias giving the prior probability."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)
        nn.init.constant_(
            self.cls_logits.bias, -torch.log(torch.tensor((1 - prior_probability) / prior_probability))
        )

    def forward(self, features: list[torch.Tensor]) -> FCOSHeadOutputs:
        logits, regressions, centerness = [], [], []
        for level, feature in enumerate(features):
            cls_features = self.cls_tower(feature)
            box_features = self.bbox_tower(feature)
            logits.append(self.cls_logits(cls_features))
            centerness.append(self.ctrness(box_features))
            regressions.append(F.relu(self.scales[level](self.bbox_pred(box_features))))
        return FCOSHeadOutputs(logits, regressions, centerness)


def level_locations(height: int, width: int, stride: int, device: torch.device) -> torch.Tensor:
    """Image coordinates of a level's feature-map cells, row-major: (H·W, 2) float32 (x, y) = k·s + s//2."""
    xs = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
    ys = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1) + stride // 2


class Proposals(NamedTuple):
    """FCOS detections of one image, in resized-image coordinates, ordered by descending score.

    boxes: (M, 4) float32 x1, y1, x2, y2, unclipped. scores: (M,) = sqrt(cls · ctr). classes: (M,) int64.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor

    def take(self, index: torch.Tensor) -> Proposals:
        """The proposals at `index` (integer indices or a boolean mask), in that order."""
        return Proposals(self.boxes[index], self.scores[index], self.classes[index])


class LevelCandidates(NamedTuple):
    """One pyramid level's best candidates for every image of a batch (N images, k ≤ pre_nms_topk slots).

    Slots that hold no candidate (fewer than k cells passed the threshold) have `valid` False.
    boxes (N, k, 4) float32, scores (N, k) = sqrt(cls · ctr), classes (N, k) int64, valid (N, k) bool.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    valid: torch.Tensor


class FCOS(nn.Module):
    """FCOS head plus the official test-time decoding, selection and NMS."""

    def __init__(
        self,
        channels: int,
        num_classes: int,
        num_convs: int,
        strides: tuple[int, ...],
        inference_threshold: float,
        pre_nms_topk: int,
        nms_threshold: float,
        post_nms_topk: int,
    ) -> None:
        super().__init__()
        self.strides = strides
        self.inference_threshold = inference_threshold
        self.pre_nms_topk = pre_nms_topk
        self.nms_threshold = nms_threshold
        self.post_nms_topk = post_nms_topk
        self.fcos_head = FCOSHead(channels, num_classes, num_convs, len(strides))

    def forward(self, features: list[torch.Tensor]) -> FCOSHeadOutputs:
        return self.fcos_head(features)

    def locations(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level, (H·W, 2) image coordinates of the feature cells."""
        return [
            level_locations(f.shape[-2], f.shape[-1], stride, f.device)
            for f, stride in zip(features, self.strides, strict=True)
        ]

    @torch.no_grad()
    def detect(self, outputs: FCOSHeadOutputs, locations: list[torch.Tensor]) -> list[Proposals]:
        """Decode every level of every image, then class-aware NMS and the post-NMS top-k per image.

        `outputs` must be float32 (decode in full precision whatever the network ran in).
        """
        per_level = [
            self._decode_level(logits, regression, centerness, stride, level_locations_)
            for logits, regression, centerness, stride, level_locations_ in zip(
                *outputs, self.strides, locations, strict=True
            )
        ]
        boxes, scores, classes, valid = (torch.cat(parts, dim=1) for parts in zip(*per_level, strict=True))
        results = []
        for image in range(boxes.shape[0]):
            keep = valid[image]
            image_boxes, image_scores, image_classes = (
                boxes[image][keep],
                scores[image][keep],
                classes[image][keep],
            )
            kept = batched_nms(image_boxes, image_scores, image_classes, self.nms_threshold)
            results.append(
                self._keep_top(Proposals(image_boxes[kept], image_scores[kept], image_classes[kept]))
            )
        return results

    def _decode_level(
        self,
        logits: torch.Tensor,
        regression: torch.Tensor,
        centerness: torch.Tensor,
        stride: int,
        locations: torch.Tensor,
    ) -> LevelCandidates:
        """A level's candidates: class probability > threshold, the best pre_nms_topk of them by cls · ctr.

        The official code selects the candidates of each image with a boolean mask and takes a top-k only when
        there are more than pre_nms_topk. A top-k over all cells, with non-candidates scored below any
        candidate, selects the same set without data-dependent shapes; only the order within it (which the
        official `topk(sorted=False)` does not define either) can differ, and NMS sorts by score anyway.
        """
        n, num_classes, height, width = logits.shape
        cls_prob = logits.sigmoid().permute(0, 2, 3, 1).reshape(n, height * width, num_classes)
        ctr_prob = centerness.sigmoid().permute(0, 2, 3, 1).reshape(n, height * width, 1)
        # The threshold applies to the class probability alone; ranking uses cls · ctr (≥ 0, so −1 is below all).
        ranked = torch.where(cls_prob > self.inference_threshold, cls_prob * ctr_prob, -1.0).flatten(1)
        top_scores, top_index = ranked.topk(min(self.pre_nms_topk, ranked.shape[1]), dim=1, sorted=False)
        cell, classes = top_index // num_classes, top_index % num_classes
        distances = (regression * stride).permute(0, 2, 3, 1).reshape(n, height * width, 4)
        ltrb = distances.gather(1, cell[:, :, None].expand(-1, -1, 4))
        xy = locations[cell]
        boxes = torch.stack(
            (
                xy[..., 0] - ltrb[..., 0],
                xy[..., 1] - ltrb[..., 1],
                xy[..., 0] + ltrb[..., 2],
                xy[..., 1] + ltrb[..., 3],
            ),
            dim=2,
        )
        valid = top_scores >= 0
        return LevelCandidates(boxes, torch.sqrt(top_scores.clamp(min=0)), classes, valid)

    def _keep_top(self, proposals: Proposals) -> Proposals:
        """Keep every detection scoring at least the post_nms_topk-th best score (ties can keep more)."""
        count = proposals.scores.numel()
        if count <= self.post_nms_topk:
            return proposals
        threshold, _ = torch.kthvalue(proposals.scores, count - self.post_nms_topk + 1)
        return proposals.take(proposals.scores >= threshold)
