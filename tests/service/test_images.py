"""Uploads are decoded by model.inference.images; its errors become the service's 400, 413 and 415."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from model.inference.images import load_rgb
from service.errors import InvalidImage, TooManyPixels, UnsupportedMediaType
from service.images import decode_image
from tests.service.helpers import Served, encode, png_header_only, random_image, serve, tiny_settings


def test_the_same_pixels_as_the_model_decoder() -> None:
    data = encode(random_image(0, 30, 40), "JPEG")
    decoded = decode_image(data, max_pixels=10**6)
    np.testing.assert_array_equal(decoded.pixels, load_rgb(data))
    assert decoded.size == (30, 40)


def test_a_reduced_decode_keeps_the_full_size() -> None:
    data = encode(random_image(1, 960, 1280), "JPEG")
    decoded = decode_image(data, max_pixels=10**7, draft_to=(320, 512))
    assert decoded.pixels.shape == (480, 640, 3) and decoded.size == (960, 1280)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"garbage", InvalidImage),
        (b"", InvalidImage),
        (encode(random_image(1, 16, 16), "GIF"), UnsupportedMediaType),
        (png_header_only(2_000, 2_000), TooManyPixels),
    ],
)
def test_decoder_errors_become_service_errors(data: bytes, error: type) -> None:
    with pytest.raises(error):
        decode_image(data, max_pixels=10**6)


@pytest.mark.anyio
async def test_with_jpeg_draft_answers_are_in_the_uploaded_images_pixels(
    served: Served, tiny_weights: Path
) -> None:
    jpeg = encode(random_image(2, 960, 1280), "JPEG", quality=95)
    headers = {"Content-Type": "image/jpeg"}
    exact = (await served.client.post("/segment", content=jpeg, headers=headers)).json()
    async with serve(tiny_settings(tiny_weights, jpeg_draft=True, max_batch_size=1)) as drafted:
        fast = (await drafted.client.post("/segment", content=jpeg, headers=headers)).json()
        drawn = await drafted.client.post("/segment", params={"format": "png"}, content=jpeg, headers=headers)
    assert (fast["height"], fast["width"]) == (exact["height"], exact["width"]) == (960, 1280)
    assert fast["instances"] and exact["instances"]
    for instance in fast["instances"]:
        assert instance["mask"]["size"] == [960, 1280]
        assert mask_utils.decode(instance["mask"]).shape == (960, 1280)
        x1, y1, x2, y2 = instance["box"]
        assert 0 <= x1 <= x2 <= 1280 and 0 <= y1 <= y2 <= 960
    # The overlay is drawn on the full upload, not on the model's reduced copy.
    assert drawn.status_code == 200
    assert Image.open(io.BytesIO(drawn.content)).size == (1280, 960)
