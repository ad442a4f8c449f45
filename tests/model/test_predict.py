"""The inference API and the `python -m model.predict` command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from model.centermask import padded_shape, resized_shape
from model.predict import Predictor, image_record, load_predictor, main
from tests.model.parity import match_instances
from tests.model.test_parity import FIXTURE_CONFIGS, official_rule_checkpoint


@pytest.mark.parametrize(
    ("size", "short", "longest", "expected"),
    [
        ((480, 640), 800, 1333, (800, 1067)),
        ((427, 640), 800, 1333, (800, 1199)),
        ((375, 1242), 800, 1333, (402, 1333)),
        ((480, 640), 600, 1000, (600, 800)),
        ((427, 640), 600, 1000, (600, 899)),
        ((375, 1242), 600, 1000, (302, 1000)),
        ((500, 500), 600, 1000, (600, 600)),
    ],
)
def test_resize_rounding_matches_detectron2(size, short, longest, expected) -> None:
    assert resized_shape(*size, short, longest) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [((1, 2000), (1, 1333)), ((2000, 1), (1333, 1)), ((1, 1), (800, 800)), ((1, 7), (190, 1333))],
)
def test_no_side_is_ever_resized_to_zero(size, expected) -> None:
    # detectron2 rounds the short side of a 1×2000 image to 0 pixels and fails.
    assert resized_shape(*size, 800, 1333) == expected


def test_padding_to_multiples_of_32() -> None:
    assert padded_shape(600, 800) == (608, 800)
    assert padded_shape(1, 33) == (32, 64)


@pytest.fixture(scope="module")
def predictor(tiny_weights: Path) -> Predictor:
    return load_predictor(tiny_weights)


def random_image(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))[:height, :width].copy()


def test_results_do_not_depend_on_batch_companions(predictor: Predictor) -> None:
    image = random_image(0, 240, 320)
    (alone,) = predictor.predict([image])
    batch = predictor.predict(
        [random_image(1, 300, 200), image, random_image(2, 240, 320), random_image(3, 90, 400)]
    )
    together = batch[1]
    assert len(alone) > 0
    np.testing.assert_allclose(together.boxes, alone.boxes, atol=1e-3)
    np.testing.assert_allclose(together.scores, alone.scores, atol=1e-5)
    np.testing.assert_array_equal(together.class_ids, alone.class_ids)


def test_rle_decodes_to_the_pasted_masks(predictor: Predictor) -> None:
    (detections,) = predictor.predict([random_image(4, 200, 280)])
    record = image_record("x.png", detections, predictor.class_names)
    dense = detections.dense_masks()
    assert len(record["instances"]) == len(detections) > 0
    for instance, expected in zip(record["instances"], dense, strict=True):
        assert instance["mask"]["size"] == [200, 280]
        np.testing.assert_array_equal(mask_utils.decode(instance["mask"]).astype(bool), expected)
        assert instance["class_name"] == predictor.class_names[instance["class_id"]]


def test_filter_threshold_classes_and_count(predictor: Predictor) -> None:
    (detections,) = predictor.predict([random_image(5, 256, 256)])
    threshold = float(np.median(detections.scores))
    kept = detections.filter(score_threshold=threshold)
    assert len(kept) > 0 and (kept.scores >= threshold).all()
    assert len(detections.filter(max_detections=3)) == 3
    wanted = int(detections.class_ids[0])
    assert set(detections.filter(class_ids=[wanted]).class_ids.tolist()) == {wanted}


@pytest.mark.parametrize("shape", [(1, 2000), (2000, 1), (1, 1)])
def test_degenerate_images_are_segmented(predictor: Predictor, shape: tuple[int, int]) -> None:
    image = np.random.default_rng(7).integers(0, 256, (*shape, 3), dtype=np.uint8)
    (detections,) = predictor.predict([image])
    record = image_record("line.png", detections, predictor.class_names)
    assert (record["height"], record["width"]) == shape
    for instance, mask in zip(record["instances"], detections.dense_masks(), strict=True):
        assert mask_utils.decode(instance["mask"]).shape == shape == mask.shape


def test_the_cli_skips_unreadable_files_and_says_which(tiny_weights: Path, tmp_path: Path, capsys) -> None:
    good = tmp_path / "line.png"
    Image.fromarray(random_image(8, 2000, 1)).save(good)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really")
    gif = tmp_path / "anim.gif"
    Image.fromarray(random_image(9, 20, 20)).save(gif)
    missing = tmp_path / "missing.png"
    output = tmp_path / "out.json"
    paths = [good, corrupt, gif, missing]
    status = main(["--weights", str(tiny_weights), *map(str, paths), "--output", str(output)])
    assert status == 1
    records = json.loads(output.read_text())
    assert [(r["file"], r["height"], r["width"]) for r in records] == [("line.png", 2000, 1)]
    errors = capsys.readouterr().err
    assert f"{corrupt}: skipped: cannot" in errors
    assert f"{gif}: skipped: GIF images are not supported" in errors
    assert f"{missing}: skipped: No such file or directory" in errors
    assert "Traceback" not in errors


def test_rejects_non_rgb_arrays(predictor: Predictor) -> None:
    with pytest.raises(ValueError, match="uint8 RGB"):
        predictor.prepare(np.zeros((10, 10), dtype=np.uint8))


@pytest.mark.parametrize("config", FIXTURE_CONFIGS[:1])
def test_cli_reproduces_reference_json(config: str, shared_reference: Path, tmp_path: Path) -> None:
    weights = official_rule_checkpoint(shared_reference, config, tmp_path)
    fixtures = shared_reference / "fixtures" / config
    images = sorted(fixtures.glob("*.png"))
    output = tmp_path / "out.json"
    assert (
        main(["--weights", str(weights), "--config", config, *map(str, images), "--output", str(output)]) == 0
    )
    records = json.loads(output.read_text())
    assert [r["file"] for r in records] == [p.name for p in images]
    for record, image in zip(records, images, strict=True):
        reference = json.loads(image.with_suffix(".json").read_text())
        assert (record["height"], record["width"]) == (reference["height"], reference["width"])
        assert set(record["instances"][0]) == {"box", "score", "class_id", "class_name", "mask_score", "mask"}
        report = match_instances(reference["instances"], record["instances"])
        assert report.passes, report
