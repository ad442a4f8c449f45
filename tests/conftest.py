"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.testing import write_rule_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
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
def shared_reference() -> Path:
    """`../shared/reference` (parity fixtures and key manifests); skips where a clone has no shared/."""
    reference = SHARED / "reference"
    if not reference.is_dir():
        pytest.skip(f"{reference} is absent: official reference fixtures are only in the project workspace")
    return reference
