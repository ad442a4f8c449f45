"""Errors the client raises: one class per kind of failure, each carrying the server's error code.

try:
    client.segment("photo.jpg")
except ServiceUnavailable as error:    # 503 after the retry budget: error.retry_after_s
    ...
except CenterMaskError as error:       # anything else this package raises
    print(error.status, error.code, error.message)
"""

from __future__ import annotations


class CenterMaskError(Exception):
    """Base of every error of this package."""


class ConnectionFailed(CenterMaskError):
    """The service could not be reached, or the connection broke before an answer."""


class ApiError(CenterMaskError):
    """The service answered with an error status.

    `code` is the stable machine-readable code of the body (`invalid_image`, `overloaded`, ...),
    `index` and `file` the failing image of a batch request (its position and filename), `request_id` the X-Request-ID to look up in the
    service's logs.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        index: int | None = None,
        file: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        named = f" {file!r}" if file is not None else ""
        where = f" (image {index}{named})" if index is not None else ""
        super().__init__(f"{status} {code}{where}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.index = index
        self.file = file
        self.request_id = request_id
        self.retry_after_s = retry_after_s


class InvalidRequest(ApiError):
    """400: the image cannot be decoded, or the body is malformed."""


class Unauthorized(ApiError):
    """401: the service requires an API key and this one is missing or wrong."""


class NotFound(ApiError):
    """404 or 405: no such endpoint (a wrong URL, or not a CenterMask service)."""


class PayloadTooLarge(ApiError):
    """413: too many bytes, pixels or images."""


class UnsupportedMediaType(ApiError):
    """415: not an image format the service reads (JPEG, PNG, WebP, BMP, TIFF)."""


class InvalidParameter(ApiError):
    """422: a bad parameter, such as an unknown class."""


class ServerError(ApiError):
    """500: the model failed on this image, or the service hit an unexpected error."""


class ServiceUnavailable(ApiError):
    """503: the model is loading, the service is draining, or its queue is full — even after retrying."""


class DeadlineExceeded(ApiError):
    """504: the request took longer than the service's deadline."""


class StreamClosed(CenterMaskError):
    """A `/segment/stream` connection was closed: `code` is the WebSocket close code (1000 normal, 1001 the
    service is draining, 1008 no valid API key, 1013 try again later, ...), `reason` the server's text."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"the stream was closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    405: NotFound,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidParameter,
    500: ServerError,
    503: ServiceUnavailable,
    504: DeadlineExceeded,
}


def error_class(status: int) -> type[ApiError]:
    """The class of an error status; ApiError itself for statuses without their own."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ApiError


# The status each error code is answered with over HTTP: errors inside a stream of answers (a video's last
# line, a WebSocket message) carry no status of their own, so their class and `status` come from here.
STATUS_OF_CODE = {
    "invalid_image": 400,
    "invalid_video": 400,
    "invalid_request": 400,
    "unauthorized": 401,
    "unknown_model": 404,
    "image_too_large": 413,
    "video_too_large": 413,
    "too_many_pixels": 413,
    "video_too_long": 413,
    "unsupported_media_type": 415,
    "invalid_parameter": 422,
    "inference_failed": 500,
    "internal_error": 500,
    "not_implemented": 501,
    "not_ready": 503,
    "overloaded": 503,
    "out_of_memory": 503,
    "worker_failed": 503,
    "deadline_exceeded": 504,
}


def error_from_body(body: dict[str, object], *, request_id: str | None = None) -> ApiError:
    """The typed error of an `{"error": {"code", "message", "index"}}` body met inside a stream of answers."""
    error = body.get("error")
    details = error if isinstance(error, dict) else {}
    code = str(details.get("code", "error"))
    status = STATUS_OF_CODE.get(code, 500)
    index = details.get("index")
    return error_class(status)(
        status,
        code,
        str(details.get("message", "")),
        index=index if isinstance(index, int) else None,
        request_id=request_id,
    )
