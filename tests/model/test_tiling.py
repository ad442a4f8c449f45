"""Tiled inference's plan and merge (`model.inference.tiling`), weight-free: an oracle segmenter finds every
painted object of a pass exactly (its connected components), so that what is tested is the cutting and the
merging, not a model. The predictor's use of them is tested once, on the bundled model."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from model.inference.detections import Detections, Selection
from model.inference.masks import MaskCrop, PastedMasks
from model.inference.tiling import Tiling, segment_tiled
from model.predict import main
from model.wire.rle import encode_pasted

RESIZE = (200, 400)  # a model's (min_size, max_size): tiles of 200, images tiled from 4× its view
TILING = Tiling(tile_size=200, tile_overlap=64)


def paint(height: int, width: int, objects: Sequence[tuple[int, np.ndarray, int, int]]) -> np.ndarray:
    """An RGB image, each object (class, mask, x0, y0) painted in colour class + 1 on black."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    for class_id, mask, x0, y0 in objects:
        image[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask] = class_id + 1
    return image


def disc(diameter: int) -> np.ndarray:
    radius = (diameter - 1) / 2
    y, x = np.mgrid[:diameter, :diameter]
    return (x - radius) ** 2 + (y - radius) ** 2 <= radius**2


class Oracle:
    """A segmenter that finds each connected component of painted pixels, class from its colour. Passes
    larger than a tile are the whole image: there it sees only objects of `whole_min` pixels or more across,
    as a resized pass would."""

    def __init__(self, whole_min: int = 150, twice: bool = False) -> None:
        self.whole_min = whole_min
        self.twice = twice  # each object found a second time, a pixel smaller (as box NMS lets through)
        self.passes: list[tuple[int, int]] = []

    def __call__(self, images: list[np.ndarray], selection: Selection) -> list[Detections]:
        results = []
        for image in images:
            self.passes.append(image.shape[:2])
            whole = max(image.shape[:2]) > TILING.tile_size
            labels, _ = ndimage.label(image[..., 0] > 0)
            boxes, classes, crops = [], [], []
            for index, found in enumerate(ndimage.find_objects(labels), start=1):
                if found is None:
                    continue
                rows, cols = found
                if whole and max(rows.stop - rows.start, cols.stop - cols.start) < self.whole_min:
                    continue
                mask = labels[found] == index
                for copy in range(2 if self.twice else 1):
                    boxes.append([cols.start, rows.start, cols.stop, rows.stop])
                    classes.append(int(image[found][mask][0, 0]) - 1)
                    crops.append(
                        MaskCrop(cols.start, rows.start, ndimage.binary_erosion(mask) if copy else mask)
                    )
            count = len(boxes)
            results.append(
                Detections(
                    image_size=image.shape[:2],
                    boxes=np.array(boxes, dtype=np.float32).reshape(count, 4),
                    scores=np.linspace(0.9, 0.8, count, dtype=np.float32),
                    class_ids=np.array(classes, dtype=np.int64),
                    mask_scores=np.linspace(0.8, 0.7, count, dtype=np.float32),
                    mask_probs=torch.zeros((count, 0, 0)),
                    stitched=PastedMasks.from_crops(image.shape[:2], crops),
                )
            )
        return results


def full_masks(detections: Detections) -> list[np.ndarray]:
    height, width = detections.image_size
    masks = []
    for crop in detections.mask_crops():
        mask = np.zeros((height, width), dtype=bool)
        mask[crop.y0 : crop.y0 + crop.crop.shape[0], crop.x0 : crop.x0 + crop.crop.shape[1]] = crop.crop
        masks.append(mask)
    return masks


def truth_mask(height: int, width: int, mask: np.ndarray, x0: int, y0: int) -> np.ndarray:
    full = np.zeros((height, width), dtype=bool)
    full[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
    return full


def run(image: np.ndarray, oracle: Oracle | None = None, selection: Selection | None = None) -> Detections:
    plan = TILING.plan(image.shape[:2], RESIZE)
    assert plan is not None
    return segment_tiled(image, plan, oracle or Oracle(), selection or Selection(), batch_size=3)


def test_the_plan_covers_the_image_with_equal_tiles_overlapping_by_at_least_the_overlap() -> None:
    plan = TILING.plan((900, 1700), RESIZE)
    assert plan is not None
    assert {tile.size for tile in plan.tiles} == {(200, 200)}
    covered = np.zeros((900, 1700), dtype=np.int64)
    for tile in plan.tiles:
        covered[tile.y0 : tile.y1, tile.x0 : tile.x1] += 1
    assert covered.min() >= 1
    xs = sorted({tile.x0 for tile in plan.tiles})
    ys = sorted({tile.y0 for tile in plan.tiles})
    assert all(b - a <= 200 - 64 for a, b in itertools.pairwise(xs))
    assert all(b - a <= 200 - 64 for a, b in itertools.pairwise(ys))
    assert plan.passes == len(plan.tiles) + 1 == len(xs) * len(ys) + 1


def test_auto_tiles_only_an_image_the_resize_shrinks_by_the_factor() -> None:
    # 400 px long side at most: 1600 px is a 4× shrink, 1500 px less.
    assert TILING.plan((800, 1600), RESIZE) is not None
    assert TILING.plan((700, 1500), RESIZE) is None
    assert Tiling(mode="off").plan((8000, 16000), RESIZE) is None
    # A side shorter than a tile is not tiled, whatever the shrink.
    assert TILING.plan((150, 4000), RESIZE) is None
    with pytest.raises(ValueError, match="at most half"):
        Tiling(tile_size=200, tile_overlap=120).plan((800, 1600), RESIZE)


def test_an_object_across_a_seam_is_one_instance_with_one_mask() -> None:
    height, width = 800, 1600
    plan = TILING.plan((height, width), RESIZE)
    assert plan is not None
    # A disc of 90 px (no tile holds it whole: the overlap is 64) centred where four tiles meet, and a bar
    # crossing three tiles' seams.
    corner = plan.tiles[1]
    bar = np.ones((20, 400), dtype=bool)
    objects = [(3, disc(90), corner.x0 - 45 + 32, corner.y1 - 45 - 32), (1, bar, 300, 500)]
    image = paint(height, width, objects)
    oracle = Oracle(whole_min=10_000)  # the whole pass sees nothing: only stitching can make one of each
    detections = run(image, oracle)
    assert len(detections) == 2
    for (_, mask, x0, y0), found in zip(
        sorted(objects, key=lambda o: o[2]),
        sorted(full_masks(detections), key=lambda m: m.any(0).argmax()),
        strict=True,
    ):
        truth = truth_mask(height, width, mask, x0, y0)
        np.testing.assert_array_equal(found, truth)
    assert set(detections.class_ids.tolist()) == {3, 1}


def test_an_object_seen_whole_by_several_tiles_is_reported_once() -> None:
    height, width = 800, 1600
    plan = TILING.plan((height, width), RESIZE)
    assert plan is not None
    # 30 px discs inside overlap bands: between two tiles, and where four tiles overlap.
    a, b = plan.tiles[0], plan.tiles[len({t.x0 for t in plan.tiles}) + 1]
    objects = [(0, disc(30), a.x1 - 47, 80), (2, disc(30), b.x0 + 10, b.y0 + 10), (4, disc(40), 700, 700)]
    detections = run(paint(height, width, objects))
    assert len(detections) == 3
    assert sorted(detections.class_ids.tolist()) == [0, 2, 4]
    masks = full_masks(detections)
    for class_id, mask, x0, y0 in objects:
        (found,) = [m for m, c in zip(masks, detections.class_ids, strict=True) if c == class_id]
        np.testing.assert_array_equal(found, truth_mask(height, width, mask, x0, y0))


def test_near_duplicates_of_one_pass_are_reported_once() -> None:
    height, width = 800, 1600
    objects = [(1, disc(40), 300, 300), (2, disc(90), 700, 100)]
    detections = run(paint(height, width, objects), Oracle(whole_min=10_000, twice=True))
    assert sorted(detections.class_ids.tolist()) == [1, 2]


def test_a_large_object_comes_from_the_whole_image_pass_not_its_fragments() -> None:
    height, width = 800, 1600
    big = disc(500)
    objects = [(4, big, 100, 150), (0, disc(30), 1300, 300)]
    detections = run(paint(height, width, objects))
    assert sorted(detections.class_ids.tolist()) == [0, 4]
    (large,) = [m for m, c in zip(full_masks(detections), detections.class_ids, strict=True) if c == 4]
    np.testing.assert_array_equal(large, truth_mask(height, width, big, 100, 150))


def test_masks_stay_crops_and_encode_as_rle_of_the_full_image() -> None:
    height, width = 800, 1600
    objects = [(1, disc(90), 150, 150), (2, disc(30), 1000, 600)]
    detections = run(paint(height, width, objects), Oracle(whole_min=10_000))
    pasted = detections.pasted_masks
    # No mask exists at the image's size: each is a crop of its object.
    assert all(stack.shape[1] * stack.shape[2] <= 100 * 100 for _, stack in pasted.chunks)
    rles = encode_pasted(pasted)
    assert [rle["size"] for rle in rles] == [[height, width]] * 2


def test_classes_and_count_apply_to_the_merged_instances() -> None:
    height, width = 800, 1600
    objects = [(c % 5, disc(30), 100 + 140 * c, 100 + 50 * c) for c in range(10)]
    image = paint(height, width, objects)
    assert len(run(image)) == 10
    assert len(run(image, selection=Selection(max_detections=4))) == 4
    only = run(image, selection=Selection(class_ids=frozenset({2})))
    assert only.class_ids.tolist() == [2, 2]


def test_a_tiled_image_runs_its_tiles_in_batches_of_one_size() -> None:
    oracle = Oracle()
    run(paint(800, 1600, []), oracle)
    plan = TILING.plan((800, 1600), RESIZE)
    assert plan is not None
    assert oracle.passes[0] == (800, 1600)
    assert oracle.passes[1:] == [(200, 200)] * len(plan.tiles)


def test_the_cli_tiles_a_large_image_and_says_so(small_weights: Path, tmp_path: Path) -> None:
    # The 64/128 checkpoint: a 576 px long side is a 4.5× shrink.
    rng = np.random.default_rng(0)
    path = tmp_path / "large.png"
    Image.fromarray(rng.integers(0, 256, (384, 576, 3), dtype=np.uint8)).save(path)
    flags = ["--weights", str(small_weights), "--device", "cpu", str(path), "--tile-size", "128"]
    assert main([*flags, "--tile-overlap", "32", "--output", str(tmp_path / "auto.json")]) == 0
    (record,) = json.loads((tmp_path / "auto.json").read_text())
    assert record["tiling"] == {"tiles": 24, "tile_size": 128, "tile_overlap": 32, "passes": 25}
    assert all(instance["mask"]["size"] == [384, 576] for instance in record["instances"])
    assert main([*flags, "--tiling", "off", "--output", str(tmp_path / "off.json")]) == 0
    (record,) = json.loads((tmp_path / "off.json").read_text())
    assert "tiling" not in record
    with pytest.raises(SystemExit):
        main([*flags, "--tile-overlap", "100", "--output", str(tmp_path / "bad.json")])
