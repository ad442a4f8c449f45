"""Reading and writing CenterMask weights: official detectron2 `.pth`/`.pkl` files and our own checkpoints.

Loading is strict: a file that lacks keys, has extra keys or has tensors of the wrong shape is refused
with one error naming them, never half-loaded.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.centermask import CenterMask
from model.coco_classes import default_category_ids, default_class_names
from model.configs import ModelConfig, get_config

# Keys a detectron2 checkpoint may carry that are not weights of this model.
IGNORED_SUFFIXES = ("pixel_mean", "pixel_std", "num_batches_tracked")
# Config fields our own checkpoints may override (the test-time resize of a model trained at another scale).
OVERRIDABLE_FIELDS = ("min_size_test", "max_size_test")
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A weights file that cannot be loaded into the requested model."""


@dataclass
class Checkpoint:
    """Weights plus what is needed to build their model."""

    state_dict: dict[str, torch.Tensor]
    config_name: str | None = None
    class_names: list[str] | None = None
    # The dataset's category id of each contiguous class (COCO `category_id`); None in official files.
    category_ids: list[int] | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _to_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise CheckpointError(f"entry {name!r} is a {type(value).__name__}, not a tensor or array")


def _read_file(path: Path) -> Mapping[str, Any]:
    if path.suffix == ".pkl":
        with path.open("rb") as stream:
            # detectron2 model-zoo files are latin-1 pickles of numpy arrays.
            data = pickle.load(stream, encoding="latin1")
        if isinstance(data, Mapping) and "blobs" in data:
            raise CheckpointError(f"{path}: Caffe2/Detectron1 blob files are not CenterMask checkpoints")
        return data
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Training checkpoints can hold optimizer objects the safe loader refuses; the user chose this file.
        return torch.load(path, map_location="cpu", weights_only=False)


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read a `.pth` (torch dict, with or without a "model" wrapper) or `.pkl` (detectron2 model zoo) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        data = _read_file(path)
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({error})") from error
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    weights = data.get("model", data)
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{path}: the 'model' entry is a {type(weights).__name__}, not a dict")
    state_dict = {}
    for name, value in weights.items():
        key = name.removeprefix("module.")
        if key.endswith(IGNORED_SUFFIXES):
            continue
        state_dict[key] = _to_tensor(name, value)
    return Checkpoint(
        state_dict=state_dict,
        config_name=data.get("config"),
        class_names=list(data["class_names"]) if "class_names" in data else None,
        category_ids=_category_ids(path, data.get("category_ids")),
        config_overrides=dict(data.get("config_overrides", {})),
        metadata=dict(data.get("metadata", {})),
    )


def _category_ids(path: Path, value: Any) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(i) for i in value]
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: category_ids must be a list of integers") from None


def _shape(tensor: torch.Tensor) -> str:
    return "×".join(map(str, tensor.shape)) or "scalar"


def _listing(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (file {_shape(state_dict[k])}, model {_shape(expected[k])})"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with wrong shape: {_listing(mismatched)}")
    if problems:
        config = getattr(model, "config", None)
        name = config.name if config is not None else type(model).__name__
        raise CheckpointError(f"{source} does not fit {name}: " + "; ".join(problems))


def num_classes_of(state_dict: Mapping[str, torch.Tensor]) -> int:
    key = "proposal_generator.fcos_head.cls_logits.weight"
    if key not in state_dict:
        raise CheckpointError(f"no {key}: not a CenterMask checkpoint")
    return int(state_dict[key].shape[0])


def resolve_config(
    checkpoint: Checkpoint, config_name: str | None, source: str
) -> tuple[ModelConfig, list[str]]:
    """The model config and class names for a checkpoint; an explicit config name must agree with the file."""
    if config_name and checkpoint.config_name and get_config(config_name).name != checkpoint.config_name:
        raise CheckpointError(
            f"{source} holds {checkpoint.config_name}, but config {config_name} was requested"
        )
    name = checkpoint.config_name or config_name
    if name is None:
        raise CheckpointError(
            f"{source} does not name its architecture: pass the config name (e.g. --config)"
        )
    num_classes = num_classes_of(checkpoint.state_dict)
    class_names = checkpoint.class_names or default_class_names(num_classes)
    if len(class_names) != num_classes:
        raise CheckpointError(f"{source}: {len(class_names)} class names for {num_classes} classes")
    overrides = {k: v for k, v in checkpoint.config_overrides.items() if k in OVERRIDABLE_FIELDS}
    config = get_config(name).with_overrides(num_classes=num_classes, **overrides)
    return config, class_names


def resolve_category_ids(checkpoint: Checkpoint, num_classes: int, source: str) -> list[int]:
    """The category id of each class: as recorded, else `default_category_ids` (COCO's for 80 classes)."""
    category_ids = checkpoint.category_ids or default_category_ids(num_classes)
    if len(category_ids) != num_classes:
        raise CheckpointError(f"{source}: {len(category_ids)} category ids for {num_classes} classes")
    if len(set(category_ids)) != num_classes:
        raise CheckpointError(f"{source}: the category ids {category_ids} repeat")
    return category_ids


def load_model(path: str | Path, config_name: str | None = None) -> tuple[CenterMask, list[str], Checkpoint]:
    """Build the model a checkpoint describes and load it strictly. Returns (eval-mode model, class names, file)."""
    checkpoint = read_checkpoint(path)
    config, class_names = resolve_config(checkpoint, config_name, str(path))
    model = CenterMask(config)
    check_state_dict(model, checkpoint.state_dict, str(path))
    model.load_state_dict(checkpoint.state_dict, strict=True)
    return model.eval(), class_names, checkpoint


def export_state_dict(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The model's weights in the official layout (no BatchNorm step counters), optionally cast for storage."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        value = value.detach().cpu()
        state[key] = value.to(dtype) if dtype is not None and value.is_floating_point() else value.clone()
    return state


def save_checkpoint(
    path: str | Path,
    model: CenterMask,
    class_names: list[str],
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    config_overrides: dict[str, Any] | None = None,
    category_ids: list[int] | None = None,
) -> Path:
    """Write our checkpoint format: official-layout weights plus config name, classes and metadata.

    `category_ids` are the dataset's ids of the classes, in class order (what `category_id` reports).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": export_state_dict(model, dtype),
        "config": model.config.name,
        "class_names": list(class_names),
        "category_ids": [int(i) for i in category_ids] if category_ids is not None else None,
        "config_overrides": dict(config_overrides or {}),
        "metadata": dict(metadata or {}),
        "format_version": FORMAT_VERSION,
    }
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)
    return path


def update_metadata(path: str | Path, updates: dict[str, Any]) -> None:
    """Merge `updates` into the metadata of one of our checkpoints, in place (atomically)."""
    path = Path(path)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if "format_version" not in payload:
        raise CheckpointError(f"{path} is not one of our checkpoints; its metadata cannot be updated")
    payload["metadata"] = {**payload.get("metadata", {}), **updates}
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)
