"""What `/v1/model` says a model knows: the bundled one by its content wherever it lies, COCO checkpoints by
their classes, others by their own classes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from model.weights import DEFAULT_WEIGHTS
from model.weights.checkpoint import file_sha256
from model.weights.coco_classes import COCO_CLASS_NAMES
from model.weights.description import COCO_COMMAND, describe

SHAPES = ["circle", "rectangle", "triangle", "star", "ring"]


@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="the bundled weights are not built yet")
def test_the_bundled_model_is_recognised_by_content_and_points_to_coco(tmp_path: Path) -> None:
    copy = tmp_path / "renamed.pth"
    shutil.copyfile(DEFAULT_WEIGHTS, copy)
    description = describe(SHAPES, file_sha256(copy))
    assert description.bundled
    assert "demo model" in description.text and "never shown a photograph" in description.text
    assert ", ".join(SHAPES) in description.text and COCO_COMMAND in description.text


def test_coco_checkpoints_are_described_by_their_classes() -> None:
    description = describe(list(COCO_CLASS_NAMES), "0" * 64)
    assert not description.bundled and description.text.startswith("The 80 COCO object classes")


def test_other_checkpoints_list_their_own_classes() -> None:
    assert describe(["wheat head"], "1" * 64).text == (
        "A checkpoint trained on 1 class of its own: wheat head. It knows what its training data showed."
    )
    many = describe([f"part {index}" for index in range(12)], "2" * 64)
    assert "12 classes of its own: part 0, part 1," in many.text and "part 7, …" in many.text
    assert "part 8" not in many.text and not many.bundled


def test_the_coco_command_names_a_config_that_exists() -> None:
    from model.network.configs import get_config

    config = COCO_COMMAND.split("CENTERMASK_CONFIG=")[1].split()[0]
    assert get_config(config) is not None
