"""Prometheus metrics. Each app owns its registry, so several apps (tests) never share counters.

The names are a contract with the deployment's dashboards, alerts and autoscaler: do not rename them.
"""

import contextlib
from collections.abc import Callable, Iterator
from enum import StrEnum

import torch
from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# From 1 ms to 10 s: one image on a GPU up to a full batch on a CPU.
SECONDS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75, 1, 1.5, 2.5, 5, 7.5, 10,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)

REJECTION_REASONS = (
    "queue_full", "uploads_full", "streams_full", "deadline", "client_gone", "body_timeout", "not_ready",
    "worker_failed",
)  # fmt: skip
# What became of a frame sent over /segment/stream: answered, dropped (replaced while waiting by a newer
# one, or left waiting when the connection closed) or failed (its error sent instead).
STREAM_OUTCOMES = ("answered", "dropped", "failed")
# What became of a model load: loaded, refused before reading the weights (a bad folder, too little
# memory), or failed while loading or warming up.
LOAD_OUTCOMES = ("loaded", "refused", "failed")
# What went wrong in a failed forward pass (service/faults.py); "hung" is a pass past the watchdog.
FAULT_KINDS = ("error", "out_of_memory", "fatal", "hung")

__all__ = ["CONTENT_TYPE", "Metrics", "Protocol"]


class Protocol(StrEnum):
    """What carried a request: the `protocol` label of the metrics that count both. A video's or a
    stream's frames came over HTTP (WebSockets included)."""

    HTTP = "http"
    GRPC = "grpc"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry

        def seconds(name: str, documentation: str, labels: tuple[str, ...] = ()) -> Histogram:
            return Histogram(name, documentation, labels, registry=registry, buckets=SECONDS_BUCKETS)

        self.request_duration = seconds(
            "centermask_request_duration_seconds", "HTTP request latency.", ("endpoint", "status_code")
        )
        self.queue_wait = seconds(
            "centermask_queue_wait_seconds", "Time an image waited in the queue for its batch."
        )
        self.batch_inference = seconds("centermask_batch_inference_seconds", "Forward pass of one batch.")
        self.preprocess = seconds("centermask_preprocess_seconds", "Decoding and resizing one image.")
        self.postprocess = seconds(
            "centermask_postprocess_seconds", "Filtering and mask encoding for one image."
        )
        self.batch_size = Histogram(
            "centermask_batch_size", "Images per forward pass.", registry=registry, buckets=BATCH_SIZE_BUCKETS
        )
        self.requests = Counter(
            "centermask_requests_total",
            "HTTP requests answered.",
            ("endpoint", "status_code"),
            registry=registry,
        )
        self.grpc_request_duration = seconds(
            "centermask_grpc_request_duration_seconds", "gRPC call latency.", ("method", "code")
        )
        self.grpc_requests = Counter(
            "centermask_grpc_requests_total",
            "gRPC calls answered, by method and status code.",
            ("method", "code"),
            registry=registry,
        )
        self.images = Counter(
            "centermask_images_total",
            "Images segmented, by model, version and the protocol that carried them.",
            ("model", "model_version", "protocol"),
            registry=registry,
        )
        self.tiles = Counter(
            "centermask_tiles_total",
            "Tiles of tiled images segmented, by model, version and protocol (each one forward pass; its "
            "image counts once in images_total).",
            ("model", "model_version", "protocol"),
            registry=registry,
        )
        self.model_info = Gauge(
            "centermask_model_info",
            "1 for each model version loaded (a reload adds the new version, and drops the old one once "
            "retired).",
            ("model", "model_version"),
            registry=registry,
        )
        self.model_loads = Counter(
            "centermask_model_loads_total",
            "Model loads and reloads asked for (start, the repository API, SIGHUP), by outcome.",
            ("outcome",),
            registry=registry,
        )
        for outcome in LOAD_OUTCOMES:
            self.model_loads.labels(outcome)
        self.rejected = Counter(
            "centermask_rejected_total",
            "Requests turned away unserved, by reason and protocol.",
            ("reason", "protocol"),
            registry=registry,
        )
        for reason in REJECTION_REASONS:
            for protocol in Protocol:
                self.rejected.labels(reason, protocol)
        self.inference_failures = Counter(
            "centermask_inference_failures_total",
            "Forward passes that raised or hung, by kind (a failed batch is retried in halves).",
            ("kind",),
            registry=registry,
        )
        for kind in FAULT_KINDS:
            self.inference_failures.labels(kind)
        self.video_frames = Counter(
            "centermask_video_frames_total", "Video frames answered by /segment/video.", registry=registry
        )
        self.video_frame_latency = seconds(
            "centermask_video_frame_latency_seconds",
            "A video frame's latency: from its decoding to its line being written.",
        )
        self.stream_frames = Counter(
            "centermask_stream_frames_total",
            "Frames received on /segment/stream connections, by outcome.",
            ("outcome",),
            registry=registry,
        )
        for outcome in STREAM_OUTCOMES:
            self.stream_frames.labels(outcome)
        self.stream_frame_latency = seconds(
            "centermask_stream_frame_latency_seconds",
            "A stream frame's latency: from its message's arrival to its answer being sent.",
        )
        self.streams_open = Gauge(
            "centermask_streams_open", "Open /segment/stream connections.", registry=registry
        )
        self.queue_depth = Gauge("centermask_queue_depth", "Images waiting for inference.", registry=registry)
        self.requests_in_flight = Gauge(
            "centermask_requests_in_flight", "Segmentation requests being processed.", registry=registry
        )
        self.model_loaded = Gauge("centermask_model_loaded", "1 once the model is loaded.", registry=registry)
        self.model_ready = Gauge(
            "centermask_model_ready", "1 while the model is warm and serving.", registry=registry
        )
        self.cuda_memory_allocated = Gauge(
            "centermask_cuda_memory_allocated_bytes", "CUDA memory held by tensors.", registry=registry
        )
        self.cuda_memory_peak_allocated = Gauge(
            "centermask_cuda_memory_peak_allocated_bytes",
            "Most CUDA memory held by tensors during the last batch.",
            registry=registry,
        )
        self.cuda_memory_reserved = Gauge(
            "centermask_cuda_memory_reserved_bytes",
            "CUDA memory held by the caching allocator.",
            registry=registry,
        )

    def track(
        self,
        *,
        queue_depth: Callable[[], float],
        requests_in_flight: Callable[[], float],
        model_loaded: Callable[[], bool],
        model_ready: Callable[[], bool],
    ) -> None:
        """Read these gauges from the service's state when scraped, so they can never drift from it."""
        self.queue_depth.set_function(queue_depth)
        self.requests_in_flight.set_function(requests_in_flight)
        self.model_loaded.set_function(lambda: float(model_loaded()))
        self.model_ready.set_function(lambda: float(model_ready()))

    @contextlib.contextmanager
    def cuda_memory_peak(self, device: torch.device) -> Iterator[None]:
        """Around one forward pass: the CUDA memory gauges, with the pass's own peak (no-op on the CPU)."""
        if device.type != "cuda":
            yield
            return
        torch.cuda.reset_peak_memory_stats(device)
        try:
            yield
        finally:
            self.cuda_memory_peak_allocated.set(torch.cuda.max_memory_allocated(device))
            self.cuda_memory_allocated.set(torch.cuda.memory_allocated(device))
            self.cuda_memory_reserved.set(torch.cuda.memory_reserved(device))

    def render(self) -> bytes:
        return generate_latest(self.registry)
