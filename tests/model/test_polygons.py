"""model.wire.polygons: crops to polygons with holes that rasterise back to the mask itself."""

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from centermask_client.rle import decode
from model.wire.polygons import crop_to_polygons
from training.data.shapes import RING, Shape, rasterize

HEIGHT, WIDTH = 240, 320
X0, Y0 = 37, 21


def rasterise_ring(ring: list[float], height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """(height, width) bool pixels whose centres pycocotools finds inside one ring."""
    return decode(mask_utils.merge(mask_utils.frPyObjects([ring], height, width)))


def rasterise(parts: list[dict], height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """The documented meaning of polygon parts: the union of each outer ring minus its holes."""
    mask = np.zeros((height, width), dtype=bool)
    for part in parts:
        holes = np.zeros((height, width), dtype=bool)
        for hole in part["holes"]:
            holes |= rasterise_ring(hole, height, width)
        mask |= rasterise_ring(part["outer"], height, width) & ~holes
    return mask


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
def test_solid_shapes_rasterise_back_exactly(name: str) -> None:
    crop = SOLID_SHAPES[name]
    parts = crop_to_polygons(crop, X0, Y0)
    assert len(parts) == 1 and parts[0]["holes"] == []
    np.testing.assert_array_equal(rasterise(parts), place(crop))


@pytest.mark.parametrize(
    ("diameter", "hole"),
    [(24.0, 0.45), (40.0, 0.7), (90.0, 0.5), (150.0, 0.62), (230.0, 0.7)],
)
def test_rings_of_the_shapes_dataset_keep_their_hole(diameter: float, hole: float) -> None:
    shape = Shape(RING, center=(WIDTH / 2 + 0.3, HEIGHT / 2 - 0.2), radius=diameter / 2, hole=hole)
    (rows, cols), local = rasterize(shape, HEIGHT, WIDTH)
    ring = np.zeros((HEIGHT, WIDTH), dtype=bool)
    ring[rows, cols] = local
    [part] = crop_to_polygons(local, cols.start, rows.start)
    assert len(part["holes"]) == 1
    restored = rasterise([part])
    assert iou(restored, ring) >= 0.95
    np.testing.assert_array_equal(restored, ring)
    assert not restored[HEIGHT // 2, WIDTH // 2], "the hole is part of the mask"


def test_rectangle_corners_are_pixel_corners_offset_by_crop_origin() -> None:
    h, w = 10, 20
    [part] = crop_to_polygons(np.ones((h, w), dtype=np.uint8), X0, Y0)
    outer = part["outer"]
    corners = set(zip(outer[0::2], outer[1::2], strict=True))
    assert corners == {(X0, Y0), (X0 + w, Y0), (X0 + w, Y0 + h), (X0, Y0 + h)}
    assert all(isinstance(v, float) for v in outer)


def test_a_region_inside_a_hole_is_a_part_of_its_own() -> None:
    crop = disc(100, 48.0) & ~disc(100, 30.0) | disc(100, 12.0)
    parts = crop_to_polygons(crop, X0, Y0)
    assert sorted(len(part["holes"]) for part in parts) == [0, 1]
    np.testing.assert_array_equal(rasterise(parts), place(crop))


def test_separate_regions_give_separate_parts() -> None:
    crop = np.zeros((70, 120), dtype=bool)
    crop[2:32, 3:50] = True
    crop[40:68, 60:118] = True
    parts = crop_to_polygons(crop, X0, Y0)
    assert len(parts) == 2
    np.testing.assert_array_equal(rasterise(parts), place(crop))


def test_single_pixels_and_thin_lines_keep_their_area() -> None:
    crop = np.zeros((20, 20), dtype=bool)
    crop[3, 3] = True
    crop[10, 2:18] = True
    parts = crop_to_polygons(crop, X0, Y0)
    assert len(parts) == 2
    assert {(X0 + 3.0, Y0 + 3.0), (X0 + 4.0, Y0 + 4.0)} <= {
        (x, y) for part in parts for x, y in zip(part["outer"][0::2], part["outer"][1::2], strict=True)
    }
    np.testing.assert_array_equal(rasterise(parts), place(crop))


def test_pixels_touching_at_a_corner_are_one_region() -> None:
    crop = np.eye(4, dtype=bool)
    parts = crop_to_polygons(crop, X0, Y0)
    assert len(parts) == 1
    np.testing.assert_array_equal(rasterise(parts), place(crop))


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 24))))
def test_any_mask_rasterises_back_exactly(crop: np.ndarray) -> None:
    np.testing.assert_array_equal(rasterise(crop_to_polygons(crop, X0, Y0)), place(crop))


@pytest.mark.parametrize("shape", [(0, 0), (0, 7), (7, 0)])
def test_empty_crop(shape: tuple[int, int]) -> None:
    assert crop_to_polygons(np.zeros(shape, dtype=bool), X0, Y0) == []


def test_all_zero_crop() -> None:
    assert crop_to_polygons(np.zeros((12, 9), dtype=np.uint8), X0, Y0) == []


def test_strided_uint8_crop_with_any_nonzero_value() -> None:
    crop = np.zeros((60, 80), dtype=np.uint8)
    crop[10:50, 20:70] = 255
    crop[20:30, 30:40] = 0
    parts = crop_to_polygons(crop[::2, ::2], X0, Y0)
    np.testing.assert_array_equal(rasterise(parts), place(crop[::2, ::2] != 0))


def test_non_2d_crop_is_rejected() -> None:
    with pytest.raises(ValueError, match="2-D"):
        crop_to_polygons(np.ones((4, 4, 1), dtype=bool), 0, 0)
