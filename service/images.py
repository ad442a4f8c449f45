"""Encoded image bytes → the model's input: a uint8 RGB array, upright, within the pixel limit."""

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InvalidImage, TooManyPixels, UnsupportedMediaType

# Content types accepted for a raw body, and the Pillow formats accepted whatever the declared type.
MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff")
# MPO is how Pillow names the JPEG files many phone cameras write.
FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def configure_pillow(max_image_pixels: int) -> None:
    """Make Pillow's own decompression-bomb guard agree with the service's pixel limit.

    `decode_image` checks the limit itself before decoding; Pillow's guard (an error at twice its
    limit) stays as the safety net. Its warning between one and two times the limit only duplicates
    our check, so it is silenced.
    """
    Image.MAX_IMAGE_PIXELS = max_image_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """Decode, apply the EXIF orientation and convert to RGB, as detectron2's `read_image` does.

    Raises InvalidImage, UnsupportedMediaType or TooManyPixels.
    """
    if not data:
        raise InvalidImage("the image is empty")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(str(exc)) from None
    except UnidentifiedImageError:
        raise InvalidImage("cannot identify the image; send JPEG, PNG, WebP, BMP or TIFF") from None
    except Exception as exc:  # Pillow raises many kinds on hostile headers
        raise InvalidImage(f"cannot read the image: {exc}") from None
    if image.format not in FORMATS:
        raise UnsupportedMediaType(
            f"{image.format} images are not supported; send JPEG, PNG, WebP, BMP or TIFF"
        )
    width, height = image.size
    # Checked from the header alone, before any pixel is decoded.
    if width * height > max_pixels:
        raise TooManyPixels(f"the image has {width}×{height} pixels, more than the limit of {max_pixels}")
    try:
        image = ImageOps.exif_transpose(image)
        return _to_rgb_array(image)
    except Exception as exc:  # truncated or corrupt data surfaces only while decoding
        raise InvalidImage(f"cannot decode the image: {exc}") from None


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values at 255, which turns most photos white.
        gray = (np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    return np.array(image.convert("RGB"), dtype=np.uint8)
