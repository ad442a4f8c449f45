"""The Open Inference Protocol's data: its messages (for the OpenAPI document; answers are built as plain
dicts), this server's model metadata and the names of its tensors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from model.inference.backends import Backend

MODEL_ALIAS = "centermask"
MODEL_VERSION = "1"
INPUT = "image"
# Name → (datatype, shape); -1 is the number of instances of all the request's images together. The names
# are `model.wire.records.INSTANCE_COLUMNS`'.
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "boxes": ("FP32", [-1, 4]),
    "scores": ("FP32", [-1]),
    "class_ids": ("INT64", [-1]),
    "class_names": ("BYTES", [-1]),
    "mask_scores": ("FP32", [-1]),
    "masks": ("BYTES", [-1]),
    "image_index": ("INT64", [-1]),
}
PLATFORMS = {Backend.TORCH: "pytorch", Backend.ONNXRUNTIME: "onnxruntime_onnx"}
# Triton's name for the binary tensor data extension, which tritonclient uses by default.
EXTENSIONS = ["binary_tensor_data"]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class RequestInput(BaseModel):
    name: str = Field(description="`image`")
    shape: list[int] = Field(description="[n] (or [n, 1]): n images")
    datatype: str = Field(description="`BYTES`")
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data_size`: the tensor is in the binary part of the body"
    )
    data: list[str] | None = Field(None, description="The images, each base64-encoded")


class RequestOutput(BaseModel):
    name: str = Field(description=f"One of {', '.join(OUTPUTS)}")
    parameters: dict[str, Any] | None = Field(None, description="`binary_data`: true for a binary tensor")


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None,
        description="`score_threshold` (0-1), `max_detections` (≥ 1), `mask_format` (rle, polygon, none), "
        "`classes` (as in /segment), `binary_data_output` (all outputs binary)",
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(None, description="The outputs wanted; default: all")


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[float | int | str] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        None,
        description="`tiles`: present when an image was tiled (`tiling=auto`), the tiles each image was "
        "segmented in, comma-separated in input order (0: not tiled).",
    )
    outputs: list[ResponseOutput]


class InferenceErrorBody(BaseModel):
    error: str = Field(description="What went wrong; the HTTP status says which kind of error it is.")


def openapi_schemas() -> dict[str, Any]:
    """Component schemas of the request body, which is read by hand (it may carry binary tensors)."""
    schema = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = schema.pop("$defs", {})
    return {**definitions, "InferenceRequest": schema}
