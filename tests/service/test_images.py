"""Uploads are decoded by model.images; its errors become the service's 400, 413 and 415."""

import numpy as np
import pytest

from model.images import load_rgb
from service.errors import InvalidImage, TooManyPixels, UnsupportedMediaType
from service.images import decode_image
from tests.service.helpers import encode, png_header_only, random_image


def test_the_same_pixels_as_the_model_decoder() -> None:
    data = encode(random_image(0, 30, 40), "JPEG")
    np.testing.assert_array_equal(decode_image(data, max_pixels=10**6), load_rgb(data))


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
