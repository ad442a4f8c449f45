"""Tests for the COCO instance dataset: round trip, detectron2 resize rounding, augmentation, polygons, crowds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from model.inference.images import load_rgb
from model.inference.preprocess import resized_shape
from training.data import shapes
from training.data.augment import STRONG, Augmentation, flip_boxes, rotate_boxes
from training.data.coco import CocoInstances, collate, masks_to_boxes

NONE = Augmentation(hflip_prob=0.0)
GEOMETRIC_ONLY = dataclasses.replace(
    STRONG, color_prob=0.0, channel_shuffle_prob=0.0, blur_prob=0.0, noise_prob=0.0, jpeg_prob=0.0
)
PHOTOMETRIC_ONLY = dataclasses.replace(
    STRONG,
    hflip_prob=0.0,
    vflip_prob=0.0,
    rot90_prob=0.0,
    color_prob=1.0,
    channel_shuffle_prob=1.0,
    blur_prob=1.0,
    noise_prob=1.0,
    jpeg_prob=1.0,
)


@pytest.fixture(scope="module")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shapes")
    return shapes.generate(root, 4, seed=3), root / "images"


@pytest.mark.parametrize(
    ("size", "short", "max_size", "expected"),
    [
        ((480, 640), 600, 1000, (600, 800)),
        ((427, 640), 600, 1000, (600, 899)),
        ((375, 1242), 600, 1000, (302, 1000)),
        ((640, 480), 600, 1000, (800, 600)),
        ((333, 500), 800, 1333, (800, 1201)),
    ],
)
def test_resized_shape_matches_detectron2(
    size: tuple[int, int], short: int, max_size: int, expected: tuple[int, int]
) -> None:
    assert resized_shape(*size, short, max_size) == expected


def test_round_trip_without_augmentation(shapes_dataset: tuple[Path, Path]) -> None:
    json_path, image_dir = shapes_dataset
    dataset = CocoInstances(json_path, image_dir, min_sizes=(0,), training=False)
    coco = COCO(str(json_path))
    assert dataset.class_names == list(shapes.SHAPE_CLASSES)
    assert dataset.category_ids == [1, 2, 3, 4, 5]
    assert len(dataset) == 4
    for sample in dataset:
        info = coco.imgs[sample["image_id"]]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[sample["image_id"]]))
        height, width = info["height"], info["width"]
        assert sample["orig_size"] == (height, width)
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, height, width)
        np.testing.assert_array_equal(
            sample["image"].permute(1, 2, 0).numpy(), load_rgb(image_dir / info["file_name"])
        )
        expected_masks = np.stack([coco.annToMask(a).astype(bool) for a in annotations])
        assert sample["masks"].dtype == torch.bool
        np.testing.assert_array_equal(sample["masks"].numpy(), expected_masks)
        xywh = np.array([a["bbox"] for a in annotations], dtype=np.float32)
        assert sample["boxes"].dtype == torch.float32
        np.testing.assert_array_equal(
            sample["boxes"].numpy(), np.hstack([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]])
        )
        assert sample["classes"].dtype == torch.int64
        assert sample["classes"].tolist() == [a["category_id"] - 1 for a in annotations]


def test_resize_follows_the_formula(shapes_dataset: tuple[Path, Path]) -> None:
    json_path, image_dir = shapes_dataset
    dataset = CocoInstances(json_path, image_dir, min_sizes=(300,), max_size=400, augmentation=NONE)
    for sample in dataset:
        height, width = resized_shape(*sample["orig_size"], 300, 400)
        assert sample["image"].shape == (3, height, width)
        assert sample["masks"].shape[1:] == (height, width)
        assert sample["masks"].flatten(1).any(dim=1).all()
        np.testing.assert_array_equal(sample["boxes"].numpy(), masks_to_boxes(sample["masks"].numpy()))


def test_flip_is_consistent(shapes_dataset: tuple[Path, Path]) -> None:
    json_path, image_dir = shapes_dataset
    plain = CocoInstances(json_path, image_dir, min_sizes=(320,), augmentation=NONE)
    flipped = CocoInstances(json_path, image_dir, min_sizes=(320,), augmentation=Augmentation(hflip_prob=1.0))
    a, b = plain[0], flipped[0]
    width = a["image"].shape[-1]
    assert torch.equal(b["image"], a["image"].flip(-1))
    assert torch.equal(b["masks"], a["masks"].flip(-1))
    assert torch.equal(b["classes"], a["classes"])
    x1, y1, x2, y2 = a["boxes"].unbind(1)
    assert torch.equal(b["boxes"], torch.stack([width - x2, y1, width - x1, y2], 1))
    assert torch.equal(b["boxes"], torch.from_numpy(masks_to_boxes(b["masks"].numpy())))


def test_vertical_flip_is_consistent(shapes_dataset: tuple[Path, Path]) -> None:
    json_path, image_dir = shapes_dataset
    a = CocoInstances(json_path, image_dir, min_sizes=(320,), augmentation=NONE)[1]
    b = CocoInstances(json_path, image_dir, min_sizes=(320,), augmentation=Augmentation(0.0, vflip_prob=1.0))[
        1
    ]
    assert torch.equal(b["image"], a["image"].flip(-2))
    assert torch.equal(b["masks"], a["masks"].flip(-2))
    assert torch.equal(b["boxes"], torch.from_numpy(masks_to_boxes(b["masks"].numpy())))


def test_quarter_turns_keep_image_masks_and_boxes_together(shapes_dataset: tuple[Path, Path]) -> None:
    json_path, image_dir = shapes_dataset
    plain = CocoInstances(json_path, image_dir, min_sizes=(256,), augmentation=NONE)
    turned = CocoInstances(
        json_path, image_dir, min_sizes=(256,), augmentation=Augmentation(0.0, rot90_prob=1.0)
    )
    turns_seen = set()
    for seed in range(40):  # until every turn count has come up (8 seeds miss one about one time in eight)
        if turns_seen == {1, 2, 3}:
            break
        torch.manual_seed(seed)
        a, b = plain[seed % 4], turned[seed % 4]
        # Which quarter turn it was: the one that maps the plain image onto the augmented one.
        (turns,) = [k for k in (1, 2, 3) if torch.equal(b["image"], torch.rot90(a["image"], k, dims=(1, 2)))]
        turns_seen.add(turns)
        assert torch.equal(b["masks"], torch.rot90(a["masks"], turns, dims=(1, 2)))
        assert torch.equal(b["classes"], a["classes"])
        assert torch.equal(b["boxes"], torch.from_numpy(masks_to_boxes(b["masks"].numpy())))
    assert turns_seen == {1, 2, 3}


def test_box_transforms_match_the_masks() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 30, 50), dtype=bool)
    for mask in masks:
        x0, y0 = rng.integers(0, 40), rng.integers(0, 20)
        mask[y0 : y0 + rng.integers(1, 10), x0 : x0 + rng.integers(1, 10)] = True
    boxes = masks_to_boxes(masks)
    np.testing.assert_array_equal(
        flip_boxes(boxes, 30, 50, horizontal=True), masks_to_boxes(masks[:, :, ::-1])
    )
    np.testing.assert_array_equal(flip_boxes(boxes, 30, 50, horizontal=False), masks_to_boxes(masks[:, ::-1]))
    np.testing.assert_array_equal(rotate_boxes(boxes, 50), masks_to_boxes(np.rot90(masks, axes=(1, 2))))


def test_geometric_augmentation_of_box_only_annotations(tmp_path: Path) -> None:
    json_path = _write_hand_made(tmp_path)
    dataset = CocoInstances(json_path, tmp_path, min_sizes=(0,), augmentation=GEOMETRIC_ONLY)
    for seed in range(6):
        torch.manual_seed(seed)
        sample = dataset[1]  # one 10x8 box at (4, 6) in a 60x40 image
        assert sample["masks"] is None
        (x1, y1, x2, y2) = sample["boxes"][0].tolist()
        height, width = sample["image"].shape[1:]
        assert {x2 - x1, y2 - y1} == {10.0, 8.0} and {height, width} == {40, 60}
        assert (x2 - x1 == 10.0) == (width == 60)
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


def test_photometric_augmentation_changes_pixels_only(shapes_dataset: tuple[Path, Path]) -> None:
    json_path, image_dir = shapes_dataset
    plain = CocoInstances(json_path, image_dir, min_sizes=(288,), augmentation=NONE)[2]
    dataset = CocoInstances(json_path, image_dir, min_sizes=(288,), augmentation=PHOTOMETRIC_ONLY)
    torch.manual_seed(3)
    first = dataset[2]
    torch.manual_seed(3)
    again = dataset[2]
    torch.manual_seed(4)
    other = dataset[2]
    for key in ("boxes", "classes", "masks"):
        assert torch.equal(first[key], plain[key])
    assert first["image"].dtype == torch.uint8 and first["image"].shape == plain["image"].shape
    assert torch.equal(first["image"], again["image"])  # determined by the torch seed
    assert not torch.equal(first["image"], plain["image"])
    assert not torch.equal(first["image"], other["image"])


def test_augmentation_is_deterministic_given_the_torch_seed(shapes_dataset: tuple[Path, Path]) -> None:
    json_path, image_dir = shapes_dataset
    dataset = CocoInstances(json_path, image_dir, min_sizes=(256, 320), max_size=512, augmentation=STRONG)
    torch.manual_seed(11)
    first = [dataset[i] for i in range(4)]
    torch.manual_seed(11)
    second = [dataset[i] for i in range(4)]
    for a, b in zip(first, second, strict=True):
        for key in ("image", "boxes", "classes", "masks"):
            assert torch.equal(a[key], b[key])
        assert torch.equal(a["boxes"], torch.from_numpy(masks_to_boxes(a["masks"].numpy())))
        assert a["image"].shape[1:] == a["masks"].shape[1:]


def test_evaluation_mode_never_augments(shapes_dataset: tuple[Path, Path]) -> None:
    json_path, image_dir = shapes_dataset
    always = dataclasses.replace(PHOTOMETRIC_ONLY, hflip_prob=1.0, vflip_prob=1.0, rot90_prob=1.0)
    plain = CocoInstances(json_path, image_dir, min_sizes=(0,), training=False)[0]
    sample = CocoInstances(json_path, image_dir, min_sizes=(0,), augmentation=always, training=False)[0]
    assert torch.equal(sample["image"], plain["image"]) and torch.equal(sample["masks"], plain["masks"])


@pytest.mark.parametrize("change", [{"vflip_prob": 1.5}, {"jpeg_prob": -0.1}, {"gamma": (0.0, 1.0)}])
def test_augmentation_rejects_impossible_values(change: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(STRONG, **change)


def test_multi_scale_draws_every_size(shapes_dataset: tuple[Path, Path]) -> None:
    json_path, image_dir = shapes_dataset
    dataset = CocoInstances(json_path, image_dir, min_sizes=(256, 288), max_size=2000)
    torch.manual_seed(0)
    shorts = {min(dataset[0]["image"].shape[1:]) for _ in range(12)}
    assert shorts == {256, 288}


def _write_hand_made(root: Path) -> Path:
    Image.new("RGB", (60, 40), (10, 20, 30)).save(root / "a.png")
    Image.new("RGB", (60, 40), (30, 20, 10)).save(root / "empty.png")
    Image.new("RGB", (60, 40), (0, 0, 0)).save(root / "boxes.png")
    square = np.zeros((40, 60), dtype=np.uint8)
    square[20:30, 40:50] = 1
    compressed = mask_util.encode(np.asfortranarray(square))
    # Uncompressed RLE of rows 20-29 x columns 45-49: column-major run lengths, starting with zeros.
    uncompressed = [40 * 45 + 20] + [10, 30] * 4 + [10, 10 + 40 * 10]
    coco = {
        "images": [
            {"id": 5, "file_name": "a.png", "height": 40, "width": 60},
            {"id": 6, "file_name": "empty.png", "height": 40, "width": 60},
            {"id": 9, "file_name": "boxes.png", "height": 40, "width": 60},
        ],
        "categories": [{"id": 7, "name": "b"}, {"id": 2, "name": "a"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 5,
                "category_id": 7,
                "bbox": [10, 5, 20, 10],
                "iscrowd": 0,
                "area": 200,
                "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]],
            },
            {
                "id": 2,
                "image_id": 5,
                "category_id": 2,
                "bbox": [40, 20, 10, 10],
                "iscrowd": 1,
                "area": 100,
                "segmentation": {"size": [40, 60], "counts": compressed["counts"].decode()},
            },
            {
                "id": 3,
                "image_id": 5,
                "category_id": 2,
                "bbox": [45, 20, 5, 10],
                "iscrowd": 0,
                "area": 50,
                "segmentation": {"size": [40, 60], "counts": uncompressed},
            },
            {
                "id": 4,
                "image_id": 5,
                "category_id": 7,
                "bbox": [1, 1, 2, 4],
                "iscrowd": 0,
                "area": 8,
                "segmentation": [[1, 1, 3, 5]],
            },
            {
                "id": 7,
                "image_id": 5,
                "category_id": 7,
                "bbox": [1, 1, 0, 4],
                "iscrowd": 0,
                "area": 0,
                "segmentation": [[1, 1, 1, 5, 1, 3]],
            },
            {
                "id": 5,
                "image_id": 5,
                "category_id": 2,
                "bbox": [40, 20, 10, 10],
                "iscrowd": 0,
                "area": 100,
                "segmentation": {"size": [40, 60], "counts": compressed["counts"].decode()},
            },
            {"id": 6, "image_id": 9, "category_id": 2, "bbox": [4, 6, 10, 8], "iscrowd": 0, "area": 80},
        ],
    }
    json_path = root / "hand.json"
    json_path.write_text(json.dumps(coco))
    return json_path


def test_polygons_rles_and_skips(tmp_path: Path) -> None:
    json_path = _write_hand_made(tmp_path)
    training = CocoInstances(json_path, tmp_path, min_sizes=(0,), augmentation=NONE)
    assert training.class_names == ["a", "b"] and training.category_ids == [2, 7]
    assert training.image_ids == [5, 9]  # the image without annotations is skipped for training
    assert CocoInstances(json_path, tmp_path, min_sizes=(0,), training=False).image_ids == [5, 6, 9]
    sample = training[0]
    # Dropped: the crowd (id 2), a polygon too short to be one (id 4) and a zero-width box (id 7).
    assert sample["classes"].tolist() == [1, 0, 0]
    polygon = mask_util.decode(
        mask_util.merge(mask_util.frPyObjects([[10, 5, 30, 5, 30, 15, 10, 15]], 40, 60))
    )
    masks = sample["masks"].numpy()
    np.testing.assert_array_equal(masks[0], polygon.astype(bool))
    assert 150 <= masks[0].sum() <= 250
    expected_rle = np.zeros((40, 60), dtype=bool)
    expected_rle[20:30, 45:50] = True
    np.testing.assert_array_equal(masks[1], expected_rle)
    np.testing.assert_array_equal(masks[2][20:30, 40:50], np.ones((10, 10), dtype=bool))
    assert sample["boxes"][1].tolist() == [45.0, 20.0, 50.0, 30.0]


def test_box_only_annotations_are_scaled(tmp_path: Path) -> None:
    json_path = _write_hand_made(tmp_path)
    dataset = CocoInstances(json_path, tmp_path, min_sizes=(80,), augmentation=NONE)
    sample = dataset[1]
    assert sample["image_id"] == 9 and sample["masks"] is None
    assert sample["image"].shape == (3, 80, 120)
    assert sample["boxes"].tolist() == [[8.0, 12.0, 28.0, 28.0]]


def test_image_size_mismatch_is_reported(tmp_path: Path) -> None:
    json_path = _write_hand_made(tmp_path)
    Image.new("RGB", (40, 60)).save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="annotations say"):
        CocoInstances(json_path, tmp_path, min_sizes=(0,))[0]


def test_load_rgb_applies_exif_orientation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90° clockwise
    Image.new("L", (30, 20), 128).save(tmp_path / "rotated.jpg", exif=exif)
    image = load_rgb(tmp_path / "rotated.jpg")
    assert image.shape == (30, 20, 3) and image.dtype == np.uint8


def test_collate_keeps_the_list() -> None:
    batch = [{"image_id": 1}, {"image_id": 2}]
    assert collate(batch) is batch
