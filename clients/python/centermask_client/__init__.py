"""Python client of the CenterMask service: `Client`, `AsyncClient`, typed results and errors.

    from centermask_client import Client

    with Client("http://localhost:8000") as client:
        result = client.segment("shapes.png")
        masks = [instance.mask_array() for instance in result.instances]  # (H, W) bool each
        for frame in client.segment_video("clip.mp4", fps=5):  # a line per frame, as they come
            print(frame.frame, frame.time_s, len(frame.instances))

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
    StreamClosed,
    Unauthorized,
    UnsupportedMediaType,
)
from centermask_client.frames import AsyncFrameStream, AsyncVideoFrames, FrameStream, VideoFrames
from centermask_client.schemas import (
    BatchResponse,
    ImageResult,
    Instance,
    Mask,
    ModelInfo,
    ModelList,
    ModelSummary,
    PolygonPart,
    SegmentResponse,
    StreamFrameResult,
    VideoFrameResult,
)

__all__ = [
    "NO_RETRY",
    "ApiError",
    "AsyncClient",
    "AsyncFrameStream",
    "AsyncVideoFrames",
    "BatchResponse",
    "CenterMaskError",
    "Client",
    "ConnectionFailed",
    "DeadlineExceeded",
    "FrameStream",
    "ImageResult",
    "Instance",
    "InvalidParameter",
    "InvalidRequest",
    "Mask",
    "ModelInfo",
    "ModelList",
    "ModelSummary",
    "NotFound",
    "PayloadTooLarge",
    "PolygonPart",
    "RetryPolicy",
    "SegmentResponse",
    "ServerError",
    "ServiceUnavailable",
    "StreamClosed",
    "StreamFrameResult",
    "Unauthorized",
    "UnsupportedMediaType",
    "VideoFrameResult",
    "VideoFrames",
]
