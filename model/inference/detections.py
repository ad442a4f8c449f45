"""The model's per-image output, in original-image pixels, with masks pasted lazily per instance."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou, nms

from model.inference.masks import MaskCrop, PastedMasks, paste_masks

# The default IoU above which `class_agnostic_nms` treats two detections as one object (Ultralytics' NMS IoU).
CLASS_AGNOSTIC_IOU = 0.7


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
    mask_probs: (N, 28, 28) float32 tensor on the inference device: mask probabilities of each detection's
    class, pasted on demand (on that device).
    stitched: masks already in the image, for detections that have no 28×28 probabilities of their own
    (tiled inference stitches an object's mask from its tiles: `model.inference.tiling`); mask_probs is then
    (N, 0, 0). None: the masks are pasted from mask_probs.
    """

    image_size: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    mask_scores: np.ndarray
    mask_probs: torch.Tensor
    stitched: PastedMasks | None = field(default=None, repr=False)

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
            self.mask_probs[torch.as_tensor(index, device=self.mask_probs.device)],
            None if self.stitched is None else self.stitched.select(np.asarray(index)),
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

    @functools.cached_property
    def pasted_masks(self) -> PastedMasks:
        """The binary masks in original-image pixels (computed once, on the inference device)."""
        if self.stitched is not None:
            return self.stitched
        return paste_masks(self.mask_probs, torch.from_numpy(self.boxes), self.image_size)

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
        return self.pasted_masks.crops()

    def dense_masks(self) -> np.ndarray:
        """(N, H, W) bool full-size masks."""
        masks = np.zeros((len(self), *self.image_size), dtype=bool)
        for mask, (x0, y0, crop) in zip(masks, self.mask_crops(), strict=True):
            mask[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return masks
