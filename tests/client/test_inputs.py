"""centermask_client.inputs: every accepted kind of image becomes bytes, a media type and a name."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from centermask_client.inputs import encode_input, media_type

PIXELS = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)


def encoded(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(PIXELS).save(buffer, image_format)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("image_format", "expected"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("BMP", "image/bmp"),
     ("TIFF", "image/tiff"), ("GIF", "application/octet-stream")],
)  # fmt: skip
def test_media_types_from_the_bytes(image_format: str, expected: str) -> None:
    assert media_type(encoded(image_format)) == expected


def test_paths_and_files_keep_their_name(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(encoded("JPEG"))
    for image in (path, str(path)):
        assert encode_input(image) == encode_input(path.read_bytes(), "photo.jpg")
    with path.open("rb") as stream:
        from_file = encode_input(stream)
    assert (from_file.filename, from_file.content_type) == ("photo.jpg", "image/jpeg")
    assert encode_input(io.BytesIO(encoded("PNG"))).filename is None
    with path.open("r", encoding="latin-1") as text, pytest.raises(TypeError, match="binary mode"):
        encode_input(text)


@pytest.mark.parametrize(
    "image", [PIXELS, PIXELS[:, :, 0], Image.fromarray(PIXELS), Image.fromarray(PIXELS).convert("CMYK")]
)
def test_arrays_and_pil_images_are_sent_as_lossless_png(image: np.ndarray | Image.Image) -> None:
    sent = encode_input(image)
    assert (sent.content_type, sent.filename) == ("image/png", None)
    decoded = np.asarray(Image.open(io.BytesIO(sent.data)))
    if isinstance(image, np.ndarray):
        np.testing.assert_array_equal(decoded, image)
    else:
        assert decoded.shape[:2] == (4, 5)


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        (PIXELS.astype(np.float32), "uint8"),
        (np.zeros((2, 2, 2), np.uint8), "shape"),
        (42, "cannot send a value of type int"),
    ],
)
def test_what_cannot_be_sent(image: object, problem: str) -> None:
    with pytest.raises((TypeError, ValueError), match=problem):
        encode_input(image)  # type: ignore[arg-type]
