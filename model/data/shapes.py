"""Synthetic shapes dataset: images of circles, rectangles, triangles, stars and rings with COCO labels.

Every object is rasterised from exact geometry (predicates evaluated at pixel centres, no anti-aliasing), so
the ground-truth masks are exact. Image ``i`` draws all of its randomness from ``image_rng(seed, i)``, which
makes generation deterministic per seed and independent of how the images are split across processes.

CLI::

    python -m model.data.shapes OUT_DIR --images N --seed S [--jpeg-fraction F] [--workers W]

writes ``OUT_DIR/images/*.{png,jpg}`` and the COCO file ``OUT_DIR/annotations.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from pycocotools import mask as mask_util

SHAPE_CLASSES = ("circle", "rectangle", "triangle", "star", "ring")
CIRCLE, RECTANGLE, TRIANGLE, STAR, RING = range(len(SHAPE_CLASSES))

MIN_DIAMETER = 24.0
MAX_DIAMETER = 256.0
MIN_IMAGE_SIDE = 256
MAX_IMAGE_SIDE = 800
MAX_OBJECTS = 8
MIN_VISIBLE_FRACTION = 0.5
MIN_COLOUR_DISTANCE = 60.0
MAX_ASPECT = 3.0
MIN_TRIANGLE_ANGLE = math.radians(25.0)
STAR_RATIO_RANGE = (0.38, 0.5)
RING_RATIO_RANGE = (0.45, 0.7)
NOISE_PROB = 0.5
NOISE_SIGMA = 10.0
BLUR_PROB = 0.15
BLUR_RADIUS_RANGE = (0.5, 1.2)
JPEG_QUALITY = 90
DEFAULT_JPEG_FRACTION = 0.5
# Shapes of at least MIN_DIAMETER are never this small; the guard only catches degenerate geometry.
MIN_OBJECT_AREA = 16
# A crowded image may have no valid spot left for another object; give up on it rather than loop forever.
PLACEMENT_ATTEMPTS = 30

Box = tuple[slice, slice]


@dataclass(frozen=True)
class Shape:
    """One object's exact geometry in image pixel coordinates.

    ``center`` (x, y) and ``radius`` describe the shape's minimal enclosing circle; the object's size is
    ``2 * radius``. ``parts`` are convex polygons, each (k, 2) counter-clockwise in unit coordinates (the
    enclosing circle mapped to the unit circle at the origin), whose union is the shape; empty for discs.
    ``hole`` is a ring's inner/outer radius ratio and 0 for every other class.
    """

    class_id: int
    center: tuple[float, float]
    radius: float
    parts: tuple[np.ndarray, ...] = ()
    hole: float = 0.0


@dataclass
class SceneObject:
    """A placed object: geometry, colour and masks, each mask bool (H, W)."""

    shape: Shape
    color: tuple[int, int, int]
    noisy: bool
    full_mask: np.ndarray
    visible_mask: np.ndarray


@dataclass
class Scene:
    """A rendered image with everything needed to check it against the specification.

    ``image`` and ``background`` are uint8 (H, W, 3) RGB; ``objects`` are in drawing order (later ones on
    top); ``blur_radius`` is 0 when the image was not blurred.
    """

    image: np.ndarray
    background: np.ndarray
    objects: list[SceneObject]
    blur_radius: float


@dataclass
class _Placement:
    shape: Shape
    box: Box
    local_mask: np.ndarray
    area: int
    visible: np.ndarray
    visible_area: int


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that image ``index`` of a dataset generated with ``seed`` draws from."""
    return np.random.default_rng([seed, index])


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def sample_rectangle(rng: np.random.Generator) -> np.ndarray:
    """Corners (4, 2), counter-clockwise, of a randomly rotated rectangle inscribed in the unit circle.

    Its diagonal is a diameter, so the unit circle is also its minimal enclosing circle.
    """
    aspect = _log_uniform(rng, 1.0 / MAX_ASPECT, MAX_ASPECT)  # width / height
    corner = math.atan2(1.0, aspect)  # polar angle of the corner (width / 2, height / 2)
    angles = rng.uniform(0.0, 2.0 * math.pi) + np.array(
        [corner, math.pi - corner, math.pi + corner, 2.0 * math.pi - corner]
    )
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def sample_triangle(rng: np.random.Generator) -> np.ndarray:
    """Vertices (3, 2), counter-clockwise, of a randomly rotated triangle whose angles are all >= 25°.

    The triangle is scaled so that its minimal enclosing circle is the unit circle at the origin.
    """
    while True:  # uniform over valid angle triples; accepts about a third of the draws
        angles = rng.dirichlet(np.ones(3)) * math.pi
        if angles.min() >= MIN_TRIANGLE_ANGLE:
            break
    # Inscribed angle theorem: the arc between two vertices on the circumcircle is twice the third angle.
    polar = rng.uniform(0.0, 2.0 * math.pi) + np.array([0.0, 2.0 * angles[2], 2.0 * (angles[2] + angles[0])])
    vertices = np.stack([np.cos(polar), np.sin(polar)], axis=1)
    widest = int(np.argmax(angles))
    if angles[widest] <= math.pi / 2:
        return vertices
    # An obtuse triangle's minimal enclosing circle has the longest side as diameter, not the circumcircle.
    ends = np.delete(vertices, widest, axis=0)
    center = ends.mean(axis=0)
    return (vertices - center) / (np.linalg.norm(ends[0] - ends[1]) / 2.0)


def sample_star(rng: np.random.Generator) -> np.ndarray:
    """Outline (10, 2), counter-clockwise, of a randomly rotated five-pointed star centred at the origin.

    Even rows are the tips (on the unit circle, which is the minimal enclosing circle), odd rows the notches
    at radius 0.38-0.5.
    """
    ratio = rng.uniform(*STAR_RATIO_RANGE)
    polar = rng.uniform(0.0, 2.0 * math.pi) + np.arange(10) * (math.pi / 5.0)
    radii = np.where(np.arange(10) % 2 == 0, 1.0, ratio)
    return np.stack([radii * np.cos(polar), radii * np.sin(polar)], axis=1)


def star_parts(outline: np.ndarray) -> tuple[np.ndarray, ...]:
    """Split a star outline (10, 2) into five convex kites (4, 2): centre, notch, tip, next notch."""
    center = np.zeros(2)
    return tuple(np.stack([center, outline[k - 1], outline[k], outline[k + 1]]) for k in range(0, 10, 2))


def sample_shape(rng: np.random.Generator, height: int, width: int) -> Shape:
    """A random shape of a random class, fully inside an image of ``height`` x ``width`` pixels."""
    class_id = int(rng.integers(len(SHAPE_CLASSES)))
    # Log-uniform so that small objects, the hard ones, are as common as large ones.
    diameter = _log_uniform(rng, MIN_DIAMETER, min(MAX_DIAMETER, height, width))
    radius = diameter / 2.0
    center = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
    if class_id == RECTANGLE:
        return Shape(class_id, center, radius, parts=(sample_rectangle(rng),))
    if class_id == TRIANGLE:
        return Shape(class_id, center, radius, parts=(sample_triangle(rng),))
    if class_id == STAR:
        return Shape(class_id, center, radius, parts=star_parts(sample_star(rng)))
    if class_id == RING:
        return Shape(class_id, center, radius, hole=rng.uniform(*RING_RATIO_RANGE))
    return Shape(class_id, center, radius)


def _inside_convex(polygon: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u (1, w), v (h, 1)) lie in a counter-clockwise convex polygon (k, 2): bool (h, w)."""
    inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for (ax, ay), (bx, by) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        inside &= (bx - ax) * (v - ay) - (by - ay) * (u - ax) >= 0.0
    return inside


def rasterize(shape: Shape, height: int, width: int) -> tuple[Box, np.ndarray]:
    """The shape's mask within its bounding box: (row slice, column slice) into the image and bool (h, w).

    A pixel belongs to the shape when its centre (x + 0.5, y + 0.5) does.
    """
    cx, cy = shape.center
    r = shape.radius
    x0, x1 = max(0, math.floor(cx - r)), min(width, math.ceil(cx + r))
    y0, y1 = max(0, math.floor(cy - r)), min(height, math.ceil(cy + r))
    # Unit coordinates make every predicate below independent of the object's size and position.
    u = ((np.arange(x0, x1) + 0.5 - cx) / r)[None, :]
    v = ((np.arange(y0, y1) + 0.5 - cy) / r)[:, None]
    if shape.parts:
        mask = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        for part in shape.parts:
            mask |= _inside_convex(part, u, v)
    else:
        squared = u * u + v * v
        mask = squared <= 1.0
        if shape.hole > 0.0:
            mask &= squared > shape.hole**2
    return (slice(y0, y1), slice(x0, x1)), mask


def sample_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A uniform, linear-gradient or smooth-noise background: uint8 (H, W, 3)."""
    kind = int(rng.integers(3))
    if kind == 0:
        color = rng.integers(0, 256, size=3).astype(np.uint8)
        return np.broadcast_to(color, (height, width, 3)).copy()
    if kind == 1:
        start, end = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
        direction = rng.uniform(0.0, 2.0 * math.pi)
        along = (np.arange(width, dtype=np.float32) + 0.5)[None, :] * math.cos(direction) + (
            np.arange(height, dtype=np.float32) + 0.5
        )[:, None] * math.sin(direction)
        t = (along - along.min()) / (along.max() - along.min())
        return np.rint(start + t[..., None] * (end - start)).astype(np.uint8)
    cells_y, cells_x = rng.integers(2, 9, size=2)
    noise = rng.integers(0, 256, size=(cells_y, cells_x, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(noise).resize((width, height), Image.Resampling.BICUBIC))


def sample_color(rng: np.random.Generator, reference: np.ndarray) -> tuple[int, int, int]:
    """A random RGB colour at Euclidean distance >= 60 from ``reference`` (3,) float."""
    while True:  # at least 94% of the RGB cube qualifies, so this ends quickly
        color = rng.integers(0, 256, size=3)
        if np.linalg.norm(color - reference) >= MIN_COLOUR_DISTANCE:
            return int(color[0]), int(color[1]), int(color[2])


def _try_place(
    rng: np.random.Generator, height: int, width: int, placed: list[_Placement]
) -> _Placement | None:
    """Sample shapes until one is non-degenerate and leaves every earlier object >= 50% visible."""
    for _ in range(PLACEMENT_ATTEMPTS):
        shape = sample_shape(rng, height, width)
        box, local = rasterize(shape, height, width)
        area = int(np.count_nonzero(local))
        if area < MIN_OBJECT_AREA:
            continue
        # The new shape is drawn on top, so only the earlier objects can lose pixels.
        losses = [int(np.count_nonzero(p.visible[box] & local)) for p in placed]
        if all(
            p.visible_area - lost >= MIN_VISIBLE_FRACTION * p.area
            for p, lost in zip(placed, losses, strict=True)
        ):
            for p, lost in zip(placed, losses, strict=True):
                p.visible[box] &= ~local
                p.visible_area -= lost
            visible = np.zeros((height, width), dtype=bool)
            visible[box] = local
            return _Placement(shape, box, local, area, visible, area)
    return None


def _place_shapes(rng: np.random.Generator, height: int, width: int, count: int) -> list[_Placement]:
    placed: list[_Placement] = []
    for _ in range(count):
        placement = _try_place(rng, height, width, placed)
        if placement is not None:  # a crowded image just ends up with fewer objects
            placed.append(placement)
    return placed


def render_scene(
    rng: np.random.Generator,
    height: int | None = None,
    width: int | None = None,
    num_objects: int | None = None,
) -> Scene:
    """Render one random image; sizes and object count are sampled from the specification when None."""
    if height is None:
        height = int(rng.integers(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE + 1))
    if width is None:
        width = int(rng.integers(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE + 1))
    if min(height, width) < MIN_DIAMETER:
        raise ValueError(f"image {height}x{width} cannot hold an object of diameter {MIN_DIAMETER}")
    if num_objects is None:
        num_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    background = sample_background(rng, height, width)
    canvas = background.astype(np.float32)
    objects: list[SceneObject] = []
    for p in _place_shapes(rng, height, width, num_objects):
        color = sample_color(rng, background[p.box][p.local_mask].mean(axis=0))
        noisy = bool(rng.random() < NOISE_PROB)
        values = np.array(color, dtype=np.float32)
        if noisy:
            values = values + rng.normal(0.0, NOISE_SIGMA, size=(p.area, 3)).astype(np.float32)
        canvas[p.box][p.local_mask] = values
        full = np.zeros((height, width), dtype=bool)
        full[p.box] = p.local_mask
        objects.append(SceneObject(p.shape, color, noisy, full, p.visible))
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    blur_radius = 0.0
    if rng.random() < BLUR_PROB:
        blur_radius = rng.uniform(*BLUR_RADIUS_RANGE)
        image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(blur_radius)))
    return Scene(image, background, objects, blur_radius)


def render_image(
    rng: np.random.Generator,
    height: int | None = None,
    width: int | None = None,
    num_objects: int | None = None,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Render one random image: uint8 (H, W, 3) RGB and, per object, (class id, visible bool mask (H, W))."""
    scene = render_scene(rng, height, width, num_objects)
    return scene.image, [(o.shape.class_id, o.visible_mask) for o in scene.objects]


def _mask_bbox(mask: np.ndarray) -> list[int]:
    """Tight COCO box [x, y, w, h] of a non-empty bool mask (H, W)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _generate_one(
    index: int, seed: int, images_dir: Path, jpeg_fraction: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Render and save image ``index``; return its COCO image record and annotations (without ids)."""
    rng = image_rng(seed, index)
    image, objects = render_image(rng)
    as_jpeg = bool(rng.random() < jpeg_fraction)
    file_name = f"{index:06d}.{'jpg' if as_jpeg else 'png'}"
    if as_jpeg:
        Image.fromarray(image).save(images_dir / file_name, quality=JPEG_QUALITY)
    else:
        Image.fromarray(image).save(images_dir / file_name)
    height, width = image.shape[:2]
    record = {"id": index + 1, "file_name": file_name, "height": height, "width": width}
    annotations = []
    for class_id, mask in objects:
        rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
        annotations.append(
            {
                "image_id": index + 1,
                "category_id": class_id + 1,
                "bbox": _mask_bbox(mask),
                "area": int(np.count_nonzero(mask)),
                "iscrowd": 0,
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
            }
        )
    return record, annotations


def generate(
    out_dir: str | Path,
    num_images: int,
    seed: int,
    jpeg_fraction: float = DEFAULT_JPEG_FRACTION,
    workers: int = 1,
) -> Path:
    """Write ``num_images`` images to ``out_dir/images`` and their COCO labels; return the JSON path.

    COCO image ids are ``index + 1``, category ids ``class id + 1``. The output depends only on the
    arguments other than ``workers``.
    """
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    job = partial(_generate_one, seed=seed, images_dir=images_dir, jpeg_fraction=jpeg_fraction)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(job, range(num_images), chunksize=max(1, num_images // (4 * workers))))
    else:
        results = [job(index) for index in range(num_images)]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record, image_annotations in results:
        images.append(record)
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, **annotation})
    coco = {
        "info": {"description": "synthetic shapes", "seed": seed, "jpeg_fraction": jpeg_fraction},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": class_id + 1, "name": name, "supercategory": "shape"}
            for class_id, name in enumerate(SHAPE_CLASSES)
        ],
    }
    json_path = out_dir / "annotations.json"
    json_path.write_text(json.dumps(coco))
    return json_path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--images", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--jpeg-fraction", type=float, default=DEFAULT_JPEG_FRACTION)
    parser.add_argument("--workers", type=int, default=1, help="processes; the output does not depend on it")
    args = parser.parse_args(argv)
    json_path = generate(args.out_dir, args.images, args.seed, args.jpeg_fraction, args.workers)
    print(f"wrote {args.images} images and {json_path}")


if __name__ == "__main__":
    main()
