"""Deterministic weights for tests and parity checks, following the rule of shared/reference/README.md.

Every tensor is a function of its key and shape alone, so our model and the official one get identical
weights without any weight file changing hands.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from model.network.centermask import CenterMask
from model.network.configs import get_config
from model.weights.checkpoint import save_checkpoint
from model.weights.coco_classes import default_category_ids, default_class_names

_SCALE_LIKE = ("running_var", ".weight", ".scale", "bbox_pred.bias")


def rule_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The rule weight of one state-dict entry."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    u = torch.rand(shape, generator=generator, dtype=torch.float32)
    # In place: the same float operations as the README's formulas, without temporaries (X-101 has 114 M).
    if len(shape) >= 2:
        fan_in = u.numel() // shape[0]
        return u.mul_(2).sub_(1).mul_(math.sqrt(3 / fan_in))
    if key.endswith(_SCALE_LIKE):
        return u.add_(0.5)
    return u.sub_(0.5).mul_(0.2)


def rule_state_dict(entries: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """Rule weights for (key, shape) pairs, e.g. a model's state dict or a reference key manifest."""
    return {key: rule_tensor(key, tuple(shape)) for key, shape in entries}


def write_rule_checkpoint(
    path: str | Path,
    config_name: str,
    num_classes: int = 80,
    min_size_test: int | None = None,
    max_size_test: int | None = None,
) -> Path:
    """Save one of our checkpoints holding rule weights for `config_name` (COCO's classes when 80)."""
    config = get_config(config_name).with_overrides(num_classes=num_classes)
    model = CenterMask(config)
    model.load_state_dict(rule_state_dict((k, tuple(v.shape)) for k, v in model.state_dict().items()))
    overrides = {
        name: value
        for name, value in (("min_size_test", min_size_test), ("max_size_test", max_size_test))
        if value is not None
    }
    return save_checkpoint(
        path,
        model,
        default_class_names(num_classes),
        metadata={"weights": "rule"},
        config_overrides=overrides,
        category_ids=default_category_ids(num_classes),
    )


def read_manifest(path: Path) -> dict[str, tuple[int, ...]]:
    """A key manifest (`keys/<config>.tsv`): state-dict key → shape."""
    entries = {}
    for line in path.read_text().splitlines():
        key, shape, _dtype = line.split("\t")
        entries[key] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return entries


def official_rule_checkpoint(
    reference: Path, config: str, directory: Path, test_size: tuple[int, int] | None = None
) -> Path:
    """A detectron2-style file ({"model": state_dict}) of rule weights built from the official key manifest.

    With `test_size` (short side, long-side cap), the file also names its config and that test-time resize,
    as our own checkpoints do, so a big model can run end to end on a small image.
    """
    payload: dict[str, Any] = {
        "model": rule_state_dict(read_manifest(reference / "keys" / f"{config}.tsv").items())
    }
    if test_size is not None:
        payload |= {
            "config": config,
            "config_overrides": {"min_size_test": test_size[0], "max_size_test": test_size[1]},
        }
    path = directory / f"{config}.pth"
    torch.save(payload, path)
    return path


def box_iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float(a == b)


@dataclass
class MatchReport:
    matched: int
    reference_count: int
    our_count: int
    mask_ious: list[float]
    small_mask_failures: list[float]

    @property
    def passes(self) -> bool:
        return (
            self.matched >= 0.95 * self.reference_count
            and abs(self.our_count - self.reference_count) <= 0.05 * self.reference_count
            and (not self.mask_ious or float(np.mean(self.mask_ious)) >= 0.97)
            and not self.small_mask_failures
        )


def match_instances(reference: list[dict[str, Any]], ours: list[dict[str, Any]]) -> MatchReport:
    """Greedy matching, best reference score first, to our unmatched same-class instance of highest box IoU."""
    unmatched = set(range(len(ours)))
    ious, failures, matched = [], [], 0
    for ref in sorted(reference, key=lambda r: -r["score"]):
        candidates = [
            (box_iou(ref["box"], ours[j]["box"]), j)
            for j in unmatched
            if ours[j]["class_id"] == ref["class_id"]
        ]
        if not candidates:
            continue
        iou, j = max(candidates)
        mine = ours[j]
        if (
            iou < 0.99
            or abs(mine["score"] - ref["score"]) > 1e-3
            or abs(mine["mask_score"] - ref["mask_score"]) > 1e-3
        ):
            continue
        unmatched.discard(j)
        matched += 1
        ref_mask, our_mask = (
            mask_utils.decode(ref["mask"]).astype(bool),
            mask_utils.decode(mine["mask"]).astype(bool),
        )
        union = np.logical_or(ref_mask, our_mask).sum()
        mask_iou = float(np.logical_and(ref_mask, our_mask).sum() / union) if union else 1.0
        ious.append(mask_iou)
        if ref_mask.sum() >= 64 and mask_iou < 0.9:
            failures.append(mask_iou)
    return MatchReport(matched, len(reference), len(ours), ious, failures)
