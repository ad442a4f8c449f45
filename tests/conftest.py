"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_SERVER_KEY, LiveServer, live_server
from tests.rule_weights import write_rule_checkpoint

REPO = Path(__file__).resolve().parents[1]
# The workspace keeps shared/ beside the repository; a copy inside it (as bench/gpu_check.sh carries) also works.
SHARED = next(
    (path for path in (REPO / "shared", REPO.parent / "shared") if path.is_dir()), REPO.parent / "shared"
)
TINY_CONFIG = "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic checkpoint: lite V-19-slim-dw, 80 COCO classes, test resize 320/512."""
    path = tmp_path_factory.mktemp("weights") / "tiny.pth"
    return write_rule_checkpoint(path, TINY_CONFIG, min_size_test=320, max_size_test=512)


@pytest.fixture(scope="session")
def small_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint at a test resize of 64/128: for tests that send many images (fuzzing, load)."""
    path = tmp_path_factory.mktemp("weights") / "small.pth"
    return write_rule_checkpoint(path, TINY_CONFIG, min_size_test=64, max_size_test=128)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported by `python -m model.export` (the path given as --out)."""
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install -e .[onnx])")
    from model.export import main as export

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    assert export(["--weights", str(tiny_weights), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """`../shared/reference` (parity fixtures and key manifests); skips where a clone has no shared/."""
    reference = SHARED / "reference"
    if not reference.is_dir():
        pytest.skip(f"{reference} is absent: official reference fixtures are only in the project workspace")
    return reference


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` need a CUDA device: they skip without one (bench/gpu_check.sh runs them)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run bench/gpu_check.sh on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real server on the tiny checkpoint, behind the API key TINY_SERVER_KEY."""
    log = tmp_path_factory.mktemp("tiny-server") / "server.log"
    flags = ("--weights", str(tiny_weights), "--max-batch-size", "2", "--cpu-workers", "1")
    with live_server(log, *flags, CENTERMASK_API_KEY=TINY_SERVER_KEY) as server:
        yield server


@pytest.fixture(scope="session")
def bundled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The real server on the bundled model, as `centermask-serve` starts by default."""
    log = tmp_path_factory.mktemp("bundled-server") / "server.log"
    with live_server(log, "--max-batch-size", "1", "--cpu-workers", "1") as server:
        yield server
