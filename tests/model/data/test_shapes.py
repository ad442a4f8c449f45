"""Tests for the synthetic shapes generator: geometry, per-object specification, determinism, COCO output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from model.data import shapes

SPEC_IMAGES = 40


def _edges(polygon: np.ndarray) -> np.ndarray:
    """Edge vectors (k, 2) of a polygon (k, 2), edge i running from vertex i to vertex i + 1."""
    return np.roll(polygon, -1, axis=0) - polygon


def _signed_area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _interior_angles(polygon: np.ndarray) -> np.ndarray:
    """Interior angles (k,) in degrees of a convex polygon (k, 2)."""
    incoming = _edges(polygon)
    before = -np.roll(incoming, 1, axis=0)
    cos = np.sum(incoming * before, axis=1) / (
        np.linalg.norm(incoming, axis=1) * np.linalg.norm(before, axis=1)
    )
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _even_odd_inside(outline: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Reference point-in-polygon by ray crossing, independent of the generator's half-plane test."""
    inside = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=bool)
    for (ax, ay), (bx, by) in zip(outline, np.roll(outline, -1, axis=0), strict=True):
        straddles = (ay > y) != (by > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing_x = ax + (y - ay) * (bx - ax) / (by - ay)
        inside ^= straddles & (x < crossing_x)
    return inside


def test_rectangle_geometry() -> None:
    rng = np.random.default_rng(0)
    aspects = []
    for _ in range(500):
        corners = shapes.sample_rectangle(rng)
        assert _signed_area(corners) > 0
        np.testing.assert_allclose(np.linalg.norm(corners, axis=1), 1.0)
        np.testing.assert_allclose(_interior_angles(corners), 90.0, atol=1e-6)
        sides = np.linalg.norm(_edges(corners), axis=1)
        aspects.append(sides[0] / sides[1])
    assert 1 / 3 - 1e-9 <= min(aspects) < 0.4
    assert 2.6 < max(aspects) <= 3 + 1e-9


def test_triangle_geometry() -> None:
    rng = np.random.default_rng(1)
    smallest = []
    for _ in range(1000):
        vertices = shapes.sample_triangle(rng)
        assert _signed_area(vertices) > 0
        angles = _interior_angles(vertices)
        assert angles.sum() == pytest.approx(180.0)
        assert angles.min() >= 25.0 - 1e-9
        smallest.append(angles.min())
        radii = np.linalg.norm(vertices, axis=1)
        # The unit circle is the minimal enclosing circle: it holds every vertex and passes through at least
        # two of them (the ends of the longest side when the triangle is obtuse).
        assert radii.max() <= 1 + 1e-9
        assert np.sum(radii > 1 - 1e-9) >= 2
        if angles.max() > 90.0:
            longest = np.linalg.norm(_edges(vertices), axis=1).max()
            assert longest == pytest.approx(2.0)
    assert min(smallest) < 26.0


def test_star_geometry() -> None:
    rng = np.random.default_rng(2)
    for _ in range(200):
        outline = shapes.sample_star(rng)
        radii = np.linalg.norm(outline, axis=1)
        np.testing.assert_allclose(radii[0::2], 1.0)
        ratio = radii[1::2]
        np.testing.assert_allclose(ratio, ratio[0])
        assert 0.38 <= ratio[0] <= 0.5
        assert _signed_area(outline) > 0
        for kite in shapes.star_parts(outline):
            assert _signed_area(kite) > 0
            edges, following = _edges(kite), np.roll(_edges(kite), -1, axis=0)
            turns = edges[:, 0] * following[:, 1] - edges[:, 1] * following[:, 0]
            assert np.all(turns > 0), "kites must be convex for the half-plane test"


def test_star_rasterisation_matches_polygon_reference() -> None:
    rng = np.random.default_rng(3)
    outline = shapes.sample_star(rng)
    shape = shapes.Shape(shapes.STAR, center=(40.3, 37.8), radius=30.0, parts=shapes.star_parts(outline))
    (rows, cols), local = shapes.rasterize(shape, 80, 90)
    full = np.zeros((80, 90), dtype=bool)
    full[rows, cols] = local
    x = (np.arange(90)[None, :] + 0.5 - 40.3) / 30.0
    y = (np.arange(80)[:, None] + 0.5 - 37.8) / 30.0
    np.testing.assert_array_equal(full, _even_odd_inside(outline, x, y))


def test_ring_and_circle_rasterisation() -> None:
    ring = shapes.Shape(shapes.RING, center=(20.0, 20.0), radius=10.0, hole=0.5)
    disc = shapes.Shape(shapes.CIRCLE, center=(20.0, 20.0), radius=10.0)
    _, ring_mask = shapes.rasterize(ring, 40, 40)
    box, disc_mask = shapes.rasterize(disc, 40, 40)
    assert box == (slice(10, 30), slice(10, 30))
    ys, xs = np.mgrid[10:30, 10:30] + 0.5
    distance = np.hypot(xs - 20.0, ys - 20.0)
    np.testing.assert_array_equal(disc_mask, distance <= 10.0)
    np.testing.assert_array_equal(ring_mask, (distance > 5.0) & (distance <= 10.0))


def _check_object(scene: shapes.Scene, index: int) -> None:
    obj = scene.objects[index]
    height, width = scene.image.shape[:2]
    shape = obj.shape
    cx, cy = shape.center
    assert shapes.MIN_DIAMETER <= 2 * shape.radius <= shapes.MAX_DIAMETER
    assert shape.radius <= cx <= width - shape.radius
    assert shape.radius <= cy <= height - shape.radius
    # The mask's extent: every pixel centre lies in the enclosing circle and some come close to its edge.
    ys, xs = np.nonzero(obj.full_mask)
    reach = np.hypot(xs + 0.5 - cx, ys + 0.5 - cy).max()
    assert reach <= shape.radius + 1e-9
    assert reach >= shape.radius - 3.0
    assert max(xs.max() - xs.min(), ys.max() - ys.min()) + 1 <= shapes.MAX_DIAMETER
    # Visibility: the visible mask is the full one minus everything drawn later, and keeps half of it.
    covered = np.zeros_like(obj.full_mask)
    for later in scene.objects[index + 1 :]:
        covered |= later.full_mask
    np.testing.assert_array_equal(obj.visible_mask, obj.full_mask & ~covered)
    assert obj.visible_mask.sum() >= 0.5 * obj.full_mask.sum()
    background = scene.background[obj.full_mask].mean(axis=0)
    assert np.linalg.norm(np.array(obj.color) - background) >= 60.0
    pixels = scene.image[obj.visible_mask].astype(np.float64)
    if scene.blur_radius == 0.0 and not obj.noisy:
        assert np.all(pixels == obj.color)
    elif scene.blur_radius == 0.0 and len(pixels) >= 100:
        assert np.abs(pixels.mean(axis=0) - obj.color).max() < 5.0
        assert 5.0 < pixels.std(axis=0).mean() < 15.0


def test_scenes_follow_specification() -> None:
    seen_classes: set[int] = set()
    sizes: list[int] = []
    blurred = 0
    for index in range(SPEC_IMAGES):
        scene = shapes.render_scene(shapes.image_rng(11, index))
        height, width = scene.image.shape[:2]
        assert scene.image.dtype == np.uint8 and scene.image.shape == (height, width, 3)
        assert 256 <= height <= 800 and 256 <= width <= 800
        assert 1 <= len(scene.objects) <= 8
        blurred += scene.blur_radius > 0
        assert scene.blur_radius == 0.0 or 0.5 <= scene.blur_radius <= 1.2
        for index_in_scene, obj in enumerate(scene.objects):
            assert 0 <= obj.shape.class_id < len(shapes.SHAPE_CLASSES)
            seen_classes.add(obj.shape.class_id)
            sizes.append(2 * obj.shape.radius)
            _check_object(scene, index_in_scene)
    assert seen_classes == set(range(5))
    assert min(sizes) < 40 and max(sizes) > 150
    assert 0 < blurred < SPEC_IMAGES // 2


def test_render_image_returns_visible_masks() -> None:
    scene = shapes.render_scene(shapes.image_rng(5, 0))
    image, objects = shapes.render_image(shapes.image_rng(5, 0))
    np.testing.assert_array_equal(image, scene.image)
    assert [c for c, _ in objects] == [o.shape.class_id for o in scene.objects]
    for (_, mask), obj in zip(objects, scene.objects, strict=True):
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, obj.visible_mask)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_is_deterministic(tmp_path: Path) -> None:
    shapes.generate(tmp_path / "a", 4, seed=7)
    shapes.generate(tmp_path / "b", 4, seed=7)
    shapes.generate(tmp_path / "c", 4, seed=7, workers=2)
    shapes.generate(tmp_path / "d", 4, seed=8)
    first = _tree(tmp_path / "a")
    assert len(first) == 5
    assert _tree(tmp_path / "b") == first
    assert _tree(tmp_path / "c") == first
    assert _tree(tmp_path / "d") != first


@pytest.mark.parametrize("jpeg_fraction", [0.0, 1.0])
def test_generate_writes_coco(tmp_path: Path, jpeg_fraction: float) -> None:
    seed, count = 21, 3
    shapes.main(
        [str(tmp_path), "--images", str(count), "--seed", str(seed), "--jpeg-fraction", str(jpeg_fraction)]
    )
    json_path = tmp_path / "annotations.json"
    coco = COCO(str(json_path))
    assert [coco.cats[c]["name"] for c in sorted(coco.cats)] == list(shapes.SHAPE_CLASSES)
    assert sorted(coco.imgs) == list(range(1, count + 1))
    annotation_ids = sorted(coco.anns)
    assert annotation_ids == list(range(1, len(annotation_ids) + 1))
    for index in range(count):
        image_id = index + 1
        info = coco.imgs[image_id]
        assert info["file_name"].endswith(".jpg" if jpeg_fraction else ".png")
        image, objects = shapes.render_image(shapes.image_rng(seed, index))
        assert (info["height"], info["width"]) == image.shape[:2]
        with Image.open(tmp_path / "images" / info["file_name"]) as stored:
            assert stored.size == (info["width"], info["height"])
            if not jpeg_fraction:
                np.testing.assert_array_equal(np.asarray(stored), image)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(annotations) == len(objects)
        for annotation, (class_id, mask) in zip(annotations, objects, strict=True):
            assert annotation["category_id"] == class_id + 1
            assert annotation["iscrowd"] == 0
            assert isinstance(annotation["segmentation"]["counts"], str)
            np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), mask)
            rle = coco.annToRLE(annotation)
            assert annotation["area"] == mask.sum() == mask_util.area(rle)
            np.testing.assert_array_equal(annotation["bbox"], mask_util.toBbox(rle))
    assert json.loads(json_path.read_text())["info"]["seed"] == seed


def test_tiny_images_are_rejected() -> None:
    with pytest.raises(ValueError):
        shapes.render_scene(np.random.default_rng(0), height=20, width=100)


def test_small_custom_size_keeps_objects_inside() -> None:
    rng = np.random.default_rng(4)
    for _ in range(5):
        scene = shapes.render_scene(rng, height=48, width=64, num_objects=3)
        assert scene.image.shape == (48, 64, 3)
        for obj in scene.objects:
            assert 2 * obj.shape.radius <= 48 + 1e-9
            assert math.isfinite(obj.shape.radius)
