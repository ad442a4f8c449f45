"""The Open Inference Protocol (KServe v2, also spoken by Triton, Seldon MLServer and TorchServe) over HTTP.

Beside the service's own API, with the same batcher, limits, upload guards, metrics and API key: an infer
request is segmented by its model's `ServedModel.segment`, exactly as `/segment/batch` would, and its answer
holds the same instances. What the protocol means is `service.v2.dataplane`, shared with gRPC.

* `GET /v2`, `/v2/health/live`, `/v2/health/ready`: server metadata and health (open like the probes).
* `GET /v2/models/{name}[/versions/{version}]/ready`: model readiness (open like the probes).
* `GET /v2/models/{name}[/versions/{version}]`: model metadata; `POST .../infer`: inference (the API key).
* `/v2/repository/...`: the model repository extension (service/v2/repository.py; the admin key).

Models are found by name through the registry (`ModelRegistry.lease`, service/registry.py), as `/segment`
finds them: a repository's folder names, or without one the served config's name (e.g.
`centermask_lite_V_19_slim_eSE_FPN_ms_4x`) or `centermask`. A model's version is its weights' SHA-256
prefix (`model_version` of every answer); `1`, the only version before there were several, is still
accepted in paths and means the current one. Request parameters `score_threshold`, `max_detections`, `mask_format` (`rle`, `polygon`,
`none`), `classes` and `class_agnostic_nms` mean what the query parameters of `/segment` mean. The outputs
hold the instances of all images, concatenated in input order, each image's best first: `image_index` says
which image an instance belongs to (docs/api.md). The encoding is `service.v2.codec`, the messages
`service.v2.models`.

Errors are `{"error": "<message>"}` with the service's statuses (service/errors.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import Response

from service import tracing
from service.deps import (
    ModelsDep,
    RuntimeDep,
    SettingsDep,
    UploadsDep,
    require_api_key,
    require_api_key_for_probes,
    unless_disconnected,
)
from service.errors import UnsupportedMediaType
from service.metrics import Protocol
from service.registry import MODEL_ALIAS, ModelRegistry
from service.responses import OrjsonResponse
from service.runtime import Runtime
from service.settings import Settings
from service.uploads import Uploads
from service.v2 import dataplane
from service.v2.codec import HEADER_LENGTH, encode_response, parse_request
from service.v2.models import (
    MODEL_VERSION,
    InferenceErrorBody,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
)

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

ModelName = Annotated[
    str,
    Path(
        description=f"The model's name: a repository folder's; without a repository the served config's, or "
        f"`{MODEL_ALIAS}`"
    ),
]
ModelVersion = Annotated[
    str,
    Path(
        description=f"The model's version (its weights' SHA-256 prefix), or `{MODEL_VERSION}` for the current one"
    ),
]

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
    return dataplane.server_metadata(request.app.version)


@probe_router.get(
    "/v2/health/live",
    response_model=ServerLive,
    responses=_errors(401, 503),
    summary="Open Inference Protocol: liveness",
)
async def server_live(runtime: RuntimeDep) -> Response:
    """200 while the process and its inference worker are alive (as `/healthz`)."""
    dataplane.require_live(runtime)
    return OrjsonResponse({"live": True})


@probe_router.get(
    "/v2/health/ready",
    response_model=ServerReady,
    responses=_errors(401, 503),
    summary="Open Inference Protocol: readiness",
)
async def server_ready(runtime: RuntimeDep) -> Response:
    """200 once the model is loaded and warm, 503 while loading and draining (as `/readyz`)."""
    dataplane.require_ready(runtime)
    return OrjsonResponse({"ready": True})


@probe_router.get(
    "/v2/models/{model_name}/ready",
    response_model=ModelReady,
    responses=_errors(401, 404, 503),
    summary="Open Inference Protocol: model readiness",
)
async def model_ready(runtime: RuntimeDep, model_name: ModelName) -> Response:
    """200 once the model is ready to infer; 404 for a model not served; 503 while not ready."""
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
    dataplane.require_serving(runtime)
    runtime.models.get(model_name, model_version)  # 404 for a model not served, 503 while it loads
    return OrjsonResponse({"name": model_name, "ready": True})


@model_router.get(
    "/v2/models/{model_name}",
    response_model=ModelMetadata,
    responses=_errors(401, 404, 503),
    summary="Open Inference Protocol: model metadata",
)
async def model_metadata(models: ModelsDep, model_name: ModelName) -> Response:
    """The model's versions, platform, input and outputs. `-1` in an output's shape is the number of
    instances in all the request's images."""
    return _model_metadata(models, model_name, None)


@model_router.get(
    "/v2/models/{model_name}/versions/{model_version}",
    response_model=ModelMetadata,
    responses=_errors(401, 404, 503),
    summary="Open Inference Protocol: model version metadata",
)
async def model_version_metadata(
    models: ModelsDep, model_name: ModelName, model_version: ModelVersion
) -> Response:
    """As the model's metadata, for its current version."""
    return _model_metadata(models, model_name, model_version)


def _model_metadata(models: ModelRegistry, model_name: str, model_version: str | None) -> Response:
    return OrjsonResponse(dataplane.model_metadata(models.get(model_name, model_version)))


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
    """As infer, with the model's current version."""
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
    with runtime.models.lease(model_name, model_version) as served:
        async with runtime.admitted(served):
            with tracing.stage("receive"):
                body = await uploads.read_tensor_body(request)
                parsed = parse_request(body, request.headers.get(HEADER_LENGTH))
            answer = await dataplane.infer(
                served,
                settings,
                uploads,
                model_name,
                parsed,
                protocol=Protocol.HTTP,
                until=lambda work: unless_disconnected(request, work),
            )
    with tracing.stage("encode"):
        return encode_response(answer.header, answer.tensors, answer.binary)
