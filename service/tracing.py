"""OpenTelemetry traces of requests: where a request spent its time, span by span, joined to the caller's trace.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and the `otel` extra
is installed: then spans go over OTLP (`OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`, the default, or
`grpc`), batched in a background thread, under `OTEL_SERVICE_NAME` (default `centermask-serve`); the SDK
reads its other `OTEL_*` variables itself (headers, sampler, ...). Off, nothing below runs: no middleware is
installed, and the runtime's only cost is reading one context variable per request.

A segmentation request (HTTP `/segment`, `/segment/batch`, `/v2/.../infer`; gRPC `ModelInfer`) is one server
span, a child of the caller's span when the request carries W3C `traceparent` (a header, or gRPC metadata),
with children in the order a request goes: `receive` (the body read, the message parsed), `decode` (each
image: decoding and resizing), `queue wait`, `batch forward` (`centermask.batch_size`: how many images the
forward pass held), `postprocess` (filtering, mask encoding) and `encode` (the answer's bytes). The runtime
measures its stages with the clocks it already reads, in threads and the batcher alike, and the spans are
recorded afterwards from those readings (`RequestTrace.record`): the batcher stays unaware of tracing. Log
lines written during a traced request carry its `trace_id` (service/logging.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logging import trace_id

logger = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
BATCH_SIZE = "centermask.batch_size"

_current: ContextVar[RequestTrace | None] = ContextVar("centermask_request_trace", default=None)
_NOTHING = contextlib.nullcontext()


class RequestTrace:
    """The spans of one request, under its server span."""

    def __init__(self, tracer: Any, context: Any) -> None:
        self._tracer = tracer
        self._context = context  # the OpenTelemetry context holding the request's span

    def record(
        self,
        name: str,
        start: float,
        end: float,
        *,
        clock: Callable[[], float] = time.perf_counter,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """A finished stage, from two readings of `clock` (perf_counter, or the event loop's monotonic clock)."""
        offset_ns = time.time_ns() - round(clock() * 1e9)
        span = self._tracer.start_span(
            name, context=self._context, start_time=offset_ns + round(start * 1e9), attributes=attributes
        )
        span.end(end_time=offset_ns + round(end * 1e9))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        span = self._tracer.start_span(name, context=self._context)
        try:
            yield
        finally:
            span.end()


def current() -> RequestTrace | None:
    """The trace of the request being served, None when it is not traced (tracing off)."""
    return _current.get()


def stage(name: str) -> contextlib.AbstractContextManager[None]:
    """A span around a stage that runs in the event loop (receive, encode); nothing when untraced."""
    trace = _current.get()
    return _NOTHING if trace is None else trace.stage(name)


class Tracing:
    """The app's tracer (None: tracing off) and what starts a request's trace."""

    def __init__(self, tracer_provider: Any | None, *, owned: bool = False) -> None:
        self.tracer: Any = None
        # A provider made here from the environment is shut down (its spans flushed) with the app.
        self._owned = tracer_provider if owned else None
        if tracer_provider is not None:
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

            self.tracer = tracer_provider.get_tracer("centermask-serve")
            self._propagator = TraceContextTextMapPropagator()

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def shutdown(self) -> None:
        if self._owned is not None:
            self._owned.shutdown()

    @contextlib.contextmanager
    def request(self, name: str, carrier: Mapping[str, str], **attributes: Any) -> Iterator[Any]:
        """The request's server span (a child of `carrier`'s `traceparent`, if any), current while inside."""
        from opentelemetry.trace import SpanKind, set_span_in_context

        parent = self._propagator.extract(carrier)
        span = self.tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes or None
        )
        token = _current.set(RequestTrace(self.tracer, set_span_in_context(span, parent)))
        id_token = trace_id.set(format(span.get_span_context().trace_id, "032x"))
        try:
            yield span
        finally:
            trace_id.reset(id_token)
            _current.reset(token)
            span.end()


def from_environment() -> Tracing:
    """Tracing as the environment configures it: off without an OTLP endpoint, or without the `otel` extra."""
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return Tracing(None)
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logger.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set, but traces need the otel extra "
            "(pip install 'centermask-serve[otel]'): not tracing"
        )
        return Tracing(None)
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    name = os.environ.get("OTEL_SERVICE_NAME", "centermask-serve")
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    logger.info("tracing", extra={"exporter": f"otlp {protocol}", "service_name": name})
    return Tracing(provider, owned=True)


# Probes and scrapes, every few seconds: no trace.
_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})


class TracingMiddleware:
    """Each HTTP request in a server span named `METHOD /route/template` (installed only when tracing),
    probes and scrapes excepted."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing) -> None:
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNTRACED:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        status_code = 500

        async def send_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        carrier = dict(Headers(scope=scope).items())
        with self.tracing.request(f"{method}", carrier, **{"http.request.method": method}) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                template = getattr(scope.get("route"), "path", None)
                if template is not None:
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                span.set_attribute("http.response.status_code", status_code)
                if status_code >= 500:
                    from opentelemetry.trace import StatusCode

                    span.set_status(StatusCode.ERROR)
