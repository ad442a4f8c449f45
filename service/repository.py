"""A model repository on disk, Triton's way: one folder per model, the folder's name the model's name.

```
DIR/<name>/model.pth      the weights: one of ours, or an official centermask2 checkpoint
DIR/<name>/config.json    optional: predictor options, e.g. {"config": "centermask_lite_V_39_eSE_FPN_ms_4x",
                          "precision": "bf16"}, validated by `PredictorOptions` (unknown keys refused)
```

What a folder's `config.json` leaves unset takes the server's own setting (`CENTERMASK_DEVICE`, ...),
except `weights` (always the folder's `model.pth`) and `config` (read from the checkpoint, as ours record
it). A relative `onnx_model` is taken relative to the folder. Hidden folders (`.name`) are skipped. A load
may bring its own config.json text instead of the folder's (Triton's `config` load parameter): it is read
the same way, and the folder's file only counts for the fingerprint.

This module only reads folders; loading, serving and reloading are `service.registry`'s. It also holds the
memory check made before a model is loaded (`check_memory`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from model.inference.options import PredictorOptions
from service.errors import describe_problems

WEIGHTS_FILE = "model.pth"
CONFIG_FILE = "config.json"
# A model's name is a path segment of /v2/models/{name} and a query parameter: kept to safe characters.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# What a model needs in memory, estimated from its weights file: the checkpoint as read, the network built
# from it and the copies a precision or backend makes (folded, converted or exported), plus the activations
# of warm-up batches; `MEMORY_HEADROOM` is kept free for everything else.
MEMORY_FACTOR = 4
MEMORY_HEADROOM = 256 * 1024 * 1024
_MIB = 1024 * 1024


class RepositoryError(ValueError):
    """A folder that cannot be served as it is (no weights, a bad config.json, a bad name, no memory)."""


class InvalidOptions(RepositoryError):
    """A config.json text (the folder's, or a load's own) that is not valid predictor options."""


@dataclass(frozen=True)
class ModelSource:
    """One model folder, read: its name, predictor options, and a fingerprint of its files."""

    name: str
    folder: Path
    options: PredictorOptions
    # Changes whenever model.pth or config.json changes (size, time, config bytes): what SIGHUP compares.
    fingerprint: str

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS_FILE


def model_names(directory: Path) -> list[str]:
    """The models of a repository: its (non-hidden) folders' names, sorted."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as error:
        raise RepositoryError(f"cannot read the model repository {directory}: {error.strerror}") from None
    return [entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")]


def read_source(directory: Path, name: str, base: PredictorOptions, config: str | None = None) -> ModelSource:
    """The folder `directory/name` as a model: its options are `base` (the server's), less weights and
    config, updated by its config.json, or by `config` in its place (a load's own config.json text).
    RepositoryError says what is wrong with it; InvalidOptions, with the options."""
    if not NAME.fullmatch(name):
        raise RepositoryError(
            f"{name[:130]!r} is not a model name: a folder's name must be letters, digits, '_', '.' or '-' "
            "(at most 128, not starting with '.', '_' or '-')"
        )
    folder = directory / name
    if not folder.is_dir():
        raise RepositoryError(f"no model {name!r} in the repository {directory} (no folder {folder})")
    weights = folder / WEIGHTS_FILE
    try:
        stat = weights.stat()
    except OSError:
        raise RepositoryError(
            f"model {name!r}: no weights file {weights} (each model folder holds its checkpoint as "
            f"{WEIGHTS_FILE})"
        ) from None
    config_path = folder / CONFIG_FILE
    try:
        config_bytes = config_path.read_bytes()
    except FileNotFoundError:
        config_bytes = b""
    except OSError as error:
        raise RepositoryError(f"model {name!r}: cannot read {config_path}: {error.strerror}") from None
    if config is None:
        options = _options(name, str(config_path), config_bytes, folder, base)
    else:
        options = _options(name, "the load's config parameter", config.encode(), folder, base)
    # The folder's files, whatever this load was given: SIGHUP reloads a model when they change.
    digest = hashlib.sha256(config_bytes).hexdigest()[:16]
    return ModelSource(name, folder, options, f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}:{digest}")


def _options(
    name: str, where: str, config_bytes: bytes, folder: Path, base: PredictorOptions
) -> PredictorOptions:
    """The options of a folder's config.json text (`where` it comes from, for the errors): `base` less
    weights and config, updated by it; InvalidOptions naming what is wrong."""
    values: dict[str, Any] = base.model_dump(exclude={"weights", "config"})
    if config_bytes:
        try:
            config = json.loads(config_bytes)
        except (UnicodeDecodeError, ValueError) as error:
            raise InvalidOptions(f"model {name!r}: {where} is not JSON: {error}") from None
        if not isinstance(config, dict):
            raise InvalidOptions(
                f"model {name!r}: {where} must hold a JSON object of predictor options, e.g. "
                '{"config": "centermask_lite_V_39_eSE_FPN_ms_4x", "precision": "bf16"}'
            )
        if "weights" in config:
            raise InvalidOptions(
                f"model {name!r}: {where} may not name weights: a model's weights are its folder's {WEIGHTS_FILE}"
            )
        unknown = sorted(set(config) - set(PredictorOptions.model_fields))
        if unknown:
            raise InvalidOptions(
                f"model {name!r}: {where}: unknown option{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(map(repr, unknown))}; the options are {', '.join(PredictorOptions.model_fields)}"
            )
        if isinstance(config.get("onnx_model"), str):
            config["onnx_model"] = str(folder / config["onnx_model"])
        values |= config
    try:
        return PredictorOptions(**(values | {"weights": folder / WEIGHTS_FILE}))
    except ValidationError as error:
        raise InvalidOptions(f"model {name!r}: {where}: {describe_problems(error.errors())}") from None


def required_bytes(weights_bytes: int) -> int:
    """What a model whose checkpoint has this size is expected to need in memory, headroom included."""
    return MEMORY_FACTOR * weights_bytes + MEMORY_HEADROOM


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a new model on `device`: CUDA's free memory, or on a CPU what the kernel counts as
    available (MemAvailable) within this process's cgroup limit; None where it cannot be told."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    available = _meminfo_available()
    limit = _cgroup_memory_left()
    known = [value for value in (available, limit) if value is not None]
    return min(known) if known else None


def check_memory(name: str, weights_bytes: int, device: torch.device, available: int | None) -> None:
    """Refuse (RepositoryError) to load a model that would not fit in what `available` says is free."""
    if available is None:
        return
    needed = required_bytes(weights_bytes)
    if needed > available:
        raise RepositoryError(
            f"model {name!r} would not fit: it needs about {needed // _MIB} MiB on {device} "
            f"({MEMORY_FACTOR} × its {weights_bytes // _MIB} MiB of weights + {MEMORY_HEADROOM // _MIB} MiB), "
            f"and {available // _MIB} MiB is free; unload a model first "
            "(POST /v2/repository/models/NAME/unload) or give the server more memory"
        )


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_memory_left() -> int | None:
    """A cgroup v2 memory limit less what the cgroup uses; None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        return None
