"""Per-request context: request id, access log, request metrics, and the last-resort 500."""

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import internal_error_response
from service.logging import request_id
from service.metrics import Metrics

logger = logging.getLogger("service.access")

# Ids clients may pass in X-Request-ID to correlate logs; anything else is replaced by a fresh one.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# Probes and scrapes arrive every few seconds; logging them at info would drown the requests.
_QUIET_ENDPOINTS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/versions/{model_version}/ready",
    }
)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, endpoints: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        # Only known paths (or route templates, for paths with parameters) become label values, so
        # scanners cannot blow up the metrics' cardinality.
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client_id = Headers(scope=scope).get("x-request-id", "")
        current_id = client_id if _VALID_REQUEST_ID.fullmatch(client_id) else uuid.uuid4().hex
        token = request_id.set(current_id)
        status_code = 500
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code, response_started
            if message["type"] == "http.response.start":
                status_code = message["status"]
                response_started = True
                MutableHeaders(scope=message)["X-Request-ID"] = current_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception:
            logger.exception("unhandled error")
            if not response_started:
                await internal_error_response(scope["path"])(scope, receive, send_with_request_id)
        finally:
            latency_s = time.perf_counter() - started
            path = scope["path"]
            # The router records the matched route in the scope: its template names a parametrised path.
            template = getattr(scope.get("route"), "path", None)
            endpoint = (
                path if path in self.endpoints else template if template in self.endpoints else "unmatched"
            )
            self.metrics.requests.labels(endpoint, str(status_code)).inc()
            self.metrics.request_duration.labels(endpoint, str(status_code)).observe(latency_s)
            logger.log(
                logging.DEBUG if endpoint in _QUIET_ENDPOINTS else logging.INFO,
                "request",
                extra={
                    "method": scope["method"],
                    "path": path,
                    "status": status_code,
                    "latency_ms": round(latency_s * 1000, 2),
                },
            )
            request_id.reset(token)
