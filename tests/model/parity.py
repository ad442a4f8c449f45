"""The matching criteria of shared/reference/README.md, as a function tests and scripts share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float(a == b)


@dataclass
class MatchReport:
    matched: int
    reference_count: int
    our_count: int
    mask_ious: list[float]
    small_mask_failures: list[float]

    @property
    def passes(self) -> bool:
        return (
            self.matched >= 0.95 * self.reference_count
            and abs(self.our_count - self.reference_count) <= 0.05 * self.reference_count
            and (not self.mask_ious or float(np.mean(self.mask_ious)) >= 0.97)
            and not self.small_mask_failures
        )


def match_instances(reference: list[dict[str, Any]], ours: list[dict[str, Any]]) -> MatchReport:
    """Greedy matching, best reference score first, to our unmatched same-class instance of highest box IoU."""
    unmatched = set(range(len(ours)))
    ious, failures, matched = [], [], 0
    for ref in sorted(reference, key=lambda r: -r["score"]):
        candidates = [
            (box_iou(ref["box"], ours[j]["box"]), j)
            for j in unmatched
            if ours[j]["class_id"] == ref["class_id"]
        ]
        if not candidates:
            continue
        iou, j = max(candidates)
        mine = ours[j]
        if (
            iou < 0.99
            or abs(mine["score"] - ref["score"]) > 1e-3
            or abs(mine["mask_score"] - ref["mask_score"]) > 1e-3
        ):
            continue
        unmatched.discard(j)
        matched += 1
        ref_mask, our_mask = (
            mask_utils.decode(ref["mask"]).astype(bool),
            mask_utils.decode(mine["mask"]).astype(bool),
        )
        union = np.logical_or(ref_mask, our_mask).sum()
        mask_iou = float(np.logical_and(ref_mask, our_mask).sum() / union) if union else 1.0
        ious.append(mask_iou)
        if ref_mask.sum() >= 64 and mask_iou < 0.9:
            failures.append(mask_iou)
    return MatchReport(matched, len(reference), len(ours), ious, failures)
