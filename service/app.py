"""The application, assembled: `create_app(settings)`, and the `app` that `uvicorn service.app:app` imports.

What it is made of: the runtime (service/runtime.py), the routers (service/api/, service/v2/), error
handlers, middleware, pages and the OpenAPI document. The process around it is service/server.py.
"""

import functools
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route

from model.inference.images import configure_pillow
from model.inference.load import load_predictor
from service import tracing
from service.api import model, pages, probes, segment, stream, video
from service.errors import install_error_handlers
from service.logging import configure_logging
from service.metrics import Metrics
from service.middleware import HeadAsGetMiddleware, RequestContextMiddleware
from service.openapi import install_openapi, wire_schemas
from service.responses import OrjsonResponse
from service.runtime import PredictorLoader, Runtime
from service.settings import Settings
from service.tracing import Tracing, TracingMiddleware
from service.uploads import Uploads
from service.v2 import endpoints as v2
from service.v2 import repository as v2_repository
from service.v2.models import openapi_schemas

if TYPE_CHECKING:  # imported when started: grpcio is the `grpc` extra's
    from service.grpc.server import GrpcServer

logger = logging.getLogger(__name__)

DESCRIPTION = """POST an image to `/segment`: get boxes, classes, scores and COCO RLE masks back, or the
image with them drawn (`format=png`). POST a video to `/segment/video` for a line per frame; send a camera's
frames over the WebSocket `/segment/stream`. Triton and KServe clients speak the Open Inference Protocol
under `/v2`. A server may serve several models (`GET /v1/models`; `?model=NAME`), reloaded without downtime
through `/v2/repository/...` with the admin key.

The demo page is at [`/`](/); every error is `{"error": {"code", "message"}}` with its status.
"""


def create_app(
    settings: Settings, *, load: PredictorLoader = load_predictor, tracer_provider: Any | None = None
) -> FastAPI:
    """`load` builds the predictor; tests wrap the real one to control timing and failures.
    `tracer_provider`: an OpenTelemetry TracerProvider to trace requests with; by default the environment
    decides (service/tracing.py: off without OTEL_EXPORTER_OTLP_ENDPOINT)."""
    metrics = Metrics()
    traces = Tracing(tracer_provider) if tracer_provider is not None else tracing.from_environment()
    # A model that cannot be loaded leaves nothing to serve: stop the server the way Kubernetes would.
    runtime = Runtime(settings, metrics, load, on_fatal_error=lambda: signal.raise_signal(signal.SIGTERM))
    uploads = Uploads(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        configure_pillow(max(settings.max_image_pixels, settings.max_tiled_pixels))
        runtime.start()
        # gRPC beside HTTP, in this event loop; stopped after the runtime's drain has answered its calls.
        grpc_server = await _start_grpc(settings, runtime, uploads, metrics, app.version, traces)
        app.state.grpc_server = grpc_server
        yield
        await runtime.stop()
        if grpc_server is not None:
            await grpc_server.stop()
        traces.shutdown()

    # The Swagger UI and ReDoc assets come with fastapi-offline: /docs and /redoc load nothing from
    # the internet (nor does Swagger UI's validator badge, turned off).
    app = FastAPIOffline(
        title="CenterMask",
        version=app_version(),
        summary="Real-time instance segmentation: boxes and COCO RLE masks.",
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = runtime
    app.state.uploads = uploads
    app.state.tracing = traces
    # Open /segment/stream connections (service/api/stream.py counts them).
    app.state.open_streams = 0
    metrics.streams_open.set_function(lambda: app.state.open_streams)
    install_error_handlers(app)
    routers = (
        segment.router,
        video.router,
        stream.router,
        model.router,
        pages.router,
        probes.router,
        v2.probe_router,
        v2.model_router,
        v2_repository.router,
    )
    for router in routers:
        app.include_router(router)
    pages.install_pages(app)
    # What needs the key as configured: the API's own routers always, the probes' with PROTECT_PROBES.
    keyed: list[APIRouter] = [segment.router, model.router, v2.model_router]
    if settings.protect_probes:
        keyed += [pages.router, probes.router, v2.probe_router]
    if settings.api_key is None:
        keyed = []
    # The repository's routes need the admin key (the same headers, another secret); none set: 403.
    if settings.admin_key is not None:
        keyed.append(v2_repository.router)
    secured = frozenset(
        (route.path, method)
        for router in keyed
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    )
    install_openapi(app, {**openapi_schemas(), **wire_schemas()}, secured=secured)
    # Metric labels: every route's path (the API's, the docs', /openapi.json) and every mount's prefix
    # (/static): anything else is "unmatched".
    routes = [*app.routes, *(route for router in routers for route in router.routes)]
    endpoints = frozenset(route.path for route in routes if isinstance(route, Route | APIRoute))
    mounts = frozenset(route.path for route in app.routes if isinstance(route, Mount))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
            expose_headers=["Retry-After", "X-Model", "X-Model-Version", "X-Request-ID", "X-Video-Frames"],
            max_age=600,
        )
    app.add_middleware(HeadAsGetMiddleware)
    # Added last, so outermost: every answer, CORS preflights included, gets a request id and a log line.
    app.add_middleware(RequestContextMiddleware, metrics=metrics, endpoints=endpoints, mounts=mounts)
    if traces.enabled:  # outside even that, so that the access log line carries the trace id
        app.add_middleware(TracingMiddleware, tracing=traces)
    return app


async def _start_grpc(
    settings: Settings,
    runtime: Runtime,
    uploads: Uploads,
    metrics: Metrics,
    version: str,
    traces: Tracing,
) -> "GrpcServer | None":
    """The gRPC server on CENTERMASK_GRPC_PORT, started; None when the port is 0, or when grpcio (the
    `grpc` extra) is missing and the port was left at its default (one warning says so)."""
    if not settings.grpc_port:
        return None
    try:
        from service.grpc.server import GrpcServer
    except ImportError as error:
        if "grpc_port" in settings.model_fields_set:
            raise RuntimeError(
                f"CENTERMASK_GRPC_PORT is set but gRPC cannot be served: {error}; "
                "pip install 'centermask-serve[grpc]', or set CENTERMASK_GRPC_PORT=0"
            ) from None
        logger.warning(
            "gRPC is not served: grpcio is not installed (pip install 'centermask-serve[grpc]'); "
            "set CENTERMASK_GRPC_PORT=0 to say that is intended"
        )
        return None
    server = GrpcServer(settings, runtime, uploads, metrics, version, traces)
    await server.start()
    return server


def app_version() -> str:
    try:
        return version("centermask-serve")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0.0.0"


@functools.cache
def _app_from_environment() -> FastAPI:
    return create_app(Settings())


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.app:app` reads this attribute. It is built on first access, not at import, so
    # that importing the module (tests, `centermask-serve`) neither reads nor validates the environment.
    if name == "app":
        return _app_from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
