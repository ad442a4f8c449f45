"""`POST /segment` and `/segment/batch`: images in, instances out (JSON), or the image with them drawn."""

import asyncio
import dataclasses
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from centermask_client.overlay import draw_overlay, encode_image
from centermask_client.schemas import BatchResponse, ImageFormat, ImageResult, SegmentResponse
from model.wire.records import batch_response, segment_response
from service import openapi, tracing
from service.deps import (
    ModelDep,
    OptionsDep,
    RuntimeDep,
    SettingsDep,
    UploadsDep,
    require_api_key,
    unless_disconnected,
)
from service.images import decode_image
from service.logging import request_id
from service.metrics import Protocol
from service.responses import OrjsonResponse
from service.runtime import ImageFailed

router = APIRouter(dependencies=[Depends(require_api_key)])

OutputFormat = Literal["json", "png", "jpeg"]
FormatDep = Annotated[
    OutputFormat,
    Query(
        alias="format",
        description="`json`: the instances; `png` or `jpeg`: the image at its own size with masks, boxes "
        "and `class score` labels drawn (the demo page's colours).",
    ),
]


@router.post(
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
    model: ModelDep,
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
    image_format: ImageFormat | None = None if output_format == "json" else output_format
    drawing = image_format is not None
    if drawing and options.mask_format == "polygon":
        options = dataclasses.replace(options, mask_format="rle")
    async with runtime.admitted(model):
        with tracing.stage("receive"):
            upload = await uploads.read_image(request)
        try:
            [result] = await unless_disconnected(
                request, model.segment([upload], options, protocol=Protocol.HTTP)
            )
        except ImageFailed as failed:
            raise failed.error from None
        if image_format is not None:
            # A tiled image may have more pixels than an ordinary one.
            limit = settings.max_tiled_pixels if "tiling" in result.record else settings.max_image_pixels
            with tracing.stage("encode"):
                image = await asyncio.to_thread(_draw, upload.data, result.record, image_format, limit)
            media_type = f"image/{image_format}"
            count = str(len(result.record["instances"]))
            headers = {"X-Instance-Count": count, "X-Model": model.name, "X-Model-Version": model.version}
            return Response(image, media_type=media_type, headers=headers)
    with tracing.stage("encode"):
        return OrjsonResponse(
            segment_response(
                result.record,
                model=model.name,
                model_version=model.version,
                request_id=request_id.get() or "",
                timing=result.timing_ms(),
                total_ms=(time.perf_counter() - started) * 1000,
            )
        )


@router.post(
    "/segment/batch",
    response_model=BatchResponse,
    responses=openapi.batch_responses(),
    openapi_extra={"requestBody": openapi.IMAGES_BODY},
    summary="Segment several images; one failing image fails the request",
)
async def segment_batch(
    request: Request, runtime: RuntimeDep, uploads: UploadsDep, model: ModelDep, options: OptionsDep
) -> Response:
    """Segment up to CENTERMASK_MAX_IMAGES_PER_REQUEST images, answered in upload order.

    Each image is queued on its own, so they batch with each other and with other requests. If an image
    fails, the request answers with that image's error, and `error.index` names it.
    """
    started = time.perf_counter()
    async with runtime.admitted(model):
        with tracing.stage("receive"):
            images = await uploads.read_images(request)
        try:
            results = await unless_disconnected(
                request, model.segment(images, options, protocol=Protocol.HTTP)
            )
        except ImageFailed as failed:
            raise failed.error.for_image(failed.index, images[failed.index].filename) from None
    with tracing.stage("encode"):
        return OrjsonResponse(
            batch_response(
                [(result.record, result.timing_ms()) for result in results],
                model=model.name,
                model_version=model.version,
                request_id=request_id.get() or "",
                total_ms=(time.perf_counter() - started) * 1000,
            )
        )


def _draw(data: bytes, record: dict[str, Any], image_format: ImageFormat, max_pixels: int) -> bytes:
    """The uploaded image (decoded again, in full: the model's copy is resized) with the record drawn on it."""
    image = decode_image(data, max_pixels=max_pixels).pixels
    return encode_image(draw_overlay(image, ImageResult.model_validate(record).instances), image_format)
