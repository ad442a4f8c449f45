"""Training: targets, losses, a few optimisation steps, initialisation from other checkpoints, the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from model.inference.postprocess import level_locations
from model.network.centermask import CenterMask
from model.network.configs import get_config
from model.network.fcos import FCOSHeadOutputs
from model.weights.checkpoint import load_model, read_checkpoint, save_checkpoint
from tests.rule_weights import rule_state_dict, write_rule_checkpoint
from training.data.augment import BASIC, STRONG
from training.data.coco import CocoInstances
from training.data.shapes import CLASSIC, SHAPE_CLASSES, generate
from training.losses import FCOSTargets, fcos_losses, fcos_targets, giou_loss
from training.step import training_losses
from training.train import (
    CLASS_SPECIFIC,
    augmentation_from,
    build_parser,
    initialise_from,
    learning_rate,
    main,
    parse_args,
)

CONFIG = "centermask_lite_V_19_slim_eSE_FPN_ms_4x"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate(root, num_images=6, seed=3, settings=CLASSIC)  # the machinery, not the data, is under test
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
    outside = targets.outside[0].reshape(8, 8)
    assert not outside[3, 3] and not outside[0, 7]  # inside the big box, object or not
    nowhere = fcos_targets(locations, (8,), [torch.zeros((0, 4))], [torch.zeros(0, dtype=torch.int64)], 2)
    assert nowhere.outside.all()


def test_class_exclusion_penalises_only_other_classes_on_objects() -> None:
    """Location 0 is a class-0 object scored 0.9 as class 0 and 0.5 as class 1; location 1 is background."""
    logits = torch.tensor([[2.2, 0.0], [3.0, 3.0]])  # (locations, classes)
    head = FCOSHeadOutputs(
        cls_logits=[logits.T.reshape(1, 2, 1, 2)],
        box_regression=[torch.ones(1, 4, 1, 2)],
        centerness=[torch.zeros(1, 1, 1, 2)],
    )
    targets = FCOSTargets(torch.tensor([[0, 2]]), torch.ones(1, 2, 4), torch.ones(1, 2))
    official = fcos_losses(head, targets, num_classes=2)
    assert "loss_fcos_exclusion" not in official
    weighted = fcos_losses(head, targets, num_classes=2, class_exclusion_weight=2.0)
    # Only class 1 at the object counts: 2 · −log(1 − σ(0)); the background's high scores are the focal
    # loss's business, not this term's.
    assert weighted["loss_fcos_exclusion"].item() == pytest.approx(2 * torch.log(torch.tensor(2.0)).item())
    assert weighted["loss_fcos_cls"].item() == pytest.approx(official["loss_fcos_cls"].item())


def test_background_loss_pushes_only_background_candidates_outside_objects() -> None:
    """Location 0 is a class-0 object; location 1 background scoring 0.5 (class 0) and 0.01 (class 1);
    location 2 background inside the object's box (its rim), scoring 0.5."""
    logits = torch.tensor([[2.2, 0.0], [0.0, -4.6], [0.0, -4.6]])  # (locations, classes)
    head = FCOSHeadOutputs(
        cls_logits=[logits.T.reshape(1, 2, 1, 3)],
        box_regression=[torch.ones(1, 4, 1, 3)],
        centerness=[torch.zeros(1, 1, 1, 3)],
    )
    outside = torch.tensor([[False, True, False]])
    targets = FCOSTargets(torch.tensor([[0, 2, 2]]), torch.ones(1, 3, 4), torch.ones(1, 3), outside)
    official = fcos_losses(head, targets, num_classes=2)
    assert "loss_fcos_background" not in official
    weighted = fcos_losses(head, targets, num_classes=2, background_weight=3.0)
    # Only location 1's 0.5 counts, at full strength: 3 · −log(1 − σ(0)); its 0.01 is below the floor, the
    # rim and the object's own location are the focal and exclusion losses' business.
    assert weighted["loss_fcos_background"].item() == pytest.approx(3 * torch.log(torch.tensor(2.0)).item())
    assert weighted["loss_fcos_cls"].item() == pytest.approx(official["loss_fcos_cls"].item())


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


def test_negatives_train_the_background_only(shapes: Path, tmp_path: Path) -> None:
    """An image without annotations (a negative) in a batch, or a batch of nothing else: finite losses, no
    box, centerness or mask loss from it, and gradients that reach the classifier."""
    negative = {
        "image": torch.randint(0, 256, (3, 160, 200), dtype=torch.uint8),
        "boxes": torch.zeros((0, 4)),
        "classes": torch.zeros((0,), dtype=torch.int64),
        "masks": torch.zeros((0, 160, 200), dtype=torch.bool),
    }
    dataset = CocoInstances(shapes / "annotations.json", shapes / "images", min_sizes=(160,), max_size=256)
    model = CenterMask(get_config(CONFIG).with_overrides(num_classes=5), norm=nn.BatchNorm2d).train()
    for batch in ([negative, negative], [dataset[0], negative]):
        model.zero_grad()
        losses = training_losses(model, batch, class_exclusion_weight=1.0, background_weight=1.0)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert model.proposal_generator.fcos_head.cls_logits.weight.grad.abs().sum() > 0
    empty = training_losses(model, [negative, negative], class_exclusion_weight=1.0, background_weight=1.0)
    assert empty["loss_fcos_cls"] > 0 and empty["loss_fcos_background"] >= 0
    for name in ("loss_fcos_loc", "loss_fcos_ctr", "loss_fcos_exclusion", "loss_mask", "loss_maskiou"):
        assert empty[name] == 0, name


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


def test_cli_trains_saves_resumes_and_evaluates(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    common = [
        "--config", CONFIG, "--train-json", str(shapes / "annotations.json"), "--train-images",
        str(shapes / "images"), "--out", str(out), "--batch-size", "2", "--workers", "0",
        "--min-sizes", "160", "--max-size", "256", "--test-min-size", "160", "--test-max-size", "256",
        "--checkpoint-every", "1", "--augmentation", "strong", "--jpeg-prob", "1.0",
    ]  # fmt: skip
    assert main([*common, "--iters", "2", "--keep-every", "2", "--keep-empty-images"]) == 0
    assert read_checkpoint(out / "model-000002.pth").metadata["iteration"] == 2
    capsys.readouterr()
    # --eval-every falling on the last iteration: that evaluation and the final one are the same, shown once.
    assert main([*common, "--iters", "3", "--resume", "--val-json", str(shapes / "annotations.json"),
                 "--val-max-images", "2", "--eval-every", "3"]) == 0  # fmt: skip
    tables = [line for line in capsys.readouterr().err.splitlines() if line.split()[:2] == ["task", "AP"]]
    assert len(tables) == 1
    model, class_names, checkpoint = load_model(out / "model.pth")
    assert class_names == list(SHAPE_CLASSES)
    assert checkpoint.category_ids == [1, 2, 3, 4, 5]  # the annotation file's ids
    assert model.config.min_size_test == 160
    metadata = checkpoint.metadata
    assert metadata["iteration"] == 3
    assert metadata["category_ids"] == [1, 2, 3, 4, 5]
    assert {"bbox", "segm", "per_class", "duplicates"} <= set(metadata["metrics"])
    assert metadata["recipe"]["augmentation_settings"] == dataclasses.asdict(
        dataclasses.replace(STRONG, jpeg_prob=1.0)
    )
    assert json.dumps(metadata)  # the recipe travels as plain JSON data


@pytest.mark.parametrize(
    "config_name",
    ["centermask_lite_Mv2_FPN_ms_4x", "centermask_R_50_FPN_ms_3x", "centermask_V_39_eSE_dcn_FPN_ms_3x"],
)
def test_every_backbone_family_fine_tunes_from_official_weights(config_name: str, tmp_path: Path) -> None:
    """Training norms (BatchNorm2d) keep the official layout and, in eval mode, the frozen model's numbers."""
    frozen = CenterMask(get_config(config_name))
    frozen.load_state_dict(rule_state_dict((k, tuple(v.shape)) for k, v in frozen.state_dict().items()))
    official = tmp_path / "official.pth"
    torch.save({"model": frozen.state_dict()}, official)
    trainable = CenterMask(get_config(config_name).with_overrides(num_classes=5), norm=nn.BatchNorm2d)
    assert len(initialise_from(trainable, official)) == 6
    images = torch.randn(1, 3, 64, 96) * 50
    with torch.no_grad():
        expected, got = frozen.backbone(images), trainable.eval().backbone(images)
    for level, tensor in expected.items():
        torch.testing.assert_close(got[level], tensor, rtol=1e-4, atol=1e-4)
    norms = [m for m in trainable.backbone.bottom_up.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == sum(k.endswith("running_var") for k in frozen.state_dict() if ".bottom_up." in k)


def test_fine_tuning_starts_from_our_fp16_export(shapes: Path, tmp_path: Path) -> None:
    """--init with one of our exported (fp16) checkpoints keeps every tensor, class layers included."""
    source = CenterMask(get_config(CONFIG).with_overrides(num_classes=5), norm=nn.BatchNorm2d)
    exported = save_checkpoint(tmp_path / "ours.pth", source, list(SHAPE_CLASSES), dtype=torch.float16)
    model = CenterMask(get_config(CONFIG).with_overrides(num_classes=5), norm=nn.BatchNorm2d)
    assert initialise_from(model, exported, SHAPE_CLASSES) == []
    stored = read_checkpoint(exported).state_dict
    for key, value in model.state_dict().items():
        if key in stored:
            assert value.dtype == torch.float32 or not value.is_floating_point()
            assert torch.equal(value, stored[key].to(value.dtype)), key
    # Same shapes, other class names (or order): the class layers cannot carry over.
    renamed = CenterMask(get_config(CONFIG).with_overrides(num_classes=5), norm=nn.BatchNorm2d)
    reset = initialise_from(renamed, exported, ["a", "b", "c", "d", "e"])
    assert len(reset) == 6 and all(k.startswith(CLASS_SPECIFIC) for k in reset)

    out = tmp_path / "tuned"
    assert main(["--config", CONFIG, "--train-json", str(shapes / "annotations.json"), "--train-images",
                 str(shapes / "images"), "--out", str(out), "--batch-size", "2", "--workers", "0",
                 "--min-sizes", "160", "--max-size", "256", "--iters", "1", "--init", str(exported),
                 "--lr", "1e-5", "--warmup-iters", "1"]) == 0  # fmt: skip
    tuned = read_checkpoint(out / "model.pth").state_dict
    key = "proposal_generator.fcos_head.cls_logits.weight"
    # One tiny step away from the initial weights, not from a fresh initialisation.
    assert (tuned[key].float() - stored[key].float()).abs().max() < 1e-3


def test_augmentation_flags_override_the_preset() -> None:
    args = parse_args(["--config", CONFIG, "--train-json", "a.json", "--train-images", "i", "--out", "o",
                       "--augmentation", "strong", "--rot90-prob", "0", "--noise-prob", "0.9"])  # fmt: skip
    assert augmentation_from(args) == dataclasses.replace(STRONG, rot90_prob=0.0, noise_prob=0.9)
    basic = parse_args(["--config", CONFIG, "--train-json", "a.json", "--train-images", "i", "--out", "o"])
    assert augmentation_from(basic) == BASIC


REQUIRED = ["--config", CONFIG, "--train-json", "a.json", "--train-images", "i", "--out", "o"]


def test_a_short_run_reaches_the_peak_learning_rate(capsys: pytest.CaptureFixture) -> None:
    """Without --warmup-iters, 40 iterations warm up for 4 and then decay from --lr; a long run keeps 300."""
    args = parse_args([*REQUIRED, "--iters", "40", "--lr", "2e-3"])
    assert args.warmup_iters == 4
    rates = [learning_rate(iteration, args) for iteration in range(args.iters)]
    assert max(rates) == pytest.approx(2e-3) and rates.index(max(rates)) == 4
    assert rates[-1] < rates[4]
    assert parse_args(REQUIRED).warmup_iters == 300
    assert capsys.readouterr().err == ""


def test_a_warmup_as_long_as_the_run_is_kept_but_said_in_one_line(capsys: pytest.CaptureFixture) -> None:
    args = parse_args([*REQUIRED, "--iters", "40", "--warmup-iters", "300", "--lr", "1e-3"])
    assert args.warmup_iters == 300  # a deliberate choice stays possible
    (line,) = capsys.readouterr().err.splitlines()
    top = learning_rate(39, args)
    assert top < 0.2e-3
    assert line == (
        f"warning: --warmup-iters 300 ≥ --iters 40: the learning rate never reaches --lr 0.001 (at most {top:.2g})"
    )
    parse_args([*REQUIRED, "--iters", "40", "--warmup-iters", "39"])
    assert capsys.readouterr().err == ""


def test_help_explains_every_flag_and_gives_its_default() -> None:
    """Each entry of `--help` has text; each optional flag that takes a value says its default."""
    parser = build_parser()
    text = parser.format_help()
    options = text.split("\noptions:\n", 1)[1].splitlines()
    entries: dict[str, str] = {}
    for line in options:
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line
        else:
            entries[flag] += " " + line.strip()
    flags = {action.option_strings[0]: action for action in parser._actions}
    assert set(entries) == set(flags)
    for flag, action in flags.items():
        words = " ".join(entries[flag].split())
        assert action.help and action.help.split()[0] in words, flag
        if not action.required and action.nargs != 0:
            assert "(default: " in words, flag
        if action.default is not None and action.nargs != 0:
            assert f"(default: {action.default})" in words, flag
