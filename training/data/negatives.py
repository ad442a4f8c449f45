"""Shapes training data with negatives: photo-like images with no shapes, shapes over photo-like backgrounds,
and ordinary `training`-preset scenes, in one COCO dataset.

Each image ``i`` of a seed is, by a draw from its own generator (``training.data.shapes.image_rng``):

- ``negative`` (share ``--negatives``): `training.data.backgrounds.photo_like`, no annotations. Train on them with
  ``python -m training.train --keep-empty-images`` (images without annotations are skipped by default). A
  share ``--hard`` of them are ``hard_negative``: `photo_like(hard=True)`, round, shiny and man-made clutter
  and faces on plain scenes, and a share ``--vessels`` of those are ``vessels``: `photo_like(hard=True,
  vessels=True)`, cups, bowls and plates seen from above, over the clutter or, in half of them, as a
  close-up on a table top;
- ``photo_shapes`` (share ``--photo-shapes``): the `TRAINING` preset's shapes drawn over a photo-like
  background (`PHOTO_SHAPES`, the ``photo`` background kind), then the same camera effects as the negatives
  (milder defocus; greyscale only where every shape stays distinct from its surroundings in grey);
- ``shapes`` (the rest): the `TRAINING` preset as ``python -m training.data.shapes --preset training`` draws it.

Photo-like images are saved as JPEG at quality 40-95 in four of five cases, the shapes scenes as the preset
says. The image records carry their ``kind``. Nothing here comes from a photograph.

CLI::

    python -m training.data.negatives OUT_DIR --images N --seed S [--negatives 0.35] [--photo-shapes 0.3]
        [--hard 0] [--vessels 0] [--workers W]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from training.data.backgrounds import LUMA, camera_effects, photo_like
from training.data.coco_writer import instance_annotation, write_dataset
from training.data.shapes import SHAPE_CLASSES, TRAINING, image_rng, render_image, render_scene

PHOTO_SHAPES = dataclasses.replace(TRAINING, name="photo_shapes", backgrounds=("photo",))
KINDS = ("negative", "hard_negative", "vessels", "photo_shapes", "shapes")
PHOTO_JPEG_FRACTION = 0.8
PHOTO_JPEG_QUALITY = (40, 95)
# A shape must differ from the pixels around it by this much grey level for its image to turn grey.
GREY_CONTRAST = 25.0
POSITIVE_GREY_PROB = 0.2
POSITIVE_DEFOCUS = (0.4, 1.2)


def distinct_in_grey(image: np.ndarray, masks: Sequence[np.ndarray]) -> bool:
    """Whether every visible mask (H, W) bool differs in mean luma from a 4-pixel band around it by at least
    ``GREY_CONTRAST``: the shapes stay visible once the image (H, W, 3) is greyscale."""
    luma = image.astype(np.float32) @ LUMA
    kernel = np.ones((9, 9), dtype=np.uint8)
    for mask in masks:
        band = cv2.dilate(mask.view(np.uint8), kernel).astype(bool) & ~mask
        if not band.any() or abs(float(luma[mask].mean()) - float(luma[band].mean())) < GREY_CONTRAST:
            return False
    return True


def render_sample(
    rng: np.random.Generator, negatives: float, photo_shapes: float, hard: float = 0.0, vessels: float = 0.0
) -> tuple[str, np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image of the mix: its kind, uint8 (H, W, 3) RGB and, per object, (class id, visible mask).

    ``hard``: the share of negatives that are hard ones (`photo_like(hard=True)`); ``vessels``: the share of
    the hard ones with vessels seen from above. A share of 0 draws no number, so that datasets made before
    the option existed come out the same."""
    draw = rng.random()
    if draw < negatives:
        low, high = TRAINING.image_side
        height, width = (int(rng.integers(low, high + 1)) for _ in range(2))
        if hard > 0.0 and rng.random() < hard:
            if vessels > 0.0 and rng.random() < vessels:
                return "vessels", photo_like(rng, height, width, hard=True, vessels=True), []
            return "hard_negative", photo_like(rng, height, width, hard=True), []
        return "negative", photo_like(rng, height, width), []
    if draw < negatives + photo_shapes:
        scene = render_scene(rng, PHOTO_SHAPES)
        objects = [(o.shape.class_id, o.visible_mask) for o in scene.objects]
        grey = POSITIVE_GREY_PROB if distinct_in_grey(scene.image, [m for _, m in objects]) else 0.0
        image = camera_effects(rng, scene.image, grey_prob=grey, defocus=POSITIVE_DEFOCUS)
        return "photo_shapes", image, objects
    image, objects = render_image(rng, TRAINING)
    return "shapes", image, objects


def _generate_one(
    index: int,
    seed: int,
    images_dir: Path,
    negatives: float,
    photo_shapes: float,
    hard: float = 0.0,
    vessels: float = 0.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = image_rng(seed, index)
    kind, image, objects = render_sample(rng, negatives, photo_shapes, hard, vessels)
    photo = kind != "shapes"
    fraction, qualities = (
        (PHOTO_JPEG_FRACTION, PHOTO_JPEG_QUALITY)
        if photo
        else (TRAINING.jpeg_fraction, TRAINING.jpeg_quality)
    )
    as_jpeg = rng.random() < fraction
    file_name = f"{index:06d}.{'jpg' if as_jpeg else 'png'}"
    if as_jpeg:
        Image.fromarray(image).save(
            images_dir / file_name, quality=int(rng.integers(qualities[0], qualities[1] + 1))
        )
    else:
        Image.fromarray(image).save(images_dir / file_name)
    height, width = image.shape[:2]
    record = {"id": index + 1, "file_name": file_name, "height": height, "width": width, "kind": kind}
    return record, [instance_annotation(index + 1, class_id + 1, mask) for class_id, mask in objects]


def generate(
    out_dir: str | Path,
    num_images: int,
    seed: int,
    negatives: float = 0.35,
    photo_shapes: float = 0.3,
    workers: int = 1,
    hard: float = 0.0,
    vessels: float = 0.0,
) -> Path:
    """Write the mixed dataset (``OUT/images``, ``OUT/annotations.json``); return the JSON path. COCO ids as in
    `training.data.shapes.generate`; the output depends only on the arguments other than ``workers``."""
    for name, share in (("hard", hard), ("vessels", vessels)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"the {name} share is a probability, got {share}")
    if min(negatives, photo_shapes) < 0.0 or negatives + photo_shapes > 1.0:
        raise ValueError(f"shares must be ≥ 0 and sum to at most 1, got {negatives} and {photo_shapes}")
    info = {
        "description": "synthetic shapes with photo-like negatives",
        "generator": "training.data.negatives",
        "seed": seed,
        "negatives": negatives,
        "photo_shapes": photo_shapes,
        "hard": hard,
        "vessels": vessels,
        "settings": dataclasses.asdict(TRAINING),
    }
    job = partial(
        _generate_one,
        seed=seed,
        images_dir=Path(out_dir) / "images",
        negatives=negatives,
        photo_shapes=photo_shapes,
        hard=hard,
        vessels=vessels,
    )
    return write_dataset(out_dir, num_images, job, SHAPE_CLASSES, info, workers)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--negatives", type=float, default=0.35, help="share of photo-like images, no shapes")
    parser.add_argument(
        "--photo-shapes", type=float, default=0.3, help="share of shapes over photo-like images"
    )
    parser.add_argument(
        "--hard", type=float, default=0.0, help="share of the negatives that are hard ones (default 0)"
    )
    parser.add_argument(
        "--vessels", type=float, default=0.0, help="share of the hard negatives with vessels (default 0)"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes; the output does not depend on it")
    args = parser.parse_args(argv)
    json_path = generate(
        args.out_dir,
        args.images,
        args.seed,
        args.negatives,
        args.photo_shapes,
        args.workers,
        args.hard,
        args.vessels,
    )
    print(f"wrote {args.images} images and {json_path}")


if __name__ == "__main__":
    main()
