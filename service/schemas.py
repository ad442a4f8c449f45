"""The wire format.

Handlers build plain dicts (the model's `instances_to_json` output) and return them through
`OrjsonResponse`; the models below document those bodies in the OpenAPI schema and are not used to
validate them, which would cost more than the inference on large mask payloads.
"""

from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


MaskFormat = Literal["rle", "polygon", "none"]


class Mask(BaseModel):
    size: tuple[int, int] = Field(description="[height, width] of the image.")
    counts: str | None = Field(None, description="COCO compressed RLE (mask_format=rle).")
    polygons: list[list[float]] | None = Field(
        None, description="Outlines as [x1, y1, x2, y2, ...] (mask_format=polygon)."
    )


class Instance(BaseModel):
    box: tuple[float, float, float, float] = Field(description="[x1, y1, x2, y2] in image pixels.")
    score: float
    class_id: int
    class_name: str
    mask_score: float
    mask: Mask | None = Field(None, description="Absent with mask_format=none.")


class Timing(BaseModel):
    decode: float = Field(description="Decoding and resizing the image.")
    queue: float = Field(description="Waiting for a batch slot.")
    inference: float = Field(description="The forward pass of the batch the image was in.")
    postprocess: float = Field(description="Filtering and mask encoding.")


class TotalTiming(BaseModel):
    total: float = Field(description="The whole request, reading the body included.")


class RequestTiming(Timing, TotalTiming):
    pass


class ImageResult(BaseModel):
    file: str | None = Field(description="The upload's filename; null for a raw body.")
    height: int
    width: int
    instances: list[Instance]


class SegmentResponse(ImageResult):
    model: str = Field(description="The served model's config name.")
    request_id: str
    timing_ms: RequestTiming


class BatchImageResult(ImageResult):
    timing_ms: Timing


class BatchResponse(BaseModel):
    model: str
    request_id: str
    results: list[BatchImageResult] = Field(description="One per uploaded image, in upload order.")
    timing_ms: TotalTiming


class BatchingInfo(BaseModel):
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue: int


class ModelInfo(BaseModel):
    config_name: str
    class_names: list[str]
    device: str
    dtype: str
    weights_sha256: str
    batching: BatchingInfo
    score_threshold: float
    max_detections: int


class ErrorDetail(BaseModel):
    code: str
    message: str
    index: int | None = Field(None, description="The failing image of a batch request.")


class ErrorBody(BaseModel):
    error: ErrorDetail
