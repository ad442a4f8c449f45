"""The batched postprocessing (the accelerator's path: a whole batch as one table of rows, few host
synchronisations) gives the per-image path's detections, run here on the CPU where both can be compared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import batched_nms

from model.inference.detections import Selection
from model.inference.load import load_predictor
from model.inference.postprocess import FcosDecoder, nms_by_group, rank_in_image
from model.inference.predictor import Predictor, power_of_two_at_least
from model.network.configs import get_config
from model.network.fcos import FCOSHeadOutputs
from tests.conftest import TINY_CONFIG


def blocky(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))[:height, :width].copy()


@pytest.fixture(scope="module")
def pair(tiny_weights: Path) -> tuple[Predictor, Predictor]:
    each, batched = load_predictor(tiny_weights), load_predictor(tiny_weights)
    batched.batched = True
    return each, batched


SELECTIONS = [
    Selection(),
    Selection(score_threshold=0.2),
    Selection(max_detections=3),
    Selection(score_threshold=0.1, max_detections=5, class_ids=frozenset(range(0, 80, 2))),
    Selection(class_ids=frozenset({999})),  # nothing
]


def test_the_batched_path_finds_what_the_per_image_path_finds(pair: tuple[Predictor, Predictor]) -> None:
    each, batched = pair
    # One padded shape, images of different sizes in it (their scales to the original size differ).
    images = [
        blocky(seed, *size)
        for seed, size in enumerate([(240, 320), (234, 312), (228, 300), (225, 300), (240, 330)])
    ]
    prepared = [each.prepare(image) for image in images]
    assert len({image.padded_shape for image in prepared}) == 1
    expected, ours = each.infer(prepared, SELECTIONS), batched.infer(prepared, SELECTIONS)
    assert sum(len(d) for d in expected) > 20 and len(expected[-1]) == 0
    for a, b in zip(expected, ours, strict=True):
        assert a.image_size == b.image_size
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=1e-4)
        # The heads ran on another number of RoIs (a power of two, not a multiple of 8): float rounding.
        np.testing.assert_allclose(a.mask_scores, b.mask_scores, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.mask_probs, b.mask_probs.to(a.mask_probs.device), rtol=1e-4, atol=1e-5)
        assert [c.crop.sum() for c in a.mask_crops()] == pytest.approx(
            [c.crop.sum() for c in b.mask_crops()], abs=3
        )


def random_head(seed: int, batch: int, classes: int = 6) -> FCOSHeadOutputs:
    """Head outputs for levels of 8×12, 4×6, 2×3, 1×2 and 1×1 cells, with many candidates over the threshold."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    return FCOSHeadOutputs(
        [torch.randn(batch, classes, h, w, generator=generator) for h, w in shapes],
        [torch.rand(batch, 4, h, w, generator=generator) * 6 for h, w in shapes],
        [torch.randn(batch, 1, h, w, generator=generator) for h, w in shapes],
    )


@pytest.mark.parametrize("seed", range(4))
def test_batched_decoding_and_nms_keep_the_per_image_detections(seed: int) -> None:
    config = get_config(TINY_CONFIG).with_overrides(num_classes=6, post_nms_topk=20, pre_nms_topk=200)
    decoder = FcosDecoder.from_config(config)
    head = random_head(seed, batch=3)
    locations = decoder.locations(head.cls_logits)
    per_image = decoder.detect(head, locations)
    rows, top = decoder.detect_batched(head, locations)
    for image, expected in enumerate(per_image):
        mine = (rows.image == image) & top
        assert sorted(rows.scores[mine].tolist()) == sorted(expected.scores.tolist())
        torch.testing.assert_close(
            rows.boxes[mine][torch.argsort(rows.scores[mine])], expected.boxes[torch.argsort(expected.scores)]
        )
    # Grouped by image, best first within one.
    assert torch.equal(rows.image, torch.sort(rows.image, stable=True).values)


def test_nms_by_group_is_nms_within_each_group() -> None:
    generator = torch.Generator().manual_seed(1)
    corners = torch.rand(400, 2, generator=generator) * 200 - 50  # negative coordinates too
    boxes = torch.cat((corners, corners + torch.rand(400, 2, generator=generator) * 60 + 1), 1)
    scores = torch.rand(400, generator=generator)
    groups = torch.randint(0, 37, (400,), generator=generator)
    ours = nms_by_group(boxes, scores, groups, 0.5)
    assert torch.equal(torch.sort(ours).values, torch.sort(batched_nms(boxes, scores, groups, 0.5)).values)
    assert torch.all(scores[ours][:-1] >= scores[ours][1:])  # by descending score
    assert nms_by_group(boxes[:0], scores[:0], groups[:0], 0.5).numel() == 0


def test_ranks_count_only_the_wanted_rows_of_each_image() -> None:
    image = torch.tensor([0, 0, 0, 2, 2, 3])
    wanted = torch.tensor([True, False, True, True, True, False])
    assert rank_in_image(image, wanted, 4).tolist()[0:1] + rank_in_image(image, wanted, 4).tolist()[2:5] == [
        0,
        1,
        0,
        1,
    ]


def test_power_of_two_sizes() -> None:
    assert [power_of_two_at_least(n) for n in (1, 2, 3, 5, 8, 9, 50)] == [1, 2, 4, 8, 8, 16, 64]
