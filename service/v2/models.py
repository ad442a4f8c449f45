"""The Open Inference Protocol's data: its messages (for the OpenAPI document; answers are built as plain
dicts), this server's model metadata and the names of its tensors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PositiveInt

from centermask_client.schemas import SegmentParameters
from model.inference.backends import Backend
from service.registry import FORMER_VERSION

# The only version a model had before versions were its weights' SHA-256 prefix: still accepted in paths.
MODEL_VERSION = FORMER_VERSION
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
# Triton's names for the binary tensor data extension, which tritonclient uses by default, and for the
# model repository extension (index, load, unload: service/v2/repository.py).
EXTENSIONS = ["binary_tensor_data", "model_repository"]


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


class InputParameters(BaseModel):
    binary_data_size: int | None = Field(
        None, ge=0, description="The tensor is in the binary part of the body, in this many bytes"
    )


class RequestInput(BaseModel):
    name: Literal["image"] = Field(description="`image`")
    shape: tuple[PositiveInt] | tuple[PositiveInt, Literal[1]] = Field(
        description="[n] (or [n, 1]): n images"
    )
    datatype: Literal["BYTES"] = Field(description="`BYTES`")
    parameters: InputParameters | None = None
    data: list[Annotated[str, Field(json_schema_extra={"format": "byte"})]] | None = Field(
        None, min_length=1, description="The images, each base64-encoded (as many as the shape says)"
    )


class OutputParameters(BaseModel):
    binary_data: bool = Field(
        False, description="true: this output as a binary tensor (default: the request's binary_data_output)"
    )


class RequestOutput(BaseModel):
    name: Literal["boxes", "scores", "class_ids", "class_names", "mask_scores", "masks", "image_index"]
    parameters: OutputParameters | None = None


class InferenceParameters(SegmentParameters):
    """`/segment`'s parameters (strictly typed: JSON numbers, booleans, strings), and the protocol's own."""

    classes: str | list[str] | None = Field(  # type: ignore[assignment]
        None, description="As `classes=` of /segment: selectors, comma-separated"
    )
    binary_data_output: bool = Field(False, description="true: every output as a binary tensor")


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: InferenceParameters | None = None
    inputs: list[RequestInput] = Field(min_length=1, max_length=1, description="The one input, `image`")
    outputs: list[RequestOutput] | None = Field(
        None, min_length=1, description="The outputs wanted; default: all"
    )


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


class RepositoryIndexRequest(BaseModel):
    ready: bool = Field(False, description="true: only the models ready for inference")


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str | None = Field(None, description="The version loaded (its weights' SHA-256 prefix)")
    state: str = Field(description="READY, LOADING or UNAVAILABLE")
    reason: str = Field(description="Why it is in that state, if anything says")


class RepositoryRequest(BaseModel):
    """The body of a load or unload (optional). A load's `parameters` may hold `config`: the JSON text of a
    config.json for this load, in place of the folder's; Triton's `file:` uploads are refused (the weights
    are the folder's). An unload's may hold `unload_dependents`, which changes nothing here (no model
    depends on another)."""

    parameters: dict[str, Any] | None = Field(
        None,
        description='Load: `{"config": "<the JSON text of a config.json>"}`. Unload: `unload_dependents`.',
        examples=[{"config": '{"precision": "bf16"}'}],
    )


class InferenceErrorBody(BaseModel):
    error: str = Field(description="What went wrong; the HTTP status says which kind of error it is.")
    code: str | None = Field(None, description="The service's error code (docs/api.md), e.g. unknown_model.")


def openapi_schemas() -> dict[str, Any]:
    """Component schemas of the request bodies read by hand (an infer request may carry binary tensors;
    Triton's clients send the repository's bodies without a Content-Type)."""
    schemas: dict[str, Any] = {}
    for model in (InferenceRequest, RepositoryIndexRequest, RepositoryRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas |= schema.pop("$defs", {})
        schemas[model.__name__] = schema
    return schemas
