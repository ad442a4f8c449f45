"""HTTP endpoints: segmentation (JSON or a drawn overlay), model info, the demo page, probes, metrics."""

import asyncio
import dataclasses
import hashlib
import hmac
import time
from collections.abc import Awaitable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import HTMLResponse, Response

from centermask_client.overlay import draw_overlay, encode_image
from service import openapi
from service.errors import ClientClosedRequest, NotReady, Unauthorized, error_response
from service.images import decode_image
from service.logging import request_id
from service.metrics import CONTENT_TYPE, Metrics
from service.options import SegmentOptions, resolve_options
from service.runtime import ImageFailed, Phase, Runtime, Segmented
from service.schemas import (
    BatchResponse,
    ImageFormat,
    ImageResult,
    MaskFormat,
    ModelInfo,
    OrjsonResponse,
    SegmentResponse,
)
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
        float | None,
        Query(
            ge=0,
            le=1,
            description="Keep detections scoring at least this. Default: CENTERMASK_SCORE_THRESHOLD.",
        ),
    ] = None,
    max_detections: Annotated[
        int | None,
        Query(ge=1, description="Keep at most this many, best first. Default: CENTERMASK_MAX_DETECTIONS."),
    ] = None,
    classes: Annotated[
        list[str] | None,
        Query(
            description="Keep only these classes: names (case-insensitive), `class_id:N` (the contiguous "
            "index) or `category_id:N` (the dataset's id), comma-separated or repeated. A bare number "
            "is refused as ambiguous.",
            examples=["circle,ring", "category_id:1"],
        ),
    ] = None,
    mask_format: Annotated[
        MaskFormat,
        Query(
            description="`rle`: COCO compressed RLE; `polygon`: outer ring and hole rings per region, "
            "along pixel edges; `none`: boxes only."
        ),
    ] = "rle",
    class_agnostic_nms: Annotated[
        bool | None,
        Query(
            description="One label per object: of detections whose boxes overlap above "
            "CENTERMASK_CLASS_AGNOSTIC_IOU, keep the best-scoring whatever its class (applied to the "
            "model's output before the other filters). Default: CENTERMASK_CLASS_AGNOSTIC_NMS."
        ),
    ] = None,
) -> SegmentOptions:
    return resolve_options(
        settings,
        runtime.predictor,
        score_threshold=score_threshold,
        max_detections=max_detections,
        classes=classes or (),
        mask_format=mask_format,
        class_agnostic_nms=class_agnostic_nms,
    )


OptionsDep = Annotated[SegmentOptions, Depends(segment_options)]

protected_router = APIRouter(dependencies=[Depends(require_api_key)])
open_router = APIRouter(dependencies=[Depends(require_api_key_for_probes)])


OutputFormat = Literal["json", "png", "jpeg"]
FormatDep = Annotated[
    OutputFormat,
    Query(
        alias="format",
        description="`json`: the instances; `png` or `jpeg`: the image at its own size with masks, boxes "
        "and `class score` labels drawn (the demo page's colours).",
    ),
]


@protected_router.post(
    "/segment",
    response_model=SegmentResponse,
    responses=openapi.segment_responses(),
    openapi_extra={"requestBody": openapi.IMAGE_BODY},
    summary="Segment one image",
)
async def segment(
    request: Request,
    runtime: RuntimeDep,
    settings: SettingsDep,
    uploads: UploadsDep,
    options: OptionsDep,
    output_format: FormatDep = "json",
) -> Response:
    """Detect and segment the instances of one image.

    The model runs the official pipeline (candidates above 0.05, NMS, top 50); the parameters filter its
    output, so an answer never depends on other requests. Boxes and masks are in pixels of the upright
    image (EXIF orientation applied). With `format=png` or `jpeg` the answer is the image with the
    instances drawn; the JSON fields are then in no body, only the instance count in `X-Instance-Count`.
    """
    started = time.perf_counter()
    drawing = output_format != "json"
    if drawing and options.mask_format == "polygon":
        options = dataclasses.replace(options, mask_format="rle")
    async with runtime.admitted():
        upload = await uploads.read_image(request)
        try:
            [result] = await unless_disconnected(request, runtime.segment([upload], options))
        except ImageFailed as failed:
            raise failed.error from None
        if drawing:
            image = await asyncio.to_thread(
                _draw, upload.data, result.record, output_format, settings.max_image_pixels
            )
            media_type = "image/png" if output_format == "png" else "image/jpeg"
            count = str(len(result.record["instances"]))
            return Response(image, media_type=media_type, headers={"X-Instance-Count": count})
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
    responses=openapi.batch_responses(),
    openapi_extra={"requestBody": openapi.IMAGES_BODY},
    summary="Segment several images; one failing image fails the request",
)
async def segment_batch(
    request: Request, runtime: RuntimeDep, uploads: UploadsDep, options: OptionsDep
) -> Response:
    """Segment up to CENTERMASK_MAX_IMAGES_PER_REQUEST images, answered in upload order.

    Each image is queued on its own, so they batch with each other and with other requests. If an image
    fails, the request answers with that image's error, and `error.index` names it.
    """
    started = time.perf_counter()
    async with runtime.admitted():
        images = await uploads.read_images(request)
        try:
            results = await unless_disconnected(request, runtime.segment(images, options))
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


@protected_router.get(
    "/v1/model",
    response_model=ModelInfo,
    responses={
        200: {"content": {"application/json": {"example": openapi.MODEL_INFO_EXAMPLE}}},
        **openapi.error_responses(401, 503),
    },
    summary="The served model",
)
async def model_info(runtime: RuntimeDep, settings: SettingsDep) -> ModelInfo:
    """The config, classes (names and category ids, index = class_id), device, speed options in force and
    batching settings."""
    predictor = runtime.predictor
    return ModelInfo(
        config_name=predictor.config_name,
        class_names=predictor.class_names,
        category_ids=predictor.category_ids,
        device=str(predictor.device),
        precision=str(predictor.precision),
        dtype=str(predictor.dtype).removeprefix("torch."),
        weights_sha256=predictor.weights_sha256,
        compiled=predictor.compiled,
        cuda_graphs=predictor.cuda_graphs,
        batching={
            "max_batch_size": runtime.max_batch_size,
            "max_batch_delay_ms": settings.max_batch_delay_ms,
            "max_queue": settings.max_queue,
            "bucket_size": predictor.bucket_size,
        },
        score_threshold=settings.score_threshold,
        max_detections=settings.max_detections,
        class_agnostic_nms=settings.class_agnostic_nms,
        class_agnostic_iou=settings.class_agnostic_iou,
    )


@open_router.get(
    "/",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}, "description": "The demo page."}},
    summary="The demo page",
)
async def page(request: Request) -> HTMLResponse:
    """Upload, drop or paste an image, or pick an example, and see its masks drawn. Works offline."""
    return HTMLResponse(request.app.state.page)


@open_router.get(
    "/healthz",
    responses={
        200: {"content": {"application/json": {"example": {"status": "alive", "phase": "ready"}}}},
        503: openapi.error_responses(503)[503]
        | {"description": "The model failed to load (the process is stopping) or the worker died."},
    },
    summary="Liveness: the process and its inference worker are alive",
)
async def healthz(runtime: RuntimeDep) -> Response:
    """200 while the process and its inference worker are alive, whether or not the model has loaded."""
    if not runtime.is_alive:
        return error_response(503, "not_alive", f"the service is {runtime.phase}")
    return OrjsonResponse({"status": "alive", "phase": runtime.phase})


@open_router.get(
    "/readyz",
    responses={
        200: {"content": {"application/json": {"example": {"status": "ready"}}}},
        503: openapi.error_responses(503)[503] | {"description": "Loading, or draining for shutdown."},
    },
    summary="Readiness: the model is loaded, warm, and not draining",
)
async def readyz(runtime: RuntimeDep) -> Response:
    """200 once the model is loaded and warm; 503 `not_ready` while loading and while draining."""
    if runtime.phase is not Phase.READY:
        return NotReady(f"the service is {runtime.phase}").to_response()
    return OrjsonResponse({"status": "ready"})


@open_router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
            "description": "Prometheus text format.",
        }
    },
    summary="Prometheus metrics",
)
async def metrics(registry: Annotated[Metrics, Depends(get_metrics)]) -> Response:
    """Request, queue, batch and model metrics: docs/metrics.md says what each means."""
    return Response(registry.render(), media_type=CONTENT_TYPE)


def _draw(data: bytes, record: dict[str, Any], image_format: ImageFormat, max_pixels: int) -> bytes:
    """The uploaded image (decoded again, in full: the model's copy is resized) with the record drawn on it."""
    image = decode_image(data, max_pixels=max_pixels).pixels
    return encode_image(draw_overlay(image, ImageResult.model_validate(record).instances), image_format)


def _timing_ms(result: Segmented) -> dict[str, float]:
    return {
        "decode": round(result.decode_s * 1000, 3),
        "queue": round(result.queue_s * 1000, 3),
        "inference": round(result.inference_s * 1000, 3),
        "postprocess": round(result.postprocess_s * 1000, 3),
    }


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
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
