"""The bundled default model finds simple drawn shapes, with the right class and a tight mask."""

from __future__ import annotations

import numpy as np
import pytest

from model.predict import DEFAULT_WEIGHTS, Predictor, load_predictor

pytestmark = pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="the bundled weights are not built yet")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return load_predictor()


def drawn_scene() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A 480×640 gradient background with a circle, a rotated rectangle and a ring, well apart."""
    height, width = 480, 640
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = (40 + 60 * xs / width).astype(np.uint8)
    image[..., 1] = (70 + 40 * ys / height).astype(np.uint8)
    image[..., 2] = 90
    circle = (xs - 130) ** 2 + (ys - 150) ** 2 <= 70**2
    angle = np.deg2rad(30)
    u = (xs - 450) * np.cos(angle) + (ys - 140) * np.sin(angle)
    v = -(xs - 450) * np.sin(angle) + (ys - 140) * np.cos(angle)
    rectangle = (np.abs(u) <= 90) & (np.abs(v) <= 45)
    distance = np.hypot(xs - 320, ys - 360)
    ring = (distance <= 90) & (distance > 55)
    image[circle] = (230, 200, 40)
    image[rectangle] = (220, 40, 40)
    image[ring] = (240, 240, 240)
    return image, {"circle": circle, "rectangle": rectangle, "ring": ring}


def test_finds_circle_rectangle_and_ring(predictor: Predictor) -> None:
    image, truth = drawn_scene()
    (detections,) = predictor.predict([image])
    detections = detections.filter(score_threshold=0.3)
    masks = detections.dense_masks()
    for name, expected in truth.items():
        ious = [np.logical_and(m, expected).sum() / np.logical_or(m, expected).sum() for m in masks]
        # The object's detection is the best-scoring one on it (detections come sorted by score).
        best = next((i for i, iou in enumerate(ious) if iou >= 0.5), None)
        assert best is not None, f"nothing detected on the {name}"
        assert predictor.class_names[detections.class_ids[best]] == name
        assert ious[best] >= 0.85, (name, ious[best])
