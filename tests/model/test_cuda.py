"""The model on a CUDA device: exact in fp32 (no TF32), close in bf16/fp16, masks pasted and encoded on the GPU,
CUDA graph replays equal to eager runs.

Every test here is marked `cuda` and skips without a GPU; bench/gpu_check.sh runs them where one exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch

from model.inference.images import load_rgb
from model.inference.load import load_predictor
from model.inference.masks import paste_masks
from model.inference.postprocess import MASK_LEVELS
from model.inference.predictor import Predictor
from model.inference.preprocess import DenseInput, normalize_canvas
from model.wire.records import image_record
from model.wire.rle import encode_pasted
from tests.rule_weights import match_instances, official_rule_checkpoint

pytestmark = pytest.mark.cuda

CONFIG = "centermask_lite_V_19_slim_eSE_FPN_ms_4x"


@pytest.fixture(scope="module")
def official_weights(shared_reference: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return official_rule_checkpoint(shared_reference, CONFIG, tmp_path_factory.mktemp("cuda"))


@pytest.fixture(scope="module")
def cpu_predictor(official_weights: Path) -> Predictor:
    return load_predictor(official_weights, CONFIG)


def test_fp32_on_cuda_matches_the_official_outputs(official_weights: Path, shared_reference: Path) -> None:
    predictor = load_predictor(official_weights, CONFIG, "cuda")
    # TF32 is off while the network runs (and only then: the flags are the process's).
    seen = []
    hook = predictor.engine.model.backbone.register_forward_pre_hook(
        lambda *_: seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
    )
    directory = shared_reference / "fixtures" / CONFIG
    for image in json.loads((directory / "summary.json").read_text())["images"]:
        reference = json.loads((directory / image["file"]).with_suffix(".json").read_text())
        (detections,) = predictor.predict([load_rgb(directory / image["file"])])
        ours = image_record(image["file"], detections, predictor.class_names, predictor.category_ids)
        report = match_instances(reference["instances"], ours["instances"])
        assert report.passes, (image["file"], report)
    hook.remove()
    assert seen and set(seen) == {(False, False)}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_finds_the_same_objects(
    official_weights: Path, cpu_predictor: Predictor, shared_reference: Path, precision: str
) -> None:
    image = load_rgb(shared_reference / "fixtures" / CONFIG / "img480x640.png")
    predictor = load_predictor(official_weights, CONFIG, "cuda", precision)
    assert predictor.bucket_size == 128
    (fast,) = predictor.predict([image])
    (exact,) = cpu_predictor.predict([image])
    assert abs(len(fast) - len(exact)) <= 0.1 * len(exact)
    # The best detections survive the precision change, with nearly the same boxes.
    for box, class_id in zip(exact.boxes[:10], exact.class_ids[:10], strict=True):
        same_class = fast.boxes[fast.class_ids == class_id]
        assert len(same_class) and _best_iou(box, same_class) > 0.8


def test_paste_and_rle_on_the_gpu_equal_the_cpu() -> None:
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand((40, 28, 28), generator=generator)
    corners = torch.rand((40, 4), generator=generator) * torch.tensor([300.0, 200.0, 300.0, 200.0])
    boxes = torch.cat((corners[:, :2].minimum(corners[:, 2:]), corners[:, :2].maximum(corners[:, 2:]) + 1), 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(max=320)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(max=240)
    on_cpu = paste_masks(probabilities, boxes, (240, 320))
    on_gpu = paste_masks(probabilities.cuda(), boxes, (240, 320))
    for a, b in zip(on_cpu.crops(), on_gpu.crops(), strict=True):
        assert a.x0 == b.x0 and a.y0 == b.y0
        np.testing.assert_array_equal(a.crop, b.crop)
    assert encode_pasted(on_gpu) == encode_pasted(on_cpu)
    dense = np.zeros((240, 320), dtype=np.uint8)
    x0, y0, crop = on_cpu.crops()[0]
    dense[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    assert (
        encode_pasted(on_gpu)[0]["counts"] == mask_utils.encode(np.asfortranarray(dense))["counts"].decode()
    )


def test_warm_up_covers_every_bucket_and_batch_size(official_weights: Path) -> None:
    predictor = load_predictor(official_weights, CONFIG, "cuda", "fp16")
    shapes = predictor.common_shapes()
    assert len(shapes) > 2
    for shape in shapes:
        predictor.warm_up(shape, batch_size=2)


@pytest.fixture(scope="module")
def graphed(tiny_weights: Path) -> Predictor:
    """The tiny checkpoint on CUDA in fp32 with CUDA graphs (captured by each test's warm-up)."""
    return load_predictor(tiny_weights, device="cuda", cuda_graphs=True)


def _blocky(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))[:height, :width].copy()


# (padded shape, batch size, image size): the tiny checkpoint's landscape and portrait shapes.
GRAPH_CASES = [((320, 448), 1, (240, 320)), ((320, 448), 4, (240, 320)), ((448, 320), 2, (320, 240))]


@pytest.fixture(scope="module")
def eager_cuda(tiny_weights: Path) -> Predictor:
    return load_predictor(tiny_weights, device="cuda")


@pytest.mark.parametrize(("shape", "batch_size", "size"), GRAPH_CASES)
def test_cuda_graph_replays_equal_eager_runs(
    graphed: Predictor, eager_cuda: Predictor, shape: tuple[int, int], batch_size: int, size: tuple[int, int]
) -> None:
    graphed.warm_up(shape, batch_size)
    assert graphed.cuda_graphs
    prepared = [graphed.prepare(_blocky(seed, *size)) for seed in range(batch_size)]
    assert {image.padded_shape for image in prepared} == {shape}
    with torch.inference_mode():
        batch = DenseInput.of([image.pixels for image in prepared], shape, graphed.device)
        eager = graphed.engine.features(normalize_canvas(*batch, graphed.pixel_mean, graphed.pixel_std))
        (pyramid, head), (eager_pyramid, eager_head) = graphed.dense(batch), eager
    # The same kernels, replayed: bit for bit.
    for level in MASK_LEVELS:
        assert torch.equal(pyramid[level], eager_pyramid[level]), level
    for ours, theirs in zip(head, eager_head, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    # And through the whole predictor, decoding and mask heads included, against an eager one.
    for ours, theirs in zip(graphed.infer(prepared), eager_cuda.infer(prepared), strict=True):
        assert len(ours) > 0
        np.testing.assert_array_equal(ours.class_ids, theirs.class_ids)
        np.testing.assert_allclose(ours.boxes, theirs.boxes, atol=1e-4)
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-6)


def test_a_replays_outputs_survive_the_next_replays(graphed: Predictor) -> None:
    """A replay overwrites its graph's outputs, and graphs share one memory pool: what a replay returns must
    be the caller's own copy."""
    for shape, batch_size, _ in GRAPH_CASES:
        graphed.warm_up(shape, batch_size)

    def batch(case: int, seed: int) -> DenseInput:
        shape, batch_size, size = GRAPH_CASES[case]
        images = [graphed.prepare(_blocky(seed + i, *size)).pixels for i in range(batch_size)]
        return DenseInput.of(images, shape, graphed.device)

    with torch.inference_mode():
        pyramid, head = graphed.dense(batch(2, seed=0))
        kept = {level: pyramid[level].clone() for level in MASK_LEVELS}, [t.clone() for t in head.cls_logits]
        # The same graph on other pixels, then the others.
        other_pyramid, _ = graphed.dense(batch(2, seed=100))
        assert not torch.equal(other_pyramid["p3"], pyramid["p3"])
        graphed.dense(batch(0, seed=200))
        graphed.dense(batch(1, seed=300))
    for level in MASK_LEVELS:
        assert torch.equal(pyramid[level], kept[0][level])
    assert all(torch.equal(a, b) for a, b in zip(head.cls_logits, kept[1], strict=True))


def test_a_shape_not_captured_runs_eagerly(graphed: Predictor) -> None:
    prepared = graphed.prepare(_blocky(5, 90, 400))
    (alone,) = graphed.infer([prepared])
    assert len(alone) > 0 and graphed.cuda_graphs


def _best_iou(box: np.ndarray, others: np.ndarray) -> float:
    x0 = np.maximum(box[0], others[:, 0])
    y0 = np.maximum(box[1], others[:, 1])
    x1 = np.minimum(box[2], others[:, 2])
    y1 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return float((inter / (area + areas - inter)).max())
