"""`python -m training.evaluate` on a handful of generated images."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from model.weights.checkpoint import read_checkpoint
from tests.rule_weights import write_rule_checkpoint
from training.data.shapes import SHAPE_CLASSES, TRAINING, generate
from training.evaluate import METRIC_NAMES, main


def cli_args(weights: Path, data: Path) -> list[str]:
    """Evaluate `weights` on a dataset written by `generate(data, ...)`."""
    return [
        "--weights",
        str(weights),
        "--gt",
        str(data / "annotations.json"),
        "--images",
        str(data / "images"),
    ]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three generated images and rule weights for five classes (they report many cross-class duplicates)."""
    root = tmp_path_factory.mktemp("evaluate")
    generate(
        root / "shapes", num_images=3, seed=11, settings=dataclasses.replace(TRAINING, image_side=(224, 320))
    )
    weights = write_rule_checkpoint(
        root / "w.pth", "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x", num_classes=5, min_size_test=256
    )
    return weights, root / "shapes"


def test_evaluate_prints_and_writes_ap_per_class_ap_and_duplicates(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    weights, data = setup
    output = tmp_path / "metrics.json"
    assert main([*cli_args(weights, data), "--json", str(output), "--record"]) == 0
    metrics = json.loads(output.read_text())
    assert read_checkpoint(weights).metadata["metrics"] == metrics
    assert set(metrics) == {"bbox", "segm", "per_class", "duplicates", "class_agnostic_nms"}
    for task in ("bbox", "segm"):
        assert set(metrics[task]) == set(METRIC_NAMES)
        assert all(-1.0 <= value <= 1.0 for value in metrics[task].values())  # COCOeval: -1 for empty ranges
        assert list(metrics["per_class"][task]) == list(SHAPE_CLASSES)
        assert all(-1.0 <= value <= 1.0 for value in metrics["per_class"][task].values())
    duplicates = metrics["duplicates"]
    assert duplicates["detections"] > 0 and duplicates["duplicates"] > 0
    assert duplicates["rate"] == pytest.approx(duplicates["duplicates"] / duplicates["detections"])
    assert (duplicates["score_threshold"], duplicates["iou_threshold"]) == (0.3, 0.9)
    assert metrics["class_agnostic_nms"] is None
    printed = capsys.readouterr()
    table = printed.out
    assert table.splitlines()[0].split() == ["task", *METRIC_NAMES]
    assert "cross-class duplicates" in table and "ring" in table
    # --record says what it stored and where (it rewrites a checkpoint file).
    (said,) = [line for line in printed.err.splitlines() if line.startswith("recorded")]
    assert f"box AP {100 * metrics['bbox']['AP']:.2f}, mask AP {100 * metrics['segm']['AP']:.2f}" in said
    assert f'in {weights} as metadata["metrics"]' in said
    assert f"measured on {data / 'annotations.json'}, every image" in said


def test_class_agnostic_nms_removes_the_duplicates_and_records_by_name(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    weights, data = setup
    plain, filtered = tmp_path / "plain.json", tmp_path / "filtered.json"
    assert main([*cli_args(weights, data), "--json", str(plain)]) == 0
    assert "recorded" not in capsys.readouterr().err  # nothing stored without --record
    assert main([*cli_args(weights, data), "--json", str(filtered), "--class-agnostic-nms",
                 "--record", "agnostic"]) == 0  # fmt: skip
    assert f'in {weights} as metadata["evaluations"]["agnostic"]' in capsys.readouterr().err
    before, after = json.loads(plain.read_text()), json.loads(filtered.read_text())
    assert after["class_agnostic_nms"] == 0.7
    # Every duplicate overlaps its better label by IoU > 0.9 > 0.7: none survive; distinct objects remain.
    assert after["duplicates"]["duplicates"] == 0
    assert 0 < after["duplicates"]["detections"] < before["duplicates"]["detections"]
    evaluations = read_checkpoint(weights).metadata["evaluations"]
    assert evaluations["agnostic"]["metrics"] == after
    assert evaluations["agnostic"]["evaluated_on"]["gt"].endswith("annotations.json")


def test_class_count_must_match_the_dataset(tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    generate(data, num_images=1, seed=12)
    weights = write_rule_checkpoint(
        tmp_path / "w.pth", "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x", min_size_test=128
    )
    with pytest.raises(ValueError, match="5 categories, the model 80 classes"):
        main(cli_args(weights, data))
