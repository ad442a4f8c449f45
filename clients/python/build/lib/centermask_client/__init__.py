"""Python client of the CenterMask service: `Client`, `AsyncClient`, typed results and errors.

    from centermask_client import Client

    with Client("http://localhost:8000") as client:
        result = client.segment("shapes.png")
        masks = [instance.mask_array() for instance in result.instances]  # (H, W) bool each

Its own distribution (`pip install ./clients/python`), without torch. The service depends on it for the
wire format (`centermask_client.schemas`, `centermask_client.rle`).
"""

from centermask_client.client import NO_RETRY, AsyncClient, Client, RetryPolicy
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
