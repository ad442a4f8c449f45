"""Service errors as gRPC statuses: the code by what the error means, the details `<our code>: <message>`
(as the HTTP answer's `error.code` and `error.message`), and trailing metadata for what HTTP says in
headers: `retry-after` (seconds) where HTTP sends Retry-After, and there also gRPC's rich error model,
`grpc-status-details-bin` (a google.rpc.Status holding a google.rpc.RetryInfo), which Google's client
libraries and grpc-status readers understand.

Not every HTTP status has a gRPC twin: a request too large (HTTP 413) is an INVALID_ARGUMENT here,
since gRPC's RESOURCE_EXHAUSTED tells clients to retry later, which the same request never should.
RESOURCE_EXHAUSTED is the full queue (retry later, as HTTP's 503 `overloaded`), the device out of memory
for the image, and a message over the size limit (which gRPC itself refuses before we see it).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

from service.errors import ServiceError
from service.logging import request_id

# Our error code → its gRPC status code, where the code says more than the HTTP status.
_BY_CODE = {
    "overloaded": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "out_of_memory": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "not_ready": grpc.StatusCode.UNAVAILABLE,
    "worker_failed": grpc.StatusCode.UNAVAILABLE,
    "inference_failed": grpc.StatusCode.INTERNAL,
    # A model the memory left cannot hold: no retry will fit it until another is unloaded.
    "insufficient_memory": grpc.StatusCode.FAILED_PRECONDITION,
}
# The HTTP status → the gRPC status code, for the rest.
_BY_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Trailing metadata: the seconds to wait before retrying (HTTP's Retry-After), and our error code alone.
RETRY_AFTER = "retry-after"
ERROR_CODE = "centermask-error-code"
REQUEST_ID = "x-request-id"
STATUS_DETAILS = "grpc-status-details-bin"


@dataclass(frozen=True)
class Status:
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


def status_of(error: ServiceError) -> Status:
    """The gRPC status answering `error`."""
    code = _BY_CODE.get(error.code) or _BY_STATUS.get(error.status_code, grpc.StatusCode.UNKNOWN)
    message = error.message
    if error.status_code == 500:
        message = f"{message}; request id {request_id.get()}"
    if error.index is not None:
        message = f"image {error.index}: {message}"
    details = f"{error.code}: {message}"
    metadata: list[tuple[str, str | bytes]] = [(ERROR_CODE, error.code)]
    if "Retry-After" in error.headers:
        seconds = int(error.headers["Retry-After"])
        metadata.append((RETRY_AFTER, str(seconds)))
        metadata.append((STATUS_DETAILS, _retry_details(code, details, seconds)))
    return Status(code, details, tuple(metadata))


def _retry_details(code: grpc.StatusCode, details: str, seconds: int) -> bytes:
    """The rich status (google.rpc.Status) saying when to retry; its code and message are the call's own."""
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds))
    status = status_pb2.Status(code=code.value[0], message=details)
    status.details.add().Pack(retry)
    return status.SerializeToString()


def internal_error() -> Status:
    """An unexpected exception: nothing of it is said, only where to find it in the log."""
    return Status(
        grpc.StatusCode.INTERNAL,
        f"internal_error: internal error; request id {request_id.get()}",
        ((ERROR_CODE, "internal_error"),),
    )
