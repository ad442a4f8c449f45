"""Synthetic shapes dataset: images of circles, rectangles, triangles, stars and rings with COCO labels.

Every object is exact geometry. Its ground-truth mask is the set of pixels whose centre lies in the shape.
Its pixels are painted by the same rule or, on anti-aliased images, blended by the shape's area coverage of
each pixel (supersampled from the geometry), so edges look smooth while the masks stay exact. Image ``i``
draws all of its randomness from ``image_rng(seed, i)``: generation is deterministic per (seed, index) and
independent of how the images are split across processes.

What is drawn is data: a frozen ``GeneratorSettings`` (image and object sizes, object counts, shape parameter
ranges, fills, outlines, backgrounds, lighting, blur, JPEG, anti-aliasing) with named presets:

- ``CLASSIC``: the data the first bundled model was trained on, reproduced exactly;
- ``TRAINING``: far more diverse (wider shape parameters, upright and axis-aligned variants, anti-aliased
  edges, textured and gradient fills, outlines, six background kinds, lighting gradients, 1-14 objects of
  12-600 px), so that other people's drawings of the five classes look familiar;
- ``VALIDATION``: other image sizes, object sizes, counts and backgrounds than ``TRAINING`` (including a
  background kind training never shows), for held-out numbers that do not reward learning the generator.

CLI::

    python -m training.data.shapes OUT_DIR --images N --seed S [--preset training|validation|classic]
        [--jpeg-fraction F] [--workers W]

writes ``OUT_DIR/images/*.{png,jpg}`` and the COCO file ``OUT_DIR/annotations.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageFilter

from training.data.backgrounds import photo_like
from training.data.coco_writer import instance_annotation, write_dataset

SHAPE_CLASSES = ("circle", "rectangle", "triangle", "star", "ring")
CIRCLE, RECTANGLE, TRIANGLE, STAR, RING = range(len(SHAPE_CLASSES))
BACKGROUND_KINDS = ("uniform", "gradient", "noise", "stripes", "checkers", "multiscale", "radial", "photo")
FILL_KINDS = ("flat", "gradient", "texture")

# The guard against degenerate geometry (a sliver of a triangle at the smallest sizes): such draws are redone.
MIN_OBJECT_AREA = 16
# A crowded image may have no valid spot left for another object; give up on it rather than loop forever.
PLACEMENT_ATTEMPTS = 30
# Colour draws before settling for the best one seen (only a busy background can exhaust them).
COLOUR_ATTEMPTS = 100
# Background pixels under an object that the contrast rule looks at (evenly spaced).
CONTRAST_SAMPLE = 1024

Box = tuple[slice, slice]
Range = tuple[float, float]


@dataclass(frozen=True)
class GeneratorSettings:
    """Everything the generator draws from. Ranges are (low, high), inclusive; a tuple of names or counts is
    drawn from uniformly (repeat an entry to make it likelier). Lengths are in pixels, angles in degrees."""

    name: str
    # Images and objects.
    image_side: tuple[int, int] = (256, 800)  # height and width, each uniform
    objects: tuple[int, int] = (1, 8)  # asked for per image; a crowded image may end up with fewer
    diameter: Range = (24.0, 256.0)  # of the minimal enclosing circle, log-uniform, at most the short side
    min_visible_fraction: float = 0.5  # of every object, after everything drawn later on top of it
    # Shapes.
    rectangle_max_aspect: float = 3.0  # aspect log-uniform in [1 / max, max]
    square_share: float = 0.0  # rectangles with aspect 1
    axis_aligned_share: float = 0.0  # rectangles with sides along the image axes
    upright_share: float = 0.0  # triangles standing on a horizontal side, stars with a tip straight up
    triangle_min_angle: float = 25.0
    star_points: tuple[int, ...] = (5,)
    star_ratio: Range = (0.38, 0.5)  # notch radius / tip radius
    ring_hole: Range = (0.45, 0.7)  # inner radius / outer radius
    min_ring_width: float = 2.0  # a ring thinner than this gets a smaller hole
    # Colours and fills.
    min_colour_distance: float = 60.0  # RGB distance of an object's colours from the background's mean
    min_contrast_share: float = 0.0  # of the background pixels under an object, ≥ half that distance away
    fills: tuple[str, ...] = ("flat",)  # flat, gradient (linear), texture (smooth noise) between two colours
    fill_spread: float = 80.0  # per-channel offset of a fill's second colour from its first
    object_noise_prob: float = 0.5  # per-pixel Gaussian noise on an object
    object_noise_sigma: Range = (10.0, 10.0)
    outline_prob: float = 0.0  # an inner outline of another colour
    outline_width: Range = (1.0, 4.0)
    # Backgrounds and whole-image effects.
    backgrounds: tuple[str, ...] = ("uniform", "gradient", "noise")
    antialias_prob: float = 0.0
    supersampling: int = 4  # samples per pixel side for anti-aliased coverage
    lighting_prob: float = 0.0  # a multiplicative linear or radial gain over the whole image
    lighting_strength: float = 0.35  # the gain stays within 1 ± this
    blur_prob: float = 0.15
    blur_radius: Range = (0.5, 1.2)
    jpeg_fraction: float = 0.5  # images saved as JPEG rather than PNG
    jpeg_quality: tuple[int, int] = (90, 90)

    def __post_init__(self) -> None:
        for field in (
            "image_side",
            "objects",
            "diameter",
            "star_ratio",
            "ring_hole",
            "object_noise_sigma",
            "outline_width",
            "blur_radius",
            "jpeg_quality",
        ):
            low, high = getattr(self, field)
            if not 0 <= low <= high:
                raise ValueError(f"{self.name}: {field} must be 0 ≤ low ≤ high, got {(low, high)}")
        for field in (
            "min_visible_fraction",
            "square_share",
            "axis_aligned_share",
            "upright_share",
            "min_contrast_share",
            "object_noise_prob",
            "outline_prob",
            "antialias_prob",
            "lighting_prob",
            "blur_prob",
            "jpeg_fraction",
        ):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ValueError(
                    f"{self.name}: {field} is a probability or share, got {getattr(self, field)}"
                )
        unknown = set(self.backgrounds) - set(BACKGROUND_KINDS) or set(self.fills) - set(FILL_KINDS)
        if unknown or not self.backgrounds or not self.fills:
            raise ValueError(f"{self.name}: unknown or no background or fill kinds {sorted(unknown)}")
        if self.diameter[0] < 2.0 or self.image_side[0] < self.diameter[0] or self.objects[0] < 1:
            raise ValueError(
                f"{self.name}: objects of at least 2 px, that fit the smallest image, at least one"
            )
        if not self.star_points or min(self.star_points) < 3 or self.supersampling < 2:
            raise ValueError(f"{self.name}: stars need ≥ 3 points and coverage ≥ 2 samples per side")
        if not (self.rectangle_max_aspect >= 1.0 and 0.0 < self.triangle_min_angle < 60.0):
            raise ValueError(f"{self.name}: rectangle aspect ≥ 1 and a minimum triangle angle in (0°, 60°)")


CLASSIC = GeneratorSettings(name="classic")

TRAINING = GeneratorSettings(
    name="training",
    image_side=(224, 832),
    objects=(1, 14),
    diameter=(12.0, 600.0),
    min_visible_fraction=0.4,
    rectangle_max_aspect=5.0,
    square_share=0.15,
    axis_aligned_share=0.4,
    upright_share=0.35,
    triangle_min_angle=15.0,
    star_points=(5, 5, 5, 5, 4, 6, 7, 8),
    star_ratio=(0.28, 0.62),
    ring_hole=(0.3, 0.85),
    min_colour_distance=40.0,
    min_contrast_share=0.85,
    fills=("flat", "flat", "gradient", "texture"),
    object_noise_prob=0.35,
    object_noise_sigma=(3.0, 16.0),
    outline_prob=0.2,
    outline_width=(1.0, 5.0),
    backgrounds=("uniform", "uniform", "gradient", "noise", "stripes", "checkers", "multiscale"),
    antialias_prob=0.5,
    lighting_prob=0.3,
    blur_prob=0.2,
    blur_radius=(0.4, 1.6),
    jpeg_quality=(60, 95),
)

VALIDATION = dataclasses.replace(
    TRAINING,
    name="validation",
    image_side=(320, 960),
    objects=(2, 10),
    diameter=(16.0, 400.0),
    min_visible_fraction=0.5,
    min_colour_distance=50.0,
    backgrounds=("uniform", "gradient", "multiscale", "radial"),
    lighting_prob=0.2,
    jpeg_quality=(75, 95),
)

PRESETS = {settings.name: settings for settings in (TRAINING, VALIDATION, CLASSIC)}


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
    """A placed object: geometry, paint and masks, each mask bool (H, W).

    ``color`` is the object's (first) fill colour; ``fill`` its kind; ``outline_width`` 0 without an outline.
    """

    shape: Shape
    color: tuple[int, int, int]
    noisy: bool
    fill: str
    outline_width: float
    full_mask: np.ndarray
    visible_mask: np.ndarray


@dataclass
class Scene:
    """A rendered image with everything needed to check it against the settings.

    ``image`` and ``background`` are uint8 (H, W, 3) RGB; ``objects`` are in drawing order (later ones on
    top). ``lighting`` is the gain (H, W) float32 the image was multiplied by (None: not lit); ``blur_radius``
    is 0 when the image was not blurred.
    """

    image: np.ndarray
    background: np.ndarray
    background_kind: str
    objects: list[SceneObject]
    antialiased: bool
    lighting: np.ndarray | None
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


# The helpers below draw nothing when the outcome is certain, so that a preset which leaves an option off
# consumes exactly the random stream it did before the option existed (CLASSIC stays reproducible).
def _chance(rng: np.random.Generator, probability: float) -> bool:
    if probability <= 0.0:
        return False
    if probability >= 1.0:
        return True
    return bool(rng.random() < probability)


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    low, high = bounds
    return float(low) if low == high else float(rng.uniform(low, high))


def _integer(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    low, high = bounds
    return low if low == high else int(rng.integers(low, high + 1))


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[0] if len(options) == 1 else options[int(rng.integers(len(options)))]


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]])


def sample_rectangle(rng: np.random.Generator, settings: GeneratorSettings) -> np.ndarray:
    """Corners (4, 2), counter-clockwise, of a rectangle inscribed in the unit circle.

    Its diagonal is a diameter, so the unit circle is also its minimal enclosing circle. Squares and
    axis-aligned rectangles come at the settings' shares; the aspect range covers both orientations.
    """
    square = _chance(rng, settings.square_share)
    top = settings.rectangle_max_aspect
    aspect = 1.0 if square else _log_uniform(rng, 1.0 / top, top)  # width / height
    corner = math.atan2(1.0, aspect)  # polar angle of the corner (width / 2, height / 2)
    rotation = 0.0 if _chance(rng, settings.axis_aligned_share) else rng.uniform(0.0, 2.0 * math.pi)
    angles = rotation + np.array([corner, math.pi - corner, math.pi + corner, 2.0 * math.pi - corner])
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def sample_triangle(rng: np.random.Generator, settings: GeneratorSettings) -> np.ndarray:
    """Vertices (3, 2), counter-clockwise, of a triangle whose angles are all ≥ the settings' minimum.

    Upright ones (at the settings' share) stand on a horizontal side (image y grows downwards), the others
    are rotated at random. The triangle is scaled so that its minimal enclosing circle is the unit circle.
    """
    minimum = math.radians(settings.triangle_min_angle)
    while True:  # uniform over valid angle triples; accepts a third of the draws at 25°, half at 15°
        angles = rng.dirichlet(np.ones(3)) * math.pi
        if angles.min() >= minimum:
            break
    if _chance(rng, settings.upright_share):
        start = 0.0
        base = int(rng.integers(3))
    else:
        start = rng.uniform(0.0, 2.0 * math.pi)
        base = -1
    # Inscribed angle theorem: the arc between two vertices on the circumcircle is twice the third angle.
    polar = start + np.array([0.0, 2.0 * angles[2], 2.0 * (angles[2] + angles[0])])
    vertices = np.stack([np.cos(polar), np.sin(polar)], axis=1)
    if base >= 0:
        # Turn side base → base + 1 to point along -x: the interior (left of each edge) is then above it.
        dx, dy = vertices[(base + 1) % 3] - vertices[base]
        vertices = _rotate(vertices, math.pi - math.atan2(dy, dx))
    widest = int(np.argmax(angles))
    if angles[widest] <= math.pi / 2:
        return vertices
    # An obtuse triangle's minimal enclosing circle has the longest side as diameter, not the circumcircle.
    ends = np.delete(vertices, widest, axis=0)
    center = ends.mean(axis=0)
    return (vertices - center) / (np.linalg.norm(ends[0] - ends[1]) / 2.0)


def sample_star(rng: np.random.Generator, settings: GeneratorSettings) -> np.ndarray:
    """Outline (2n, 2), counter-clockwise, of an n-pointed star centred at the origin.

    Even rows are the tips (on the unit circle, which is the minimal enclosing circle), odd rows the notches
    at the settings' ratio. Upright stars (at the settings' share) have a tip straight up.
    """
    points = int(_pick(rng, settings.star_points))
    ratio = rng.uniform(*settings.star_ratio)
    start = -math.pi / 2.0 if _chance(rng, settings.upright_share) else rng.uniform(0.0, 2.0 * math.pi)
    polar = start + np.arange(2 * points) * (math.pi / points)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, ratio)
    return np.stack([radii * np.cos(polar), radii * np.sin(polar)], axis=1)


def star_parts(outline: np.ndarray) -> tuple[np.ndarray, ...]:
    """Split a star outline (2n, 2) into n convex kites (4, 2): centre, notch, tip, next notch."""
    center = np.zeros(2)
    points = len(outline) // 2
    return tuple(
        np.stack([center, outline[k - 1], outline[k], outline[(k + 1) % (2 * points)]])
        for k in range(0, 2 * points, 2)
    )


def sample_shape(rng: np.random.Generator, height: int, width: int, settings: GeneratorSettings) -> Shape:
    """A random shape of a random class, fully inside an image of ``height`` x ``width`` pixels."""
    class_id = int(rng.integers(len(SHAPE_CLASSES)))
    # Log-uniform so that small objects, the hard ones, are as common as large ones.
    low, high = settings.diameter
    diameter = _log_uniform(rng, low, min(high, height, width))
    radius = diameter / 2.0
    center = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
    if class_id == RECTANGLE:
        return Shape(class_id, center, radius, parts=(sample_rectangle(rng, settings),))
    if class_id == TRIANGLE:
        return Shape(class_id, center, radius, parts=(sample_triangle(rng, settings),))
    if class_id == STAR:
        return Shape(class_id, center, radius, parts=star_parts(sample_star(rng, settings)))
    if class_id == RING:
        hole = rng.uniform(*settings.ring_hole)
        return Shape(class_id, center, radius, hole=min(hole, 1.0 - settings.min_ring_width / radius))
    return Shape(class_id, center, radius)


def _inside_convex(polygon: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v, broadcastable arrays) lie in a counter-clockwise convex polygon (k, 2)."""
    inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for (ax, ay), (bx, by) in zip(polygon, np.roll(polygon, -1, axis=0), strict=True):
        inside &= (bx - ax) * (v - ay) - (by - ay) * (u - ax) >= 0.0
    return inside


def contains(shape: Shape, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points in the shape's unit coordinates (broadcastable arrays u, v) lie in it: bool."""
    if shape.parts:
        inside = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
        for part in shape.parts:
            inside |= _inside_convex(part, u, v)
        return inside
    squared = u * u + v * v
    inside = squared <= 1.0
    if shape.hole > 0.0:
        inside &= squared > shape.hole**2
    return inside


def rasterize(shape: Shape, height: int, width: int) -> tuple[Box, np.ndarray]:
    """The shape's mask within its bounding box: (row slice, column slice) into the image and bool (h, w).

    A pixel belongs to the shape when its centre (x + 0.5, y + 0.5) does.
    """
    cx, cy = shape.center
    r = shape.radius
    x0, x1 = max(0, math.floor(cx - r)), min(width, math.ceil(cx + r))
    y0, y1 = max(0, math.floor(cy - r)), min(height, math.ceil(cy + r))
    # Unit coordinates make every predicate independent of the object's size and position.
    u = ((np.arange(x0, x1) + 0.5 - cx) / r)[None, :]
    v = ((np.arange(y0, y1) + 0.5 - cy) / r)[:, None]
    return (slice(y0, y1), slice(x0, x1)), contains(shape, u, v)


def edge_band(mask: np.ndarray) -> np.ndarray:
    """Pixels (h, w) bool within one pixel (8-neighbourhood) of a boundary of the mask (h, w) bool."""
    kernel = np.ones((3, 3), dtype=np.uint8)
    as_bytes = mask.view(np.uint8)
    grown = cv2.dilate(as_bytes, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    shrunk = cv2.erode(as_bytes, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return grown.astype(bool) & ~shrunk.astype(bool)


def coverage(shape: Shape, box: Box, mask: np.ndarray, samples: int) -> np.ndarray:
    """The fraction (h, w) float32 of each pixel of ``box`` that the shape covers.

    Estimated from ``samples`` x ``samples`` evenly spaced points per pixel in the edge band of the
    pixel-centre mask (h, w) bool; every other pixel lies wholly inside or outside (0 or 1, as the mask).
    """
    rows, cols = box
    alpha = mask.astype(np.float32)
    band_rows, band_cols = np.nonzero(edge_band(mask))
    offsets = (np.arange(samples) + 0.5) / samples
    cx, cy = shape.center
    u = ((cols.start + band_cols)[:, None, None] + offsets[None, None, :] - cx) / shape.radius
    v = ((rows.start + band_rows)[:, None, None] + offsets[None, :, None] - cy) / shape.radius
    alpha[band_rows, band_cols] = contains(shape, u, v).mean(axis=(1, 2))
    return alpha


def _linear_ramp(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A ramp (height, width) float32 from 0 to 1 along a random direction."""
    direction = rng.uniform(0.0, 2.0 * math.pi)
    along = (np.arange(width, dtype=np.float32) + 0.5)[None, :] * math.cos(direction) + (
        np.arange(height, dtype=np.float32) + 0.5
    )[:, None] * math.sin(direction)
    span = along.max() - along.min()
    return (along - along.min()) / span if span > 0 else np.zeros_like(along)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bicubically interpolated random values (height, width) float32, about ``cells`` per side, in [0, 1]."""
    longest = max(height, width)
    grid = rng.random((max(2, round(cells * height / longest)), max(2, round(cells * width / longest))))
    field = cv2.resize(grid.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(field, 0.0, 1.0)


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random colour and a second one near it (3,) float32 each: textures that objects can contrast with."""
    first = rng.integers(0, 256, size=3).astype(np.float32)
    second = np.clip(first + rng.uniform(-70.0, 70.0, size=3), 0, 255).astype(np.float32)
    return first, second


def _blend(first: np.ndarray, second: np.ndarray, t: np.ndarray) -> np.ndarray:
    return first + t[..., None] * (second - first)


def sample_background(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    """A background of one of ``BACKGROUND_KINDS``: uint8 (H, W, 3)."""
    if kind == "uniform":
        color = rng.integers(0, 256, size=3).astype(np.uint8)
        return np.broadcast_to(color, (height, width, 3)).copy()
    if kind == "gradient":
        start, end = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
        return np.rint(_blend(start, end, _linear_ramp(rng, height, width))).astype(np.uint8)
    if kind == "noise":
        cells_y, cells_x = rng.integers(2, 9, size=2)
        noise = rng.integers(0, 256, size=(cells_y, cells_x, 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(noise).resize((width, height), Image.Resampling.BICUBIC))
    if kind == "stripes":
        first, second = _two_colours(rng)
        period = _log_uniform(rng, 6.0, 80.0)
        along = _linear_ramp(rng, height, width) * math.hypot(height, width) / period
        softness = rng.uniform(0.02, 0.3)  # sharp bars to sine-like waves
        t = np.clip((np.abs((along % 1.0) - 0.5) - 0.25) / softness + 0.5, 0.0, 1.0)
        return np.rint(_blend(first, second, t)).astype(np.uint8)
    if kind == "checkers":
        first, second = _two_colours(rng)
        cell = _log_uniform(rng, 8.0, 96.0)
        angle = 0.0 if _chance(rng, 0.5) else rng.uniform(0.0, math.pi / 2)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
        a, b = _rotate(np.stack([xs.ravel(), ys.ravel()], axis=1), angle).T
        t = ((np.floor(a / cell) + np.floor(b / cell)) % 2).reshape(height, width).astype(np.float32)
        return np.rint(_blend(first, second, t)).astype(np.uint8)
    if kind == "multiscale":
        # Octaves of smooth noise with halving amplitude: cloud- or paper-like texture around a base colour.
        base = rng.integers(0, 256, size=3).astype(np.float32)
        contrast = rng.uniform(20.0, 90.0)
        field = np.zeros((height, width, 3), dtype=np.float32)
        for octave in range(5):
            for channel in range(3):
                field[..., channel] += 0.5**octave * (_smooth_noise(rng, height, width, 3 * 2**octave) - 0.5)
        return np.clip(np.rint(base + contrast * field), 0, 255).astype(np.uint8)
    if kind == "radial":
        inner, outer = rng.integers(0, 256, size=(2, 3)).astype(np.float32)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
        distance = np.hypot(xs - cx, ys - cy)
        return np.rint(_blend(inner, outer, distance / distance.max())).astype(np.uint8)
    if kind == "photo":  # textures, clutter, lighting made by code (`training.data.backgrounds`); no camera
        return photo_like(rng, height, width, camera=False)
    raise ValueError(f"unknown background kind {kind!r}")


def sample_color(
    rng: np.random.Generator, background: np.ndarray, settings: GeneratorSettings
) -> tuple[int, int, int]:
    """A random RGB colour far enough from the background pixels (n, 3) under an object.

    At least ``min_colour_distance`` from their mean and, when ``min_contrast_share`` > 0, at least half that
    from that share of them (striped or noisy backgrounds); after ``COLOUR_ATTEMPTS`` the best draw wins.
    """
    reference = background.mean(axis=0)
    pixels = background[:: max(1, len(background) // CONTRAST_SAMPLE)].astype(np.float64)
    best, best_share = None, -1.0
    for _ in range(COLOUR_ATTEMPTS):
        color = rng.integers(0, 256, size=3)
        if np.linalg.norm(color - reference) < settings.min_colour_distance:
            continue
        if settings.min_contrast_share <= 0.0:
            break
        share = float(np.mean(np.linalg.norm(pixels - color, axis=1) >= settings.min_colour_distance / 2))
        if share >= settings.min_contrast_share:
            break
        if share > best_share:
            best, best_share = color, share
    else:
        color = best if best is not None else color
    return int(color[0]), int(color[1]), int(color[2])


def _segment_distance(point: np.ndarray, start: np.ndarray, end: np.ndarray) -> float:
    """Euclidean distance from ``point`` to the segment between ``start`` and ``end`` (3,) each."""
    direction = end - start
    t = float(
        np.clip(np.dot(point - start, direction) / max(float(np.dot(direction, direction)), 1e-9), 0, 1)
    )
    return float(np.linalg.norm(point - (start + t * direction)))


def _fill(
    rng: np.random.Generator,
    kind: str,
    color: np.ndarray,
    reference: np.ndarray,
    shape: tuple[int, int],
    settings: GeneratorSettings,
) -> tuple[str, np.ndarray]:
    """The colours (h, w, 3) float32 of a fill over an object's box, and the kind actually used.

    Gradient and texture fills blend to a second colour so that every blend stays far from the background;
    when none is found quickly the fill is flat.
    """
    height, width = shape
    flat = np.broadcast_to(color, (height, width, 3)).astype(np.float32)
    if kind == "flat":
        return kind, flat
    for _ in range(20):
        second = np.clip(color + rng.uniform(-settings.fill_spread, settings.fill_spread, 3), 0, 255)
        if _segment_distance(reference, color, second) >= settings.min_colour_distance:
            break
    else:
        return "flat", flat
    if kind == "gradient":
        t = _linear_ramp(rng, height, width)
    else:
        t = _smooth_noise(rng, height, width, int(rng.integers(2, 7)))
    return kind, _blend(color.astype(np.float32), second.astype(np.float32), t)


def _outline(mask: np.ndarray, width: float) -> np.ndarray:
    """Pixels (h, w) bool of the box within ``width`` pixels of the outside of the mask (all outside ones too)."""
    padded = np.pad(mask, 1).view(np.uint8)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return distance <= width


def _try_place(
    rng: np.random.Generator, height: int, width: int, placed: list[_Placement], settings: GeneratorSettings
) -> _Placement | None:
    """Sample shapes until one is non-degenerate and leaves every earlier object visible enough."""
    for _ in range(PLACEMENT_ATTEMPTS):
        shape = sample_shape(rng, height, width, settings)
        box, local = rasterize(shape, height, width)
        area = int(np.count_nonzero(local))
        if area < MIN_OBJECT_AREA:
            continue
        # The new shape is drawn on top, so only the earlier objects can lose pixels.
        losses = [int(np.count_nonzero(p.visible[box] & local)) for p in placed]
        if all(
            p.visible_area - lost >= settings.min_visible_fraction * p.area
            for p, lost in zip(placed, losses, strict=True)
        ):
            for p, lost in zip(placed, losses, strict=True):
                p.visible[box] &= ~local
                p.visible_area -= lost
            visible = np.zeros((height, width), dtype=bool)
            visible[box] = local
            return _Placement(shape, box, local, area, visible, area)
    return None


def _place_shapes(
    rng: np.random.Generator, height: int, width: int, count: int, settings: GeneratorSettings
) -> list[_Placement]:
    placed: list[_Placement] = []
    for _ in range(count):
        placement = _try_place(rng, height, width, placed, settings)
        if placement is not None:  # a crowded image just ends up with fewer objects
            placed.append(placement)
    return placed


def _paint(
    rng: np.random.Generator,
    canvas: np.ndarray,
    background: np.ndarray,
    p: _Placement,
    antialiased: bool,
    settings: GeneratorSettings,
) -> SceneObject:
    """Draw one placed object onto the float canvas (H, W, 3); return its record."""
    under = background[p.box][p.local_mask]
    color = sample_color(rng, under, settings)
    noisy = _chance(rng, settings.object_noise_prob)
    noise = None
    if noisy:
        sigma = _uniform(rng, settings.object_noise_sigma)
        noise = rng.normal(0.0, sigma, size=(p.area, 3)).astype(np.float32)
    reference = under.mean(axis=0)
    kind = _pick(rng, settings.fills)
    fill, values = _fill(rng, kind, np.array(color, np.float64), reference, p.local_mask.shape, settings)
    outline_width = 0.0
    if _chance(rng, settings.outline_prob):
        outline_width = _uniform(rng, settings.outline_width)
        for _ in range(10):  # another colour than the fill's, as far as a few draws find one
            edge_color = np.array(sample_color(rng, under, settings), dtype=np.float32)
            if np.linalg.norm(edge_color - color) >= settings.min_colour_distance / 2:
                break
        values = values.copy()
        values[_outline(p.local_mask, outline_width)] = edge_color
    if noise is not None:
        values = values.copy()
        values[p.local_mask] += noise
    region = canvas[p.box]
    if antialiased:
        alpha = coverage(p.shape, p.box, p.local_mask, settings.supersampling)[..., None]
        region += alpha * (values - region)
    else:
        region[p.local_mask] = values[p.local_mask]
    full = np.zeros(canvas.shape[:2], dtype=bool)
    full[p.box] = p.local_mask
    return SceneObject(p.shape, color, noisy, fill, outline_width, full, p.visible)


def _lighting(rng: np.random.Generator, height: int, width: int, strength: float) -> np.ndarray:
    """A gain (height, width) float32 within 1 ± strength: a linear ramp or a radial falloff (vignette)."""
    amount = rng.uniform(0.3, 1.0) * strength
    if _chance(rng, 0.5):
        ramp = _linear_ramp(rng, height, width)
    else:
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
        distance = np.hypot(xs - cx, ys - cy)
        ramp = distance / distance.max()
    return (1.0 + amount * (1.0 - 2.0 * ramp)).astype(np.float32)


def render_scene(
    rng: np.random.Generator,
    settings: GeneratorSettings,
    height: int | None = None,
    width: int | None = None,
    num_objects: int | None = None,
) -> Scene:
    """Render one random image; sizes and object count are drawn from the settings when None."""
    if height is None:
        height = int(rng.integers(settings.image_side[0], settings.image_side[1] + 1))
    if width is None:
        width = int(rng.integers(settings.image_side[0], settings.image_side[1] + 1))
    if min(height, width) < settings.diameter[0]:
        raise ValueError(f"image {height}x{width} cannot hold an object of diameter {settings.diameter[0]}")
    if num_objects is None:
        num_objects = int(rng.integers(settings.objects[0], settings.objects[1] + 1))
    background_kind = _pick(rng, settings.backgrounds)
    background = sample_background(rng, height, width, background_kind)
    antialiased = _chance(rng, settings.antialias_prob)
    canvas = background.astype(np.float32)
    objects = [
        _paint(rng, canvas, background, p, antialiased, settings)
        for p in _place_shapes(rng, height, width, num_objects, settings)
    ]
    lighting = None
    if _chance(rng, settings.lighting_prob):
        lighting = _lighting(rng, height, width, settings.lighting_strength)
        canvas *= lighting[..., None]
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    blur_radius = 0.0
    if _chance(rng, settings.blur_prob):
        blur_radius = _uniform(rng, settings.blur_radius)
        image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(blur_radius)))
    return Scene(image, background, background_kind, objects, antialiased, lighting, blur_radius)


def render_image(
    rng: np.random.Generator,
    settings: GeneratorSettings,
    height: int | None = None,
    width: int | None = None,
    num_objects: int | None = None,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Render one random image: uint8 (H, W, 3) RGB and, per object, (class id, visible bool mask (H, W))."""
    scene = render_scene(rng, settings, height, width, num_objects)
    return scene.image, [(o.shape.class_id, o.visible_mask) for o in scene.objects]


def _generate_one(
    index: int, seed: int, images_dir: Path, settings: GeneratorSettings
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Render and save image ``index``; return its COCO image record and annotations (without ids)."""
    rng = image_rng(seed, index)
    image, objects = render_image(rng, settings)
    as_jpeg = _chance(rng, settings.jpeg_fraction)
    file_name = f"{index:06d}.{'jpg' if as_jpeg else 'png'}"
    if as_jpeg:
        quality = _integer(rng, settings.jpeg_quality)
        Image.fromarray(image).save(images_dir / file_name, quality=quality)
    else:
        Image.fromarray(image).save(images_dir / file_name)
    height, width = image.shape[:2]
    record = {"id": index + 1, "file_name": file_name, "height": height, "width": width}
    return record, [instance_annotation(index + 1, class_id + 1, mask) for class_id, mask in objects]


def generate(
    out_dir: str | Path,
    num_images: int,
    seed: int,
    settings: GeneratorSettings = TRAINING,
    workers: int = 1,
) -> Path:
    """Write ``num_images`` images to ``out_dir/images`` and their COCO labels; return the JSON path.

    COCO image ids are ``index + 1``, category ids ``class id + 1``. The output depends only on the
    arguments other than ``workers``.
    """
    info = {
        "description": f"synthetic shapes ({settings.name})",
        "generator": "training.data.shapes",
        "seed": seed,
        "settings": dataclasses.asdict(settings),
    }
    return write_dataset(
        out_dir,
        num_images,
        partial(_generate_one, seed=seed, images_dir=Path(out_dir) / "images", settings=settings),
        SHAPE_CLASSES,
        info,
        workers,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--images", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=TRAINING.name, help="generator settings")
    parser.add_argument("--jpeg-fraction", type=float, help="share of JPEG images (default: the preset's)")
    parser.add_argument("--workers", type=int, default=1, help="processes; the output does not depend on it")
    args = parser.parse_args(argv)
    settings = PRESETS[args.preset]
    if args.jpeg_fraction is not None:
        settings = dataclasses.replace(settings, jpeg_fraction=args.jpeg_fraction)
    json_path = generate(args.out_dir, args.images, args.seed, settings, args.workers)
    print(f"wrote {args.images} images ({settings.name}) and {json_path}")


if __name__ == "__main__":
    main()
