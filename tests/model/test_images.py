"""Decoding uploads: formats, modes, EXIF orientation, limits and hostile input."""

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidImage, TooManyPixels, UnsupportedMediaType
from service.images import decode_image
from tests.service.helpers import encode, png_header_only, random_image

LIMIT = 1_000_000


def decode(data: bytes, max_pixels: int = LIMIT) -> np.ndarray:
    return decode_image(data, max_pixels=max_pixels)


@pytest.mark.parametrize("image_format", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_decode_to_the_exact_pixels(image_format: str) -> None:
    image = random_image(0, 48, 64)
    options = {"lossless": True} if image_format == "WEBP" else {}
    decoded = decode(encode(image, image_format, **options))
    assert decoded.dtype == np.uint8 and decoded.flags.writeable
    np.testing.assert_array_equal(decoded, image)


def test_jpeg_decodes_to_rgb() -> None:
    decoded = decode(encode(random_image(0, 48, 64), "JPEG"))
    assert decoded.shape == (48, 64, 3)


@pytest.mark.parametrize(
    ("mode", "image_format"),
    [
        ("L", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("1", "BMP"),
    ],
)
def test_every_mode_becomes_rgb(mode: str, image_format: str) -> None:
    image = Image.fromarray(random_image(1, 40, 30)).convert(mode)
    decoded = decode(encode(image, image_format))
    assert decoded.shape == (40, 30, 3) and decoded.dtype == np.uint8


def test_sixteen_bit_gray_is_scaled_not_clipped() -> None:
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    decoded = decode(encode(Image.fromarray(values), "PNG"))
    assert decoded[0, :, 0].tolist() == [0, 1, 128, 255]


def test_exif_orientation_is_applied() -> None:
    image = Image.fromarray(random_image(2, 40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    decoded = decode(encode(image, "PNG", exif=exif))
    np.testing.assert_array_equal(decoded, np.asarray(image.transpose(Image.Transpose.ROTATE_270)))


def test_gif_is_unsupported_even_though_pillow_reads_it() -> None:
    with pytest.raises(UnsupportedMediaType):
        decode(encode(random_image(3, 16, 16), "GIF"))


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_garbage_is_an_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode(data)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_truncated_images_are_invalid(image_format: str) -> None:
    data = encode(random_image(4, 64, 64), image_format)
    with pytest.raises(InvalidImage):
        decode(data[: len(data) // 2])


def test_the_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(random_image(5, 100, 101))
    assert decode(data, max_pixels=100 * 101).shape == (100, 101, 3)
    with pytest.raises(TooManyPixels):
        decode(data, max_pixels=100 * 101 - 1)


@pytest.mark.parametrize("side", [2_000, 100_000])
def test_decompression_bombs_are_too_many_pixels(side: int) -> None:
    # 2,000² passes Pillow's own guard and is caught by ours; 100,000² trips Pillow's first.
    with pytest.raises(TooManyPixels):
        decode(png_header_only(side, side))
