"""OpenTelemetry traces, read from the SDK's in-memory exporter: every stage of a request as a span of the
caller's trace (W3C traceparent over HTTP and gRPC), the batch size on the forward pass, trace ids in the
log lines; and nothing at all when tracing is off."""

from __future__ import annotations

import io
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from service import tracing
from service.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from service.logging import JsonFormatter
from service.tracing import TracingMiddleware
from tests.helpers import free_port
from tests.service.helpers import TIMEOUT_S, Served, encode, infer_request, random_image, serve, tiny_settings

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
STAGES = ["receive", "decode", "queue wait", "batch forward", "postprocess", "encode"]
IMAGE = encode(random_image(1, 96, 128))


@pytest.fixture(scope="module")
async def traced(small_weights: Path) -> AsyncIterator[tuple[Served, InMemorySpanExporter, str]]:
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = tiny_settings(small_weights, grpc_port=free_port(), max_batch_size=1)
    async with serve(settings, tracer_provider=provider) as served:
        yield served, exporter, f"127.0.0.1:{served.app.state.grpc_server.port}"


def spans_of(exporter: InMemorySpanExporter, trace_id: str) -> list:
    return [
        span for span in exporter.get_finished_spans() if format(span.context.trace_id, "032x") == trace_id
    ]


def check_request_trace(spans: list, root_name: str) -> None:
    """One server span, the caller's child; every stage its child, in order, within it."""
    (root,) = [span for span in spans if span.parent is not None and span.parent.is_remote]
    assert root.name == root_name and format(root.parent.span_id, "016x") == PARENT_ID
    children = sorted((span for span in spans if span is not root), key=lambda span: span.start_time)
    assert [span.name for span in children] == STAGES
    for span in children:
        assert span.parent.span_id == root.context.span_id
        assert root.start_time <= span.start_time <= span.end_time <= root.end_time, span.name
    for before, after in itertools.pairwise(children):
        assert before.end_time <= after.start_time + 1_000_000, (before.name, after.name)  # 1 ms of rounding
    forward = next(span for span in children if span.name == "batch forward")
    assert forward.attributes[tracing.BATCH_SIZE] == 1


@pytest.mark.anyio
async def test_an_http_request_is_traced_stage_by_stage(traced) -> None:
    served, exporter, _ = traced
    exporter.clear()
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("service.access").addHandler(handler)
    try:
        response = await served.client.post(
            "/segment", content=IMAGE, headers={"Content-Type": "image/png", "traceparent": TRACEPARENT}
        )
    finally:
        logging.getLogger("service.access").removeHandler(handler)
    assert response.status_code == 200, response.text
    spans = spans_of(exporter, TRACE_ID)
    check_request_trace(spans, "POST /segment")
    root = next(span for span in spans if span.name == "POST /segment")
    assert root.attributes["http.response.status_code"] == 200
    assert f'"trace_id":"{TRACE_ID}"' in lines.getvalue()


@pytest.mark.anyio
async def test_a_grpc_call_is_traced_stage_by_stage(traced) -> None:
    _, exporter, address = traced
    exporter.clear()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(
            infer_request([IMAGE]), metadata=(("traceparent", TRACEPARENT),), timeout=TIMEOUT_S
        )
    check_request_trace(spans_of(exporter, TRACE_ID), "inference.GRPCInferenceService/ModelInfer")


@pytest.mark.anyio
async def test_a_tiled_image_is_traced_as_its_passes(traced) -> None:
    """A tiled image's tiles and whole-image pass are one span between its queue wait and postprocess."""
    served, exporter, _ = traced
    exporter.clear()
    response = await served.client.post(
        "/segment",
        params={"tile_size": 128},
        content=encode(random_image(2, 256, 512)),
        headers={"Content-Type": "image/png", "traceparent": TRACEPARENT},
    )
    assert response.status_code == 200, response.text
    tiling = response.json()["tiling"]
    spans = spans_of(exporter, TRACE_ID)
    (root,) = [span for span in spans if span.name == "POST /segment"]
    children = sorted((span for span in spans if span is not root), key=lambda span: span.start_time)
    assert [span.name for span in children] == [
        "receive", "decode", "queue wait", "tiled passes", "postprocess", "encode",
    ]  # fmt: skip
    for before, after in itertools.pairwise(children):
        assert before.end_time <= after.start_time + 1_000_000, (before.name, after.name)  # 1 ms of rounding
    passes = next(span for span in children if span.name == "tiled passes")
    assert passes.attributes["centermask.tiles"] == tiling["tiles"] > 1


@pytest.mark.anyio
async def test_a_request_without_traceparent_starts_its_own_trace(traced) -> None:
    served, exporter, _ = traced
    exporter.clear()
    response = await served.client.post("/segment", content=IMAGE, headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    (root,) = [span for span in exporter.get_finished_spans() if span.parent is None]
    assert root.name == "POST /segment" and format(root.context.trace_id, "032x") != TRACE_ID
    assert len(exporter.get_finished_spans()) == 1 + len(STAGES)
    # Probes are not traced.
    exporter.clear()
    assert (await served.client.get("/readyz")).status_code == 200
    assert exporter.get_finished_spans() == ()


@pytest.mark.anyio
async def test_off_nothing_is_installed_or_recorded(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not served.app.state.tracing.enabled
    assert not any(middleware.cls is TracingMiddleware for middleware in served.app.user_middleware)
    recorded: list[str] = []
    monkeypatch.setattr(tracing.RequestTrace, "record", lambda self, name, *a, **k: recorded.append(name))
    response = await served.client.post("/segment", content=IMAGE, headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and recorded == [] and tracing.current() is None


def test_the_environment_turns_otlp_export_on(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not tracing.from_environment().enabled
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    for protocol in ("http/protobuf", "grpc"):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        traces = tracing.from_environment()
        assert traces.enabled
        traces.shutdown()  # nothing was traced: nothing is sent
