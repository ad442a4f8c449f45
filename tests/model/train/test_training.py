"""Training: targets, losses, a few optimisation steps, initialisation from other checkpoints, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from model.centermask import CenterMask
from model.checkpoint import load_model
from model.configs import get_config
from model.data.coco import CocoInstances
from model.data.shapes import SHAPE_CLASSES, generate
from model.fcos import level_locations
from model.testing import write_rule_checkpoint
from model.train.__main__ import initialise_from, main
from model.train.losses import fcos_targets, giou_loss
from model.train.step import training_losses

CONFIG = "centermask_lite_V_19_slim_eSE_FPN_ms_4x"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate(root, num_images=6, seed=3)
    return root


def test_giou_loss_is_zero_for_identical_boxes_and_positive_otherwise() -> None:
    boxes = torch.tensor([[2.0, 3.0, 4.0, 5.0]])
    assert giou_loss(boxes, boxes, torch.ones(1)).item() == pytest.approx(0.0, abs=1e-6)
    assert giou_loss(boxes * 2, boxes, torch.ones(1)).item() > 0.1


def test_fcos_targets_pick_the_smallest_box_near_its_centre() -> None:
    locations = [level_locations(8, 8, 8, torch.device("cpu"))]
    big = [0.0, 0.0, 64.0, 64.0]
    small = [16.0, 16.0, 40.0, 40.0]
    targets = fcos_targets(
        locations, (8,), [torch.tensor([big, small])], [torch.tensor([0, 1])], num_classes=2
    )
    labels = targets.labels[0].reshape(8, 8)
    assert labels[3, 3] == 1  # location (28, 28): inside both, the smaller box wins
    assert labels[0, 7] == 2  # (60, 4): outside the big box's centre region → background
    foreground = targets.labels[0] != 2
    assert (targets.centerness[0][foreground] > 0).all() and (targets.centerness[0][foreground] <= 1).all()


def test_a_few_steps_lower_the_loss(shapes: Path) -> None:
    torch.manual_seed(0)
    dataset = CocoInstances(shapes / "annotations.json", shapes / "images", min_sizes=(192,), max_size=320)
    samples = [dataset[i] for i in range(4)]
    model = CenterMask(get_config(CONFIG).with_overrides(num_classes=5), norm=nn.BatchNorm2d).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(8):
        losses = training_losses(model, samples)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask", "loss_maskiou"}
    assert totals[-1] < 0.8 * totals[0], totals


def test_initialising_from_an_80_class_checkpoint_resets_only_class_layers(tmp_path: Path) -> None:
    source = write_rule_checkpoint(tmp_path / "coco.pth", CONFIG)
    model = CenterMask(get_config(CONFIG).with_overrides(num_classes=5), norm=nn.BatchNorm2d)
    reset = initialise_from(model, source)
    assert sorted(reset) == sorted(
        f"{prefix}{kind}"
        for prefix in (
            "proposal_generator.fcos_head.cls_logits.",
            "roi_heads.mask_head.predictor.",
            "roi_heads.maskiou_head.maskiou.",
        )
        for kind in ("weight", "bias")
    )
    coco_model, _, _ = load_model(source)
    key = "backbone.bottom_up.stage3.OSA3_1.concat.OSA3_1_concat/norm.running_var"
    assert torch.equal(model.state_dict()[key], coco_model.state_dict()[key])


def test_cli_trains_saves_resumes_and_evaluates(shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = [
        "--config", CONFIG, "--train-json", str(shapes / "annotations.json"), "--train-images",
        str(shapes / "images"), "--out", str(out), "--batch-size", "2", "--workers", "0",
        "--min-sizes", "160", "--max-size", "256", "--test-min-size", "160", "--test-max-size", "256",
        "--checkpoint-every", "1",
    ]  # fmt: skip
    assert main([*common, "--iters", "2"]) == 0
    assert main([*common, "--iters", "3", "--resume", "--val-json", str(shapes / "annotations.json"),
                 "--val-max-images", "2"]) == 0  # fmt: skip
    model, class_names, checkpoint = load_model(out / "model.pth")
    assert class_names == list(SHAPE_CLASSES)
    assert checkpoint.category_ids == [1, 2, 3, 4, 5]  # the annotation file's ids
    assert model.config.min_size_test == 160
    assert checkpoint.metadata["iteration"] == 3
    assert set(checkpoint.metadata["metrics"]) == {"bbox", "segm"}
    assert json.dumps(checkpoint.metadata)  # the recipe travels as plain JSON data
