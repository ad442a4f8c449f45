"""Photo-like negatives (`training.data.backgrounds`) and the mixed dataset with them (`training.data.negatives`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.data import backgrounds, negatives
from training.data.coco import CocoInstances
from training.data.shapes import image_rng, sample_background


@pytest.mark.parametrize(("height", "width"), [(224, 300), (97, 513), (640, 256)])
def test_photo_like_is_uint8_rgb_of_the_asked_size(height: int, width: int) -> None:
    for camera in (True, False):
        image = backgrounds.photo_like(np.random.default_rng(height), height, width, camera=camera)
        assert image.shape == (height, width, 3) and image.dtype == np.uint8


def test_photo_like_is_deterministic_per_seed_and_varies_across_seeds() -> None:
    first = backgrounds.photo_like(image_rng(3, 0), 200, 260)
    again = backgrounds.photo_like(image_rng(3, 0), 200, 260)
    other = backgrounds.photo_like(image_rng(3, 1), 200, 260)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_photo_like_images_are_not_flat() -> None:
    """Texture everywhere: a photo has no large region of one exact colour."""
    for index in range(6):
        image = backgrounds.photo_like(image_rng(4, index), 160, 200)
        assert image.reshape(-1, 3).std(axis=0).max() > 2.0


@pytest.mark.parametrize("kind", sorted(backgrounds.TEXTURE_MAKERS))
def test_every_texture_fills_the_frame_with_finite_colours(kind: str) -> None:
    texture = backgrounds.texture(np.random.default_rng(1), 90, 130, kind)
    assert texture.shape == (90, 130, 3) and texture.dtype == np.float32
    assert np.isfinite(texture).all() and texture.min() >= -1.0 and texture.max() <= 300.0


@pytest.mark.parametrize("kind", sorted(backgrounds.CLUTTER_MAKERS))
def test_every_clutter_kind_draws_in_place_at_any_position(kind: str) -> None:
    for seed in range(4):  # objects near the borders are clipped, not misplaced
        canvas = np.full((120, 150, 3), 128.0, dtype=np.float32)
        backgrounds.CLUTTER_MAKERS[kind](np.random.default_rng(seed), canvas)
        assert canvas.shape == (120, 150, 3) and np.isfinite(canvas).all()


def test_the_camera_keeps_size_and_can_turn_grey() -> None:
    image = backgrounds.photo_like(image_rng(5, 0), 120, 90, camera=False)
    grey = backgrounds.camera_effects(np.random.default_rng(0), image, grey_prob=1.0)
    assert grey.shape == image.shape and grey.dtype == np.uint8
    spread = grey.astype(np.int16).max(axis=2) - grey.astype(np.int16).min(axis=2)
    assert np.percentile(spread, 50) <= 12  # only the sensor's chroma noise is left between channels


def test_the_shapes_generator_draws_on_photo_like_backgrounds() -> None:
    background = sample_background(np.random.default_rng(0), 150, 170, "photo")
    assert background.shape == (150, 170, 3) and background.dtype == np.uint8


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    negatives.generate(root, num_images=10, seed=2, negatives=0.4, photo_shapes=0.4)
    return root


def test_negatives_carry_no_annotations_and_the_rest_do(mixed: Path) -> None:
    coco = json.loads((mixed / "annotations.json").read_text())
    annotated = {a["image_id"] for a in coco["annotations"]}
    kinds = {image["id"]: image["kind"] for image in coco["images"]}
    assert set(kinds.values()) <= set(negatives.KINDS) and "negative" in kinds.values()
    for image_id, kind in kinds.items():
        assert (image_id in annotated) == (kind not in ("negative", "hard_negative", "vessels")), (
            image_id,
            kind,
        )
    assert [c["name"] for c in coco["categories"]] == ["circle", "rectangle", "triangle", "star", "ring"]


def test_the_mixed_dataset_is_deterministic(mixed: Path, tmp_path: Path) -> None:
    negatives.generate(tmp_path, num_images=10, seed=2, negatives=0.4, photo_shapes=0.4)
    assert (tmp_path / "annotations.json").read_text() == (mixed / "annotations.json").read_text()
    for path in sorted((mixed / "images").iterdir()):
        assert path.read_bytes() == (tmp_path / "images" / path.name).read_bytes()


def test_training_keeps_negatives_only_when_asked(mixed: Path) -> None:
    coco = json.loads((mixed / "annotations.json").read_text())
    empty = [image["id"] for image in coco["images"] if image["kind"] == "negative"]
    skipping = CocoInstances(mixed / "annotations.json", mixed / "images", min_sizes=(128,), max_size=200)
    keeping = CocoInstances(
        mixed / "annotations.json", mixed / "images", min_sizes=(128,), max_size=200, keep_empty=True
    )
    assert len(keeping) == len(coco["images"]) and len(skipping) == len(coco["images"]) - len(empty)
    sample = keeping[keeping.image_ids.index(empty[0])]
    assert sample["boxes"].shape == (0, 4) and sample["classes"].shape == (0,)
    assert sample["masks"].shape == (0, *sample["image"].shape[1:])


def test_hard_negatives_carry_no_annotations(tmp_path: Path) -> None:
    negatives.generate(tmp_path, num_images=3, seed=1, negatives=1.0, photo_shapes=0.0, hard=1.0)
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert [image["kind"] for image in coco["images"]] == ["hard_negative"] * 3 and not coco["annotations"]


def test_vessel_scenes_carry_no_annotations_and_differ_from_other_hard_negatives(tmp_path: Path) -> None:
    negatives.generate(tmp_path, num_images=3, seed=1, negatives=1.0, photo_shapes=0.0, hard=1.0, vessels=1.0)
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert [image["kind"] for image in coco["images"]] == ["vessels"] * 3 and not coco["annotations"]
    plain = backgrounds.photo_like(image_rng(6, 0), 160, 200, hard=True)
    with_vessels = backgrounds.photo_like(image_rng(6, 0), 160, 200, hard=True, vessels=True)
    assert not np.array_equal(plain, with_vessels)


def test_a_vessel_stays_in_the_patch_it_is_given() -> None:
    """The table-top close-up places its vessel by ``size`` and ``corner``; only the cast shadow (shifted by
    at most 5 % of the size) may reach past the patch."""
    for seed in range(6):
        canvas = np.full((300, 320, 3), 128.0, np.float32)
        backgrounds._vessel(np.random.default_rng(seed), canvas, 100, (150, 140))
        changed = np.abs(canvas - 128.0).max(axis=2) > 0.5
        rows, cols = np.nonzero(changed)
        assert changed[140:240, 150:250].mean() > 0.2, seed
        assert rows.min() >= 140 and rows.max() < 246 and cols.min() >= 145 and cols.max() < 256, seed


def test_the_vessels_share_changes_only_hard_negatives() -> None:
    """Datasets made before the option existed come out the same: every other image draws the same numbers."""
    changed = set()
    for index in range(24):
        without = negatives.render_sample(image_rng(8, index), 0.5, 0.2, hard=0.5)
        with_ = negatives.render_sample(image_rng(8, index), 0.5, 0.2, hard=0.5, vessels=1.0)
        if with_[0] == "vessels":
            assert without[0] == "hard_negative"
            changed.add(index)
        else:
            assert without[0] == with_[0] and np.array_equal(without[1], with_[1]), index
    assert changed  # the seeds above do reach the hard branch


def test_shares_must_fit() -> None:
    with pytest.raises(ValueError, match="vessels share"):
        negatives.generate("unused", num_images=1, seed=0, hard=0.5, vessels=1.5)
    with pytest.raises(ValueError, match="shares"):
        negatives.generate("unused", num_images=1, seed=0, negatives=0.7, photo_shapes=0.5)
