"""POST /segment?format=png|jpeg: the image at its own size with the instances drawn over it."""

import io

import numpy as np
import pytest
from PIL import Image

from centermask_client.overlay import draw_overlay
from centermask_client.schemas import ImageResult
from tests.service.helpers import Served, encode, png_body, random_image

pytestmark = pytest.mark.anyio

IMAGE = random_image(3, 200, 260)


async def test_the_png_is_what_the_json_draws(served: Served) -> None:
    answer = await served.client.post("/segment?format=png&score_threshold=0.4", **png_body(IMAGE))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    drawn = np.asarray(Image.open(io.BytesIO(answer.content)))
    result = ImageResult.model_validate(
        (await served.client.post("/segment?score_threshold=0.4", **png_body(IMAGE))).json()
    )
    assert int(answer.headers["X-Instance-Count"]) == len(result.instances) > 0
    np.testing.assert_array_equal(drawn, np.asarray(draw_overlay(IMAGE, result.instances)))
    assert (drawn != IMAGE).any()


async def test_jpeg_of_an_exif_rotated_photo_is_upright(served: Served) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise when displayed
    photo = encode(IMAGE, "JPEG", exif=exif, quality=95)
    answer = await served.client.post(
        "/segment?format=jpeg", content=photo, headers={"Content-Type": "image/jpeg"}
    )
    assert answer.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(answer.content)).size == (200, 260)  # width, height of the upright image


async def test_boxes_only_and_polygons_requested(served: Served) -> None:
    boxes_only = await served.client.post("/segment?format=png&mask_format=none", **png_body(IMAGE))
    json_answer = await served.client.post("/segment?mask_format=none", **png_body(IMAGE))
    drawn = np.asarray(Image.open(io.BytesIO(boxes_only.content)))
    expected = draw_overlay(IMAGE, ImageResult.model_validate(json_answer.json()).instances)
    np.testing.assert_array_equal(drawn, np.asarray(expected))
    # Polygons are not needed to draw: the overlay is the RLE one.
    with_polygons = await served.client.post("/segment?format=png&mask_format=polygon", **png_body(IMAGE))
    plain = await served.client.post("/segment?format=png", **png_body(IMAGE))
    assert with_polygons.content == plain.content


async def test_an_unknown_format_and_bad_images_answer_json_errors(served: Served) -> None:
    unknown = await served.client.post("/segment?format=gif", **png_body(IMAGE))
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "invalid_parameter"
    broken = await served.client.post(
        "/segment?format=png", content=b"garbage", headers={"Content-Type": "image/png"}
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_image"
