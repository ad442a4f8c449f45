"""HTTP endpoints: segmentation, model info, probes and metrics."""

import asyncio
import hashlib
import hmac
import time
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from service.errors import ClientClosedRequest, NotReady, Unauthorized, error_response
from service.images import MEDIA_TYPES
from service.logging import request_id
from service.metrics import CONTENT_TYPE, Metrics
from service.options import SegmentOptions, class_ids
from service.runtime import ImageFailed, Phase, Runtime, Segmented
from service.schemas import BatchResponse, ErrorBody, MaskFormat, ModelInfo, OrjsonResponse, SegmentResponse
from service.settings import Settings
from service.uploads import Uploads

T = TypeVar("T")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_uploads(request: Request) -> Uploads:
    return request.app.state.uploads


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
UploadsDep = Annotated[Uploads, Depends(get_uploads)]


def require_api_key(
    settings: SettingsDep,
    api_key: Annotated[str | None, Depends(APIKeyHeader(name="X-API-Key", auto_error=False))],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
) -> None:
    if settings.api_key is None:
        return
    offered = api_key if api_key is not None else (bearer.credentials if bearer is not None else "")
    # Digests of equal length, compared in constant time: the timing says nothing about the key,
    # not even its length.
    expected = hashlib.sha256(settings.api_key.get_secret_value().encode()).digest()
    if not hmac.compare_digest(hashlib.sha256(offered.encode("utf-8", "replace")).digest(), expected):
        raise Unauthorized("a valid API key is required, in X-API-Key or Authorization: Bearer")


def require_api_key_for_probes(
    settings: SettingsDep,
    api_key: Annotated[str | None, Depends(APIKeyHeader(name="X-API-Key", auto_error=False))],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
) -> None:
    """The probes and /metrics need the key only with CENTERMASK_PROTECT_PROBES."""
    if settings.protect_probes:
        require_api_key(settings, api_key, bearer)


def segment_options(
    settings: SettingsDep,
    runtime: RuntimeDep,
    score_threshold: Annotated[
        float | None, Query(ge=0, le=1, description="Keep detections scoring at least this.")
    ] = None,
    max_detections: Annotated[
        int | None, Query(ge=1, description="Keep at most this many, best first.")
    ] = None,
    classes: Annotated[
        list[str] | None, Query(description="Class names or ids, comma-separated or repeated.")
    ] = None,
    mask_format: Annotated[MaskFormat, Query(description="How masks are encoded.")] = "rle",
) -> SegmentOptions:
    selectors = [part.strip() for value in classes or [] for part in value.split(",") if part.strip()]
    return SegmentOptions(
        score_threshold=settings.score_threshold if score_threshold is None else score_threshold,
        max_detections=settings.max_detections if max_detections is None else max_detections,
        class_ids=class_ids(selectors, runtime.predictor.class_names) if selectors else None,
        mask_format=mask_format,
    )


OptionsDep = Annotated[SegmentOptions, Depends(segment_options)]

_ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 408, 413, 415, 422, 500, 503, 504)}
_IMAGE_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
            }
        },
        **{media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in MEDIA_TYPES},
    },
    "required": True,
}
_IMAGES_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["images"],
            }
        }
    },
    "required": True,
}

protected_router = APIRouter(dependencies=[Depends(require_api_key)])
open_router = APIRouter(dependencies=[Depends(require_api_key_for_probes)])


@protected_router.post(
    "/segment",
    response_model=SegmentResponse,
    responses=_ERRORS,
    openapi_extra={"requestBody": _IMAGE_BODY},
    summary="Segment one image",
)
async def segment(
    request: Request, runtime: RuntimeDep, uploads: UploadsDep, options: OptionsDep
) -> Response:
    started = time.perf_counter()
    async with runtime.admitted():
        upload = await uploads.read_image(request)
        try:
            [result] = await _unless_disconnected(request, runtime.segment([upload], options))
        except ImageFailed as failed:
            raise failed.error from None
    total_ms = (time.perf_counter() - started) * 1000
    return OrjsonResponse(
        {
            **result.record,
            "model": runtime.predictor.config_name,
            "request_id": request_id.get(),
            "timing_ms": {**_timing_ms(result), "total": round(total_ms, 3)},
        }
    )


@protected_router.post(
    "/segment/batch",
    response_model=BatchResponse,
    responses=_ERRORS,
    openapi_extra={"requestBody": _IMAGES_BODY},
    summary="Segment several images; one failing image fails the request",
)
async def segment_batch(
    request: Request, runtime: RuntimeDep, uploads: UploadsDep, options: OptionsDep
) -> Response:
    started = time.perf_counter()
    async with runtime.admitted():
        images = await uploads.read_images(request)
        try:
            results = await _unless_disconnected(request, runtime.segment(images, options))
        except ImageFailed as failed:
            raise failed.error.for_image(failed.index) from None
    total_ms = (time.perf_counter() - started) * 1000
    return OrjsonResponse(
        {
            "model": runtime.predictor.config_name,
            "request_id": request_id.get(),
            "results": [{**result.record, "timing_ms": _timing_ms(result)} for result in results],
            "timing_ms": {"total": round(total_ms, 3)},
        }
    )


@protected_router.get("/v1/model", response_model=ModelInfo, responses=_ERRORS, summary="The served model")
async def model_info(runtime: RuntimeDep, settings: SettingsDep) -> ModelInfo:
    predictor = runtime.predictor
    return ModelInfo(
        config_name=predictor.config_name,
        class_names=predictor.class_names,
        device=str(predictor.device),
        dtype=str(predictor.dtype).removeprefix("torch."),
        weights_sha256=predictor.weights_sha256,
        batching={
            "max_batch_size": settings.max_batch_size,
            "max_batch_delay_ms": settings.max_batch_delay_ms,
            "max_queue": settings.max_queue,
        },
        score_threshold=settings.score_threshold,
        max_detections=settings.max_detections,
    )


@open_router.get("/healthz", summary="Liveness: the process and its inference worker are alive")
async def healthz(runtime: RuntimeDep) -> Response:
    if not runtime.is_alive:
        return error_response(503, "not_alive", f"the service is {runtime.phase}")
    return OrjsonResponse({"status": "alive", "phase": runtime.phase})


@open_router.get("/readyz", summary="Readiness: the model is loaded, warm, and not draining")
async def readyz(runtime: RuntimeDep) -> Response:
    if runtime.phase is not Phase.READY:
        return NotReady(f"the service is {runtime.phase}").to_response()
    return OrjsonResponse({"status": "ready"})


@open_router.get("/metrics", summary="Prometheus metrics")
async def metrics(registry: Annotated[Metrics, Depends(get_metrics)]) -> Response:
    return Response(registry.render(), media_type=CONTENT_TYPE)


def _timing_ms(result: Segmented) -> dict[str, float]:
    return {
        "decode": round(result.decode_s * 1000, 3),
        "queue": round(result.queue_s * 1000, 3),
        "inference": round(result.inference_s * 1000, 3),
        "postprocess": round(result.postprocess_s * 1000, 3),
    }


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (its queued images are dropped)."""
    work_task = asyncio.ensure_future(work)
    # The body has been read, so the next message from the server can only be the disconnect.
    disconnect = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait({work_task, disconnect}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        if not work_task.done():
            work_task.cancel()
            await asyncio.wait({work_task})
    if work_task.cancelled():
        raise ClientClosedRequest("the client closed the connection")
    return work_task.result()
