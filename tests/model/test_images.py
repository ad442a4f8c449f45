"""The one image decoder: formats, modes, EXIF orientation, animation, limits and hostile input."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from model.inference.images import CorruptImage, TooManyPixels, UnsupportedImage, load_image, load_rgb

LIMIT = 1_000_000
# A model resize of short side 384, long side at most 640, as `draft_to`.
DRAFT_TO = (384, 640)


def random_image(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width].copy()


def encode(image: np.ndarray | Image.Image, image_format: str = "PNG", **options) -> bytes:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    pil.save(buffer, image_format, **options)
    return buffer.getvalue()


def png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand, for what Pillow cannot save (16-bit colour) and for forged headers."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + crc

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def decode(data: bytes, max_pixels: int = LIMIT) -> np.ndarray:
    return load_rgb(data, max_pixels=max_pixels)


@pytest.mark.parametrize("image_format", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_decode_to_the_exact_pixels(image_format: str) -> None:
    image = random_image(0, 48, 64)
    options = {"lossless": True} if image_format == "WEBP" else {}
    decoded = decode(encode(image, image_format, **options))
    assert decoded.dtype == np.uint8 and decoded.flags.writeable and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, image)


def test_jpeg_decodes_to_rgb() -> None:
    decoded = decode(encode(random_image(0, 48, 64), "JPEG"))
    assert decoded.shape == (48, 64, 3)


def test_a_file_and_its_bytes_decode_alike(tmp_path: Path) -> None:
    data = encode(Image.fromarray(np.array([[0, 300, 40000, 65535]], dtype=np.uint16)), "PNG")
    path = tmp_path / "deep.png"
    path.write_bytes(data)
    np.testing.assert_array_equal(load_rgb(path), load_rgb(data))
    np.testing.assert_array_equal(load_rgb(str(path)), load_rgb(data))


@pytest.mark.parametrize(
    ("mode", "image_format"),
    [
        ("L", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("P", "WEBP"),
        ("CMYK", "JPEG"),
        ("CMYK", "TIFF"),
        ("YCbCr", "JPEG"),
        ("I;16", "PNG"),
        ("I;16", "TIFF"),
        ("I", "TIFF"),
        ("F", "TIFF"),
        ("1", "BMP"),
        ("1", "TIFF"),
        ("RGBA", "WEBP"),
    ],
)
def test_every_mode_becomes_rgb(mode: str, image_format: str) -> None:
    image = Image.fromarray(random_image(1, 40, 30)).convert(mode)
    decoded = decode(encode(image, image_format))
    assert decoded.shape == (40, 30, 3) and decoded.dtype == np.uint8


def test_sixteen_bit_gray_is_scaled_not_clipped() -> None:
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    for image_format in ("PNG", "TIFF"):
        decoded = decode(encode(Image.fromarray(values), image_format))
        assert decoded[0, :, 0].tolist() == [0, 1, 128, 255], image_format


def test_sixteen_bit_colour_keeps_the_high_byte_like_gray() -> None:
    pixels = [(65535, 32768, 256), (0, 513, 1000)]
    rows = b"\x00" + b"".join(struct.pack(">HHH", *pixel) for pixel in pixels)
    decoded = decode(png(2, 1, 16, 2, rows))
    assert decoded.tolist() == [[[255, 128, 1], [0, 2, 3]]]
    gray_rows = b"\x00" + struct.pack(">HH", 32768, 513)
    assert decode(png(2, 1, 16, 0, gray_rows))[0, :, 0].tolist() == [128, 2]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(orientation: int) -> None:
    stored = Image.fromarray(random_image(2, 40, 60))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", exif=exif, quality=95)
    decoded = decode(data)
    # Pillow's own transposition is the reference.
    with Image.open(io.BytesIO(data)) as reference:
        np.testing.assert_array_equal(decoded, np.asarray(ImageOps.exif_transpose(reference).convert("RGB")))
    assert decoded.shape[:2] == ((60, 40) if orientation >= 5 else (40, 60))


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_an_invalid_orientation_is_ignored(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = random_image(3, 20, 30)
    np.testing.assert_array_equal(decode(encode(image, "PNG", exif=exif)), image)


def test_a_corrupt_exif_block_is_ignored() -> None:
    image = random_image(3, 20, 30)
    data = encode(image, "PNG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff\x00\x00")
    np.testing.assert_array_equal(decode(data), image)


@pytest.mark.parametrize(
    ("image_format", "options"),
    [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {})],
)
def test_an_animation_gives_its_first_frame(image_format: str, options: dict) -> None:
    first, second = random_image(4, 24, 32), random_image(5, 24, 32)
    buffer = io.BytesIO()
    Image.fromarray(first).save(
        buffer, image_format, save_all=True, append_images=[Image.fromarray(second)], **options
    )
    np.testing.assert_array_equal(decode(buffer.getvalue()), first)


@pytest.mark.parametrize("shape", [(1, 1), (1, 2000), (2000, 1), (1, 7), (3, 1)])
def test_degenerate_sizes_decode(shape: tuple[int, int]) -> None:
    image = random_image(6, *shape)
    np.testing.assert_array_equal(decode(encode(image)), image)


@pytest.mark.parametrize(("image_format", "name"), [("GIF", "GIF"), ("PPM", "PPM"), ("ICO", "ICO")])
def test_other_formats_are_named_and_unsupported(image_format: str, name: str) -> None:
    with pytest.raises(UnsupportedImage, match=f"^{name} images are not supported"):
        decode(encode(random_image(3, 16, 16), image_format))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"\xff\xd8\xff\xe0" + b"\x00" * 40,
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"II*\x00" + b"\xff" * 40,
        b"BM" + b"\x00" * 60,
    ],
)
def test_garbage_is_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptImage):
        decode(data)


@pytest.mark.parametrize(
    ("image_format", "options"),
    [("PNG", {}), ("JPEG", {}), ("WEBP", {}), ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"})],
)
def test_truncated_images_are_corrupt(image_format: str, options: dict) -> None:
    data = encode(random_image(4, 64, 64), image_format, **options)
    with pytest.raises(CorruptImage):
        decode(data[: len(data) // 2])


def test_the_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(random_image(5, 100, 101))
    assert decode(data, max_pixels=100 * 101).shape == (100, 101, 3)
    with pytest.raises(TooManyPixels, match="101×100 pixels"):
        decode(data, max_pixels=100 * 101 - 1)


@pytest.mark.parametrize("side", [2_000, 100_000])
def test_decompression_bombs_are_too_many_pixels(side: int) -> None:
    # 2,000² passes Pillow's own guard and is caught by ours; 100,000² trips Pillow's first.
    header_only = png(side, side, 8, 2, b"\x00" * 16)
    with pytest.raises(TooManyPixels):
        decode(header_only)


def test_a_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_rgb(tmp_path / "absent.png")


def photo(seed: int, height: int, width: int) -> np.ndarray:
    """Colour blocks of 32 px: smooth at the scale a reduced decode averages over, like a large photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((32, 32, 1), dtype=np.uint8))[:height, :width].copy()


def reduced(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BOX)).astype(int)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_large_jpeg_decodes_reduced_and_upright_with_its_full_size(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(photo(7, 1800, 2400), "JPEG", exif=exif, quality=95)
    full = load_image(data, max_pixels=10**7)
    drafted = load_image(data, max_pixels=10**7, draft_to=DRAFT_TO)
    upright = (2400, 1800) if orientation >= 5 else (1800, 2400)
    assert full.size == drafted.size == upright == full.pixels.shape[:2]
    # The model resizes it to 384 × 512: a quarter scale is the smallest one still above that.
    assert drafted.pixels.shape[:2] == (upright[0] // 4, upright[1] // 4)
    # The same picture, the same way up: close to the full decode averaged down (a wrong turn is not).
    assert np.abs(drafted.pixels - reduced(full.pixels, *drafted.pixels.shape[:2])).mean() < 4


def test_load_rgb_is_the_full_decode() -> None:
    data = encode(photo(8, 900, 1200), "JPEG")
    np.testing.assert_array_equal(load_rgb(data, max_pixels=10**7), load_image(data, max_pixels=10**7).pixels)


@pytest.mark.parametrize(
    ("image_format", "shape"),
    # A PNG has no reduced decoding; a JPEG that the resize shrinks by less than 2× keeps its full decode.
    [("PNG", (900, 1200)), ("WEBP", (900, 1200)), ("JPEG", (740, 1000)), ("JPEG", (300, 400))],
)
def test_draft_leaves_other_images_as_they_are(image_format: str, shape: tuple[int, int]) -> None:
    data = encode(photo(9, *shape), image_format)
    drafted = load_image(data, max_pixels=10**7, draft_to=DRAFT_TO)
    assert drafted.size == shape
    np.testing.assert_array_equal(drafted.pixels, load_rgb(data, max_pixels=10**7))


def test_the_pixel_limit_of_a_reduced_decode_is_the_full_size() -> None:
    data = encode(photo(10, 1800, 2400), "JPEG")
    with pytest.raises(TooManyPixels, match="2400×1800 pixels"):
        load_image(data, max_pixels=2400 * 1800 - 1, draft_to=DRAFT_TO)
