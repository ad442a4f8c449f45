"""Tests for the synthetic shapes generator: geometry, per-object settings, anti-aliasing, presets,
determinism, COCO output."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from training.data import shapes
from training.data.shapes import CLASSIC, PRESETS, TRAINING, VALIDATION, GeneratorSettings

SPEC_IMAGES = 40
# Pixels and masks of images 0-3 of seed 1000 as the generator wrote them before its settings became data:
# the held-out set of the first bundled model. CLASSIC must keep reproducing it.
CLASSIC_DIGEST = "bedc44292f2929c10b94744d04b4b2b713010bcc8fe6c1cd910aba7f0b8b0687"
# Everything off that changes pixel values away from an object's flat colour.
PLAIN = dataclasses.replace(
    TRAINING,
    name="plain",
    fills=("flat",),
    object_noise_prob=0.0,
    outline_prob=0.0,
    lighting_prob=0.0,
    blur_prob=0.0,
    antialias_prob=0.0,
    backgrounds=("uniform",),
)


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


def _scene_digest(settings: GeneratorSettings, seed: int, count: int) -> str:
    digest = hashlib.sha256()
    for index in range(count):
        image, objects = shapes.render_image(shapes.image_rng(seed, index), settings)
        digest.update(image.tobytes())
        for class_id, mask in objects:
            digest.update(bytes([class_id]))
            digest.update(np.packbits(mask).tobytes())
    return digest.hexdigest()


def test_classic_reproduces_the_first_bundled_models_data() -> None:
    assert _scene_digest(CLASSIC, 1000, 4) == CLASSIC_DIGEST


@pytest.mark.parametrize("settings", [CLASSIC, TRAINING], ids=lambda s: s.name)
def test_rectangle_geometry(settings: GeneratorSettings) -> None:
    rng = np.random.default_rng(0)
    aspects, axis_aligned = [], 0
    for _ in range(1000):
        corners = shapes.sample_rectangle(rng, settings)
        assert _signed_area(corners) > 0
        np.testing.assert_allclose(np.linalg.norm(corners, axis=1), 1.0)
        np.testing.assert_allclose(_interior_angles(corners), 90.0, atol=1e-6)
        sides = np.linalg.norm(_edges(corners), axis=1)
        aspects.append(sides[0] / sides[1])
        axis_aligned += bool(np.all(np.isclose(_edges(corners), 0.0, atol=1e-9).any(axis=1)))
    top = settings.rectangle_max_aspect
    assert 1 / top - 1e-9 <= min(aspects) < 1.2 / top
    assert 0.85 * top < max(aspects) <= top + 1e-9
    squares = np.isclose(aspects, 1.0).mean()
    assert squares == pytest.approx(settings.square_share, abs=0.04)
    assert axis_aligned / 1000 == pytest.approx(settings.axis_aligned_share, abs=0.05)


@pytest.mark.parametrize("settings", [CLASSIC, TRAINING], ids=lambda s: s.name)
def test_triangle_geometry(settings: GeneratorSettings) -> None:
    rng = np.random.default_rng(1)
    smallest, upright = [], 0
    for _ in range(1000):
        vertices = shapes.sample_triangle(rng, settings)
        assert _signed_area(vertices) > 0
        angles = _interior_angles(vertices)
        assert angles.sum() == pytest.approx(180.0)
        assert angles.min() >= settings.triangle_min_angle - 1e-9
        smallest.append(angles.min())
        radii = np.linalg.norm(vertices, axis=1)
        # The unit circle is the minimal enclosing circle: it holds every vertex and passes through at least
        # two of them (the ends of the longest side when the triangle is obtuse).
        assert radii.max() <= 1 + 1e-9
        assert np.sum(radii > 1 - 1e-9) >= 2
        if angles.max() > 90.0:
            longest = np.linalg.norm(_edges(vertices), axis=1).max()
            assert longest == pytest.approx(2.0)
        # Standing on a side: two vertices share the largest y (image y grows downwards).
        lowest = np.sort(vertices[:, 1])[-2:]
        upright += bool(np.isclose(lowest[0], lowest[1], atol=1e-9))
    assert min(smallest) < settings.triangle_min_angle + 1.0
    assert upright / 1000 == pytest.approx(settings.upright_share, abs=0.05)


@pytest.mark.parametrize("settings", [CLASSIC, TRAINING], ids=lambda s: s.name)
def test_star_geometry(settings: GeneratorSettings) -> None:
    rng = np.random.default_rng(2)
    points_seen, upright = set(), 0
    for _ in range(400):
        outline = shapes.sample_star(rng, settings)
        points = len(outline) // 2
        points_seen.add(points)
        radii = np.linalg.norm(outline, axis=1)
        np.testing.assert_allclose(radii[0::2], 1.0)
        ratio = radii[1::2]
        np.testing.assert_allclose(ratio, ratio[0])
        assert settings.star_ratio[0] <= ratio[0] <= settings.star_ratio[1]
        assert _signed_area(outline) > 0
        upright += bool(np.isclose(outline[:, 1].min(), -1.0) and np.isclose(outline[0], [0.0, -1.0]).all())
        parts = shapes.star_parts(outline)
        assert len(parts) == points
        for kite in parts:
            assert _signed_area(kite) > 0
            edges, following = _edges(kite), np.roll(_edges(kite), -1, axis=0)
            turns = edges[:, 0] * following[:, 1] - edges[:, 1] * following[:, 0]
            assert np.all(turns > 0), "kites must be convex for the half-plane test"
    assert points_seen == set(settings.star_points)
    assert upright / 400 == pytest.approx(settings.upright_share, abs=0.07)


@pytest.mark.parametrize("seed", [3, 4])
def test_star_rasterisation_matches_polygon_reference(seed: int) -> None:
    settings = dataclasses.replace(TRAINING, star_points=(5 + 3 * (seed - 3),))
    outline = shapes.sample_star(np.random.default_rng(seed), settings)
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


def test_small_rings_keep_their_minimum_width() -> None:
    settings = dataclasses.replace(TRAINING, diameter=(12.0, 14.0), ring_hole=(0.85, 0.85))
    rng = np.random.default_rng(5)
    rings = [s for s in (shapes.sample_shape(rng, 64, 64, settings) for _ in range(300)) if s.class_id == 4]
    assert rings
    for ring in rings:
        assert (1.0 - ring.hole) * ring.radius == pytest.approx(settings.min_ring_width)


@pytest.mark.parametrize(
    "shape",
    [
        shapes.Shape(shapes.CIRCLE, center=(30.3, 28.7), radius=21.4),
        shapes.Shape(shapes.RING, center=(30.3, 28.7), radius=21.4, hole=0.6),
        shapes.Shape(
            shapes.STAR,
            center=(31.1, 29.9),
            radius=25.0,
            parts=shapes.star_parts(shapes.sample_star(np.random.default_rng(6), TRAINING)),
        ),
    ],
    ids=["circle", "ring", "star"],
)
def test_coverage_is_the_exact_area(shape: shapes.Shape) -> None:
    box, mask = shapes.rasterize(shape, 64, 64)
    alpha = shapes.coverage(shape, box, mask, samples=8)
    if shape.parts:
        area = sum(_signed_area(part) for part in shape.parts) * shape.radius**2
    else:
        area = math.pi * shape.radius**2 * (1 - shape.hole**2)
    assert alpha.sum() == pytest.approx(area, rel=2e-3)
    assert ((alpha > 0) & (alpha < 1) & ~shapes.edge_band(mask)).sum() == 0
    # Off the edge band the coverage is the pixel-centre mask itself.
    np.testing.assert_array_equal(alpha[~shapes.edge_band(mask)], mask[~shapes.edge_band(mask)])


def _check_object(scene: shapes.Scene, index: int, settings: GeneratorSettings) -> None:
    obj = scene.objects[index]
    height, width = scene.image.shape[:2]
    shape = obj.shape
    cx, cy = shape.center
    assert settings.diameter[0] <= 2 * shape.radius <= min(settings.diameter[1], height, width)
    assert shape.radius <= cx <= width - shape.radius
    assert shape.radius <= cy <= height - shape.radius
    if shape.class_id == shapes.RING:
        assert shape.hole <= settings.ring_hole[1]
        assert shape.hole >= settings.ring_hole[0] or shape.hole == 1 - settings.min_ring_width / shape.radius
    # Masks are by pixel centres whatever the painting: the full mask is the rasterised shape.
    box, local = shapes.rasterize(shape, height, width)
    np.testing.assert_array_equal(obj.full_mask[box], local)
    assert obj.full_mask.sum() == local.sum()
    # The mask's extent: every pixel centre lies in the enclosing circle and some come close to its edge.
    ys, xs = np.nonzero(obj.full_mask)
    reach = np.hypot(xs + 0.5 - cx, ys + 0.5 - cy).max()
    assert reach <= shape.radius + 1e-9
    assert reach >= shape.radius - 3.0
    # Visibility: the visible mask is the full one minus everything drawn later, and keeps enough of it.
    covered = np.zeros_like(obj.full_mask)
    for later in scene.objects[index + 1 :]:
        covered |= later.full_mask
    np.testing.assert_array_equal(obj.visible_mask, obj.full_mask & ~covered)
    assert obj.visible_mask.sum() >= settings.min_visible_fraction * obj.full_mask.sum()
    background = scene.background[obj.full_mask].mean(axis=0)
    assert np.linalg.norm(np.array(obj.color) - background) >= settings.min_colour_distance
    assert obj.fill in settings.fills
    assert (
        obj.outline_width == 0.0
        or settings.outline_width[0] <= obj.outline_width <= settings.outline_width[1]
    )
    if scene.blur_radius or scene.lighting is not None or obj.fill != "flat" or obj.outline_width:
        return
    # Pixels that only this object paints, away from every anti-aliased edge.
    pixels = scene.image[obj.visible_mask & ~_edge_pixels(scene)].astype(np.float64)
    if not obj.noisy:
        assert np.all(pixels == obj.color)
    elif settings is CLASSIC and len(pixels) >= 100:
        assert np.abs(pixels.mean(axis=0) - obj.color).max() < 5.0
        assert 5.0 < pixels.std(axis=0).mean() < 15.0


def _edge_pixels(scene: shapes.Scene) -> np.ndarray:
    """Pixels within one pixel of an object's boundary on anti-aliased scenes (nothing otherwise)."""
    edges = np.zeros(scene.image.shape[:2], dtype=bool)
    if scene.antialiased:
        for obj in scene.objects:
            edges |= shapes.edge_band(obj.full_mask)
    return edges


@pytest.mark.parametrize("settings", [CLASSIC, TRAINING, VALIDATION], ids=lambda s: s.name)
def test_scenes_follow_settings(settings: GeneratorSettings) -> None:
    seen_classes: set[int] = set()
    sizes: list[float] = []
    counts: list[int] = []
    kinds: set[str] = set()
    blurred = antialiased = lit = 0
    for index in range(SPEC_IMAGES):
        scene = shapes.render_scene(shapes.image_rng(11, index), settings)
        height, width = scene.image.shape[:2]
        assert scene.image.dtype == np.uint8 and scene.image.shape == (height, width, 3)
        low, high = settings.image_side
        assert low <= height <= high and low <= width <= high
        assert 1 <= len(scene.objects) <= settings.objects[1]
        assert scene.background_kind in settings.backgrounds
        kinds.add(scene.background_kind)
        counts.append(len(scene.objects))
        blurred += scene.blur_radius > 0
        antialiased += scene.antialiased
        assert (
            scene.blur_radius == 0.0
            or settings.blur_radius[0] <= scene.blur_radius <= settings.blur_radius[1]
        )
        if scene.lighting is not None:
            lit += 1
            assert np.abs(scene.lighting - 1.0).max() <= settings.lighting_strength + 1e-6
        for index_in_scene, obj in enumerate(scene.objects):
            assert 0 <= obj.shape.class_id < len(shapes.SHAPE_CLASSES)
            seen_classes.add(obj.shape.class_id)
            sizes.append(2 * obj.shape.radius)
            _check_object(scene, index_in_scene, settings)
    assert seen_classes == set(range(5))
    assert min(sizes) < 2 * settings.diameter[0] and max(sizes) > 150
    assert max(counts) > (settings.objects[0] + settings.objects[1]) / 2
    assert len(kinds) >= min(3, len(set(settings.backgrounds)))
    for happened, probability in ((blurred, settings.blur_prob), (antialiased, settings.antialias_prob),
                                  (lit, settings.lighting_prob)):  # fmt: skip
        assert (happened > 0) == (probability > 0)
        assert happened <= max(2, 3 * probability * SPEC_IMAGES)


def test_antialiased_pixels_blend_only_at_edges() -> None:
    settings = dataclasses.replace(PLAIN, antialias_prob=1.0)
    blended_at_edges = 0
    for index in range(6):
        scene = shapes.render_scene(shapes.image_rng(21, index), settings)
        assert scene.antialiased and scene.objects
        # What pixel centres alone would paint: the background, then each object's colour in drawing order.
        expected = scene.background.copy()
        for obj in scene.objects:
            expected[obj.full_mask] = obj.color
        edges = _edge_pixels(scene)
        np.testing.assert_array_equal(scene.image[~edges], expected[~edges])
        blended_at_edges += int(np.any(scene.image[edges] != expected[edges], axis=-1).sum())
        for index_in_scene in range(len(scene.objects)):
            _check_object(scene, index_in_scene, settings)
    assert blended_at_edges > 100


def test_antialiasing_never_moves_masks() -> None:
    sharp = shapes.render_scene(shapes.image_rng(22, 0), PLAIN)
    smooth = shapes.render_scene(shapes.image_rng(22, 0), dataclasses.replace(PLAIN, antialias_prob=1.0))
    assert not sharp.antialiased and smooth.antialiased
    assert len(sharp.objects) == len(smooth.objects) > 0
    for a, b in zip(sharp.objects, smooth.objects, strict=True):
        np.testing.assert_array_equal(a.full_mask, b.full_mask)
        np.testing.assert_array_equal(a.visible_mask, b.visible_mask)
    differ = np.any(sharp.image != smooth.image, axis=-1)
    assert differ.any() and not (differ & ~_edge_pixels(smooth)).any()


def test_outlines_sit_inside_the_mask_edge() -> None:
    settings = dataclasses.replace(PLAIN, outline_prob=1.0, outline_width=(3.0, 3.0), antialias_prob=0.0)
    checked = 0
    for index in range(6):
        scene = shapes.render_scene(shapes.image_rng(23, index), settings)
        for obj in scene.objects:
            assert obj.outline_width == 3.0
            disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (11, 11))  # well inside the 3-pixel outline
            inner = cv2.erode(obj.full_mask.view(np.uint8), disc, borderValue=0).astype(bool)
            inside = obj.visible_mask & inner
            rim = obj.visible_mask & obj.full_mask & shapes.edge_band(obj.full_mask)
            if inside.sum() < 20 or rim.sum() < 20:
                continue
            assert np.all(scene.image[inside] == obj.color)
            assert np.mean(np.any(scene.image[rim] != obj.color, axis=-1)) > 0.9
            checked += 1
    assert checked >= 5


def test_lighting_multiplies_the_whole_image() -> None:
    settings = dataclasses.replace(PLAIN, lighting_prob=1.0)
    scene = shapes.render_scene(shapes.image_rng(24, 0), settings)
    assert scene.lighting is not None and scene.lighting.shape == scene.image.shape[:2]
    assert np.ptp(scene.lighting) > 0.05
    free = ~np.any([o.full_mask for o in scene.objects], axis=0)
    lit = np.clip(np.rint(scene.background.astype(np.float32) * scene.lighting[..., None]), 0, 255)
    np.testing.assert_array_equal(scene.image[free], lit[free])


def test_presets_differ_where_they_say() -> None:
    assert set(PRESETS) == {"classic", "training", "validation"}
    for field in ("image_side", "objects", "diameter", "backgrounds"):
        assert getattr(VALIDATION, field) != getattr(TRAINING, field), field
    # Validation shows a background kind training never does; training is wider than the classic data.
    assert set(VALIDATION.backgrounds) - set(TRAINING.backgrounds)
    assert set(CLASSIC.backgrounds) < set(TRAINING.backgrounds)
    for field in ("diameter", "star_ratio", "ring_hole", "image_side"):
        (low, high), (classic_low, classic_high) = getattr(TRAINING, field), getattr(CLASSIC, field)
        assert low < classic_low and high > classic_high, field
    assert TRAINING.objects[1] > CLASSIC.objects[1]
    assert TRAINING.triangle_min_angle < CLASSIC.triangle_min_angle
    assert TRAINING.rectangle_max_aspect > CLASSIC.rectangle_max_aspect
    assert set(TRAINING.star_points) > set(CLASSIC.star_points)
    assert set(TRAINING.fills) > set(CLASSIC.fills)
    for field in ("antialias_prob", "outline_prob", "lighting_prob", "square_share", "axis_aligned_share"):
        assert getattr(CLASSIC, field) == 0 < getattr(TRAINING, field), field
    # The same seed draws different images under different presets.
    assert _scene_digest(TRAINING, 5, 2) != _scene_digest(VALIDATION, 5, 2)


@pytest.mark.parametrize(
    "change",
    [
        {"diameter": (30.0, 20.0)},
        {"blur_prob": 1.5},
        {"backgrounds": ("plaid",)},
        {"fills": ()},
        {"star_points": (2,)},
        {"triangle_min_angle": 60.0},
        {"image_side": (8, 64)},
    ],
)
def test_settings_reject_impossible_values(change: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(TRAINING, **change)


def test_render_image_returns_visible_masks() -> None:
    scene = shapes.render_scene(shapes.image_rng(5, 0), TRAINING)
    image, objects = shapes.render_image(shapes.image_rng(5, 0), TRAINING)
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
    shapes.generate(tmp_path / "e", 4, seed=7, settings=VALIDATION)
    first = _tree(tmp_path / "a")
    assert len(first) == 5
    assert _tree(tmp_path / "b") == first
    assert _tree(tmp_path / "c") == first
    assert _tree(tmp_path / "d") != first
    assert _tree(tmp_path / "e") != first


@pytest.mark.parametrize(
    ("preset", "jpeg_fraction"), [("training", 0.0), ("validation", 1.0), ("classic", 0.0)]
)
def test_generate_writes_coco(tmp_path: Path, preset: str, jpeg_fraction: float) -> None:
    seed, count = 21, 3
    shapes.main([str(tmp_path), "--images", str(count), "--seed", str(seed), "--preset", preset,
                 "--jpeg-fraction", str(jpeg_fraction)])  # fmt: skip
    json_path = tmp_path / "annotations.json"
    coco = COCO(str(json_path))
    assert [coco.cats[c]["name"] for c in sorted(coco.cats)] == list(shapes.SHAPE_CLASSES)
    assert sorted(coco.cats) == [1, 2, 3, 4, 5]
    assert sorted(coco.imgs) == list(range(1, count + 1))
    annotation_ids = sorted(coco.anns)
    assert annotation_ids == list(range(1, len(annotation_ids) + 1))
    for index in range(count):
        image_id = index + 1
        info = coco.imgs[image_id]
        assert info["file_name"].endswith(".jpg" if jpeg_fraction else ".png")
        image, objects = shapes.render_image(shapes.image_rng(seed, index), PRESETS[preset])
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
    info = json.loads(json_path.read_text())["info"]
    assert info["seed"] == seed
    assert info["settings"]["name"] == preset and info["settings"]["jpeg_fraction"] == jpeg_fraction


def test_tiny_images_are_rejected() -> None:
    with pytest.raises(ValueError):
        shapes.render_scene(np.random.default_rng(0), CLASSIC, height=20, width=100)


def test_small_custom_size_keeps_objects_inside() -> None:
    rng = np.random.default_rng(4)
    for _ in range(5):
        scene = shapes.render_scene(rng, TRAINING, height=48, width=64, num_objects=3)
        assert scene.image.shape == (48, 64, 3)
        for obj in scene.objects:
            assert 2 * obj.shape.radius <= 48 + 1e-9
            assert math.isfinite(obj.shape.radius)
