"""The Open Inference Protocol (KServe v2, also spoken by Triton, Seldon MLServer and TorchServe) over HTTP.

Beside the service's own API, with the same batcher, limits, upload guards, metrics and API key: an infer
request is segmented by `Runtime.segment`, exactly as `/segment/batch` would, and its answer holds the
same instances.

* `GET /v2`, `/v2/health/live`, `/v2/health/ready`: server metadata and health (open like the probes).
* `GET /v2/models/{name}[/versions/1]/ready`: model readiness (open like the probes).
* `GET /v2/models/{name}[/versions/1]`: model metadata; `POST .../infer`: inference (the API key, if set).

The model is named by its config (e.g. `centermask_lite_V_19_slim_eSE_FPN_ms_4x`) or `centermask`; its only
version is `1`. The input `image` is a BYTES tensor of encoded images (JPEG, PNG, ...), one element per
image: several images are one batch. In the JSON encoding each element is the image in base64; with the
binary tensor extension (what tritonclient sends), the raw bytes. Request parameters `score_threshold`,
`max_detections`, `mask_format` (`rle`, `polygon`, `none`) and `classes` mean what the query parameters of
`/segment` mean. The outputs hold the instances of all images, concatenated in input order, each image's
best first: `image_index` says which image an instance belongs to (docs/api.md).

Errors are `{"error": "<message>"}` with the service's statuses (service/errors.py).
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from model.backends import Backend
from service.errors import InvalidRequest, NotReady, UnsupportedMediaType, WorkerFailed
from service.options import SegmentOptions, resolve_options
from service.routes import (
    RuntimeDep,
    SettingsDep,
    UploadsDep,
    require_api_key,
    require_api_key_for_probes,
    unless_disconnected,
)
from service.runtime import ImageFailed, Phase, Runtime, Segmented
from service.schemas import OrjsonResponse
from service.settings import Settings
from service.uploads import Uploads

MODEL_ALIAS = "centermask"
MODEL_VERSION = "1"
INPUT = "image"
# Name → (datatype, shape); -1 is the number of instances of all the request's images together.
OUTPUTS: dict[str, tuple[str, list[int]]] = {
    "boxes": ("FP32", [-1, 4]),
    "scores": ("FP32", [-1]),
    "class_ids": ("INT64", [-1]),
    "class_names": ("BYTES", [-1]),
    "mask_scores": ("FP32", [-1]),
    "masks": ("BYTES", [-1]),
    "image_index": ("INT64", [-1]),
}
_NUMPY_TYPES = {"FP32": "<f4", "INT64": "<i8"}
_PLATFORMS = {Backend.TORCH: "pytorch", Backend.ONNXRUNTIME: "onnxruntime_onnx"}
# Triton's name for the binary tensor data extension, which tritonclient uses by default.
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "inference-header-content-length"
MASK_FORMATS = ("rle", "polygon", "none")


class UnknownModel(InvalidRequest):
    status_code = 404
    code = "not_found"


# --------------------------------------------------------------------------------------------------
# The protocol's messages, for the OpenAPI document (answers are built as plain dicts).


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
    outputs: list[ResponseOutput]


class InferenceErrorBody(BaseModel):
    error: str = Field(description="What went wrong; the HTTP status says which kind of error it is.")


def openapi_schemas() -> dict[str, Any]:
    """Component schemas of the request body, which is read by hand (it may carry binary tensors)."""
    schema = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = schema.pop("$defs", {})
    return {**definitions, "InferenceRequest": schema}


_ERRORS = {
    400: "A malformed request: not the protocol's JSON, a wrong input, an undecodable image.",
    401: "An API key is configured and the request lacks it or has another one.",
    404: "No model of that name or version.",
    413: "Too many images, or an image larger than CENTERMASK_MAX_IMAGE_BYTES or _PIXELS.",
    415: "A compressed request body (Content-Encoding).",
    422: "A class selector that names no class.",
    500: "The forward pass failed for an image, even alone.",
    503: "Not ready (loading, draining), overloaded, or the worker failed: retry after Retry-After seconds.",
    504: "The request took longer than its deadline.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": InferenceErrorBody, "description": _ERRORS[status]} for status in statuses}


_INFER_BODY = {
    "description": "The protocol's JSON request, optionally followed by binary tensors (then the header "
    "Inference-Header-Content-Length gives the JSON's length in bytes).",
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
    "required": True,
}
_INFER_ANSWER = {
    "description": "The outputs: JSON, or JSON followed by binary tensors (Inference-Header-Content-Length "
    "then gives the JSON's length).",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}

ModelName = Annotated[str, Path(description=f"The served config's name, or `{MODEL_ALIAS}`")]
ModelVersion = Annotated[str, Path(description=f"`{MODEL_VERSION}`, the only one")]

probe_router = APIRouter(dependencies=[Depends(require_api_key_for_probes)], tags=["Open Inference Protocol"])
model_router = APIRouter(dependencies=[Depends(require_api_key)], tags=["Open Inference Protocol"])


# --------------------------------------------------------------------------------------------------
# Server and model metadata, health


@probe_router.get(
    "/v2",
    response_model=ServerMetadata,
    responses=_errors(401),
    summary="Open Inference Protocol: server metadata",
)
async def server_metadata(request: Request) -> dict[str, Any]:
    """The server's name, version and protocol extensions (`binary_tensor_data`)."""
    return {"name": "centermask-serve", "version": request.app.version, "extensions": EXTENSIONS}


@probe_router.get(
    "/v2/health/live",
    response_model=ServerLive,
    responses=_errors(401, 503),
    summary="Open Inference Protocol: liveness",
)
async def server_live(runtime: RuntimeDep) -> Response:
    """200 while the process and its inference worker are alive (as `/healthz`)."""
    if not runtime.is_alive:
        raise WorkerFailed(f"the service is {runtime.phase}")
    return OrjsonResponse({"live": True})


@probe_router.get(
    "/v2/health/ready",
    response_model=ServerReady,
    responses=_errors(401, 503),
    summary="Open Inference Protocol: readiness",
)
async def server_ready(runtime: RuntimeDep) -> Response:
    """200 once the model is loaded and warm, 503 while loading and draining (as `/readyz`)."""
    _require_ready(runtime)
    return OrjsonResponse({"ready": True})


@probe_router.get(
    "/v2/models/{model_name}/ready",
    response_model=ModelReady,
    responses=_errors(401, 404, 503),
    summary="Open Inference Protocol: model readiness",
)
async def model_ready(runtime: RuntimeDep, model_name: ModelName) -> Response:
    """200 once the model is ready to infer; 404 for another model; 503 while not ready."""
    return _model_ready(runtime, model_name, None)


@probe_router.get(
    "/v2/models/{model_name}/versions/{model_version}/ready",
    response_model=ModelReady,
    responses=_errors(401, 404, 503),
    summary="Open Inference Protocol: model version readiness",
)
async def model_version_ready(
    runtime: RuntimeDep, model_name: ModelName, model_version: ModelVersion
) -> Response:
    """200 once the model is ready to infer; 404 for another model or version; 503 while not ready."""
    return _model_ready(runtime, model_name, model_version)


def _model_ready(runtime: Runtime, model_name: str, model_version: str | None) -> Response:
    _require_ready(runtime)
    _check_model(runtime, model_name, model_version)
    return OrjsonResponse({"name": model_name, "ready": True})


@model_router.get(
    "/v2/models/{model_name}",
    response_model=ModelMetadata,
    responses=_errors(401, 404, 503),
    summary="Open Inference Protocol: model metadata",
)
async def model_metadata(runtime: RuntimeDep, model_name: ModelName) -> Response:
    """The model's versions, platform, input and outputs. `-1` in an output's shape is the number of
    instances in all the request's images."""
    return _model_metadata(runtime, model_name, None)


@model_router.get(
    "/v2/models/{model_name}/versions/{model_version}",
    response_model=ModelMetadata,
    responses=_errors(401, 404, 503),
    summary="Open Inference Protocol: model version metadata",
)
async def model_version_metadata(
    runtime: RuntimeDep, model_name: ModelName, model_version: ModelVersion
) -> Response:
    """As the model's metadata, for version 1, the only one."""
    return _model_metadata(runtime, model_name, model_version)


def _model_metadata(runtime: Runtime, model_name: str, model_version: str | None) -> Response:
    _check_model(runtime, model_name, model_version)
    predictor = runtime.predictor
    return OrjsonResponse(
        {
            "name": predictor.config_name,
            "versions": [MODEL_VERSION],
            "platform": _PLATFORMS[predictor.backend],
            "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [
                {"name": name, "datatype": datatype, "shape": shape}
                for name, (datatype, shape) in OUTPUTS.items()
            ],
        }
    )


# --------------------------------------------------------------------------------------------------
# Inference


_INFER_RESPONSES = {200: _INFER_ANSWER, **_errors(400, 401, 404, 413, 415, 422, 500, 503, 504)}


@model_router.post(
    "/v2/models/{model_name}/infer",
    response_model=InferenceResponse,
    responses=_INFER_RESPONSES,
    openapi_extra={"requestBody": _INFER_BODY},
    summary="Open Inference Protocol: segment images",
)
async def infer(
    request: Request, runtime: RuntimeDep, settings: SettingsDep, uploads: UploadsDep, model_name: ModelName
) -> Response:
    """Segment the images of the `image` input (one batch) and answer the instances as named tensors.

    The same images sent to `/segment` get the same instances; the parameters (`score_threshold`,
    `max_detections`, `mask_format`, `classes`) default to the service's settings, as there.
    """
    return await _infer(request, runtime, settings, uploads, model_name, None)


@model_router.post(
    "/v2/models/{model_name}/versions/{model_version}/infer",
    response_model=InferenceResponse,
    responses=_INFER_RESPONSES,
    openapi_extra={"requestBody": _INFER_BODY},
    summary="Open Inference Protocol: segment images with a model version",
)
async def infer_version(
    request: Request,
    runtime: RuntimeDep,
    settings: SettingsDep,
    uploads: UploadsDep,
    model_name: ModelName,
    model_version: ModelVersion,
) -> Response:
    """As infer, with version 1, the only one."""
    return await _infer(request, runtime, settings, uploads, model_name, model_version)


async def _infer(
    request: Request,
    runtime: Runtime,
    settings: Settings,
    uploads: Uploads,
    model_name: str,
    model_version: str | None,
) -> Response:
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise UnsupportedMediaType(
            "compressed request bodies are not supported: send it without Content-Encoding"
        )
    async with runtime.admitted():
        _check_model(runtime, model_name, model_version)
        parsed = parse_request(await uploads.read_tensor_body(request), request.headers.get(HEADER_LENGTH))
        options = _options(parsed.parameters, settings, runtime)
        outputs = parsed.outputs
        if outputs is None:
            wanted = [name for name in OUTPUTS if name != "masks" or options.mask_format != "none"]
            outputs = dict.fromkeys(wanted, parsed.binary_output)
        elif "masks" in outputs and options.mask_format == "none":
            raise InvalidRequest("the output 'masks' was asked for with mask_format none")
        images = uploads.images(parsed.images)
        try:
            results = await unless_disconnected(request, runtime.segment(images, options))
        except ImageFailed as failed:
            raise failed.error.for_image(failed.index) from None
    header: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION}
    if parsed.id is not None:
        header["id"] = parsed.id
    return encode_response(header, _tensors(results, outputs), outputs)


def _require_ready(runtime: Runtime) -> None:
    if runtime.phase is Phase.FAILED:
        raise WorkerFailed("the service has failed and awaits a restart")
    if runtime.phase is not Phase.READY:
        raise NotReady(f"the service is {runtime.phase}")


def _check_model(runtime: Runtime, model_name: str, model_version: str | None) -> None:
    served = runtime.predictor.config_name
    if model_name not in (served, MODEL_ALIAS):
        raise UnknownModel(
            f"unknown model {model_name[:100]!r}: this server serves {served!r} (or {MODEL_ALIAS!r})"
        )
    if model_version is not None and model_version != MODEL_VERSION:
        raise UnknownModel(
            f"unknown version {model_version[:20]!r} of {model_name}: the only one is {MODEL_VERSION!r}"
        )


# --------------------------------------------------------------------------------------------------
# The request's encoding


@dataclass(frozen=True)
class ParsedRequest:
    id: str | None
    images: list[bytes]
    parameters: dict[str, Any]
    # Output name → binary, when the request names outputs; else every output, binary if binary_output.
    outputs: dict[str, bool] | None
    binary_output: bool


def parse_request(body: bytes, header_length: str | None) -> ParsedRequest:
    """An infer request's body (JSON, or JSON then binary tensors) → its images, parameters and outputs."""
    json_part, binary = body, b""
    if header_length is not None:
        if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
            raise InvalidRequest(
                f"Inference-Header-Content-Length {header_length[:20]!r} is not a length within the body "
                f"of {len(body)} bytes"
            )
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        message = orjson.loads(json_part)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"the request is not JSON: {error}") from None
    if not isinstance(message, dict):
        raise InvalidRequest("the request must be a JSON object with 'inputs'")
    inputs = message.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidRequest(f"the request takes one input, {INPUT!r}: a BYTES tensor of encoded images")
    images, used = _images(inputs[0], binary)
    if used != len(binary):
        raise InvalidRequest(f"{len(binary) - used} bytes of binary data follow the tensors")
    parameters = _object(message.get("parameters"), "parameters")
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidRequest("the parameter binary_data_output must be true or false")
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("the request's id must be a string")
    return ParsedRequest(
        request_id, images, parameters, _outputs(message.get("outputs"), binary_output), binary_output
    )


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return value


def _images(tensor: dict[str, Any], binary: bytes) -> tuple[list[bytes], int]:
    """The encoded images of the input tensor, and how many bytes of `binary` they took."""
    if tensor.get("name") != INPUT or tensor.get("datatype") != "BYTES":
        raise InvalidRequest(
            f"the input must be {INPUT!r} of datatype BYTES (encoded images), not "
            f"{str(tensor.get('name'))[:50]!r} of {str(tensor.get('datatype'))[:20]}"
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 2
        or not all(isinstance(side, int) and not isinstance(side, bool) for side in shape)
        or shape[0] < 1
        or shape[1:] not in ([], [1])
    ):
        raise InvalidRequest(
            f"the shape of {INPUT!r} must be [n] or [n, 1] for n images, not {str(shape)[:50]}"
        )
    count = shape[0]
    size = _object(tensor.get("parameters"), "the input's parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise InvalidRequest(
                f"binary_data_size {str(size)[:20]} exceeds the {len(binary)} binary bytes sent"
            )
        return _bytes_elements(binary[:size], count), size
    data = tensor.get("data")
    if not isinstance(data, list) or len(data) != count or not all(isinstance(item, str) for item in data):
        raise InvalidRequest(
            f"the data of {INPUT!r} must be {count} base64 strings, one per image (its shape)"
        )
    try:
        return [base64.b64decode(item, validate=True) for item in data], 0
    except binascii.Error as error:
        raise InvalidRequest(f"an image is not valid base64: {error}") from None


def _bytes_elements(raw: bytes, count: int) -> list[bytes]:
    """A BYTES tensor's binary form: each element as a 4-byte little-endian length, then its bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidRequest("the binary BYTES tensor ends inside an element's length")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise InvalidRequest("the binary BYTES tensor ends inside an element")
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if len(elements) != count:
        raise InvalidRequest(f"the binary tensor holds {len(elements)} elements, its shape says {count}")
    return elements


def _outputs(requested: Any, binary_default: bool) -> dict[str, bool] | None:
    if requested is None:
        return None
    if not isinstance(requested, list) or not requested:
        raise InvalidRequest("outputs must be a non-empty list of {'name': ...} objects")
    outputs = {}
    for output in requested:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUTS:
            raise InvalidRequest(f"unknown output {str(name)[:50]!r}; the outputs are {', '.join(OUTPUTS)}")
        binary = _object(output.get("parameters"), f"the parameters of output {name}").get(
            "binary_data", binary_default
        )
        if not isinstance(binary, bool):
            raise InvalidRequest(f"the binary_data parameter of output {name} must be true or false")
        outputs[name] = binary
    return outputs


def _options(parameters: dict[str, Any], settings: Settings, runtime: Runtime) -> SegmentOptions:
    """The request's parameters as /segment's options (the same defaults, the same ranges)."""
    threshold = parameters.get("score_threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1
    ):
        raise InvalidRequest(f"score_threshold must be a number from 0 to 1, not {str(threshold)[:20]}")
    max_detections = parameters.get("max_detections")
    if max_detections is not None and (
        isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1
    ):
        raise InvalidRequest(
            f"max_detections must be an integer of at least 1, not {str(max_detections)[:20]}"
        )
    mask_format = parameters.get("mask_format", "rle")
    if mask_format not in MASK_FORMATS:
        raise InvalidRequest(
            f"mask_format must be one of {', '.join(MASK_FORMATS)}, not {str(mask_format)[:20]}"
        )
    classes = parameters.get("classes")
    if classes is not None and not isinstance(classes, str):
        raise InvalidRequest("classes must be a string of comma-separated class selectors, as in /segment")
    class_agnostic_nms = parameters.get("class_agnostic_nms")
    if class_agnostic_nms is not None and not isinstance(class_agnostic_nms, bool):
        raise InvalidRequest(f"class_agnostic_nms must be true or false, not {str(class_agnostic_nms)[:20]}")
    return resolve_options(
        settings,
        runtime.predictor,
        score_threshold=threshold,
        max_detections=max_detections,
        classes=[classes] if classes else (),
        mask_format=mask_format,
        class_agnostic_nms=class_agnostic_nms,
    )


# --------------------------------------------------------------------------------------------------
# The answer's encoding


@dataclass(frozen=True)
class Tensor:
    datatype: str
    shape: list[int]
    data: list[Any]  # flat, row-major; str for BYTES


def _tensors(results: Sequence[Segmented], wanted: dict[str, bool]) -> dict[str, Tensor]:
    """The instances of every image, concatenated in input order, as the protocol's output tensors."""
    rows = [
        (index, instance) for index, result in enumerate(results) for instance in result.record["instances"]
    ]
    count = len(rows)
    columns: dict[str, Any] = {
        "boxes": lambda: [value for _, instance in rows for value in instance["box"]],
        "scores": lambda: [instance["score"] for _, instance in rows],
        "class_ids": lambda: [instance["class_id"] for _, instance in rows],
        "class_names": lambda: [instance["class_name"] for _, instance in rows],
        "mask_scores": lambda: [instance["mask_score"] for _, instance in rows],
        "masks": lambda: [orjson.dumps(instance["mask"]).decode() for _, instance in rows],
        "image_index": lambda: [index for index, _ in rows],
    }
    tensors = {}
    for name in wanted:
        datatype, shape = OUTPUTS[name]
        tensors[name] = Tensor(datatype, [count, *shape[1:]], columns[name]())
    return tensors


def encode_response(header: dict[str, Any], tensors: dict[str, Tensor], binary: dict[str, bool]) -> Response:
    """The protocol's JSON answer; outputs asked for as binary follow it (binary tensor extension)."""
    outputs, blobs = [], []
    for name, tensor in tensors.items():
        output: dict[str, Any] = {"name": name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary[name]:
            blob = _binary(tensor)
            output["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            output["data"] = tensor.data
        outputs.append(output)
    body = orjson.dumps({**header, "outputs": outputs})
    if not blobs:
        return Response(body, media_type="application/json")
    return Response(
        b"".join([body, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(body))},
    )


def _binary(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        encoded = [item.encode() for item in tensor.data]
        return b"".join(struct.pack("<I", len(item)) + item for item in encoded)
    return np.asarray(tensor.data, dtype=_NUMPY_TYPES[tensor.datatype]).tobytes()
