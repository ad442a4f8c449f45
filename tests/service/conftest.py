"""Fixtures for the service tests; the helpers they share are in tests/service/helpers.py."""

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from model.inference.load import load_predictor
from model.inference.options import PredictorOptions
from model.inference.predictor import Predictor
from service.runtime import PredictorLoader
from tests.service.helpers import ControlledPredictor, Served, serve, tiny_settings


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def controlled() -> Iterator[tuple[PredictorLoader, Callable[[], ControlledPredictor]]]:
    """A loader to pass to create_app, and a getter for the ControlledPredictor it built."""
    built: list[ControlledPredictor] = []

    def load(options: PredictorOptions) -> Predictor:
        built.append(ControlledPredictor(load_predictor(options)))
        return built[-1]  # type: ignore[return-value]

    yield load, lambda: built[-1]
    for predictor in built:
        predictor.release()


@pytest.fixture(scope="session")
async def served(tiny_weights: Path) -> AsyncIterator[Served]:
    """One ready app shared by the tests that only send requests (warm-up is paid once)."""
    async with serve(tiny_settings(tiny_weights, max_batch_size=3, max_batch_delay_ms=20)) as served:
        yield served


@pytest.fixture(scope="session")
async def small_served(small_weights: Path) -> AsyncIterator[Served]:
    """A ready app on the 64/128-resize checkpoint, for tests that send many images."""
    async with serve(tiny_settings(small_weights, max_batch_size=4, max_batch_delay_ms=20)) as served:
        yield served
