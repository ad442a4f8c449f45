"""What happens to the network's tensors before they are detections: weight-free, so usable without a network.

* FCOS decoding (`FcosDecoder`): per level, the candidates above the class threshold and their best
  pre_nms_topk by class × centerness, boxes from the distances, then class-aware NMS and the post-NMS top-k,
  in float32 whatever precision the network ran in (CENTERMASK_SPEC.md §3).
* RoI pooling for the mask heads (`pool_rois`): CenterMask's adaptive level assignment (Eq. 2) and
  ROIAlignV2 from P3-P5.
* Boxes back to the original image (`scale_boxes`): detectron2's `detector_postprocess`.

Mask pasting, the last step before encoding, is `model.inference.masks`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torchvision.ops import batched_nms, nms, roi_align

from model.network.configs import ModelConfig
from model.network.fcos import FCOSHeadOutputs

# The pyramid levels the mask heads pool from.
MASK_LEVELS = ("p3", "p4", "p5")


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


class Rows(NamedTuple):
    """Detections of a whole batch as one table, on the device: rows grouped by image (ascending), best score
    first within an image. boxes (M, 4) float32, scores (M,), classes (M,) int64, image (M,) int64."""

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    image: torch.Tensor

    def take(self, index: torch.Tensor) -> Rows:
        return Rows(self.boxes[index], self.scores[index], self.classes[index], self.image[index])


def group_offsets(image: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows grouped by image (ascending): each image's row count and first row, both (count,)."""
    counts = torch.bincount(image, minlength=count)
    return counts, torch.cumsum(counts, 0) - counts


def rank_in_image(image: torch.Tensor, wanted: torch.Tensor, count: int) -> torch.Tensor:
    """(M,) int64: each row's position among its image's wanted rows that come before it (rows grouped by
    image). Without host synchronisation."""
    before = torch.cumsum(wanted.long(), 0) - wanted.long()  # wanted rows before each row, in the whole batch
    _, starts = group_offsets(image, count)
    first = before[starts.clamp(max=max(image.numel() - 1, 0))] if image.numel() else before
    return before - first[image]


# Most boxes one NMS call takes in the batched path: its kernel keeps an n × n bit mask (this many: 112 MiB).
MAX_BATCHED_NMS_BOXES = 30_000


def nms_by_group(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Greedy NMS within each group, as one kernel call: indices of the kept boxes, by descending score.

    The groups are kept apart by shifting each one's boxes beyond every other's (torchvision's coordinate
    trick), here in float64, where the shifted coordinates and their differences stay exact: IoU can differ
    from float32 NMS only where it lies within rounding of the threshold.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    wide = boxes.double()
    span = wide.max() - wide.min() + 1
    shifted = wide - wide.min() + (groups.double() * span)[:, None]
    return nms(shifted, scores.double(), threshold)


class LevelCandidates(NamedTuple):
    """One pyramid level's best candidates for every image of a batch (N images, k ≤ pre_nms_topk slots).

    Slots that hold no candidate (fewer than k cells passed the threshold) have `valid` False.
    boxes (N, k, 4) float32, scores (N, k) = sqrt(cls · ctr), classes (N, k) int64, valid (N, k) bool.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    valid: torch.Tensor


@dataclass(frozen=True)
class FcosDecoder:
    """FCOS test-time decoding, selection and NMS with a config's settings (`from_config`)."""

    strides: tuple[int, ...]
    inference_threshold: float
    pre_nms_topk: int
    nms_threshold: float
    post_nms_topk: int

    @classmethod
    def from_config(cls, config: ModelConfig) -> FcosDecoder:
        return cls(
            strides=config.fpn_strides,
            inference_threshold=config.inference_threshold,
            pre_nms_topk=config.pre_nms_topk,
            nms_threshold=config.nms_threshold,
            post_nms_topk=config.post_nms_topk,
        )

    def __call__(self, head: FCOSHeadOutputs) -> list[Proposals]:
        """FCOS head outputs of a batch (N images, any float dtype) → each image's detections."""
        head = FCOSHeadOutputs(*([t.float() for t in outputs] for outputs in head))
        # Each level's class map has that level's size: the pyramid itself may hold only MASK_LEVELS.
        return self.detect(head, self.locations(head.cls_logits))

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

    @torch.no_grad()
    def detect_batched(
        self, outputs: FCOSHeadOutputs, locations: list[torch.Tensor]
    ) -> tuple[Rows, torch.Tensor]:
        """`detect` for a whole batch at once, with two host synchronisations (gathering the candidates, and
        NMS, whose kernel hands its mask to the host) instead of several per image: the accelerator's path.

        Returns the NMS survivors of every image as `Rows` and the (M,) bool mask of those within the post-NMS
        top-k (ties kept, as `detect`); compacting is left to the caller, who may drop more rows first. The
        detections are `detect`'s up to IoU rounding at the NMS threshold (see `nms_by_group`).
        """
        per_level = [
            self._decode_level(logits, regression, centerness, stride, level_locations_)
            for logits, regression, centerness, stride, level_locations_ in zip(
                *outputs, self.strides, locations, strict=True
            )
        ]
        boxes, scores, classes, valid = (torch.cat(parts, dim=1) for parts in zip(*per_level, strict=True))
        count, num_classes = boxes.shape[0], outputs.cls_logits[0].shape[1]
        image, slot = valid.nonzero(as_tuple=True)
        boxes, scores, classes = boxes[image, slot], scores[image, slot], classes[image, slot]
        if image.numel() <= MAX_BATCHED_NMS_BOXES:
            kept = nms_by_group(boxes, scores, image * num_classes + classes, self.nms_threshold)
        else:  # more candidates than one kernel's mask should hold (untrained weights): an image at a time
            kept = torch.cat([
                (image == index).nonzero()[:, 0][nms_by_group(boxes[image == index], scores[image == index],
                                                              classes[image == index], self.nms_threshold)]
                for index in range(count)
            ])  # fmt: skip
        # NMS gives the survivors by descending score; a stable sort by image groups them, best first.
        kept = kept[torch.sort(image[kept], stable=True).indices]
        rows = Rows(boxes[kept], scores[kept], classes[kept], image[kept])
        return rows, self._top_rows(rows, count)

    def _top_rows(self, rows: Rows, count: int) -> torch.Tensor:
        """(M,) bool: the rows scoring at least their image's post_nms_topk-th best score (`_keep_top`)."""
        if rows.scores.numel() == 0:
            return torch.zeros(0, dtype=torch.bool, device=rows.scores.device)
        counts, starts = group_offsets(rows.image, count)
        kth = (starts + self.post_nms_topk - 1).clamp(max=rows.scores.numel() - 1)
        threshold = torch.where(counts > self.post_nms_topk, rows.scores[kth], float("-inf"))
        return rows.scores >= threshold[rows.image]

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


def assign_levels(
    boxes: torch.Tensor, image_areas: torch.Tensor, min_level: int = 3, max_level: int = 5
) -> torch.Tensor:
    """CenterMask Eq. 2: level k = ceil(k_max − log2(A_image / A_box)), clamped to [min_level, max_level].

    boxes: (M, 4) in resized-image pixels; image_areas: (M,) float32, the resized, unpadded h × w of each box's
    image. Returns (M,) int64 indices into the pooled levels (0 = min_level).
    """
    box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    levels = torch.ceil(max_level - torch.log2(image_areas / box_areas + sys.float_info.epsilon))
    return torch.clamp(levels, min=min_level, max=max_level).to(torch.int64) - min_level


def pool_rois(
    features: list[torch.Tensor],
    boxes: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
    output_size: int,
    strides: tuple[int, ...] = (8, 16, 32),
) -> torch.Tensor:
    """ROIAlignV2 (aligned, adaptive sampling) of each box from its assigned level: `pool_boxes` for boxes
    given per image. features: the P3..P5 maps (N, C, H_l, W_l); boxes: per image (M_i, 4) in resized-image
    pixels; image_sizes: resized, unpadded (h, w). Returns (ΣM_i, C, output_size, output_size), in box order."""
    device = features[0].device
    image = torch.cat(
        [torch.full((len(b),), index, dtype=torch.int64, device=device) for index, b in enumerate(boxes)]
    )
    areas = torch.tensor([float(h * w) for h, w in image_sizes], dtype=torch.float32, device=device)
    return pool_boxes(features, torch.cat(boxes), image, areas, output_size, strides)


def pool_boxes(
    features: list[torch.Tensor],
    boxes: torch.Tensor,
    image: torch.Tensor,
    image_areas: torch.Tensor,
    output_size: int,
    strides: tuple[int, ...] = (8, 16, 32),
    *,
    every_level: bool = False,
) -> torch.Tensor:
    """ROIAlignV2 of each of the (M, 4) boxes, of image (M,), from its assigned level; image_areas: (N,)
    float32 resized h × w per image. Returns (M, C, output_size, output_size), in box order.

    `every_level` pools every box from every level and keeps each one's own: more work, but no host
    synchronisation (choosing the boxes of a level has a data-dependent size). Each box's values are the same
    either way: RoIAlign computes a box from its own level's map alone.
    """
    rois = torch.cat((image[:, None].to(boxes.dtype), boxes), dim=1)
    levels = assign_levels(boxes, image_areas[image], min_level=3, max_level=3 + len(features) - 1)

    def pooled_from(level: int, chosen: torch.Tensor) -> torch.Tensor:
        return roi_align(
            features[level],
            chosen,
            output_size,
            spatial_scale=1.0 / strides[level],
            sampling_ratio=0,
            aligned=True,
        )

    if every_level:
        stacked = torch.stack([pooled_from(level, rois) for level in range(len(features))])
        return stacked[levels, torch.arange(rois.shape[0], device=rois.device)]
    pooled = features[0].new_zeros((rois.shape[0], features[0].shape[1], output_size, output_size))
    for level in range(len(features)):
        index = torch.nonzero(levels == level, as_tuple=True)[0]
        if index.numel():
            pooled[index] = pooled_from(level, rois[index])
    return pooled


def scale_boxes(
    boxes: torch.Tensor, resized_size: tuple[int, int], original_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """detectron2 `detector_postprocess` on boxes: resized-image (M, 4) → original-image boxes, clipped.

    Returns the (M, 4) float32 boxes and the (M,) bool mask of the non-empty ones (the official output keeps
    only those).
    """
    out_h, out_w = original_size
    scale_x, scale_y = out_w / resized_size[1], out_h / resized_size[0]
    scaled = boxes.float().clone()
    scaled[:, 0::2] *= scale_x
    scaled[:, 1::2] *= scale_y
    scaled[:, 0::2] = scaled[:, 0::2].clamp(min=0, max=out_w)
    scaled[:, 1::2] = scaled[:, 1::2].clamp(min=0, max=out_h)
    nonempty = ((scaled[:, 2] - scaled[:, 0]) > 0) & ((scaled[:, 3] - scaled[:, 1]) > 0)
    return scaled, nonempty
