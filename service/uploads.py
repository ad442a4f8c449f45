"""Reading uploaded images from a request body, within the byte limits.

`/segment` takes one image, as the multipart file field `image` or as a raw body with an image
Content-Type; `/segment/batch` takes the repeated multipart file field `images`. Sizes are checked
against Content-Length before reading and again while reading, so an oversized body is never held.
"""

from collections.abc import AsyncIterator
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
    TooManyImages,
    UnsupportedMediaType,
)
from service.images import MEDIA_TYPES

# Room for the multipart boundaries and part headers around the image bytes.
_MULTIPART_OVERHEAD_BYTES = 64 * 1024
_MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


async def read_image(request: Request, *, max_bytes: int) -> Upload:
    media_type = _media_type(request)
    if media_type == _MULTIPART:
        [upload] = await _read_form_files(request, "image", max_files=1, max_bytes=max_bytes)
        _check_size(upload, max_bytes)
        return upload
    if media_type in MEDIA_TYPES:
        data = b"".join([chunk async for chunk in _limited_body(request, max_bytes)])
        return Upload(filename=None, data=data)
    raise UnsupportedMediaType(
        f"Content-Type {media_type or '(none)'} is not supported; send {_MULTIPART} "
        f"with the field 'image', or the image itself as one of {', '.join(MEDIA_TYPES)}"
    )


async def read_images(request: Request, *, max_bytes: int, max_images: int) -> list[Upload]:
    if _media_type(request) != _MULTIPART:
        raise UnsupportedMediaType(f"send {_MULTIPART} with the images in the repeated field 'images'")
    uploads = await _read_form_files(request, "images", max_files=max_images, max_bytes=max_bytes)
    for index, upload in enumerate(uploads):
        _check_size(upload, max_bytes, index=index)
    return uploads


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _limited_body(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    too_large = ImageTooLarge(f"the request body is larger than {max_bytes} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise too_large
            yield chunk
    except ClientDisconnect:
        raise ClientClosedRequest("the client closed the connection while sending the body") from None


async def _read_form_files(request: Request, field: str, *, max_files: int, max_bytes: int) -> list[Upload]:
    """The files of one multipart field, 1 to max_files of them."""
    body = _limited_body(request, max_files * (max_bytes + _MULTIPART_OVERHEAD_BYTES))
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
        uploads = []
        for value in values:
            if not isinstance(value, UploadFile):
                raise InvalidParameter(f"the multipart field '{field}' must be a file, with a filename")
            uploads.append(Upload(filename=value.filename or None, data=await value.read()))
        return uploads
    finally:
        await form.close()


def _check_size(upload: Upload, max_bytes: int, *, index: int | None = None) -> None:
    if len(upload.data) > max_bytes:
        raise ImageTooLarge(f"the image is larger than {max_bytes} bytes", index=index)
