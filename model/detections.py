"""The model's per-image output, in original-image pixels, with masks pasted lazily per instance."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, nms

# The default IoU above which `class_agnostic_nms` treats two detections as one object (Ultralytics' NMS IoU).
CLASS_AGNOSTIC_IOU = 0.7


class MaskCrop(NamedTuple):
    """A pasted instance mask: `crop` (h, w) bool placed at column x0, row y0; zero everywhere else."""

    x0: int
    y0: int
    crop: np.ndarray


def paste_mask(probabilities: torch.Tensor, box: torch.Tensor, height: int, width: int) -> MaskCrop:
    """Paste one 28×28 mask probability map into its box, as detectron2's CPU `paste_masks_in_image` does.

    Pixel centres (+0.5) are mapped into the box, sampled bilinearly with zero padding and thresholded at
    ≥ 0.5. Only a one-pixel-padded window around the box is computed: outside the box the value is < 0.5.
    probabilities: (28, 28) float32; box: (4,) float32 clipped to the image.
    """
    x0_int = max(int(torch.floor(box[0]).item()) - 1, 0)
    y0_int = max(int(torch.floor(box[1]).item()) - 1, 0)
    x1_int = min(int(torch.ceil(box[2]).item()) + 1, width)
    y1_int = min(int(torch.ceil(box[3]).item()) + 1, height)
    x0, y0, x1, y1 = box.reshape(4, 1).unbind(0)
    ys = (torch.arange(y0_int, y1_int, dtype=torch.float32) + 0.5 - y0) / (y1 - y0) * 2 - 1
    xs = (torch.arange(x0_int, x1_int, dtype=torch.float32) + 0.5 - x0) / (x1 - x0) * 2 - 1
    grid = torch.stack(
        (xs[None, :].expand(ys.numel(), xs.numel()), ys[:, None].expand(ys.numel(), xs.numel())), dim=2
    )
    sampled = F.grid_sample(probabilities[None, None].float(), grid[None], align_corners=False)
    return MaskCrop(x0_int, y0_int, (sampled[0, 0] >= 0.5).numpy())


@dataclass(frozen=True)
class Selection:
    """Which of an image's detections a caller wants; None everywhere means all of them (the official output).

    Detections scoring at least `score_threshold`, of one of `class_ids`, then the best `max_detections`.
    Passed to `Predictor.predict`, it is applied before the mask head, so unwanted detections cost nothing
    beyond the detector; the detections kept are the same as filtering the full output afterwards.
    """

    score_threshold: float | None = None
    max_detections: int | None = None
    class_ids: frozenset[int] | None = None

    def indices(self, scores: torch.Tensor, class_ids: torch.Tensor) -> torch.Tensor:
        """Positions of the wanted detections, given (N,) scores in descending order and (N,) class ids."""
        keep = torch.ones_like(scores, dtype=torch.bool)
        if self.score_threshold is not None:
            keep &= scores >= self.score_threshold
        if self.class_ids is not None:
            wanted = torch.tensor(sorted(self.class_ids), dtype=class_ids.dtype, device=class_ids.device)
            keep &= torch.isin(class_ids, wanted)
        index = torch.nonzero(keep).flatten()
        return index if self.max_detections is None else index[: self.max_detections]


@dataclass(frozen=True)
class Detections:
    """Everything the official model outputs for one image. N detections, ordered by descending score.

    boxes: (N, 4) float32 x1, y1, x2, y2 in original pixels, clipped to the image.
    scores: (N,) float32, sqrt(class probability × centerness).
    class_ids: (N,) int64 contiguous class indices.
    mask_scores: (N,) float32, score × predicted mask IoU (what COCO segm evaluation ranks by).
    mask_probs: (N, 28, 28) float32 mask probabilities of each detection's class, pasted on demand.
    """

    image_size: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    mask_scores: np.ndarray
    mask_probs: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, index: np.ndarray) -> Detections:
        """The detections at `index` (integer indices or a boolean mask), in that order."""
        return Detections(
            self.image_size,
            self.boxes[index],
            self.scores[index],
            self.class_ids[index],
            self.mask_scores[index],
            self.mask_probs[index],
        )

    def filter(
        self,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        class_ids: Iterable[int] | None = None,
    ) -> Detections:
        """Keep detections with score ≥ threshold and a wanted class, then the best max_detections."""
        selection = Selection(
            score_threshold, max_detections, frozenset(class_ids) if class_ids is not None else None
        )
        index = selection.indices(torch.from_numpy(self.scores), torch.from_numpy(self.class_ids))
        return self.select(index.numpy())

    def class_agnostic_nms(self, iou_threshold: float = CLASS_AGNOSTIC_IOU) -> Detections:
        """Greedy NMS over all classes as one: a detection whose box overlaps a kept, higher-scoring one with
        IoU above ``iou_threshold`` goes, whatever the two classes (``torchvision.ops.nms``).

        Applied after the model, like a score threshold: the model's own output (per-class NMS, the official
        behaviour) keeps an object labelled as several classes when each label scores; this keeps only the
        best. Pairs of one class overlapping more than the model's own NMS threshold are already gone, so at
        or above that threshold (0.6 in every CenterMask config) only cross-class duplicates are removed.
        """
        if len(self) == 0:
            return self
        keep = nms(torch.from_numpy(self.boxes), torch.from_numpy(self.scores), iou_threshold)
        return self.select(np.sort(keep.numpy()))  # in the original (descending score) order

    def cross_class_duplicates(self, iou_threshold: float = 0.9) -> np.ndarray:
        """(N,) bool: whether each detection's box has IoU above ``iou_threshold`` with a higher-scoring
        detection of another class (one object reported under several labels)."""
        if len(self) == 0:
            return np.zeros(0, dtype=bool)
        boxes = torch.from_numpy(self.boxes)
        classes = torch.from_numpy(self.class_ids)
        overlapping = box_iou(boxes, boxes) > iou_threshold
        other_class = classes[:, None] != classes[None, :]
        # Detections come sorted by descending score: column j < row i is a higher-scoring one.
        earlier = torch.ones_like(overlapping).tril(diagonal=-1)
        return (overlapping & other_class & earlier).any(dim=1).numpy()

    def mask_crops(self) -> list[MaskCrop]:
        """Each instance's pasted binary mask as a crop; zero outside it."""
        height, width = self.image_size
        probs = torch.from_numpy(self.mask_probs)
        boxes = torch.from_numpy(self.boxes)
        return [paste_mask(probs[i], boxes[i], height, width) for i in range(len(self))]

    def dense_masks(self) -> np.ndarray:
        """(N, H, W) bool full-size masks."""
        masks = np.zeros((len(self), *self.image_size), dtype=bool)
        for mask, (x0, y0, crop) in zip(masks, self.mask_crops(), strict=True):
            mask[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return masks
