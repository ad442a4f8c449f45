"""Uploaded image bytes → the model's input, through the one decoder of `model.inference.images`, with its errors
as the service's: corrupt → 400, another format or colour mode → 415, too many pixels → 413."""

from model.inference.images import (
    CorruptImage,
    DecodedImage,
    ImageError,
    UnsupportedImage,
    load_image,
    read_size,
)
from model.inference.images import TooManyPixels as ImageHasTooManyPixels
from service.errors import InvalidImage, ServiceError, TooManyPixels, UnsupportedMediaType

# Content types accepted for a raw body (whatever the declared type, the bytes decide the format), including
# the generic one clients send when they do not know (curl --data-binary, fetch with a Blob).
MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "application/octet-stream")

_ERRORS: dict[type[ImageError], type[ServiceError]] = {
    CorruptImage: InvalidImage,
    UnsupportedImage: UnsupportedMediaType,
    ImageHasTooManyPixels: TooManyPixels,
}


def decode_image(data: bytes, *, max_pixels: int, draft_to: tuple[int, int] | None = None) -> DecodedImage:
    """The upright image (`load_image`, reduced JPEG decoding with `draft_to`); raises InvalidImage,
    UnsupportedMediaType or TooManyPixels."""
    try:
        return load_image(data, max_pixels=max_pixels, draft_to=draft_to)
    except ImageError as error:
        raise _ERRORS.get(type(error), InvalidImage)(str(error)) from None


def image_size(data: bytes) -> tuple[int, int]:
    """(H, W) of the upright image from its header (`read_size`); raises as `decode_image`."""
    try:
        return read_size(data)
    except ImageError as error:
        raise _ERRORS.get(type(error), InvalidImage)(str(error)) from None
