"""What endpoints depend on: the app's settings, runtime, metrics and upload guards, the API key, and the
request's segmentation options. Each as an `Annotated` alias for handler signatures."""

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Iterator, Mapping
from typing import Annotated, TypeVar

from fastapi import Depends, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from centermask_client.schemas import SegmentParameters
from service.errors import AdminDisabled, ClientClosedRequest, Unauthorized
from service.metrics import Metrics
from service.options import SegmentOptions, resolve_options
from service.registry import ModelRegistry
from service.runtime import Runtime, ServedModel
from service.settings import Settings
from service.uploads import Uploads

T = TypeVar("T")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_models(request: Request) -> ModelRegistry:
    return request.app.state.runtime.models


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_uploads(request: Request) -> Uploads:
    return request.app.state.uploads


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ModelsDep = Annotated[ModelRegistry, Depends(get_models)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
UploadsDep = Annotated[Uploads, Depends(get_uploads)]
ApiKeyHeader = Annotated[str | None, Depends(APIKeyHeader(name="X-API-Key", auto_error=False))]
BearerHeader = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def api_key_is_valid(settings: Settings, offered: str) -> bool:
    """Whether `offered` is the configured API key (always true when none is configured)."""
    if settings.api_key is None:
        return True
    return _same_secret(settings.api_key.get_secret_value(), offered)


def _same_secret(expected: str, offered: str) -> bool:
    # Digests of equal length, compared in constant time: the timing says nothing about the key,
    # not even its length.
    digest = hashlib.sha256(expected.encode()).digest()
    return hmac.compare_digest(hashlib.sha256(offered.encode("utf-8", "replace")).digest(), digest)


def offered_api_key(headers: Mapping[str, str]) -> str | None:
    """The key in X-API-Key or Authorization: Bearer, None when neither header carries one (a WebSocket
    handshake's headers, which FastAPI's security dependencies do not read)."""
    if "x-api-key" in headers:
        return headers["x-api-key"]
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


def require_api_key(settings: SettingsDep, api_key: ApiKeyHeader, bearer: BearerHeader) -> None:
    if settings.api_key is None:
        return
    offered = api_key if api_key is not None else (bearer.credentials if bearer is not None else "")
    if not api_key_is_valid(settings, offered):
        raise Unauthorized("a valid API key is required, in X-API-Key or Authorization: Bearer")


def require_admin_key(settings: SettingsDep, api_key: ApiKeyHeader, bearer: BearerHeader) -> None:
    """Repository changes need CENTERMASK_ADMIN_KEY (never the inference key); none set: 403."""
    if settings.admin_key is None:
        raise AdminDisabled(
            "the model repository's endpoints are disabled: set CENTERMASK_ADMIN_KEY (a secret other than "
            "CENTERMASK_API_KEY) to enable them, and send it in X-API-Key or Authorization: Bearer"
        )
    offered = api_key if api_key is not None else (bearer.credentials if bearer is not None else "")
    if not admin_key_is_valid(settings, offered):
        raise Unauthorized("a valid admin key is required, in X-API-Key or Authorization: Bearer")


def admin_key_is_valid(settings: Settings, offered: str) -> bool:
    """Whether `offered` is the configured admin key (never true when none is configured: then the
    repository's endpoints are off, and answer 403 before asking)."""
    return settings.admin_key is not None and _same_secret(settings.admin_key.get_secret_value(), offered)


def require_api_key_for_probes(settings: SettingsDep, api_key: ApiKeyHeader, bearer: BearerHeader) -> None:
    """The probes and /metrics need the key only with CENTERMASK_PROTECT_PROBES."""
    if settings.protect_probes:
        require_api_key(settings, api_key, bearer)


ModelQuery = Annotated[
    str | None,
    Query(
        alias="model",
        max_length=128,
        description="The model to run, by name (`GET /v1/models` lists them). Default: the first model, by "
        "name (without a repository, the only one).",
    ),
]


def leased_model(models: ModelsDep, name: ModelQuery = None) -> Iterator[ServedModel]:
    """The `model=` query parameter's model, held until the answer is sent: a reload meanwhile finishes
    this request on the version it started on. 404 for an unknown name, 503 while it loads."""
    with models.lease(name) as served:
        yield served


ModelDep = Annotated[ServedModel, Depends(leased_model)]


def segment_options(
    settings: SettingsDep, model: ModelDep, parameters: Annotated[SegmentParameters, Query()]
) -> SegmentOptions:
    """The query string's parameters (validated by `SegmentParameters`), resolved against the defaults
    and the requested model's classes."""
    return resolve_options(settings, model.predictor, parameters)


OptionsDep = Annotated[SegmentOptions, Depends(segment_options)]


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
