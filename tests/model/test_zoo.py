"""Every official config: accepts exactly its official key manifest and predicts end to end.

One model per config, loaded strictly from rule weights under the official keys, shared by the tests of
that config; a 128-pixel test resize keeps even X-101 cheap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from model.inference.load import load_predictor
from model.inference.predictor import Predictor
from model.network.centermask import CenterMask
from model.network.configs import CONFIGS
from model.wire.records import image_record
from tests.rule_weights import official_rule_checkpoint, read_manifest

HEIGHT, WIDTH = 120, 160


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def zoo_predictor(
    request: pytest.FixtureRequest, shared_reference: Path, tmp_path_factory: pytest.TempPathFactory
) -> Predictor:
    directory = tmp_path_factory.mktemp("zoo")
    path = official_rule_checkpoint(shared_reference, request.param, directory, test_size=(128, 192))
    predictor = load_predictor(path)
    path.unlink()  # the big configs weigh hundreds of MB
    return predictor


def blocky_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (HEIGHT // 8 + 1, WIDTH // 8 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:HEIGHT, :WIDTH].copy()


def test_state_dict_equals_official_manifest(zoo_predictor: Predictor, shared_reference: Path) -> None:
    manifest = read_manifest(shared_reference / "keys" / f"{zoo_predictor.config_name}.tsv")
    # The predictor's network is rewritten for inference (norms folded); the checkpoint layout is the built one.
    with torch.device("meta"):
        model = CenterMask(zoo_predictor.config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == manifest


def test_predicts_a_small_image_end_to_end(zoo_predictor: Predictor) -> None:
    prepared = zoo_predictor.prepare(blocky_image())
    assert prepared.resized_size == (128, 171)
    (detections,) = zoo_predictor.infer([prepared])
    assert len(detections) > 0
    assert (np.diff(detections.scores) <= 0).all()
    assert (detections.boxes >= 0).all()
    assert (detections.boxes[:, 0::2] <= WIDTH).all() and (detections.boxes[:, 1::2] <= HEIGHT).all()
    record = image_record("x.png", detections, zoo_predictor.class_names, zoo_predictor.category_ids)
    decoded = [mask_utils.decode(instance["mask"]) for instance in record["instances"]]
    assert all(mask.shape == (HEIGHT, WIDTH) for mask in decoded)
    assert any(mask.any() for mask in decoded)
