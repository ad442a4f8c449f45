"""`python -m model.evaluate` on a handful of generated images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.checkpoint import read_checkpoint
from model.data.shapes import generate
from model.evaluate import METRIC_NAMES, main
from model.testing import write_rule_checkpoint


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


def test_evaluate_prints_and_writes_box_and_mask_ap(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "shapes"
    generate(data, num_images=3, seed=11)
    weights = write_rule_checkpoint(
        tmp_path / "w.pth", "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x", num_classes=5, min_size_test=256
    )
    output = tmp_path / "metrics.json"
    assert main([*cli_args(weights, data), "--json", str(output), "--record"]) == 0
    metrics = json.loads(output.read_text())
    assert read_checkpoint(weights).metadata["metrics"] == metrics
    assert set(metrics) == {"bbox", "segm"}
    for task in metrics.values():
        assert set(task) == set(METRIC_NAMES)
        assert all(-1.0 <= value <= 1.0 for value in task.values())  # COCOeval reports -1 for empty ranges
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["task", *METRIC_NAMES]


def test_class_count_must_match_the_dataset(tmp_path: Path) -> None:
    data = tmp_path / "shapes"
    generate(data, num_images=1, seed=12)
    weights = write_rule_checkpoint(
        tmp_path / "w.pth", "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x", min_size_test=128
    )
    with pytest.raises(ValueError, match="5 categories, the model 80 classes"):
        main(cli_args(weights, data))
