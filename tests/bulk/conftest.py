"""Fixtures of the bulk tests. Ray is the optional extra [bulk]: without it these tests skip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyarrow", reason="pyarrow comes with the [bulk] extra (pip install -e .[bulk])")
pytest.importorskip("fsspec", reason="fsspec comes with the [bulk] extra (pip install -e .[bulk])")


@pytest.fixture(scope="session")
def small_predictor(small_weights: Path) -> Any:
    """The small test checkpoint loaded once, on the CPU: the reference the bulk results are checked against."""
    from model.predict import load_predictor

    return load_predictor(weights=small_weights, device="cpu")
