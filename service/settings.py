"""The service's configuration: one typed object, read from `CENTERMASK_*` environment variables.

`centermask-serve` also accepts every setting as a command-line flag (`--max-batch-size 4`); a flag
wins over the environment.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.command_line import parse_settings

MiB = 1024 * 1024


class Settings(BaseSettings):
    """centermask-serve: real-time CenterMask instance segmentation over HTTP.

    Every flag is also read from the environment as CENTERMASK_<NAME>, e.g. CENTERMASK_MAX_BATCH_SIZE=16;
    a flag wins. Prefer the environment for the API key: flags are visible to every user of the host.
    """

    model_config = SettingsConfigDict(
        env_prefix="CENTERMASK_",
        # An empty variable (a Kubernetes secret or compose entry left blank) means "not set".
        env_ignore_empty=True,
        frozen=True,
        cli_prog_name="centermask-serve",
        cli_kebab_case=True,
        cli_implicit_flags=False,
    )

    weights: Path | None = Field(
        None,
        description="Checkpoint to serve: one of ours, or an official centermask2 .pth/.pkl. Unset: the "
        "bundled model (five synthetic shapes).",
    )
    config: str | None = Field(
        None,
        description="Architecture of an official checkpoint, e.g. centermask_lite_V_39_eSE_FPN_ms_4x. "
        "Unset: read from the checkpoint (ours record it).",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto takes CUDA when available, else the CPU."
    )
    max_batch_size: PositiveInt = Field(8, description="Most images in one forward pass.")
    max_batch_delay_ms: NonNegativeFloat = Field(
        5, description="Longest wait for a batch to fill after its first image arrives."
    )
    max_queue: PositiveInt = Field(64, description="Images waiting for inference before requests get 503.")
    request_timeout_s: PositiveFloat = Field(30, description="Deadline of one request; 504 after it.")
    max_image_bytes: PositiveInt = Field(20 * MiB, description="Largest accepted encoded image.")
    max_image_pixels: PositiveInt = Field(40_000_000, description="Largest accepted width × height.")
    max_images_per_request: PositiveInt = Field(32, description="Most images in one /segment/batch request.")
    score_threshold: float = Field(
        0.3, ge=0, le=1, description="Default for the score_threshold query parameter."
    )
    max_detections: PositiveInt = Field(100, description="Default for the max_detections query parameter.")
    cpu_workers: PositiveInt = Field(
        min(4, os.cpu_count() or 1),
        description="Threads for decoding, resizing and mask encoding (inference has its own thread).",
    )
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Least severe level logged (JSON lines on stderr)."
    )
    api_key: SecretStr | None = Field(
        None,
        description="When set, /segment* and /v1/model require it (X-API-Key or Bearer). Unset: open.",
    )
    drain_timeout_s: NonNegativeFloat = Field(
        25, description="On shutdown, how long queued and running requests may still finish."
    )

    @model_validator(mode="after")
    def _batch_requests_fit_in_queue(self) -> Self:
        # A batch request enqueues all of its images at once or none; more images than the queue
        # holds could never be accepted.
        if self.max_images_per_request > self.max_queue:
            raise ValueError(
                f"max_images_per_request ({self.max_images_per_request}) must not exceed "
                f"max_queue ({self.max_queue})"
            )
        return self

    @classmethod
    def from_command_line(cls, argv: Sequence[str]) -> Self:
        return parse_settings(cls, argv)

    @property
    def base_url(self) -> str:
        """Where this host's users reach the service, as configured (a wildcard address is localhost)."""
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def effective(self) -> dict[str, Any]:
        """Every setting's value, for the startup log; the API key only as whether it is set."""
        values = self.model_dump(mode="json", exclude={"api_key"})
        return {**values, "api_key": "set" if self.api_key is not None else "unset"}
