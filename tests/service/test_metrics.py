"""GET /metrics: the Prometheus text format, with every name the dashboards and alerts use."""

import pytest

from service import metrics as exported
from tests.helpers import REPO, metric_families
from tests.service.helpers import Served, png_body, random_image

REJECTION_REASONS = (
    "queue_full", "uploads_full", "streams_full", "deadline", "client_gone", "body_timeout", "not_ready",
    "worker_failed",
)  # fmt: skip

pytestmark = pytest.mark.anyio

EXPECTED = {
    "centermask_request_duration_seconds": "histogram",
    "centermask_queue_wait_seconds": "histogram",
    "centermask_batch_inference_seconds": "histogram",
    "centermask_preprocess_seconds": "histogram",
    "centermask_postprocess_seconds": "histogram",
    "centermask_batch_size": "histogram",
    "centermask_requests_total": "counter",
    "centermask_images_total": "counter",
    "centermask_rejected_total": "counter",
    "centermask_inference_failures_total": "counter",
    "centermask_queue_depth": "gauge",
    "centermask_requests_in_flight": "gauge",
    "centermask_model_loaded": "gauge",
    "centermask_model_ready": "gauge",
    "centermask_cuda_memory_allocated_bytes": "gauge",
    "centermask_cuda_memory_reserved_bytes": "gauge",
    "centermask_video_frames_total": "counter",
    "centermask_video_frame_latency_seconds": "histogram",
    "centermask_stream_frames_total": "counter",
    "centermask_stream_frame_latency_seconds": "histogram",
    "centermask_streams_open": "gauge",
    "centermask_model_info": "gauge",
    "centermask_model_loads_total": "counter",
}


async def test_every_metric_is_exposed(served: Served) -> None:
    assert (await served.client.post("/segment", **png_body(random_image(0, 120, 160)))).status_code == 200
    response = await served.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    families = metric_families(response.text)
    for name, kind in EXPECTED.items():
        # The parser names counter families without their _total suffix.
        family = families[name.removesuffix("_total") if kind == "counter" else name]
        assert family.type == kind, name
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    assert samples[("centermask_model_ready", ())] == 1
    assert samples[("centermask_cuda_memory_allocated_bytes", ())] == 0
    assert samples[("centermask_requests_total", (("endpoint", "/segment"), ("status_code", "200")))] >= 1
    # Every reason of either protocol is there before the first rejection (rate() needs the zeros).
    assert {labels for name, labels in samples if name == "centermask_rejected_total"} == {
        (("protocol", protocol), ("reason", reason))
        for reason in REJECTION_REASONS
        for protocol in ("http", "grpc")
    }
    assert {labels for name, labels in samples if name == "centermask_inference_failures_total"} == {
        (("kind", kind),) for kind in ("error", "out_of_memory", "fatal", "hung")
    }
    images = {labels: value for (name, labels), value in samples.items() if name == "centermask_images_total"}
    [(labels, count)] = images.items()
    model = served.runtime.models.get()
    assert count >= 1 and dict(labels) == {
        "model": model.name,
        "model_version": model.version,
        "protocol": "http",
    }
    info = (("model", model.name), ("model_version", model.version))
    assert samples[("centermask_model_info", info)] == 1, "the same model and version labels"
    assert samples[("centermask_model_loads_total", (("outcome", "loaded"),))] == 1


async def test_unknown_paths_share_one_label(served: Served) -> None:
    await served.client.get("/wp-admin/setup.php")
    families = metric_families((await served.client.get("/metrics")).text)
    endpoints = {
        s.labels["endpoint"] for s in families["centermask_requests"].samples if "endpoint" in s.labels
    }
    assert "unmatched" in endpoints and "/wp-admin/setup.php" not in endpoints


def test_every_metric_and_label_value_is_documented() -> None:
    """docs/metrics.md names every metric the service exports, every rejection reason and failure kind."""
    documented = (REPO / "docs" / "metrics.md").read_text()
    registry = exported.Metrics().registry
    names = {family.name for family in registry.collect()}
    missing = [name for name in sorted(names) if f"`{name}" not in documented]
    assert missing == []
    assert [reason for reason in exported.REJECTION_REASONS if f"`{reason}`" not in documented] == []
    assert [kind for kind in exported.FAULT_KINDS if f"`{kind}`" not in documented] == []
