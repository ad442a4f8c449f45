"""model.polygons: crops to COCO polygons that rasterise back to the mask's outer shape."""

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from model.polygons import crop_to_polygons
from model.rle import decode

HEIGHT, WIDTH = 240, 320
X0, Y0 = 37, 21


def rasterise(polygons: list[list[float]]) -> np.ndarray:
    """(HEIGHT, WIDTH) bool union of COCO polygons, rasterised by pycocotools."""
    return decode(mask_utils.merge(mask_utils.frPyObjects(polygons, HEIGHT, WIDTH)))


def place(crop: np.ndarray) -> np.ndarray:
    """(HEIGHT, WIDTH) bool image with the crop at (X0, Y0)."""
    full = np.zeros((HEIGHT, WIDTH), dtype=bool)
    full[Y0 : Y0 + crop.shape[0], X0 : X0 + crop.shape[1]] = crop
    return full


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def disc(size: int, radius: float) -> np.ndarray:
    """(size, size) bool disc centred in the crop."""
    ys, xs = np.indices((size, size)) + 0.5
    return (ys - size / 2) ** 2 + (xs - size / 2) ** 2 <= radius**2


def star(size: int, points: int = 5) -> np.ndarray:
    """(size, size) bool star: radius oscillating between 0.2 and 0.48 of the size with the angle."""
    ys, xs = np.indices((size, size)) + 0.5
    dy, dx = ys - size / 2, xs - size / 2
    radius = size * (0.34 + 0.14 * np.cos(points * np.arctan2(dy, dx)))
    return np.hypot(dy, dx) <= radius


SOLID_SHAPES = {
    "disc": disc(80, 36.0),
    "rectangle": np.ones((40, 90), dtype=bool),
    "star": star(120),
}


@pytest.mark.parametrize("name", SOLID_SHAPES)
def test_solid_shapes_rasterise_back(name: str) -> None:
    crop = SOLID_SHAPES[name]
    polygons = crop_to_polygons(crop, X0, Y0)
    assert len(polygons) == 1
    assert iou(rasterise(polygons), place(crop)) >= 0.9


def test_rectangle_corners_are_pixel_centres_offset_by_crop_origin() -> None:
    h, w = 10, 20
    (polygon,) = crop_to_polygons(np.ones((h, w), dtype=np.uint8), X0, Y0)
    corners = set(zip(polygon[0::2], polygon[1::2], strict=True))
    left, top, right, bottom = X0 + 0.5, Y0 + 0.5, X0 + w - 0.5, Y0 + h - 0.5
    assert corners == {(left, top), (left, bottom), (right, bottom), (right, top)}
    assert all(isinstance(v, float) for v in polygon)


def test_ring_keeps_only_its_outer_boundary() -> None:
    outer = disc(90, 40.0)
    ring = outer & ~disc(90, 20.0)
    polygons = crop_to_polygons(ring, X0, Y0)
    assert len(polygons) == 1
    filled = rasterise(polygons)
    # Holes are ignored: the polygon covers the ring and its hole, up to the outer boundary.
    assert iou(filled, place(outer)) >= 0.9
    assert filled[Y0 + 45, X0 + 45]


def test_separate_regions_give_separate_polygons() -> None:
    crop = np.zeros((70, 120), dtype=bool)
    crop[2:32, 3:50] = True
    crop[40:68, 60:118] = True
    polygons = crop_to_polygons(crop, X0, Y0)
    assert len(polygons) == 2
    assert iou(rasterise(polygons), place(crop)) >= 0.9


def test_degenerate_regions_are_dropped() -> None:
    crop = np.zeros((20, 20), dtype=bool)
    crop[3, 3] = True
    crop[10, 2:18] = True
    assert crop_to_polygons(crop, X0, Y0) == []


@pytest.mark.parametrize("shape", [(0, 0), (0, 7), (7, 0)])
def test_empty_crop(shape: tuple[int, int]) -> None:
    assert crop_to_polygons(np.zeros(shape, dtype=bool), X0, Y0) == []


def test_all_zero_crop() -> None:
    assert crop_to_polygons(np.zeros((12, 9), dtype=np.uint8), X0, Y0) == []


def test_strided_uint8_crop_with_any_nonzero_value() -> None:
    crop = np.zeros((60, 80), dtype=np.uint8)
    crop[10:50, 20:70] = 255
    polygons = crop_to_polygons(crop[::2, ::2], X0, Y0)
    assert iou(rasterise(polygons), place(crop[::2, ::2] != 0)) >= 0.9


def test_non_2d_crop_is_rejected() -> None:
    with pytest.raises(ValueError, match="2-D"):
        crop_to_polygons(np.ones((4, 4, 1), dtype=bool), 0, 0)
