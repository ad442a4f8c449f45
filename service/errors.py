"""Every error the service answers, in one JSON shape: `{"error": {"code": ..., "message": ...}}`.

A batch request that fails because of one of its images adds that image's position: `"index": 2`.
Responses never carry stack traces, file paths or exception texts: a 500 says "internal error" and the
request id, and the details go to the log under that id. Unexpected exceptions are answered as
`internal_error` by the request middleware.

Under `/v2` (the Open Inference Protocol, `service.v2`) the same errors take that protocol's shape,
`{"error": "<message>", "code": "<code>"}` (clients of the protocol read `error`), with the same status and
headers.
"""

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from model.wire.records import error_body
from service.logging import error_code, request_id
from service.metrics import Protocol
from service.responses import OrjsonResponse

RETRY_AFTER_S = 1
# Where the Open Inference Protocol's endpoints live.
INFERENCE_PROTOCOL_PREFIX = "/v2"


class ServiceError(Exception):
    status_code: ClassVar[int]
    code: ClassVar[str]
    headers: ClassVar[dict[str, str]] = {}
    # The `centermask_rejected_total` reason, for errors that turn a request away unserved.
    rejection: ClassVar[str | None] = None

    def __init__(self, message: str, *, index: int | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
        self.file = file

    def for_image(self, index: int, file: str | None = None) -> "ServiceError":
        """The same error, attributed to one image of a batch request (its position and filename)."""
        return type(self)(self.message, index=index, file=file)

    def to_response(self, path: str = "") -> Response:
        """The error's answer to a request for `path` (whose prefix decides the body's shape)."""
        message = self.message
        if self.status_code == 500:
            message = f"{message}; request id {request_id.get()}"
        return error_response(
            self.status_code,
            self.code,
            message,
            index=self.index,
            file=self.file,
            headers=self.headers,
            path=path,
        )


class InvalidImage(ServiceError):
    status_code = 400
    code = "invalid_image"


class InvalidRequest(ServiceError):
    status_code = 400
    code = "invalid_request"


class InvalidVideo(ServiceError):
    status_code = 400
    code = "invalid_video"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class ForbiddenOrigin(ServiceError):
    """A browser page of another origin opened a WebSocket (which CORS does not cover)."""

    status_code = 403
    code = "forbidden_origin"


class AdminDisabled(ServiceError):
    """A repository change, on a server with no admin key configured."""

    status_code = 403
    code = "admin_disabled"


class UnknownModel(ServiceError):
    status_code = 404
    code = "unknown_model"


class InvalidModel(ServiceError):
    """A model folder that cannot be served as it is (no weights, a bad config.json, options the device
    cannot run)."""

    status_code = 400
    code = "invalid_model"


class ModelLoadFailed(ServiceError):
    """Reading or warming up a model's weights failed; the version served before (if any) still is."""

    status_code = 400
    code = "load_failed"


class RequestTimeout(ServiceError):
    status_code = 408
    code = "request_timeout"
    # A client too slow to send its body is not kept. (A 413 does not close: closing with the body's
    # rest unread makes the client's TCP stack drop the answer, so uvicorn reads and discards the
    # rest, for at most the idle timeout.)
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}
    rejection = "body_timeout"


class ImageTooLarge(ServiceError):
    status_code = 413
    code = "image_too_large"


class TooManyPixels(ServiceError):
    status_code = 413
    code = "too_many_pixels"


class TooManyImages(ServiceError):
    status_code = 413
    code = "too_many_images"


class VideoTooLarge(ServiceError):
    status_code = 413
    code = "video_too_large"


class VideoTooLong(ServiceError):
    status_code = 413
    code = "video_too_long"


class UnsupportedMediaType(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidParameter(ServiceError):
    status_code = 422
    code = "invalid_parameter"


class ClientClosedRequest(ServiceError):
    # The client never reads this answer; the status only labels the request in logs and metrics.
    status_code = 499
    code = "client_closed_request"
    rejection = "client_gone"


class InferenceFailed(ServiceError):
    """The forward pass raised for this image, even alone. The message never holds the exception."""

    status_code = 500
    code = "inference_failed"

    def __init__(
        self,
        message: str = "internal error while running the model",
        *,
        index: int | None = None,
        file: str | None = None,
    ) -> None:
        super().__init__(message, index=index, file=file)


class InternalError(ServiceError):
    """Something unexpected, where the answer has already begun (a stream's last line says it)."""

    status_code = 500
    code = "internal_error"


class NotImplementedHere(ServiceError):
    """A feature whose optional dependency this installation lacks (video needs PyAV)."""

    status_code = 501
    code = "not_implemented"


class NotReady(ServiceError):
    status_code = 503
    code = "not_ready"
    headers: ClassVar[dict[str, str]] = {"Retry-After": str(RETRY_AFTER_S)}
    rejection = "not_ready"


class Overloaded(ServiceError):
    status_code = 503
    code = "overloaded"
    headers: ClassVar[dict[str, str]] = {"Retry-After": str(RETRY_AFTER_S)}
    rejection = "queue_full"


class TooManyUploads(Overloaded):
    rejection = "uploads_full"


class TooManyStreams(Overloaded):
    """A new `/segment/stream` connection while `CENTERMASK_MAX_STREAMS` are open."""

    rejection = "streams_full"


class OutOfMemory(ServiceError):
    """The device ran out of memory for this image even alone; other requests carry on."""

    status_code = 503
    code = "out_of_memory"
    headers: ClassVar[dict[str, str]] = {"Retry-After": str(RETRY_AFTER_S)}


class WorkerFailed(ServiceError):
    """The inference worker is out of service (device fault, hung or dead): the process awaits restart."""

    status_code = 503
    code = "worker_failed"
    headers: ClassVar[dict[str, str]] = {"Retry-After": str(RETRY_AFTER_S)}
    rejection = "worker_failed"


class InsufficientMemory(ServiceError):
    """A model that would not fit in the memory left (checked before loading it)."""

    status_code = 507
    code = "insufficient_memory"


class DeadlineExceeded(ServiceError):
    status_code = 504
    code = "deadline_exceeded"
    rejection = "deadline"


def speaks_inference_protocol(path: str) -> bool:
    return path == INFERENCE_PROTOCOL_PREFIX or path.startswith(INFERENCE_PROTOCOL_PREFIX + "/")


def error_response(
    status_code: int,
    code: str,
    message: str,
    *,
    index: int | None = None,
    file: str | None = None,
    headers: Mapping[str, str] | None = None,
    path: str = "",
) -> Response:
    error_code.set(code)
    if speaks_inference_protocol(path):
        where = f"image {index}: " if index is not None else ""
        body = {"error": where + message, "code": code}
        return OrjsonResponse(body, status_code=status_code, headers=headers)
    return OrjsonResponse(error_body(code, message, index, file), status_code=status_code, headers=headers)


def internal_error_response(path: str = "") -> Response:
    return error_response(500, "internal_error", f"internal error; request id {request_id.get()}", path=path)


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)  # registered for it (install_error_handlers)
    if exc.rejection is not None:
        # Only HTTP errors are answered here: gRPC counts its rejections itself (service/grpc/servicer.py).
        request.app.state.metrics.rejected.labels(exc.rejection, Protocol.HTTP).inc()
    return exc.to_response(request.url.path)


def describe_problems(errors: Sequence[Any], *, skip: int = 0) -> str:
    """Validation errors (pydantic's `errors()`) as one message: `field: what is wrong; ...`. `skip` drops
    that many leading parts of each location (FastAPI's "query", "body")."""
    problems = []
    for error in errors:
        location = error["loc"][skip:] or error["loc"]
        problems.append(f"{'.'.join(str(part) for part in location)}: {error['msg']}")
    return "; ".join(problems)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # loc is e.g. ("query", "score_threshold"); the location kind is noise to a client.
    return InvalidParameter(describe_problems(exc.errors(), skip=1)).to_response(request.url.path)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status = HTTPStatus(exc.status_code)
    code = status.phrase.lower().replace(" ", "_").replace("-", "_")
    message = exc.detail if isinstance(exc.detail, str) else status.phrase
    return error_response(exc.status_code, code, message, headers=exc.headers, path=request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
