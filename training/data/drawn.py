"""A second, independent shapes renderer, for honest validation only: never train on it.

`training.data.shapes` is written from exact geometry with numpy predicates; this module is written differently
on purpose, the way someone else might draw the same five classes: Pillow ``ImageDraw`` primitives
(``ellipse``, ``rectangle``, ``rounded_rectangle``, ``polygon``, ``ellipse`` with an outline width for rings)
on a canvas four times larger than the image, then box-downsampled, so edges are anti-aliased by area. Each
class has its own parameterisation (a triangle is a base, a height and an apex offset; a ring an outer radius
and a stroke width; a star a point count and an inner radius), the backgrounds are Pillow's own (solid,
linear and radial gradients, noise fields, graph paper, paper grain), randomness comes from Python's
``random`` seeded by ``(seed, index)``, and a mask is the set of pixels that the object covers at least half
of, minus what later objects cover. Numbers on these images estimate how the model does on other people's
drawings, not on our generator.

CLI::

    python -m training.data.drawn OUT_DIR --images N --seed S [--workers W]

writes ``OUT_DIR/images/*.{png,jpg}`` and ``OUT_DIR/annotations.json`` (categories circle, rectangle,
triangle, star, ring with ids 1-5, as `training.data.shapes` writes them).
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFilter, ImageOps, ImageStat

from training.data.coco_writer import instance_annotation, write_dataset

CATEGORIES = ("circle", "rectangle", "triangle", "star", "ring")
SCALE = 4  # supersampling factor per side
IMAGE_SIZES = ((640, 480), (512, 512), (800, 600), (480, 640), (1024, 768), (400, 400), (960, 540))
MAX_OBJECTS = 10
MIN_EXTENT, MAX_EXTENT = 16, 320  # object bounding-circle diameter in image pixels
MIN_VISIBLE = 0.4  # an object hidden more than this by later ones is not drawn
MIN_LUMA_GAP = 45  # the object's lightness differs from the background under it by at least this
ATTEMPTS = 25

Points = Sequence[tuple[float, float]]


@dataclass
class DrawnObject:
    """One drawn object: its category index, its visible mask (H, W) bool and its area before occlusion."""

    category: int
    mask: np.ndarray
    area: int


@dataclass(frozen=True)
class Stroke:
    """One ``ImageDraw`` call in image pixels relative to the object's centre.

    ``method`` is ellipse, rectangle, rounded_rectangle or polygon; ``points`` the box corners (two) or the
    polygon's vertices; ``corner`` a rounded rectangle's corner radius; ``width`` a ring's stroke (0: filled).
    """

    method: str
    points: tuple[tuple[float, float], ...]
    corner: float = 0.0
    width: float = 0.0


def _hsv(rnd: random.Random, value: tuple[int, int]) -> tuple[int, int, int]:
    saturation = rnd.randint(25, 100)
    red, green, blue, *_ = ImageColor.getrgb(
        f"hsv({rnd.randint(0, 359)},{saturation}%,{rnd.randint(*value)}%)"
    )
    return red, green, blue


def _luma(rgb: Sequence[float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _colorized(gray: Image.Image, rnd: random.Random) -> Image.Image:
    return ImageOps.colorize(gray, _hsv(rnd, (5, 95)), _hsv(rnd, (5, 95)))


def _gaussian_noise(rnd: random.Random, width: int, height: int, sigma: float) -> Image.Image:
    """Gray Gaussian noise around 128 (Pillow's ``effect_noise`` would follow C's unseeded ``rand``)."""
    values = np.random.default_rng(rnd.getrandbits(64)).normal(128.0, sigma, size=(height, width))
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))


def draw_background(rnd: random.Random, width: int, height: int) -> Image.Image:
    """An RGB background of (width, height): solid, gradient, radial, noise field, graph paper or paper."""
    kind = rnd.choice(("solid", "solid", "linear", "radial", "noise", "graph", "paper"))
    if kind == "solid":
        return Image.new("RGB", (width, height), _hsv(rnd, (5, 100)))
    if kind == "linear":
        ramp = Image.linear_gradient("L").rotate(rnd.uniform(0, 360), resample=Image.Resampling.BICUBIC)
        inner = ramp.crop((64, 64, 192, 192))  # the rotated square's middle has no empty corners
        return _colorized(inner, rnd).resize((width, height), Image.Resampling.BICUBIC)
    if kind == "radial":
        return _colorized(Image.radial_gradient("L"), rnd).resize((width, height), Image.Resampling.BICUBIC)
    if kind == "noise":
        coarse = _gaussian_noise(rnd, max(2, width // 40), max(2, height // 40), rnd.uniform(30, 90))
        return _colorized(coarse.resize((width, height), Image.Resampling.BICUBIC), rnd)
    base = _hsv(rnd, (70, 100))
    image = Image.new("RGB", (width, height), base)
    if kind == "graph":
        draw = ImageDraw.Draw(image)
        step = rnd.randint(12, 48)
        line = tuple(max(0, c - rnd.randint(40, 90)) for c in base)
        for x in range(rnd.randint(0, step), width, step):
            draw.line([(x, 0), (x, height)], fill=line, width=1)
        for y in range(rnd.randint(0, step), height, step):
            draw.line([(0, y), (width, y)], fill=line, width=1)
        return image
    grain = _gaussian_noise(rnd, width, height, rnd.uniform(8, 25)).filter(ImageFilter.GaussianBlur(0.8))
    return Image.blend(image, Image.merge("RGB", (grain, grain, grain)), 0.25)


def _rotated(points: Points, angle: float) -> Points:
    cos, sin = math.cos(angle), math.sin(angle)
    return [(x * cos - y * sin, x * sin + y * cos) for x, y in points]


def _smallest_angle(points: Points) -> float:
    """The smallest interior angle of a triangle (3 points), in degrees."""
    sides = [math.dist(points[i - 1], points[i - 2]) for i in range(3)]  # side i faces vertex i
    angles = []
    for i in range(3):
        a, b, c = sides[i], sides[(i + 1) % 3], sides[(i + 2) % 3]
        angles.append(math.degrees(math.acos(max(-1.0, min(1.0, (b * b + c * c - a * a) / (2 * b * c))))))
    return min(angles)


def sample_stroke(rnd: random.Random, category: int, size: float) -> Stroke:
    """An object of ``category`` that fits in a circle of diameter ``size`` around the origin."""
    half = size / 2
    if category == 0:
        return Stroke("ellipse", ((-half, -half), (half, half)))
    if category == 1:
        aspect = math.exp(rnd.uniform(math.log(0.25), math.log(4.0)))  # width / height
        w, h = size / math.sqrt(1 + 1 / aspect**2), size / math.sqrt(1 + aspect**2)  # diagonal = size
        if rnd.random() < 0.5:  # rotated
            corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
            return Stroke("polygon", tuple(_rotated(corners, rnd.uniform(0, math.pi))))
        # Axis-aligned, as most people draw them, a fifth of them with rounded corners.
        corner = rnd.uniform(0.05, 0.2) * min(w, h) if rnd.random() < 0.2 else 0.0
        return Stroke(
            "rounded_rectangle" if corner else "rectangle", ((-w / 2, -h / 2), (w / 2, h / 2)), corner
        )
    if category == 2:
        while True:  # a base, a height and where the apex sits above the base (beyond it: obtuse)
            base, height = rnd.uniform(0.5, 1.0), rnd.uniform(0.4, 1.0)
            apex = base * rnd.uniform(-0.3, 1.3)
            points = [(-base / 2, height / 2), (base / 2, height / 2), (apex - base / 2, -height / 2)]
            if _smallest_angle(points) >= 18:
                break
        mx, my = sum(x for x, _ in points) / 3, sum(y for _, y in points) / 3
        reach = max(math.dist((x, y), (mx, my)) for x, y in points)
        points = [((x - mx) * half / reach, (y - my) * half / reach) for x, y in points]
        upright = rnd.random() < 0.5  # standing on its base
        return Stroke("polygon", tuple(points if upright else _rotated(points, rnd.uniform(0, 2 * math.pi))))
    if category == 3:
        tips = rnd.choice((5, 5, 5, 5, 6, 4, 8))
        inner = rnd.uniform(0.35, 0.6)
        start = -math.pi / 2 if rnd.random() < 0.5 else rnd.uniform(0, 2 * math.pi)
        radii = [half if k % 2 == 0 else half * inner for k in range(2 * tips)]
        angles = [start + k * math.pi / tips for k in range(2 * tips)]
        return Stroke(
            "polygon", tuple((r * math.cos(a), r * math.sin(a)) for r, a in zip(radii, angles, strict=True))
        )
    stroke = max(2.0, half * rnd.uniform(0.15, 0.5))
    return Stroke("ellipse", ((-half, -half), (half, half)), width=stroke)


def render(draw: ImageDraw.ImageDraw, stroke: Stroke, cx: float, cy: float, fill: Any) -> None:
    """Draw ``stroke`` centred at (cx, cy) at ``SCALE`` canvas pixels per image pixel."""
    points = [((cx + x) * SCALE, (cy + y) * SCALE) for x, y in stroke.points]
    if stroke.method == "polygon":
        draw.polygon(points, fill=fill)
    elif stroke.method == "rectangle":
        draw.rectangle(points, fill=fill)
    elif stroke.method == "rounded_rectangle":
        draw.rounded_rectangle(points, radius=stroke.corner * SCALE, fill=fill)
    elif stroke.width:
        draw.ellipse(points, outline=fill, width=round(stroke.width * SCALE))
    else:
        draw.ellipse(points, fill=fill)


def _covered(stroke: Stroke, cx: float, cy: float, size: float, width: int, height: int) -> np.ndarray:
    """The pixels (height, width) bool that the stroke covers at least half of."""
    x0, y0 = max(0, math.floor(cx - size / 2) - 1), max(0, math.floor(cy - size / 2) - 1)
    x1, y1 = min(width, math.ceil(cx + size / 2) + 1), min(height, math.ceil(cy + size / 2) + 1)
    local = Image.new("L", ((x1 - x0) * SCALE, (y1 - y0) * SCALE), 0)
    render(ImageDraw.Draw(local), stroke, cx - x0, cy - y0, 255)
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = np.asarray(local.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)) >= 128
    return mask


def _image_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"drawn/{seed}/{index}")


def _place(
    rnd: random.Random, width: int, height: int, objects: list[DrawnObject]
) -> tuple[int, Stroke, tuple[float, float], np.ndarray] | None:
    """A new object that leaves every earlier one visible enough: (category, stroke, centre, mask)."""
    for _ in range(ATTEMPTS):
        category = rnd.randrange(len(CATEGORIES))
        size = math.exp(
            rnd.uniform(math.log(MIN_EXTENT), math.log(min(MAX_EXTENT, 0.7 * min(width, height))))
        )
        cx, cy = rnd.uniform(size / 2, width - size / 2), rnd.uniform(size / 2, height - size / 2)
        stroke = sample_stroke(rnd, category, size)
        mask = _covered(stroke, cx, cy, size, width, height)
        if mask.sum() >= 12 and all((o.mask & ~mask).sum() >= MIN_VISIBLE * o.area for o in objects):
            return category, stroke, (cx, cy), mask
    return None


def draw_image(seed: int, index: int) -> tuple[Image.Image, list[DrawnObject]]:
    """Image ``index`` of the dataset drawn with ``seed``: RGB image and its objects, in drawing order."""
    rnd = _image_rng(seed, index)
    if rnd.random() < 0.6:
        width, height = rnd.choice(IMAGE_SIZES)
    else:
        width, height = rnd.randint(320, 960), rnd.randint(320, 960)
    background = draw_background(rnd, width, height)
    canvas = background.resize((width * SCALE, height * SCALE), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    objects: list[DrawnObject] = []
    for _ in range(rnd.randint(1, MAX_OBJECTS)):
        placed = _place(rnd, width, height, objects)
        if placed is None:
            continue
        category, stroke, (cx, cy), mask = placed
        under = ImageStat.Stat(background, Image.fromarray(mask)).mean
        for _ in range(ATTEMPTS):
            color = _hsv(rnd, (0, 100))
            if abs(_luma(color) - _luma(under)) >= MIN_LUMA_GAP:
                break
        render(draw, stroke, cx, cy, color)
        for earlier in objects:
            earlier.mask &= ~mask
        objects.append(DrawnObject(category, mask, int(mask.sum())))
    image = canvas.resize((width, height), Image.Resampling.BOX)
    if rnd.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(rnd.uniform(0.4, 1.0)))
    return image, objects


def _draw_one(index: int, seed: int, images_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    image, objects = draw_image(seed, index)
    rnd = _image_rng(seed, index + 1_000_000_000)  # file format choices, apart from the drawing's stream
    if rnd.random() < 0.5:
        file_name = f"{index:06d}.jpg"
        image.save(images_dir / file_name, quality=rnd.randint(70, 95))
    else:
        file_name = f"{index:06d}.png"
        image.save(images_dir / file_name)
    record = {"id": index + 1, "file_name": file_name, "height": image.height, "width": image.width}
    return record, [instance_annotation(index + 1, o.category + 1, o.mask) for o in objects if o.mask.any()]


def generate(out_dir: str | Path, num_images: int, seed: int, workers: int = 1) -> Path:
    """Write ``num_images`` drawn images and their COCO labels to ``out_dir``; return the JSON path."""
    info: dict[str, Any] = {
        "description": "independently drawn shapes (validation only)",
        "generator": "training.data.drawn",
    }
    info["seed"] = seed
    job = partial(_draw_one, seed=seed, images_dir=Path(out_dir) / "images")
    return write_dataset(out_dir, num_images, job, CATEGORIES, info, workers)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--images", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="processes; the output does not depend on it")
    args = parser.parse_args(argv)
    json_path = generate(args.out_dir, args.images, args.seed, args.workers)
    print(f"wrote {args.images} drawn images and {json_path}")


if __name__ == "__main__":
    main()
