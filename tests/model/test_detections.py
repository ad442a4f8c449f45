"""`Detections` filters applied after the model: class-agnostic NMS and the cross-class duplicate test."""

from __future__ import annotations

import numpy as np
import torch

from model.inference.detections import Detections

RING, RECTANGLE, STAR, CIRCLE = 4, 1, 3, 0


def _detections(rows: list[tuple[list[float], float, int]]) -> Detections:
    """Detections from (box, score, class) rows, sorted by descending score as the model gives them."""
    rows = sorted(rows, key=lambda row: -row[1])
    n = len(rows)
    return Detections(
        image_size=(200, 300),
        boxes=np.array([box for box, _, _ in rows], dtype=np.float32).reshape(n, 4),
        scores=np.array([score for _, score, _ in rows], dtype=np.float32),
        class_ids=np.array([class_id for _, _, class_id in rows], dtype=np.int64),
        mask_scores=np.array([0.5 * score for _, score, _ in rows], dtype=np.float32),
        mask_probs=torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, 28, 28) / 10,
    )


# A ring labelled three ways (IoU 0.95 and 0.92 with the best label), a circle overlapping it as a distinct
# object (IoU 0.32), two stars of one class overlapping (IoU 0.53, under the model's own NMS threshold)
# and a lone rectangle.
SCENE = _detections(
    [
        ([10, 10, 110, 110], 0.9, RING),
        ([11, 10, 110, 111], 0.6, RECTANGLE),
        ([10, 12, 108, 110], 0.4, STAR),
        ([40, 40, 140, 140], 0.8, CIRCLE),
        ([200, 20, 260, 80], 0.7, STAR),
        ([210, 30, 270, 90], 0.35, STAR),
        ([150, 150, 190, 190], 0.5, RECTANGLE),
    ]
)


def test_cross_class_duplicates_are_the_other_labels_of_one_object() -> None:
    duplicate = SCENE.cross_class_duplicates(0.9)
    flagged = {
        (int(c), float(s)) for c, s, d in zip(SCENE.class_ids, SCENE.scores, duplicate, strict=True) if d
    }
    assert flagged == {(RECTANGLE, np.float32(0.6)), (STAR, np.float32(0.4))}
    # The best label of the ring, the distinct circle and same-class overlaps are not duplicates.
    assert not duplicate[0] and duplicate.sum() == 2


def test_class_agnostic_nms_keeps_one_label_per_object() -> None:
    kept = SCENE.class_agnostic_nms(0.7)
    assert len(kept) == len(SCENE) - 2
    assert not kept.cross_class_duplicates(0.9).any()
    np.testing.assert_array_equal(kept.scores, np.sort(kept.scores)[::-1])
    # The ring keeps its best label; the overlapping circle (IoU well below 0.7) stays.
    assert (int(kept.class_ids[0]), int(kept.class_ids[1])) == (RING, CIRCLE)
    assert {int(c) for c in kept.class_ids} == {RING, CIRCLE, STAR, RECTANGLE}
    assert kept.class_ids.tolist().count(STAR) == 2  # distinct stars of one class both stay
    # Each kept detection carries its own mask probabilities and mask score.
    for i in range(len(kept)):
        original = int(np.flatnonzero(SCENE.scores == kept.scores[i])[0])
        np.testing.assert_array_equal(kept.mask_probs[i], SCENE.mask_probs[original])
        assert kept.mask_scores[i] == SCENE.mask_scores[original]


def test_class_agnostic_nms_threshold() -> None:
    # Every class counts as one: below 0.53 the two stars merge, below 0.32 the circle goes into the ring.
    assert len(SCENE.class_agnostic_nms(0.99)) == len(SCENE)
    assert len(SCENE.class_agnostic_nms(0.5)) == len(SCENE) - 3
    assert len(SCENE.class_agnostic_nms(0.35)) == len(SCENE) - 3
    assert len(SCENE.class_agnostic_nms(0.3)) == len(SCENE) - 4


def test_empty_detections() -> None:
    empty = _detections([])
    assert len(empty.class_agnostic_nms()) == 0
    assert empty.cross_class_duplicates().shape == (0,)
