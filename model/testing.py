"""Deterministic weights for tests and parity checks, following the rule of shared/reference/README.md.

Every tensor is a function of its key and shape alone, so our model and the official one get identical
weights without any weight file changing hands.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from pathlib import Path

import torch

from model.centermask import CenterMask
from model.checkpoint import save_checkpoint
from model.coco_classes import default_category_ids, default_class_names
from model.configs import get_config

_SCALE_LIKE = ("running_var", ".weight", ".scale", "bbox_pred.bias")


def rule_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The rule weight of one state-dict entry."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    u = torch.rand(shape, generator=generator, dtype=torch.float32)
    if len(shape) >= 2:
        fan_in = u.numel() // shape[0]
        return (2 * u - 1) * math.sqrt(3 / fan_in)
    if key.endswith(_SCALE_LIKE):
        return 0.5 + u
    return 0.2 * (u - 0.5)


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
