"""The service's configuration: one typed object, read from `CENTERMASK_*` environment variables.

`centermask-serve` also accepts every setting as a command-line flag (`--max-batch-size 4`); a flag
wins over the environment.
"""

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from centermask_client.schemas import MAX_TILE_SIZE, MIN_TILE_SIZE, TilingMode
from model.inference.options import PredictorOptions
from model.inference.tiling import AUTO_FACTOR, DEFAULT_OVERLAP, MAX_TILED_PIXELS
from service.command_line import parse_settings

MiB = 1024 * 1024
# Batches on a CPU only add latency: a forward pass already keeps every core busy (bench/RESULTS.md).
DEFAULT_BATCH_SIZE = {"cuda": 8, "cpu": 1}


def available_cpus() -> int:
    """CPUs this process may use: its affinity, bounded by a cgroup CPU quota (a container's limit)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return min(cpus, max(1, math.ceil(quota))) if quota is not None else cpus


def _cgroup_cpu_quota() -> float | None:
    """The CPU limit of this process's cgroup in CPUs (v2 cpu.max, or v1 CFS quota); None if unlimited."""
    try:
        limit, window = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        return None if limit == "max" else int(limit) / int(window)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class Settings(PredictorOptions, BaseSettings):
    """centermask-serve: real-time CenterMask instance segmentation over HTTP.

    Every flag is also read from the environment as CENTERMASK_<NAME>, e.g. CENTERMASK_MAX_BATCH_SIZE=16;
    a flag wins. Prefer the environment for the API key: flags are visible to every user of the host.
    """

    # The model's options (weights, config, device, precision, backend, onnx_model, compile, cuda_graphs,
    # jpeg_draft) are `PredictorOptions`' fields, declared there once; the service's own follow.
    model_config = SettingsConfigDict(
        env_prefix="CENTERMASK_",
        # An empty variable (a Kubernetes secret or compose entry left blank) means "not set".
        env_ignore_empty=True,
        frozen=True,
        cli_prog_name="centermask-serve",
        cli_kebab_case=True,
        cli_implicit_flags=False,
    )

    max_batch_size: PositiveInt | None = Field(
        None,
        description="Most images in one forward pass. Default: 8 on CUDA, 1 on a CPU (batches there only "
        "add latency), never more than max_queue.",
    )
    max_batch_delay_ms: NonNegativeFloat = Field(
        5, description="Longest wait for a batch to fill after its first image arrives."
    )
    max_queue: PositiveInt = Field(64, description="Images waiting for inference before requests get 503.")
    request_timeout_s: PositiveFloat = Field(
        30,
        description="Deadline of a request once its body is in, for every max_batch_size images it "
        "holds (a batch request of 3 × max_batch_size images gets 3 × this); 504 after it.",
    )
    body_timeout_s: PositiveFloat = Field(
        30, description="Longest time a client may take to send a request body; 408 after it."
    )
    # Unset (None): derived from max_queue while validating (`_derived_default`), so an int once read.
    max_concurrent_uploads: PositiveInt = Field(
        None,
        validate_default=True,
        description="Requests receiving their body at once; more get 503. Default: max_queue.",
    )
    idle_timeout_s: PositiveFloat = Field(
        5,
        description="A connection that sends no complete request head for this long (after connecting "
        "or after its last answer) is closed.",
    )
    inference_watchdog_s: PositiveFloat | None = Field(
        None,
        description="A forward pass running longer than this marks the worker failed (/healthz 503). "
        "Default: 10 × the slowest warm-up batch, at least 30 s.",
    )
    max_image_bytes: PositiveInt = Field(20 * MiB, description="Largest accepted encoded image.")
    max_image_pixels: PositiveInt = Field(40_000_000, description="Largest accepted width × height.")
    tiling: TilingMode = Field(
        "auto",
        description="Default of the tiling parameter: auto segments an image that the model's resize would "
        "shrink by tiling_factor or more in tiles at full resolution (plus one pass of the whole image), masks "
        "stitched across tiles; off never tiles.",
    )
    tiling_factor: float = Field(
        AUTO_FACTOR,
        ge=1,
        description="With tiling auto, an image is tiled when the model's resize would shrink it by this "
        "factor or more (and both its sides hold a tile). Measured: bench/RESULTS.md#tiled-inference.",
    )
    tile_size: int | None = Field(
        None,
        ge=MIN_TILE_SIZE,
        le=MAX_TILE_SIZE,
        description="Default of the tile_size parameter. Default: the model's test short side (tiles reach "
        "the network unresized).",
    )
    tile_overlap: int = Field(
        DEFAULT_OVERLAP,
        ge=0,
        le=MAX_TILE_SIZE // 2,
        description="Default of the tile_overlap parameter: pixels neighbouring tiles share, at most half a "
        "tile. A request's tile_size a quarter of which is less takes that quarter instead.",
    )
    max_tiled_pixels: PositiveInt = Field(
        None,
        validate_default=True,
        description="Largest width × height of an image that is tiled (others: max_image_pixels). Its decoded "
        f"pixels are held while its tiles run (3 bytes a pixel). Default: {MAX_TILED_PIXELS:_} or "
        "max_image_pixels if larger.",
    )
    tiles_in_flight: PositiveInt | None = Field(
        None,
        description="Tiles of one image cut, queued and running at once (they batch with each other and with "
        "other requests); what a tiled image holds beyond its pixels. Default: 2 × the batch size in force, "
        "at most max_queue.",
    )
    max_tiled_detections: PositiveInt = Field(
        2000,
        description="Default of max_detections for a tiled image (max_detections' default would cut a large "
        "scene's objects; the model itself keeps at most 50 a pass).",
    )
    max_images_per_request: PositiveInt = Field(
        None,
        validate_default=True,
        description="Most images in one /segment/batch request. Default: min(32, max_queue).",
    )
    max_video_bytes: PositiveInt = Field(
        200 * MiB,
        description="Largest accepted video file (POST /segment/video), held in memory while decoded.",
    )
    max_video_duration_s: PositiveFloat = Field(
        600,
        description="Longest accepted video, in seconds of its timeline (from its header, and while decoding).",
    )
    max_video_pixels: PositiveInt = Field(
        3840 * 2160, description="Largest accepted video frame, width × height (from the stream's header)."
    )
    video_frames_in_flight: PositiveInt | None = Field(
        None,
        description="Frames of one video decoded and queued ahead of the one answered next, so that they batch. "
        "Default: 2 × the batch size in force, at most max_queue.",
    )
    max_streams: PositiveInt = Field(
        32, description="Open /segment/stream connections at once; more are closed at once (code 1013)."
    )
    stream_idle_timeout_s: PositiveFloat = Field(
        60,
        description="A /segment/stream connection that sends no message for this long is closed (code 1000); "
        "so is one that sends no API key this long after connecting, when a key is needed (code 1008).",
    )
    score_threshold: float = Field(
        0.3, ge=0, le=1, description="Default for the score_threshold query parameter."
    )
    max_detections: PositiveInt = Field(100, description="Default for the max_detections query parameter.")
    cpu_workers: PositiveInt = Field(
        default_factory=lambda: min(8, available_cpus()),
        description="Threads for decoding, resizing and mask encoding (inference has its own thread). "
        "Default: the CPUs this process may use (its container's CPU limit), at most 8.",
    )
    torch_threads: PositiveInt = Field(
        default_factory=available_cpus,
        description="Threads of one forward pass on the CPU. Default: the CPUs this process may use "
        "(its container's CPU limit, which PyTorch itself ignores).",
    )
    class_agnostic_nms: bool = Field(
        True,
        description="Default of the class_agnostic_nms query parameter: keep one label per object (the "
        "best-scoring of detections whose boxes overlap above class_agnostic_iou, whatever their class). "
        "false: the official per-class output.",
    )
    class_agnostic_iou: float = Field(
        0.7, gt=0, le=1, description="Box IoU above which class-agnostic NMS takes two detections as one."
    )
    host: str = Field("0.0.0.0", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="Port of the gRPC Open Inference Protocol (inference.GRPCInferenceService, and "
        "grpc.health.v1 for probes), on the same host; 0: no gRPC server.",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Least severe level logged (JSON lines on stderr)."
    )
    api_key: SecretStr | None = Field(
        None,
        description="When set, /segment* and /v1/model require it (X-API-Key or Bearer). Unset: open.",
    )
    admin_key: SecretStr | None = Field(
        None,
        description="When set, the model repository's endpoints (/v2/repository/...: load, unload, index) "
        "require it (X-API-Key or Bearer); it must differ from api_key. Unset: they answer 403.",
    )
    model_repository: Path | None = Field(
        None,
        description="A folder of models, one per subfolder: <name>/model.pth and an optional <name>/config.json "
        "of predictor options (precision, backend, ...; unset ones take this server's). All are loaded at "
        "start; /segment?model=<name> picks one. Unset: the one model of weights and config.",
    )
    protect_probes: bool = Field(
        False,
        description="With api_key set, /healthz, /readyz and /metrics require it too; by default they stay "
        "open, for probes and scrapers.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins that browsers may call the API from, comma-separated (https://app.example), "
        "or *. Unset: no CORS headers.",
    )
    drain_timeout_s: NonNegativeFloat = Field(
        25, description="On shutdown, how long queued and running requests may still finish."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("max_tiled_pixels", mode="before")
    @classmethod
    def _twice_the_image_limit(cls, value: object, info: ValidationInfo) -> object:
        """Unset: MAX_TILED_PIXELS, or max_image_pixels (declared, and so validated, before it) if larger."""
        limit = info.data.get("max_image_pixels")
        return max(MAX_TILED_PIXELS, limit or 0) if value is None else value

    @field_validator("max_concurrent_uploads", "max_images_per_request", mode="before")
    @classmethod
    def _derived_default(cls, value: object, info: ValidationInfo) -> object:
        """Unset limits that default from max_queue (declared, and so validated, before them)."""
        queue = info.data.get("max_queue")
        if value is not None or queue is None:
            return value
        return min(32, queue) if info.field_name == "max_images_per_request" else queue

    @model_validator(mode="after")
    def _derive_and_check(self) -> Self:
        """Check what must hold between settings."""
        # A batch request queues all of its images at once or none: more than the queue holds could
        # never be accepted.
        if self.max_images_per_request > self.max_queue:
            raise ValueError(
                f"CENTERMASK_MAX_IMAGES_PER_REQUEST ({self.max_images_per_request}) must not exceed "
                f"CENTERMASK_MAX_QUEUE ({self.max_queue}): lower the first or raise the second"
            )
        if self.model_repository is not None:
            if self.weights is not None or self.config is not None:
                raise ValueError(
                    "CENTERMASK_MODEL_REPOSITORY serves the models of its folders: unset CENTERMASK_WEIGHTS and "
                    "CENTERMASK_CONFIG (a model's config goes in <name>/config.json)"
                )
            if not self.model_repository.is_dir():
                raise ValueError(f"CENTERMASK_MODEL_REPOSITORY: {self.model_repository} is not a folder")
        if (
            self.admin_key is not None
            and self.api_key is not None
            and self.admin_key.get_secret_value() == self.api_key.get_secret_value()
        ):
            raise ValueError(
                "CENTERMASK_ADMIN_KEY must differ from CENTERMASK_API_KEY: whoever may segment images may not "
                "change the models"
            )
        # The default overlap shrinks to fit a small tile; one set is checked.
        overlap_set = "tile_overlap" in self.model_fields_set
        if overlap_set and self.tile_size is not None and self.tile_overlap > self.tile_size // 2:
            raise ValueError(
                f"CENTERMASK_TILE_OVERLAP ({self.tile_overlap}) must be at most half of CENTERMASK_TILE_SIZE "
                f"({self.tile_size})"
            )
        if self.max_tiled_pixels < self.max_image_pixels:
            raise ValueError(
                f"CENTERMASK_MAX_TILED_PIXELS ({self.max_tiled_pixels}) must not be below "
                f"CENTERMASK_MAX_IMAGE_PIXELS ({self.max_image_pixels}): a tiled image may be larger, not smaller"
            )
        if self.protect_probes and self.api_key is None:
            raise ValueError("CENTERMASK_PROTECT_PROBES needs CENTERMASK_API_KEY: there is no key to ask for")
        for origin in self.cors_origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"CENTERMASK_CORS_ORIGINS: {origin!r} is not an origin such as https://app.example:8443 "
                    "(scheme, host and optional port, no path) or *"
                )
        return self

    def request_deadline_s(self, images: int, max_batch_size: int) -> float:
        """The processing deadline of a request with this many images (request_timeout_s per batch)."""
        return self.request_timeout_s * math.ceil(images / max_batch_size)

    def frames_in_flight(self, max_batch_size: int) -> int:
        """How many frames of one video are decoded and queued ahead of the one answered next."""
        if self.video_frames_in_flight is not None:
            return min(self.video_frames_in_flight, self.max_queue)
        return min(2 * max_batch_size, self.max_queue)

    def tiles_in_flight_for(self, max_batch_size: int) -> int:
        """How many tiles of one image are cut, queued and running at once."""
        if self.tiles_in_flight is not None:
            return min(self.tiles_in_flight, self.max_queue)
        return min(2 * max_batch_size, self.max_queue)

    def batch_size_for(self, device: str) -> int:
        """The most images in one forward pass on a device of this type ("cpu" or "cuda")."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        return min(DEFAULT_BATCH_SIZE[device], self.max_queue)

    @classmethod
    def from_command_line(cls, argv: Sequence[str]) -> Self:
        return parse_settings(cls, argv)

    @property
    def base_url(self) -> str:
        """Where this host's users reach the service, as configured (a wildcard address is localhost)."""
        host = "localhost" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def effective(self) -> dict[str, Any]:
        """Every setting's value, for the startup log; the keys only as whether they are set."""
        values = self.model_dump(mode="json", exclude={"api_key", "admin_key"})
        return {
            **values,
            "api_key": "set" if self.api_key is not None else "unset",
            "admin_key": "set" if self.admin_key is not None else "unset",
        }
