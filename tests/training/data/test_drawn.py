"""Tests for the independent renderer: determinism, the shared COCO layout, masks that match the pixels."""

from __future__ import annotations

import math
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from training.data import drawn

IMAGES = 16


@pytest.fixture(scope="module")
def scenes() -> list[tuple[Image.Image, list[drawn.DrawnObject]]]:
    return [drawn.draw_image(9, index) for index in range(IMAGES)]


def test_drawing_is_deterministic_per_seed_and_index(
    scenes: list[tuple[Image.Image, list[drawn.DrawnObject]]],
) -> None:
    image, objects = drawn.draw_image(9, 3)
    assert image.tobytes() == scenes[3][0].tobytes()
    assert [o.category for o in objects] == [o.category for o in scenes[3][1]]
    assert drawn.draw_image(10, 3)[0].tobytes() != image.tobytes()


def test_scenes_hold_every_class_with_disjoint_visible_masks(
    scenes: list[tuple[Image.Image, list[drawn.DrawnObject]]],
) -> None:
    categories = set()
    for image, objects in scenes:
        assert image.mode == "RGB"
        assert 1 <= len(objects) <= drawn.MAX_OBJECTS
        taken = np.zeros((image.height, image.width), dtype=bool)
        for obj in reversed(objects):  # drawn later means on top
            categories.add(obj.category)
            assert obj.mask.shape == (image.height, image.width)
            assert not (obj.mask & taken).any()
            assert obj.mask.sum() >= drawn.MIN_VISIBLE * obj.area - 1
            taken |= obj.mask
    assert categories == set(range(len(drawn.CATEGORIES)))


def test_masks_cover_what_was_painted(scenes: list[tuple[Image.Image, list[drawn.DrawnObject]]]) -> None:
    checked = 0
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    for image, objects in scenes:
        pixels = np.asarray(image).astype(np.float64)
        for obj in objects:
            # Three pixels in from every visible edge, an object is one flat colour (blur reaches ~2 px).
            inner = cv2.erode(obj.mask.view(np.uint8), disc, borderValue=0).astype(bool)
            if inner.sum() < 30:
                continue
            assert pixels[inner].std(axis=0).max() < 2.0
            checked += 1
    assert checked >= 20


def test_rings_have_holes_and_stars_have_notches() -> None:
    ring = drawn.Stroke("ellipse", ((-20.0, -20.0), (20.0, 20.0)), width=6.0)
    star = drawn.sample_stroke(random.Random(0), 3, 40.0)
    ring_mask = drawn._covered(ring, 32.0, 32.0, 40.0, 64, 64)
    star_mask = drawn._covered(star, 32.0, 32.0, 40.0, 64, 64)
    assert not ring_mask[32, 32] and ring_mask[32, 14]
    assert ring_mask.sum() == pytest.approx(math.pi * (20**2 - 14**2), rel=0.05)
    assert star_mask[32, 32] and star_mask.sum() < 0.6 * math.pi * 20**2
    # The mask is the same drawing as the image, at the same supersampling.
    canvas = Image.new("L", (64 * drawn.SCALE, 64 * drawn.SCALE), 0)
    drawn.render(ImageDraw.Draw(canvas), ring, 32.0, 32.0, 255)
    np.testing.assert_array_equal(np.asarray(canvas.resize((64, 64), Image.Resampling.BOX)) >= 128, ring_mask)


def test_generate_writes_the_shared_coco_layout(tmp_path: Path) -> None:
    drawn.main([str(tmp_path / "a"), "--images", "4", "--seed", "9"])
    drawn.generate(tmp_path / "b", 4, seed=9, workers=2)
    files_a = {p.name: p.read_bytes() for p in sorted((tmp_path / "a").rglob("*")) if p.is_file()}
    files_b = {p.name: p.read_bytes() for p in sorted((tmp_path / "b").rglob("*")) if p.is_file()}
    assert files_a == files_b and len(files_a) == 5
    coco = COCO(str(tmp_path / "a" / "annotations.json"))
    assert [(c["id"], c["name"]) for c in coco.loadCats(sorted(coco.cats))] == list(
        enumerate(drawn.CATEGORIES, start=1)
    )
    assert sorted(coco.imgs) == [1, 2, 3, 4]
    for image_id, info in coco.imgs.items():
        image, objects = drawn.draw_image(9, image_id - 1)
        with Image.open(tmp_path / "a" / "images" / info["file_name"]) as stored:
            assert stored.size == (info["width"], info["height"]) == image.size
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(annotations) == len(objects)
        for annotation, obj in zip(annotations, objects, strict=True):
            assert annotation["category_id"] == obj.category + 1
            np.testing.assert_array_equal(coco.annToMask(annotation).astype(bool), obj.mask)
            rle = coco.annToRLE(annotation)
            assert annotation["area"] == obj.mask.sum() == mask_util.area(rle)
            np.testing.assert_array_equal(annotation["bbox"], mask_util.toBbox(rle))
