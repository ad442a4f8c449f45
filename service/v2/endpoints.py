"""The Open Inference Protocol (KServe v2, also spoken by Triton, Seldon MLServer and TorchServe) over HTTP.

Beside the service's own API, with the same batcher, limits, upload guards, metrics and API key: an infer
request is segmented by `Runtime.segment`, exactly as `/segment/batch` would, and its answer holds the
same instances.

* `GET /v2`, `/v2/health/live`, `/v2/health/ready`: server metadata and health (open like the probes).
* `GET /v2/models/{name}[/versions/1]/ready`: model readiness (open like the probes).
* `GET /v2/models/{name}[/versions/1]`: model metadata; `POST .../infer`: inference (the API key, if set).

The model is named by its config (e.g. `centermask_lite_V_19_slim_eSE_FPN_ms_4x`) or `centermask`; its only
version is `1`. Request parameters `score_threshold`, `max_detections`, `mask_format` (`rle`, `polygon`,
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

from service.deps import (
    RuntimeDep,
    SettingsDep,
    UploadsDep,
    require_api_key,
    require_api_key_for_probes,
    unless_disconnected,
)
from service.errors import InvalidRequest, NotReady, UnsupportedMediaType, WorkerFailed
from service.options import resolve_options
from service.responses import OrjsonResponse
from service.runtime import ImageFailed, Phase, Runtime
from service.settings import Settings
from service.uploads import Uploads
from service.v2.codec import HEADER_LENGTH, encode_response, parse_request, segment_parameters, tensors
from service.v2.models import (
    EXTENSIONS,
    INPUT,
    MODEL_ALIAS,
    MODEL_VERSION,
    OUTPUTS,
    PLATFORMS,
    InferenceErrorBody,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
)


class UnknownModel(InvalidRequest):
    status_code = 404
    code = "not_found"


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
            "platform": PLATFORMS[predictor.backend],
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
        options = resolve_options(settings, runtime.predictor, segment_parameters(parsed.parameters))
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
    tiles = [result.record.get("tiling", {}).get("tiles", 0) for result in results]
    if any(tiles):
        # The tiles each image was segmented in (0: not tiled), as a string: the protocol's parameters hold
        # scalars only.
        header["parameters"] = {"tiles": ",".join(map(str, tiles))}
    return encode_response(header, tensors([result.record for result in results], list(outputs)), outputs)


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
