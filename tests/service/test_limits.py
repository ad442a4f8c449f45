"""Byte and pixel limits answer 413 before the image is held or decoded."""

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.service.helpers import Served, encode, png_header_only, random_image, serve, tiny_settings

pytestmark = [
    pytest.mark.anyio,
    # The app silences Pillow's bomb warning process-wide (its own check supersedes it); pytest
    # turns warnings back on for every test.
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]

MAX_BYTES = 50_000
MAX_PIXELS = 200 * 300
NOISE = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)  # ~120 kB as PNG


@pytest.fixture(scope="module")
async def limited(tiny_weights: Path) -> AsyncIterator[Served]:
    # The app sets Pillow's process-wide bomb limit to its own; put Pillow's back for the other tests.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        settings = tiny_settings(
            tiny_weights, max_batch_size=1, max_image_bytes=MAX_BYTES, max_image_pixels=MAX_PIXELS
        )
        async with serve(settings) as served:
            yield served
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def assert_error(response, status: int, code: str, **extra: object) -> None:
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert {key: error[key] for key in extra} == extra


async def test_a_body_over_the_byte_limit(limited: Served) -> None:
    data = encode(NOISE)
    assert len(data) > MAX_BYTES
    raw = await limited.client.post("/segment", content=data, headers={"Content-Type": "image/png"})
    assert_error(raw, 413, "image_too_large")
    multipart = await limited.client.post("/segment", files={"image": ("a.png", data, "image/png")})
    assert_error(multipart, 413, "image_too_large")


async def test_a_chunked_body_is_cut_off_while_reading(limited: Served) -> None:
    data = encode(NOISE)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    response = await limited.client.post("/segment", content=chunks(), headers={"Content-Type": "image/png"})
    assert "Content-Length" not in response.request.headers
    assert_error(response, 413, "image_too_large")


async def test_a_batch_names_the_image_over_the_byte_limit(limited: Served) -> None:
    small = encode(random_image(1, 100, 100))
    files = [
        ("images", ("small.png", small, "image/png")),
        ("images", ("big.png", encode(NOISE), "image/png")),
    ]
    response = await limited.client.post("/segment/batch", files=files)
    assert_error(response, 413, "image_too_large", index=1)


async def test_too_many_pixels(limited: Served) -> None:
    fits = await limited.client.post(
        "/segment", content=encode(random_image(2, 200, 300)), headers={"Content-Type": "image/png"}
    )
    assert fits.status_code == 200
    too_big = await limited.client.post(
        "/segment", content=encode(random_image(3, 201, 300)), headers={"Content-Type": "image/png"}
    )
    assert_error(too_big, 413, "too_many_pixels")


async def test_a_decompression_bomb_is_refused_without_decoding(limited: Served) -> None:
    response = await limited.client.post(
        "/segment", content=png_header_only(50_000, 50_000), headers={"Content-Type": "image/png"}
    )
    assert_error(response, 413, "too_many_pixels")
    assert (await limited.client.get("/healthz")).status_code == 200
