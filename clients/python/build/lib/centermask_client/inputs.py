"""What the client accepts as an image, turned into the bytes it uploads.

Paths and bytes are sent as they are (the service decodes them, EXIF orientation included); PIL images
and numpy arrays are encoded as PNG, losslessly.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray

# Leading bytes of the formats the service reads, and their media types.
_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)
_EXTENSIONS = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/tiff": "tif",
}


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    filename: str | None
    content_type: str

    @property
    def extension(self) -> str:
        return _EXTENSIONS.get(self.content_type, "bin")


def encode_input(image: ImageInput, filename: str | None = None) -> EncodedImage:
    """Bytes, a media type and a file name (a path's own name unless `filename` is given)."""
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        data = path.read_bytes()
        return EncodedImage(data, filename or path.name, media_type(data))
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
        return EncodedImage(data, filename, media_type(data))
    if isinstance(image, Image.Image):
        return EncodedImage(_png(image), filename, "image/png")
    if isinstance(image, np.ndarray):
        return EncodedImage(_png(_array_to_image(image)), filename, "image/png")
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError("file objects must be opened in binary mode ('rb')")
        name = getattr(image, "name", None)
        default_name = os.path.basename(name) if isinstance(name, str) else None
        return EncodedImage(data, filename or default_name, media_type(data))
    raise TypeError(
        f"cannot send a value of type {type(image).__name__} as an image: pass a path, bytes, a binary file, "
        "a PIL image or a numpy array"
    )


def media_type(data: bytes) -> str:
    """The media type of encoded image bytes, from their signature; octet-stream when unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for signature, media in _SIGNATURES:
        if data.startswith(signature):
            return media
    return "application/octet-stream"


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise ValueError(f"arrays must be uint8, got {array.dtype}")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(array))
    raise ValueError(f"arrays must be (H, W) gray, (H, W, 3) RGB or (H, W, 4) RGBA, got shape {array.shape}")


def _png(image: Image.Image) -> bytes:
    if image.mode not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
