"""Large scenes of many small shapes: what tiled inference is for (bench/tiling.py measures it on them).

A scene is far larger than the model's input (6000 × 4000 by default) and holds two kinds of objects of the
five classes of `training.data.shapes`, drawn with its geometry (`sample_shape`, `rasterize`, `coverage`) and
colours (`sample_color`): many small ones (20-60 px across, the ones a resized image loses) and a few large
ones (700-1600 px, each spanning several tiles, so that their masks must be stitched across seams or come from
the whole-image pass). Objects never touch each other (so every ground-truth mask is the whole shape), but a
small one may sit in a ring's hole or in the gaps of a large star. Everything is kept as crops: no full-size
mask exists, so a scene costs its pixels and little more.

CLI::

    python -m training.data.large OUT_DIR --images N --seed S [--height 4000 --width 6000 --small 150 --large 6]

writes ``OUT_DIR/images/*.png`` and ``OUT_DIR/annotations.json`` (COCO, categories as `training.data.shapes`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from centermask_client.rle import encode_crop
from training.data.shapes import (
    SHAPE_CLASSES,
    TRAINING,
    GeneratorSettings,
    coverage,
    rasterize,
    sample_background,
    sample_color,
    sample_shape,
)

SMALL = dataclasses.replace(TRAINING, name="large-scene small", diameter=(20.0, 60.0))
LARGE = dataclasses.replace(
    TRAINING, name="large-scene large", image_side=(2000, 8000), diameter=(700.0, 1600.0)
)
BACKGROUNDS = ("uniform", "gradient", "noise")
# Free pixels kept around every object, so that no two touch.
GAP = 4
PLACEMENT_ATTEMPTS = 40


@dataclass(frozen=True)
class SceneObject:
    """A drawn object: its class and its mask as a crop (`mask` (h, w) bool with its top-left at x0, y0)."""

    class_id: int
    x0: int
    y0: int
    mask: np.ndarray

    @property
    def diameter(self) -> int:
        return max(self.mask.shape)


@dataclass(frozen=True)
class LargeScene:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    objects: list[SceneObject]

    def coco_annotations(self, image_id: int) -> list[dict[str, Any]]:
        """The objects as COCO annotations (without ids), masks as compressed RLE; category = class + 1."""
        height, width = self.image.shape[:2]
        annotations = []
        for item in self.objects:
            h, w = item.mask.shape
            annotations.append(
                {
                    "image_id": image_id,
                    "category_id": item.class_id + 1,
                    "bbox": [item.x0, item.y0, w, h],
                    "area": int(np.count_nonzero(item.mask)),
                    "iscrowd": 0,
                    "segmentation": encode_crop(item.mask, item.x0, item.y0, height, width),
                }
            )
        return annotations


def render_large_scene(
    seed: int, index: int, height: int = 4000, width: int = 6000, small: int = 150, large: int = 6
) -> LargeScene:
    """Scene `index` of `seed`: `large` large objects, then `small` small ones asked for (a crowded scene may
    place fewer). Deterministic per (seed, index)."""
    rng = np.random.default_rng([seed, index, 23])
    background = sample_background(rng, height, width, BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    canvas = background.copy()
    taken = np.zeros((height, width), dtype=bool)
    objects = []
    for settings, count in ((LARGE, large), (SMALL, small)):
        for _ in range(count):
            placed = _place(rng, taken, settings)
            if placed is not None:
                objects.append(_paint(rng, canvas, background, placed, settings))
    return LargeScene(canvas, objects)


def _place(rng: np.random.Generator, taken: np.ndarray, settings: GeneratorSettings) -> Any:
    """A shape whose mask, grown by GAP, touches no earlier object; marks it taken. None if none fits."""
    height, width = taken.shape
    kernel = np.ones((2 * GAP + 1, 2 * GAP + 1), dtype=np.uint8)
    for _ in range(PLACEMENT_ATTEMPTS):
        shape = sample_shape(rng, height, width, settings)
        box, mask = rasterize(shape, height, width)
        if np.count_nonzero(mask) < 16:
            continue
        rows, cols = box
        grown_rows = slice(max(0, rows.start - GAP), min(height, rows.stop + GAP))
        grown_cols = slice(max(0, cols.start - GAP), min(width, cols.stop + GAP))
        grown = np.zeros((grown_rows.stop - grown_rows.start, grown_cols.stop - grown_cols.start), np.uint8)
        top, left = rows.start - grown_rows.start, cols.start - grown_cols.start
        grown[top : top + mask.shape[0], left : left + mask.shape[1]] = mask
        grown = cv2.dilate(grown, kernel).astype(bool)
        if (taken[grown_rows, grown_cols] & grown).any():
            continue
        taken[rows, cols] |= mask
        return shape, box, mask
    return None


def _paint(
    rng: np.random.Generator,
    canvas: np.ndarray,
    background: np.ndarray,
    placed: tuple[Any, tuple[slice, slice], np.ndarray],
    settings: GeneratorSettings,
) -> SceneObject:
    """Fill the shape with a colour that stands out from the background under it, anti-aliased by area half
    of the time, with per-pixel noise a third of the time."""
    shape, box, mask = placed
    color = np.array(sample_color(rng, background[box][mask], settings), dtype=np.float32)
    region = canvas[box].astype(np.float32)
    values = np.broadcast_to(color, region.shape).copy()
    if rng.random() < 1 / 3:
        values += rng.normal(0.0, 8.0, size=values.shape).astype(np.float32)
    if rng.random() < 0.5:
        alpha = coverage(shape, box, mask, settings.supersampling)[..., None]
    else:
        alpha = mask[..., None].astype(np.float32)
    region += alpha * (values - region)
    canvas[box] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    rows, cols = box
    return SceneObject(shape.class_id, cols.start, rows.start, mask)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--small", type=int, default=150, help="small objects asked for per scene")
    parser.add_argument("--large", type=int, default=6, help="large objects asked for per scene")
    args = parser.parse_args(argv)
    (args.out_dir / "images").mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(args.images):
        scene = render_large_scene(args.seed, index, args.height, args.width, args.small, args.large)
        file_name = f"{index:04d}.png"
        Image.fromarray(scene.image).save(args.out_dir / "images" / file_name, compress_level=1)
        images.append({"id": index + 1, "file_name": file_name, "height": args.height, "width": args.width})
        for annotation in scene.coco_annotations(index + 1):
            annotations.append({"id": len(annotations) + 1, **annotation})
    categories = [
        {"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPE_CLASSES)
    ]
    info = {
        "description": "large scenes of small shapes",
        "generator": "training.data.large",
        "seed": args.seed,
    }
    coco = {"info": info, "images": images, "annotations": annotations, "categories": categories}
    (args.out_dir / "annotations.json").write_text(json.dumps(coco))
    print(f"wrote {args.images} scenes and {args.out_dir / 'annotations.json'}")


if __name__ == "__main__":
    main()
