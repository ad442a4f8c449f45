"""The RPCs of `inference.GRPCInferenceService` and `grpc.health.v1.Health`, over the same runtime, model
registry, limits, keys and metrics as the HTTP API.

Every RPC goes through `InferenceServicer._call`: a request id (the `x-request-id` metadata, or a fresh
one, sent back in the trailing metadata), the API key where needed, our errors as gRPC statuses
(`service.grpc.status`), the metrics by method and status code, and one access log line. As over HTTP,
liveness, readiness and the server's metadata are open unless CENTERMASK_PROTECT_PROBES is set; model
metadata, configuration and inference need the key (metadata `x-api-key`, or `authorization: Bearer`); the
repository's RPCs (index, load, unload) need the admin key there instead, and without one configured are
PERMISSION_DENIED, as HTTP's 403.
`grpc.health.v1` is always open: Kubernetes' gRPC probes send no metadata.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service import tracing
from service.deps import admin_key_is_valid, api_key_is_valid, offered_api_key
from service.errors import AdminDisabled, NotReady, ServiceError, Unauthorized
from service.grpc import codec
from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceServicer
from service.grpc.status import REQUEST_ID, Status, internal_error, status_of
from service.logging import error_code, request_id
from service.metrics import Metrics, Protocol
from service.runtime import Phase, Runtime
from service.settings import Settings
from service.tracing import Tracing
from service.uploads import Uploads
from service.v2 import dataplane

logger = logging.getLogger("service.access")

T = TypeVar("T")

SERVICE_NAME = "inference.GRPCInferenceService"
# Ids clients may pass in x-request-id (as over HTTP); anything else is replaced by a fresh one.
_MAX_REQUEST_ID = 128
# Probes arrive every few seconds; logging them at info would drown the requests.
_QUIET = frozenset({"ServerLive", "ServerReady", "ModelReady", "Check"})


class InferenceServicer(GRPCInferenceServiceServicer):
    def __init__(
        self,
        settings: Settings,
        runtime: Runtime,
        uploads: Uploads,
        metrics: Metrics,
        version: str,
        tracing: Tracing,
    ) -> None:
        self._settings = settings
        self._runtime = runtime
        self._uploads = uploads
        self._metrics = metrics
        self._version = version
        self._tracing = tracing

    # ----------------------------------------------------------------------------------------------
    # Health and metadata

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        def live() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=self._runtime.is_alive)

        return await self._call("ServerLive", context, live, keyed=self._settings.protect_probes)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        def ready() -> pb.ServerReadyResponse:
            runtime = self._runtime
            return pb.ServerReadyResponse(ready=runtime.phase is Phase.READY and runtime.is_ready)

        return await self._call("ServerReady", context, ready, keyed=self._settings.protect_probes)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        def ready() -> pb.ModelReadyResponse:
            # An unknown model (or version) is NOT_FOUND; a known one not ready (loading, draining) is `ready: false`.
            if self._runtime.phase is not Phase.READY:
                return pb.ModelReadyResponse(ready=False)
            try:
                self._runtime.models.get(request.name, request.version)
            except NotReady:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        return await self._call("ModelReady", context, ready, keyed=self._settings.protect_probes)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        def metadata() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(**dataplane.server_metadata(self._version))

        return await self._call("ServerMetadata", context, metadata, keyed=self._settings.protect_probes)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        def metadata() -> pb.ModelMetadataResponse:
            served = self._runtime.models.get(request.name, request.version)
            return codec.model_metadata_response(dataplane.model_metadata(served))

        return await self._call("ModelMetadata", context, metadata, keyed=True)

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        def config() -> pb.ModelConfigResponse:
            dataplane.require_serving(self._runtime)
            served = self._runtime.models.get(request.name, request.version)  # warm: its batch size is known
            return pb.ModelConfigResponse(
                config=codec.model_config(
                    dataplane.model_metadata(served),
                    backend=str(served.predictor.backend),
                    max_batch_size=served.max_batch_size,
                    max_batch_delay_ms=self._settings.max_batch_delay_ms,
                )
            )

        return await self._call("ModelConfig", context, config, keyed=True)

    # ----------------------------------------------------------------------------------------------
    # The repository extension (service/registry.py), behind the admin key as over HTTP.

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        def index() -> pb.RepositoryIndexResponse:
            return pb.RepositoryIndexResponse(
                models=[
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=entry.name, version=entry.version or "", state=entry.state, reason=entry.reason
                    )
                    for entry in self._runtime.models.index(ready_only=request.ready)
                ]
            )

        return await self._call("RepositoryIndex", context, index, keyed=True, admin=True)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        async def load() -> pb.RepositoryModelLoadResponse:
            config = dataplane.load_config(codec.parameter_values(request.parameters))
            await self._runtime.models.load(request.model_name, config)
            return pb.RepositoryModelLoadResponse()

        return await self._call("RepositoryModelLoad", context, load, keyed=True, admin=True)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        async def unload() -> pb.RepositoryModelUnloadResponse:
            dataplane.check_unload_parameters(codec.parameter_values(request.parameters))
            await self._runtime.models.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._call("RepositoryModelUnload", context, unload, keyed=True, admin=True)

    # ----------------------------------------------------------------------------------------------
    # Inference

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        async def infer() -> pb.ModelInferResponse:
            with self._runtime.models.lease(request.model_name, request.model_version) as served:
                async with self._runtime.admitted(served):
                    with tracing.stage("receive"):
                        parsed = codec.parse_infer_request(request)
                    answer = await dataplane.infer(
                        served,
                        self._settings,
                        self._uploads,
                        request.model_name,
                        parsed,
                        protocol=Protocol.GRPC,
                        client_deadline_s=context.time_remaining(),
                    )
            with tracing.stage("encode"):
                return codec.infer_response(answer)

        return await self._call("ModelInfer", context, infer, keyed=True)

    # ----------------------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        work: Callable[[], T | Awaitable[T]],
        *,
        keyed: bool,
        admin: bool = False,
    ) -> T:
        """Run one RPC's `work` (a function, or a coroutine function) as every RPC is run (module doc); when
        tracing, in a server span that is a child of the metadata's `traceparent`."""
        metadata = {
            key.lower(): value for key, value in context.invocation_metadata() or () if isinstance(value, str)
        }
        if not self._tracing.enabled:
            return await self._serve(method, context, metadata, work, keyed=keyed, admin=admin)
        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE_NAME, "rpc.method": method}
        with self._tracing.request(f"{SERVICE_NAME}/{method}", metadata, **attributes) as span:
            try:
                return await self._serve(method, context, metadata, work, keyed=keyed, admin=admin)
            finally:
                code = context.code() or grpc.StatusCode.OK
                span.set_attribute("rpc.grpc.status_code", code.value[0])

    async def _serve(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        metadata: dict[str, str],
        work: Callable[[], T | Awaitable[T]],
        *,
        keyed: bool,
        admin: bool = False,
    ) -> T:
        started = time.perf_counter()
        offered_id = metadata.get(REQUEST_ID, "")
        current_id = (
            offered_id
            if 0 < len(offered_id) <= _MAX_REQUEST_ID and offered_id.isprintable()
            else uuid.uuid4().hex
        )
        id_token = request_id.set(current_id)
        code_token = error_code.set(None)
        context.set_trailing_metadata(((REQUEST_ID, current_id),))
        code = grpc.StatusCode.OK
        try:
            failure: Status
            try:
                if admin:
                    self._require_admin_key(metadata)
                elif keyed and not api_key_is_valid(self._settings, offered_api_key(metadata) or ""):
                    raise Unauthorized(
                        "a valid API key is required, in the metadata x-api-key or authorization: Bearer"
                    )
                result = work()
                return await result if isinstance(result, Awaitable) else result
            except ServiceError as error:
                if error.rejection is not None:
                    self._metrics.rejected.labels(error.rejection, Protocol.GRPC).inc()
                error_code.set(error.code)
                failure = status_of(error)
            except asyncio.CancelledError:
                # The client cancelled, or its deadline passed: gRPC has answered it already.
                code = grpc.StatusCode.CANCELLED
                self._metrics.rejected.labels("client_gone", Protocol.GRPC).inc()
                raise
            except Exception:
                logger.exception("unhandled error", extra={"method": method})
                error_code.set("internal_error")
                failure = internal_error()
            code = failure.code
            await context.abort(
                failure.code, failure.details, (*failure.trailing_metadata, (REQUEST_ID, current_id))
            )
            raise AssertionError("abort returns only by raising")
        finally:
            latency_s = time.perf_counter() - started
            self._metrics.grpc_requests.labels(method, code.name).inc()
            self._metrics.grpc_request_duration.labels(method, code.name).observe(latency_s)
            fields: dict[str, object] = {
                "protocol": "grpc",
                "method": method,
                "code": code.name,
                "latency_ms": round(latency_s * 1000, 2),
            }
            if error_code.get() is not None:
                fields["error"] = error_code.get()
            logger.log(logging.DEBUG if method in _QUIET else logging.INFO, "request", extra=fields)
            error_code.reset(code_token)
            request_id.reset(id_token)

    def _require_admin_key(self, metadata: dict[str, str]) -> None:
        if self._settings.admin_key is None:
            raise AdminDisabled(
                "the model repository's RPCs are disabled: set CENTERMASK_ADMIN_KEY (a secret other than "
                "CENTERMASK_API_KEY) to enable them, and send it in the metadata x-api-key or authorization: "
                "Bearer"
            )
        if not admin_key_is_valid(self._settings, offered_api_key(metadata) or ""):
            raise Unauthorized(
                "a valid admin key is required, in the metadata x-api-key or authorization: Bearer"
            )


class _Malformed:
    """What arrived instead of a request message: bytes protobuf cannot parse as one."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def inference_handler(servicer: InferenceServicer, metrics: Metrics) -> grpc.GenericRpcHandler:
    """The servicer's RPCs as gRPC handlers, with requests parsed leniently: bytes that are no message of
    the RPC's type get INVALID_ARGUMENT `invalid_request` (gRPC's own parsing would answer UNKNOWN, naming a
    Python exception), and are counted like other calls."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in service.methods:
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _checked(method.name, getattr(servicer, method.name), request_type.DESCRIPTOR.full_name, metrics),
            request_deserializer=_lenient(request_type),
            response_serializer=response_type.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _lenient(request_type: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return request_type.FromString(data)
        except DecodeError as error:
            return _Malformed(error)

    return parse


def _checked(
    method: str,
    behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    type_name: str,
    metrics: Metrics,
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if not isinstance(request, _Malformed):
            return await behaviour(request, context)
        code = grpc.StatusCode.INVALID_ARGUMENT
        metrics.grpc_requests.labels(method, code.name).inc()
        metrics.grpc_request_duration.labels(method, code.name).observe(0)
        await context.abort(code, f"invalid_request: the message is not a valid {type_name}")

    return handle


class HealthServicer(health_pb2_grpc.HealthServicer):
    """`grpc.health.v1.Health/Check` for Kubernetes' gRPC probes: SERVING while ready (the server, `""`,
    and `inference.GRPCInferenceService` alike), NOT_SERVING while loading, draining or failed; an unknown
    service is NOT_FOUND. Watch is not served (UNIMPLEMENTED): probes only Check."""

    def __init__(self, runtime: Runtime, metrics: Metrics) -> None:
        self._runtime = runtime
        self._metrics = metrics

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if request.service not in ("", SERVICE_NAME):
                code = grpc.StatusCode.NOT_FOUND
                await context.abort(code, f"not_found: unknown service {request.service[:100]!r}")
            serving = self._runtime.phase is Phase.READY and self._runtime.is_ready
            Serving = health_pb2.HealthCheckResponse
            return Serving(status=Serving.SERVING if serving else Serving.NOT_SERVING)
        finally:
            self._metrics.grpc_requests.labels("Check", code.name).inc()
            self._metrics.grpc_request_duration.labels("Check", code.name).observe(
                time.perf_counter() - started
            )
