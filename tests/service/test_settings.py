"""Settings from the environment and the command line, with their validation."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.server import main
from service.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("CENTERMASK_")]:
        monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings()
    assert settings.weights is None and settings.config is None
    assert settings.device == "auto"
    assert (settings.max_batch_size, settings.max_batch_delay_ms, settings.max_queue) == (None, 5, 64)
    assert (settings.batch_size_for("cuda"), settings.batch_size_for("cpu")) == (8, 1)
    assert settings.precision == "fp32" and settings.class_agnostic_nms is True
    assert 1 <= settings.torch_threads <= (os.cpu_count() or 1)
    assert settings.request_timeout_s == 30
    assert settings.max_image_bytes == 20 * 1024 * 1024
    assert settings.max_image_pixels == 40_000_000
    assert (settings.score_threshold, settings.max_detections) == (0.3, 100)
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 8000, "info")
    assert settings.api_key is None and settings.protect_probes is False and settings.cors_origins == []
    assert settings.drain_timeout_s == 25
    assert (settings.body_timeout_s, settings.idle_timeout_s) == (30, 5)
    assert settings.max_concurrent_uploads == 64 and settings.max_images_per_request == 32
    assert settings.inference_watchdog_s is None
    assert (settings.compile, settings.cuda_graphs, settings.jpeg_draft) == (False, False, False)


def test_derived_limits_follow_what_they_depend_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # Lowering the queue alone is enough: the limits that must fit in it follow.
    monkeypatch.setenv("CENTERMASK_MAX_QUEUE", "4")
    settings = Settings()
    assert (
        settings.batch_size_for("cuda"),
        settings.max_images_per_request,
        settings.max_concurrent_uploads,
    ) == (
        4,
        4,
        4,
    )
    explicit = Settings(max_queue=4, max_batch_size=2, max_images_per_request=3, max_concurrent_uploads=9)
    assert (explicit.max_batch_size, explicit.max_images_per_request, explicit.max_concurrent_uploads) == (
        2,
        3,
        9,
    )


def test_batch_deadlines_scale_with_their_images() -> None:
    settings = Settings(request_timeout_s=10)
    assert [settings.request_deadline_s(n, 8) for n in (1, 8, 9, 32)] == [10, 10, 20, 40]
    assert settings.request_deadline_s(3, 1) == 30


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"max_images_per_request": 65, "max_queue": 64}, "CENTERMASK_MAX_IMAGES_PER_REQUEST"),
        ({"max_images_per_request": 8, "max_queue": 4}, "CENTERMASK_MAX_QUEUE"),
        ({"protect_probes": True}, "CENTERMASK_API_KEY"),
        ({"cors_origins": ["https://app.example/path"]}, "CENTERMASK_CORS_ORIGINS"),
        ({"cors_origins": ["app.example"]}, "CENTERMASK_CORS_ORIGINS"),
    ],
)
def test_contradictions_name_the_setting_to_change(values: dict, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(**values)


def test_cors_origins_are_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CENTERMASK_CORS_ORIGINS", "https://a.example, http://localhost:3000,")
    assert Settings().cors_origins == ["https://a.example", "http://localhost:3000"]
    flags = Settings.from_command_line(["--cors-origins", "*"])
    assert flags.cors_origins == ["*"]


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CENTERMASK_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("CENTERMASK_WEIGHTS", "/models/a.pth")
    monkeypatch.setenv("CENTERMASK_API_KEY", "s3cret")
    settings = Settings()
    assert settings.max_batch_size == 16
    assert settings.weights == Path("/models/a.pth")
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_the_speed_options_are_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CENTERMASK_COMPILE", "true")
    monkeypatch.setenv("CENTERMASK_CUDA_GRAPHS", "1")
    monkeypatch.setenv("CENTERMASK_JPEG_DRAFT", "yes")
    settings = Settings()
    assert (settings.compile, settings.cuda_graphs, settings.jpeg_draft) == (True, True, True)
    flags = Settings.from_command_line(["--compile", "false", "--jpeg-draft", "false"])
    assert (flags.compile, flags.cuda_graphs, flags.jpeg_draft) == (False, True, False)
    monkeypatch.setenv("CENTERMASK_COMPILE", "sometimes")
    with pytest.raises(ValidationError, match="compile"):
        Settings()


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
        {"body_timeout_s": 0},
        {"idle_timeout_s": -1},
        {"inference_watchdog_s": 0},
        {"max_concurrent_uploads": 0},
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


def test_the_command_names_the_setting_of_a_contradiction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CENTERMASK_MAX_QUEUE", "4")
    monkeypatch.setenv("CENTERMASK_MAX_IMAGES_PER_REQUEST", "16")
    with pytest.raises(SystemExit) as exit_info:
        main([])
    message = str(exit_info.value.code)
    assert "CENTERMASK_MAX_IMAGES_PER_REQUEST (16) must not exceed CENTERMASK_MAX_QUEUE (4)" in message
