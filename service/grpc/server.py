"""The gRPC server's life: started beside the HTTP server by the app's lifespan (so wherever the app runs,
`centermask-serve` or `uvicorn service.app:app`), stopped after it.

Draining (SIGTERM) needs nothing of its own: the runtime stops admitting work, so new inference calls get
UNAVAILABLE `not_ready` and the health service NOT_SERVING while admitted calls finish; the server is
stopped at shutdown, after the HTTP side's drain, with a second of grace for answers being sent.

Message limits match the HTTP ones: a request may hold `max_images_per_request` images of
`max_image_bytes` each (larger messages are refused by gRPC, RESOURCE_EXHAUSTED, before being held),
and at most `max_call_count` calls are handled at once: as many as HTTP receives bodies at once
(`max_concurrent_uploads`), plus the most that can be admitted at once (a queue's worth of images waiting
and a batch, at most a queue's worth, in the network), plus a few for probes and metadata. More get
RESOURCE_EXHAUSTED from gRPC itself ("Concurrent RPC limit exceeded"), with no retry-after.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2_grpc

from service.grpc.servicer import HealthServicer, InferenceServicer, inference_handler
from service.metrics import Metrics
from service.runtime import Runtime
from service.settings import Settings
from service.tracing import Tracing
from service.uploads import Uploads

logger = logging.getLogger(__name__)

# Room for the message's own fields (names, shape, parameters) and each element's 4-byte length.
_MESSAGE_OVERHEAD_BYTES = 64 * 1024
_STOP_GRACE_S = 1.0
# Calls beyond those the queue can hold: health checks, metadata.
_PROBE_HEADROOM = 8


def max_message_bytes(settings: Settings) -> int:
    """The largest ModelInferRequest accepted: as many images of the largest size as a request may hold."""
    return settings.max_images_per_request * (settings.max_image_bytes + 4) + _MESSAGE_OVERHEAD_BYTES


def max_call_count(settings: Settings) -> int:
    """The most calls handled at once (the module's docstring says why)."""
    return settings.max_concurrent_uploads + 2 * settings.max_queue + _PROBE_HEADROOM


class GrpcServer:
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
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes(settings)),
                ("grpc.max_send_message_length", -1),
                # gRPC shares a port with any other process that asks (SO_REUSEPORT) by default: a second
                # server on 8001 would silently take half the calls. A port in use must stop startup.
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=max_call_count(settings),
        )
        servicer = InferenceServicer(settings, runtime, uploads, metrics, version, tracing)
        self._server.add_generic_rpc_handlers((inference_handler(servicer, metrics),))
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(runtime, metrics), self._server)
        self.port: int | None = None

    async def start(self) -> None:
        """Listen on the settings' host and gRPC port; raises (and the app does not start) when it cannot."""
        settings = self._settings
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        address = f"{host}:{settings.grpc_port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as error:
            raise RuntimeError(
                f"cannot listen for gRPC on {address} (CENTERMASK_GRPC_PORT): {error}"
            ) from None
        await self._server.start()
        logger.info("gRPC listening", extra={"address": f"{host}:{self.port}"})

    async def stop(self) -> None:
        await self._server.stop(_STOP_GRACE_S)
