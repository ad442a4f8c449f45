"""The inference API and the `python -m model.predict` command line."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.ops import box_iou

from model.inference.detections import Selection
from model.inference.images import load_image
from model.inference.load import load_predictor
from model.inference.postprocess import MASK_LEVELS
from model.inference.precision import PrecisionUnavailable
from model.inference.predictor import Predictor
from model.inference.preprocess import DenseInput, normalize_canvas, padded_shape, resized_shape
from model.predict import main
from model.weights.checkpoint import load_model
from model.wire.records import image_record
from tests.model.parity import FIXTURE_CONFIGS
from tests.rule_weights import match_instances, official_rule_checkpoint
from training.data.shapes import CLASSIC, render_scene


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
    image = predictor.prepare(random_image(0, 240, 320))
    (alone,) = predictor.infer([image])
    companions = [predictor.prepare(random_image(seed, 240, 320)) for seed in (1, 2)]
    together = predictor.infer([companions[0], image, companions[1]])[1]
    assert len(alone) > 0
    np.testing.assert_allclose(together.boxes, alone.boxes, atol=1e-3)
    np.testing.assert_allclose(together.scores, alone.scores, atol=1e-5)
    np.testing.assert_array_equal(together.class_ids, alone.class_ids)


def test_one_forward_pass_takes_one_padded_shape(predictor: Predictor) -> None:
    images = [predictor.prepare(random_image(0, 240, 320)), predictor.prepare(random_image(1, 90, 400))]
    with pytest.raises(ValueError, match="one padded shape"):
        predictor.infer(images)


@pytest.mark.parametrize(
    "selection",
    [
        Selection(score_threshold=0.2),
        Selection(max_detections=5),
        Selection(class_ids=frozenset({1, 3, 7})),
        Selection(score_threshold=0.15, max_detections=4, class_ids=frozenset(range(40))),
        Selection(score_threshold=1.0),
    ],
)
def test_selection_before_the_mask_head_keeps_the_same_detections(
    predictor: Predictor, selection: Selection
) -> None:
    """Detections dropped before the mask head are exactly those a filter of the full output drops, and the
    kept ones come out the same: boxes, scores and classes bit for bit; the mask head's outputs to float
    rounding, because the convolution kernels oneDNN picks (and so their summation order) depend on how many
    regions go through the head and on the CPU."""
    image = random_image(6, 256, 320)
    (everything,) = predictor.predict([image])
    (selected,) = predictor.predict([image], selection)
    expected = everything.filter(selection.score_threshold, selection.max_detections, selection.class_ids)
    assert len(everything) > 10
    np.testing.assert_array_equal(selected.boxes, expected.boxes)
    np.testing.assert_array_equal(selected.scores, expected.scores)
    np.testing.assert_array_equal(selected.class_ids, expected.class_ids)
    np.testing.assert_allclose(selected.mask_scores, expected.mask_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(selected.mask_probs, expected.mask_probs, rtol=0.0, atol=1e-5)
    pasted, expected_pasted = selected.dense_masks(), expected.dense_masks()
    assert pasted.shape == expected_pasted.shape
    # Only a pixel whose pasted probability sits within rounding of 0.5 may flip.
    assert np.count_nonzero(pasted != expected_pasted) <= max(1, pasted.size // 100_000)


def test_rle_decodes_to_the_pasted_masks(predictor: Predictor) -> None:
    (detections,) = predictor.predict([random_image(4, 200, 280)])
    record = image_record("x.png", detections, predictor.class_names, predictor.category_ids)
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
    record = image_record("line.png", detections, predictor.class_names, predictor.category_ids)
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
        assert set(record["instances"][0]) == {
            "box",
            "score",
            "class_id",
            "category_id",
            "class_name",
            "mask_score",
            "mask",
        }
        report = match_instances(reference["instances"], record["instances"])
        assert report.passes, report


def test_buckets_batch_mixed_sizes_without_changing_results(tiny_weights: Path) -> None:
    model, class_names, _ = load_model(tiny_weights)
    bucketed = Predictor(model, class_names, tiny_weights, bucket_size=128)
    sizes = [(230, 300), (200, 330), (240, 330)]
    prepared = [bucketed.prepare(random_image(seed, *size)) for seed, size in enumerate(sizes)]
    assert {image.padded_shape for image in prepared} == {(384, 512)}
    together = bucketed.infer(prepared)
    for image, result in zip(prepared, together, strict=True):
        (alone,) = bucketed.infer([image])
        assert len(alone) > 0
        np.testing.assert_allclose(result.boxes, alone.boxes, atol=1e-3)
        np.testing.assert_array_equal(result.class_ids, alone.class_ids)


def test_warm_up_runs_every_common_shape(predictor: Predictor) -> None:
    shapes = predictor.common_shapes()
    assert shapes == [(320, 448)]
    for shape in shapes:
        predictor.warm_up(shape, batch_size=2)


def test_cli_class_agnostic_nms_keeps_one_label_per_object(tiny_weights: Path, tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    Image.fromarray(random_image(7, 240, 320)).save(path)
    runs = {}
    for name, flags in (("full", []), ("agnostic", ["--class-agnostic-nms", "0.5"])):
        output = tmp_path / f"{name}.json"
        assert (
            main(
                [
                    "--weights",
                    str(tiny_weights),
                    str(path),
                    "--output",
                    str(output),
                    "--mask-format",
                    "none",
                    *flags,
                ]
            )
            == 0
        )
        (record,) = json.loads(output.read_text())
        runs[name] = record["instances"]
    full, kept = runs["full"], runs["agnostic"]
    assert 0 < len(kept) < len(full)
    assert all(instance in full for instance in kept)
    boxes = torch.tensor([instance["box"] for instance in kept])
    overlaps = box_iou(boxes, boxes).fill_diagonal_(0.0)
    assert overlaps.max() <= 0.5
    # Every dropped detection sat on a kept, higher-scoring one.
    for instance in full:
        if instance not in kept:
            iou = box_iou(torch.tensor([instance["box"]]), boxes)[0]
            scores = torch.tensor([k["score"] for k in kept])
            assert ((iou > 0.5) & (scores >= instance["score"])).any()


@pytest.mark.skipif(
    not torch.cpu._is_vnni_supported() and not torch.cpu._is_amx_tile_supported(),
    reason="int8 needs VNNI or AMX",
)
def test_int8_finds_what_fp32_finds(tiny_weights: Path, predictor: Predictor) -> None:
    int8 = load_predictor(tiny_weights, precision="int8", calibration_images=[random_image(9, 240, 320)] * 2)
    assert int8.precision == "int8"
    image = random_image(8, 240, 320)
    (exact,) = predictor.predict([image])
    (quantized,) = int8.predict([image])
    assert len(quantized) > 0 and abs(len(quantized) - len(exact)) <= 0.2 * len(exact)
    # Most of the best detections are still there, with the same class and nearly the same box.
    found = 0
    for box, class_id in zip(exact.boxes[:10], exact.class_ids[:10], strict=True):
        same = torch.from_numpy(quantized.boxes[quantized.class_ids == class_id])
        if len(same) and float(box_iou(torch.from_numpy(box)[None], same).max()) > 0.7:
            found += 1
    assert found >= 7


def test_precisions_the_hardware_cannot_run_fail_before_loading(tiny_weights: Path) -> None:
    with pytest.raises(PrecisionUnavailable, match="fp16 runs on CUDA"):
        load_predictor(tiny_weights, precision="fp16")
    with pytest.raises(ValueError):
        load_predictor(tiny_weights, precision="int4")


@pytest.fixture(scope="module")
def bundled() -> Predictor:
    """The bundled model (resize 600/1000): it finds the generated shapes, so its answers can be compared."""
    return load_predictor()


def large_jpeg() -> bytes:
    """A generated shapes scene at 1800 × 2400, as a camera with more pixels than the model uses takes it."""
    scene = render_scene(np.random.default_rng([2024, 37]), CLASSIC, 450, 600, num_objects=5)
    buffer = io.BytesIO()
    Image.fromarray(scene.image).resize((2400, 1800), Image.Resampling.BICUBIC).save(
        buffer, "JPEG", quality=92
    )
    return buffer.getvalue()


def test_a_reduced_jpeg_decode_answers_in_the_full_images_pixels(bundled: Predictor) -> None:
    data = large_jpeg()
    full, drafted = load_image(data), load_image(data, draft_to=bundled.resize)
    assert drafted.pixels.shape[:2] == (900, 1200) and full.pixels.shape[:2] == (1800, 2400)
    records = [
        image_record("big.jpg", detections, bundled.class_names, bundled.category_ids)
        for (detections,) in (
            bundled.predict([image], Selection(score_threshold=0.3)) for image in (full, drafted)
        )
    ]
    exact, fast = records
    assert (fast["height"], fast["width"]) == (exact["height"], exact["width"]) == (1800, 2400)
    assert len(fast["instances"]) == len(exact["instances"]) == 5
    for ours, theirs in zip(exact["instances"], fast["instances"], strict=True):
        assert ours["class_id"] == theirs["class_id"]
        # A model pixel is 3 image pixels here; the boxes agree to within one of them.
        np.testing.assert_allclose(theirs["box"], ours["box"], atol=3)
        assert theirs["mask"]["size"] == ours["mask"]["size"] == [1800, 2400]
        a, b = (mask_utils.decode(instance["mask"]).astype(bool) for instance in (ours, theirs))
        assert (a & b).sum() / (a | b).sum() > 0.97


def test_the_cli_with_jpeg_draft_writes_the_full_images_size(tiny_weights: Path, tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(large_jpeg())
    output = tmp_path / "out.json"
    flags = ["--jpeg-draft", "--mask-format", "rle", "--score-threshold", "0.2"]
    assert main(["--weights", str(tiny_weights), str(path), "--output", str(output), *flags]) == 0
    (record,) = json.loads(output.read_text())
    assert (record["height"], record["width"]) == (1800, 2400)
    assert all(instance["mask"]["size"] == [1800, 2400] for instance in record["instances"])


@pytest.mark.skipif(
    os.environ.get("RUN_COMPILE_TESTS") != "1",
    reason="compiling the bundled model with inductor takes about a minute on a 2-core machine while its "
    "cache is cold (measured: 62 s); RUN_COMPILE_TESTS=1 runs it",
)
def test_compiled_fp32_meets_the_parity_criteria_against_eager(bundled: Predictor) -> None:
    compiled = load_predictor(compile=True)
    (shape,) = compiled.common_shapes()
    compiled.warm_up(shape, batch_size=1)
    assert compiled.compiled
    scene = render_scene(np.random.default_rng([2024, 37]), CLASSIC, 384, 512, num_objects=5)
    prepared = compiled.prepare(scene.image)
    assert prepared.padded_shape == shape
    with torch.inference_mode():
        batch = DenseInput.of([prepared.pixels], shape, compiled.device)
        eager = bundled.engine.features(normalize_canvas(*batch, bundled.pixel_mean, bundled.pixel_std))
        (pyramid, head), (eager_pyramid, eager_head) = compiled.dense(batch), eager
    # Inductor reorders float operations: equal up to float32 rounding, not bit for bit.
    for level in MASK_LEVELS:
        torch.testing.assert_close(pyramid[level], eager_pyramid[level], rtol=1e-4, atol=1e-4)
    for ours, theirs in zip(head, eager_head, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # The criteria fp32 meets against the official outputs: every detection matched, boxes, scores, masks.
    exact, fast = (
        image_record("scene.png", detections, bundled.class_names, bundled.category_ids)["instances"]
        for (detections,) in (predictor.predict([scene.image]) for predictor in (bundled, compiled))
    )
    report = match_instances(exact, fast)
    assert report.passes and report.matched == len(exact) == len(fast) > 0, report
