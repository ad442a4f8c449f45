"""Reading uploaded images from a request body, within the limits.

`/segment` takes one image, as the multipart file field `image` or as a raw body with an image
Content-Type; `/segment/video` one video, as the field `video` or a raw body; `/segment/batch` takes the repeated multipart file field `images`; the Open Inference
Protocol's infer takes a JSON or binary tensor body (service/inference_protocol.py parses it). Sizes are checked
against Content-Length before reading and again while reading, so an oversized body is never held.
A body must arrive within `body_timeout_s` (408 after it), and at most `max_concurrent_uploads`
requests receive their bodies at once (more get 503 at once): slow or stalled clients hold neither
memory nor request slots for long.
"""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from service.errors import (
    ClientClosedRequest,
    ImageTooLarge,
    InvalidParameter,
    InvalidRequest,
    RequestTimeout,
    ServiceError,
    TooManyImages,
    TooManyUploads,
    UnsupportedMediaType,
    VideoTooLarge,
)
from service.images import MEDIA_TYPES
from service.settings import Settings

# Room for the multipart boundaries and part headers around the image bytes.
_MULTIPART_OVERHEAD_BYTES = 64 * 1024
_MULTIPART = "multipart/form-data"
# Longest filename echoed back in the answer's "file".
_MAX_FILENAME = 255
# Content types accepted for a raw video body (whatever the declared type, the bytes decide the format).
VIDEO_MEDIA_TYPES = ("video/mp4", "video/quicktime", "video/webm", "video/x-matroska", "video/matroska")


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


class Uploads:
    """The body reader of the segmentation endpoints, and the count of bodies being received."""

    def __init__(self, settings: Settings) -> None:
        self._max_bytes = settings.max_image_bytes
        self._max_video_bytes = settings.max_video_bytes
        self._max_images = settings.max_images_per_request
        self._timeout_s = settings.body_timeout_s
        self._max_concurrent = settings.max_concurrent_uploads
        self.receiving = 0

    async def read_image(self, request: Request) -> Upload:
        async with self._slot():
            media_type = _media_type(request)
            if media_type == _MULTIPART:
                [upload] = await _read_form_files(request, "image", max_files=1, max_bytes=self._max_bytes)
                _check_size(upload, self._max_bytes)
                return upload
            if media_type in MEDIA_TYPES:
                data = b"".join([chunk async for chunk in _limited_body(request, self._max_bytes)])
                return Upload(filename=None, data=data)
        raise UnsupportedMediaType(
            f"Content-Type {media_type[:100] or '(none)'} is not supported; send {_MULTIPART} "
            f"with the field 'image', or the image itself as one of {', '.join(MEDIA_TYPES)}"
        )

    async def read_video(self, request: Request) -> Upload:
        """A video: the multipart file field `video`, or the raw body with a video Content-Type; at most
        `max_video_bytes`, under the same slot and body deadline as images."""
        async with self._slot():
            media_type = _media_type(request)
            if media_type == _MULTIPART:
                [upload] = await _read_form_files(
                    request, "video", max_files=1, max_bytes=self._max_video_bytes, too_large=VideoTooLarge
                )
                _check_size(upload, self._max_video_bytes, too_large=VideoTooLarge, what="video")
                return upload
            if media_type in VIDEO_MEDIA_TYPES:
                body = _limited_body(request, self._max_video_bytes, too_large=VideoTooLarge)
                return Upload(filename=None, data=b"".join([chunk async for chunk in body]))
        raise UnsupportedMediaType(
            f"Content-Type {media_type[:100] or '(none)'} is not supported; send {_MULTIPART} "
            f"with the field 'video', or the video itself as one of {', '.join(VIDEO_MEDIA_TYPES)}"
        )

    async def read_images(self, request: Request) -> list[Upload]:
        if _media_type(request) != _MULTIPART:
            raise UnsupportedMediaType(f"send {_MULTIPART} with the images in the repeated field 'images'")
        async with self._slot():
            uploads = await _read_form_files(
                request, "images", max_files=self._max_images, max_bytes=self._max_bytes
            )
        for index, upload in enumerate(uploads):
            _check_size(upload, self._max_bytes, index=index)
        return uploads

    async def read_tensor_body(self, request: Request) -> bytes:
        """The whole body of an Open Inference Protocol request (images inside JSON or binary tensors), up
        to max_images_per_request base64-encoded images' worth, under the same slot and deadline."""
        async with self._slot():
            limit = self._max_images * (4 * ((self._max_bytes + 2) // 3) + _MULTIPART_OVERHEAD_BYTES)
            return b"".join([chunk async for chunk in _limited_body(request, limit)])

    def images(self, payloads: list[bytes]) -> list[Upload]:
        """Encoded images taken out of a request body, checked against the per-request and per-image limits."""
        if len(payloads) > self._max_images:
            raise TooManyImages(f"too many images: this endpoint takes at most {self._max_images}")
        uploads = [Upload(filename=None, data=data) for data in payloads]
        for index, upload in enumerate(uploads):
            _check_size(upload, self._max_bytes, index=index)
        return uploads

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        if self.receiving >= self._max_concurrent:
            raise TooManyUploads(
                f"{self.receiving} uploads are already being received (CENTERMASK_MAX_CONCURRENT_UPLOADS); "
                "retry later"
            )
        self.receiving += 1
        deadline = asyncio.timeout(self._timeout_s)
        try:
            async with deadline:
                yield
        except TimeoutError:
            if not deadline.expired():
                raise
            raise RequestTimeout(
                f"the request body did not arrive within {self._timeout_s:g} s (CENTERMASK_BODY_TIMEOUT_S)"
            ) from None
        finally:
            self.receiving -= 1


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _limited_body(
    request: Request, max_bytes: int, *, too_large: type[ServiceError] = ImageTooLarge
) -> AsyncGenerator[bytes, None]:
    error = too_large(f"the request body is larger than {max_bytes} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise error
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise error
            yield chunk
    except ClientDisconnect:
        raise ClientClosedRequest("the client closed the connection while sending the body") from None


async def _read_form_files(
    request: Request,
    field: str,
    *,
    max_files: int,
    max_bytes: int,
    too_large: type[ServiceError] = ImageTooLarge,
) -> list[Upload]:
    """The files of one multipart field, 1 to max_files of them."""
    body = _limited_body(request, max_files * (max_bytes + _MULTIPART_OVERHEAD_BYTES), too_large=too_large)
    parser = MultiPartParser(request.headers, body, max_files=max_files, max_fields=max_files)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if str(exc).startswith("Too many files"):
            raise TooManyImages(f"too many images: this endpoint takes at most {max_files}") from None
        raise InvalidRequest(f"malformed multipart body: {exc}") from None
    try:
        values = form.getlist(field)
        if not values:
            raise InvalidParameter(f"the multipart field '{field}' is missing")
        others = sorted({name for name in form if name != field})
        if others:  # the documented body holds this one field (OpenAPI: additionalProperties false)
            names = ", ".join(repr(name[:50]) for name in others[:3])
            raise InvalidRequest(f"the multipart body holds fields other than '{field}': {names}")
        uploads = []
        for value in values:
            if not isinstance(value, UploadFile):
                raise InvalidParameter(f"the multipart field '{field}' must be a file, with a filename")
            uploads.append(Upload(filename=_clean_filename(value.filename), data=await value.read()))
        return uploads
    finally:
        await form.close()


def _clean_filename(filename: str | None) -> str | None:
    """The client's filename as shown back: valid UTF-8, not absurdly long; None when absent."""
    if not filename:
        return None
    return filename[:_MAX_FILENAME].encode("utf-8", "replace").decode("utf-8")


def _check_size(
    upload: Upload,
    max_bytes: int,
    *,
    index: int | None = None,
    too_large: type[ServiceError] = ImageTooLarge,
    what: str = "image",
) -> None:
    if len(upload.data) > max_bytes:
        raise too_large(f"the {what} is larger than {max_bytes} bytes", index=index)
