"""Python client of the CenterMask service: `Client`, `AsyncClient`, typed results and errors.

    from centermask_client import Client

    with Client("http://localhost:8000") as client:
        result = client.segment("shapes.png")
        masks = [instance.mask_array() for instance in result.instances]  # (H, W) bool each

Imports without torch. The HTTP clients need httpx (`pip install 'centermask-serve[client]'`); they
load on first use, so the schemas, errors and drawing work without it (the service imports them).
"""

from typing import TYPE_CHECKING, Any

from centermask_client.errors import (
    ApiError,
    CenterMaskError,
    ConnectionFailed,
    DeadlineExceeded,
    InvalidParameter,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
)
from centermask_client.schemas import (
    BatchResponse,
    ImageResult,
    Instance,
    Mask,
    ModelInfo,
    PolygonPart,
    SegmentResponse,
)

if TYPE_CHECKING:
    from centermask_client.client import NO_RETRY, AsyncClient, Client, RetryPolicy

_HTTP_NAMES = frozenset({"Client", "AsyncClient", "RetryPolicy", "NO_RETRY"})

__all__ = [
    "NO_RETRY",
    "ApiError",
    "AsyncClient",
    "BatchResponse",
    "CenterMaskError",
    "Client",
    "ConnectionFailed",
    "DeadlineExceeded",
    "ImageResult",
    "Instance",
    "InvalidParameter",
    "InvalidRequest",
    "Mask",
    "ModelInfo",
    "NotFound",
    "PayloadTooLarge",
    "PolygonPart",
    "RetryPolicy",
    "SegmentResponse",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
]


def __getattr__(name: str) -> Any:
    if name in _HTTP_NAMES:
        try:
            from centermask_client import client
        except ImportError as missing:
            raise ImportError(
                f"centermask_client.{name} needs {missing.name}: pip install 'centermask-serve[client]'"
            ) from missing
        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
