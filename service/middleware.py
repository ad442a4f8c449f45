"""Per-request context: request id, access log, request metrics, and the last-resort 500."""

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import internal_error_response
from service.logging import error_code, request_id
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
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        endpoints: frozenset[str],
        mounts: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.metrics = metrics
        # Only known paths (or route templates, for paths with parameters, or a mount's prefix for the
        # files below it) become label values, so scanners cannot blow up the metrics' cardinality.
        self.endpoints = endpoints
        self.mounts = mounts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"]
        client_id = Headers(scope=scope).get("x-request-id", "")
        current_id = client_id if _VALID_REQUEST_ID.fullmatch(client_id) else uuid.uuid4().hex
        token = request_id.set(current_id)
        code_token = error_code.set(None)
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
            endpoint = self._endpoint(path, template)
            self.metrics.requests.labels(endpoint, str(status_code)).inc()
            self.metrics.request_duration.labels(endpoint, str(status_code)).observe(latency_s)
            fields: dict[str, object] = {
                "method": method,
                "path": path,
                "status": status_code,
                "latency_ms": round(latency_s * 1000, 2),
            }
            if error_code.get() is not None:
                fields["error"] = error_code.get()
            logger.log(
                logging.DEBUG if endpoint in _QUIET_ENDPOINTS else logging.INFO, "request", extra=fields
            )
            error_code.reset(code_token)
            request_id.reset(token)

    def _endpoint(self, path: str, template: str | None) -> str:
        if path in self.endpoints:
            return path
        if template in self.endpoints:
            return template
        return next((mount for mount in self.mounts if path.startswith(mount + "/")), "unmatched")


class HeadAsGetMiddleware:
    """HEAD wherever GET works (HTTP requires it; load balancers probe with it): the GET route answers, and
    only its status and headers go out. FastAPI's routes, unlike Starlette's, take GET alone."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        # In place, not a copy: the router notes the matched route in this scope, which the access log and
        # the metrics read (they noted the method, HEAD, before).
        scope["method"] = "GET"
        await self.app(scope, receive, headers_only)
