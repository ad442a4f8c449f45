"""Decoding images: the one path from a file or encoded bytes to the model's input.

The CLI, evaluation, the training data and the service all read images here, so an image gives the
same pixels wherever it is read. As detectron2's `read_image`: Pillow, the EXIF orientation applied,
then RGB. Beyond it:
- 16-bit grayscale is scaled to 8 bits (its high byte), not clipped at 255 as Pillow's own conversion
  does; 16-bit colour PNGs keep their high byte too (Pillow's decoder), so both agree.
- the pixel limit is checked from the header, before any pixel is decoded;
- an animated or multi-page file gives its first frame;
- a broken EXIF block is ignored rather than fatal (the image is decoded as stored);
- on request (`load_image(draft_to=...)`), a JPEG the model will shrink by 2× or more is decoded reduced.
Failures raise an `ImageError` subclass, so callers map them to their own errors (the service to 4xx).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import IO

import numpy as np
from PIL import Image, UnidentifiedImageError

from model.inference.preprocess import resized_shape

# The Pillow formats read (JPEG includes MPO, the JPEG files many phone cameras write). Others, even
# ones Pillow could decode, are refused: each parser is attack surface.
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
# Pillow's own limit, for callers (the CLI, evaluation) that do not set one.
DEFAULT_MAX_PIXELS = 89_478_485
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_ORIENTATION_TAG = 0x0112
_ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class DecodedImage:
    """An image decoded for the model: `pixels` (h, w, 3) uint8 RGB, upright, and `size`, the (H, W) of the
    upright image at full resolution. They differ only for a JPEG decoded reduced (`load_image`'s
    `draft_to`); results are reported in `size` pixels either way."""

    pixels: np.ndarray
    size: tuple[int, int]


class ImageError(ValueError):
    """An image that cannot be used; the message is safe to show to whoever sent it."""


class CorruptImage(ImageError):
    """Empty, unidentifiable, truncated or corrupt data."""


class UnsupportedImage(ImageError):
    """A format or colour mode this decoder does not read."""


class TooManyPixels(ImageError):
    """Width × height over the limit, read from the header."""


def configure_pillow(max_pixels: int) -> None:
    """Make Pillow's process-wide decompression-bomb guard agree with a caller's own pixel limit.

    `load_rgb` checks its limit before decoding; Pillow's guard (an error at twice its limit) stays the
    safety net behind it. Its warning between one and two times the limit would only repeat our check,
    once per distinct image size, so it is silenced.

    Pillow's other warnings about a file's data (corrupt EXIF, say) are silenced too: in a service,
    each distinct one would be a line any client can write to stderr. `load_rgb` handles those files.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")


def load_rgb(source: bytes | str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes or a file → (H, W, 3) uint8 RGB, upright per its EXIF orientation, at full resolution.

    Raises CorruptImage, UnsupportedImage or TooManyPixels; a path that cannot be opened raises OSError
    (FileNotFoundError, ...) as `open` does.
    """
    return load_image(source, max_pixels=max_pixels).pixels


def load_image(
    source: bytes | str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_to: tuple[int, int] | None = None,
) -> DecodedImage:
    """Encoded bytes or a file → DecodedImage, upright per its EXIF orientation; raises as `load_rgb`.

    `draft_to` is the (min_size, max_size) of the shortest-edge resize the pixels are for (the predictor's
    `resize`). A JPEG that this resize shrinks by 2× or more is then decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling), the smallest one still at least the resized size: decoding is several times
    faster, and the pixels differ from a full decode's (which is why it is asked for, not done always).
    Other formats, and JPEGs shrunk less, decode as without it. The pixel limit applies to the full size.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        if not len(source):
            raise CorruptImage("the image is empty")
        return _decode(io.BytesIO(source), max_pixels, draft_to)
    with open(source, "rb") as stream:
        return _decode(stream, max_pixels, draft_to)


def read_size(source: bytes | str | os.PathLike[str]) -> tuple[int, int]:
    """(H, W) of the upright image, read from its header: no pixel is decoded (what tiling needs to know before
    choosing how to decode). Raises CorruptImage, UnsupportedImage or TooManyPixels (only past Pillow's
    guard: the caller's own limit applies when decoding)."""
    if isinstance(source, bytes | bytearray | memoryview):
        if not len(source):
            raise CorruptImage("the image is empty")
        return _size(io.BytesIO(source))
    with open(source, "rb") as stream:
        return _size(stream)


def _size(stream: IO[bytes]) -> tuple[int, int]:
    with _open(stream) as image:
        width, height = image.size
        orientation = _orientation(image)
    return (width, height) if orientation is not None and orientation >= 5 else (height, width)


def _decode(stream: IO[bytes], max_pixels: int, draft_to: tuple[int, int] | None) -> DecodedImage:
    image = _open(stream)
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise TooManyPixels(f"the image has {width}×{height} pixels, more than the limit of {max_pixels}")
        try:
            if draft_to is not None:
                # The resize is symmetric in height and width, so the stored orientation gives the same
                # target as the upright one. Only JPEG decoders implement draft; for others it does nothing.
                target_h, target_w = resized_shape(height, width, *draft_to)
                image.draft(None, (target_w, target_h))
            image.load()
            orientation = _orientation(image)
            upright = image if orientation is None else image.transpose(_ORIENTATIONS[orientation])
            # Orientations 5-8 turn the image a quarter.
            size = (width, height) if orientation is not None and orientation >= 5 else (height, width)
            return DecodedImage(_to_rgb_array(upright), size)
        except ImageError:
            raise
        except Exception:  # truncated or corrupt data surfaces only while decoding
            raise CorruptImage("cannot decode the image: it is truncated or corrupt") from None


def _open(stream: IO[bytes]) -> Image.Image:
    supported = ", ".join(FORMATS)
    try:
        return Image.open(stream, formats=FORMATS)
    except Image.DecompressionBombError:
        raise TooManyPixels("the image has more pixels than the limit") from None
    except UnidentifiedImageError:
        pass
    except Exception:  # Pillow's parsers raise many kinds on hostile headers
        raise CorruptImage("cannot read the image header: it is corrupt") from None
    # Not one of ours: name the format if its signature is known, without running its parser.
    stream.seek(0)
    found = _signature_format(stream.read(16))
    if found in FORMATS:
        raise CorruptImage(f"cannot read the {found} header: it is corrupt")
    if found is not None:
        raise UnsupportedImage(f"{found} images are not supported; send {supported}")
    raise CorruptImage(f"cannot identify the image; send {supported}")


def _signature_format(prefix: bytes) -> str | None:
    Image.init()
    for format_id, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix) is True:
                return format_id
        except Exception:
            continue
    return None


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation (2-8) that needs a transpose, or None; malformed EXIF counts as none."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG)
    except Exception:
        return None
    return value if isinstance(value, int) and value in _ORIENTATIONS else None


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in _SIXTEEN_BIT_MODES:
        gray = (np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    try:
        rgb = image.convert("RGB")
    except ValueError:
        raise UnsupportedImage(f"images in colour mode {image.mode} are not supported") from None
    return np.array(rgb, dtype=np.uint8)
