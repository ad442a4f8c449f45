"""Our model against the official centermask2 outputs (shared/reference), with the rule weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.images import load_rgb
from model.predict import Predictor, load_predictor
from model.testing import rule_state_dict
from model.wire import image_record
from tests.model.parity import match_instances

FIXTURE_CONFIGS = ("centermask_lite_V_19_slim_eSE_FPN_ms_4x", "centermask_V_39_eSE_FPN_ms_3x")


def read_manifest(path: Path) -> dict[str, tuple[int, ...]]:
    entries = {}
    for line in path.read_text().splitlines():
        key, shape, _dtype = line.split("\t")
        entries[key] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return entries


def official_rule_checkpoint(reference: Path, config: str, directory: Path) -> Path:
    """A detectron2-style file ({"model": state_dict}) of rule weights built from the official key manifest."""
    state = rule_state_dict(read_manifest(reference / "keys" / f"{config}.tsv").items())
    path = directory / f"{config}.pth"
    torch.save({"model": state}, path)
    return path


@pytest.fixture(scope="module", params=FIXTURE_CONFIGS)
def official(
    request: pytest.FixtureRequest, shared_reference: Path, tmp_path_factory
) -> tuple[Predictor, Path]:
    config = request.param
    path = official_rule_checkpoint(shared_reference, config, tmp_path_factory.mktemp(config))
    return load_predictor(path, config), shared_reference / "fixtures" / config


def fixture_images(directory: Path) -> list[dict]:
    return json.loads((directory / "summary.json").read_text())["images"]


def test_outputs_match_official(official: tuple[Predictor, Path]) -> None:
    predictor, directory = official
    for image in fixture_images(directory):
        reference = json.loads((directory / image["file"]).with_suffix(".json").read_text())
        prepared = predictor.prepare(load_rgb(directory / image["file"]))
        assert list(prepared.resized_size) == reference["resized_hw"]
        (detections,) = predictor.infer([prepared])
        ours = image_record(image["file"], detections, predictor.class_names, predictor.category_ids)
        assert (ours["height"], ours["width"]) == (reference["height"], reference["width"])
        report = match_instances(reference["instances"], ours["instances"])
        assert report.passes, (image["file"], report)


def test_pyramid_statistics_match_official(official: tuple[Predictor, Path]) -> None:
    """Backbone and FPN outputs agree with the official statistics: where a mismatch would start."""
    predictor, directory = official
    image = fixture_images(directory)[0]
    reference = json.loads((directory / image["file"]).with_suffix(".json").read_text())["intermediate"]
    prepared = predictor.prepare(load_rgb(directory / image["file"]))
    with torch.inference_mode():
        batch = predictor.model.normalize_and_pad([prepared.pixels.float()])
        tensors = {**predictor.model.backbone.bottom_up(batch), **predictor.model.backbone(batch)}
    for name, stats in reference.items():
        tensor = tensors[name]
        assert list(tensor.shape) == stats["shape"], name
        flat = tensor.flatten()
        samples = flat[torch.linspace(0, flat.numel() - 1, 16).long()]
        np.testing.assert_allclose(samples.numpy(), stats["samples_at_linspace16"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(float(tensor.std()), stats["std"], rtol=1e-5)
        np.testing.assert_allclose(float(tensor.abs().sum()), stats["abs_sum"], rtol=1e-5)
