"""The Open Inference Protocol's model repository extension (Triton's), over HTTP, behind the admin key.

* `POST /v2/repository/index` (`{"ready": bool}`, optional): every model of the repository, loaded or not,
  as `[{"name", "version", "state", "reason"}]`.
* `POST /v2/repository/models/{name}/load`: load the model from its folder, or reload it: the new version
  is loaded and warmed up beside the one being served, then switched to; requests already holding the
  former version finish on it (service/registry.py). `{"parameters": {"config": "<JSON text>"}}` loads it
  with that config.json in place of the folder's (`service.v2.dataplane.load_config`). Answers once the new
  version serves, with its index entry.
* `POST /v2/repository/models/{name}/unload`: stop serving it; requests holding it finish first.

Every one needs CENTERMASK_ADMIN_KEY (X-API-Key or Bearer); without one configured they answer 403.
Errors are the protocol's `{"error": "<message>", "code": "<code>"}`.
"""

from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from service.deps import ModelsDep, require_admin_key
from service.errors import InvalidRequest, describe_problems
from service.registry import IndexEntry
from service.responses import OrjsonResponse
from service.v2 import dataplane
from service.v2.models import (
    InferenceErrorBody,
    RepositoryIndexEntry,
    RepositoryIndexRequest,
    RepositoryRequest,
)

router = APIRouter(
    dependencies=[Depends(require_admin_key)], tags=["Open Inference Protocol: model repository"]
)

_ERRORS = {
    400: "A body that is not JSON, or parameters that are not taken (`invalid_request`: for a load, a "
    "`config` that is not valid options, or `file:` uploads); for a load, a folder that cannot be served as "
    "it is (`invalid_model`: no model.pth, a bad config.json) or a failed load (`load_failed`): the version "
    "served before, if any, still is.",
    401: "An admin key is configured and the request lacks it or has another one.",
    403: "No admin key is configured (CENTERMASK_ADMIN_KEY): the repository endpoints are disabled.",
    404: "No model of that name in the repository.",
    422: "A malformed body.",
    507: "The model would not fit in the memory left.",
}

ModelName = Annotated[str, Path(max_length=128, description="The model's folder name in the repository")]
BodyT = TypeVar("BodyT", bound=BaseModel)
# Read by hand (`_body`): Triton's clients send an empty body, or JSON without a Content-Type.
_INDEX_BODY = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RepositoryIndexRequest"}}}
}
_CHANGE_BODY = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RepositoryRequest"}}}
}
# The largest body taken: these bodies are a few bytes.
_MAX_BODY = 64 * 1024


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": InferenceErrorBody, "description": _ERRORS[status]} for status in statuses}


def _entry(entry: IndexEntry) -> dict[str, Any]:
    return {
        "name": entry.name,
        **({"version": entry.version} if entry.version else {}),
        "state": entry.state,
        "reason": entry.reason,
    }


@router.post(
    "/v2/repository/index",
    response_model=list[RepositoryIndexEntry],
    responses=_errors(400, 401, 403),
    openapi_extra={"requestBody": _INDEX_BODY},
    summary="Model repository: every model, loaded or not",
)
async def repository_index(request: Request, models: ModelsDep) -> Response:
    """Each model of the repository with its loaded version, its state (READY, LOADING, UNAVAILABLE) and
    why. `{"ready": true}`: only the models ready for inference."""
    body = await _body(request, RepositoryIndexRequest)
    ready_only = body is not None and body.ready
    return OrjsonResponse([_entry(entry) for entry in models.index(ready_only=ready_only)])


@router.post(
    "/v2/repository/models/{model_name}/load",
    response_model=RepositoryIndexEntry,
    responses=_errors(400, 401, 403, 404, 422, 507),
    openapi_extra={"requestBody": _CHANGE_BODY},
    summary="Model repository: load or reload a model, without downtime",
)
async def repository_load(request: Request, models: ModelsDep, model_name: ModelName) -> Response:
    """Load the model from its folder (`model.pth`, `config.json`), or reload it: the new version is loaded
    and warmed up beside the served one, then switched to at once; requests already on the former version
    finish on it, and it is then freed. Answers when the new version serves (its index entry).

    Parameter `config` (Triton's): the JSON text of a config.json, which this load reads instead of the
    folder's (e.g. `{"parameters": {"config": "{\\"precision\\": \\"bf16\\"}"}}`); the weights are always the
    folder's `model.pth`."""
    body = await _body(request, RepositoryRequest)
    config = dataplane.load_config(_parameters(body))
    served = await models.load(model_name, config)
    [entry] = [entry for entry in models.index() if entry.name == served.name]
    return OrjsonResponse(_entry(entry))


@router.post(
    "/v2/repository/models/{model_name}/unload",
    response_model=RepositoryIndexEntry,
    responses=_errors(400, 401, 403, 404, 422),
    openapi_extra={"requestBody": _CHANGE_BODY},
    summary="Model repository: unload a model",
)
async def repository_unload(request: Request, models: ModelsDep, model_name: ModelName) -> Response:
    """Stop serving the model: new requests for it get 404, those already admitted finish first. Its
    folder stays; `load` serves it again. Parameter `unload_dependents` is accepted (no model here
    depends on another)."""
    body = await _body(request, RepositoryRequest)
    dataplane.check_unload_parameters(_parameters(body))
    await models.unload(model_name)
    name = models.resolve_alias(model_name)
    entries = [entry for entry in models.index() if entry.name == name]
    return OrjsonResponse(
        _entry(entries[0]) if entries else {"name": name, "state": "UNAVAILABLE", "reason": "unloaded"}
    )


async def _body(request: Request, model: type[BodyT]) -> BodyT | None:
    """The optional JSON body, whatever its Content-Type (none, as Triton's clients send it); 400 otherwise."""
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > _MAX_BODY:
            raise InvalidRequest(f"the body is larger than {_MAX_BODY} bytes")
    if not data.strip():
        return None
    try:
        return model.model_validate(orjson.loads(data))
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"the body is not JSON: {error}") from None
    except ValidationError as error:
        raise InvalidRequest(describe_problems(error.errors())) from None


def _parameters(body: RepositoryRequest | None) -> dict[str, Any]:
    """A load's or unload's parameters; none without a body."""
    return (body.parameters if body is not None else None) or {}
