"""Settings from the environment and the command line, with their validation."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.app import main
from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CENTERMASK_MAX_BATCH_SIZE", "CENTERMASK_API_KEY", "CENTERMASK_WEIGHTS", "CENTERMASK_PORT"):
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = Settings()
    assert settings.weights is None and settings.config is None
    assert settings.device == "auto"
    assert (settings.max_batch_size, settings.max_batch_delay_ms, settings.max_queue) == (8, 5, 64)
    assert settings.request_timeout_s == 30
    assert settings.max_image_bytes == 20 * 1024 * 1024
    assert settings.max_image_pixels == 40_000_000
    assert (settings.score_threshold, settings.max_detections) == (0.3, 100)
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 8000, "info")
    assert settings.api_key is None
    assert settings.drain_timeout_s == 25


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CENTERMASK_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("CENTERMASK_WEIGHTS", "/models/a.pth")
    monkeypatch.setenv("CENTERMASK_API_KEY", "s3cret")
    settings = Settings()
    assert settings.max_batch_size == 16
    assert settings.weights == Path("/models/a.pth")
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CENTERMASK_API_KEY", "")
    assert Settings().api_key is None


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CENTERMASK_PORT", "9000")
    settings = Settings.from_command_line(["--port", "8080", "--max-batch-size", "4", "--device", "cpu"])
    assert (settings.port, settings.max_batch_size, settings.device) == (8080, 4, "cpu")


@pytest.mark.parametrize(
    "values",
    [
        {"max_batch_size": 0},
        {"max_queue": -1},
        {"max_batch_delay_ms": -1},
        {"score_threshold": 1.5},
        {"device": "gpu"},
        {"port": 70000},
        {"max_images_per_request": 65, "max_queue": 64},
    ],
)
def test_out_of_range_values_are_refused(values: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(**values)


def test_the_command_explains_invalid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CENTERMASK_MAX_BATCH_SIZE", "0")
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert "max_batch_size: Input should be greater than 0" in str(exit_info.value.code)
