"""Every image shape and mode works or fails cleanly, on /segment and /segment/batch alike.

Valid but unusual images answer 200 with their own size; everything else answers the right 4xx with
the JSON error (and `index` inside a batch). Never a 5xx.
"""

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.service.helpers import Served, encode, png_header_only, random_image

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]


def sixteen_bit_rgb_png(height: int, width: int) -> bytes:
    values = np.random.default_rng(0).integers(0, 65536, (height, width, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def animated(image_format: str) -> bytes:
    frames = [Image.fromarray(random_image(seed, 40, 56)) for seed in (1, 2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, image_format, save_all=True, append_images=frames[1:])
    return buffer.getvalue()


def oriented(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(random_image(3, 40, 56), "JPEG", exif=exif)


BASE = random_image(0, 48, 64)
# name: (bytes, (height, width) of the upright image)
VALID: dict[str, tuple[bytes, tuple[int, int]]] = {
    **{
        f"{h}x{w}": (encode(random_image(4, h, w)), (h, w))
        for h, w in [(1, 1), (1, 2000), (2000, 1), (1, 7), (3, 1), (2, 2)]
    },
    "huge aspect 1x30000": (encode(random_image(5, 1, 30_000)), (1, 30_000)),
    "16-bit gray": (
        encode(Image.fromarray(random_image(6, 30, 40)[:, :, 0].astype(np.uint16) * 257)),
        (30, 40),
    ),
    "16-bit rgb": (sixteen_bit_rgb_png(30, 40), (30, 40)),
    "cmyk jpeg": (encode(Image.fromarray(BASE).convert("CMYK"), "JPEG"), (48, 64)),
    "palette": (encode(Image.fromarray(BASE).convert("P")), (48, 64)),
    "grayscale": (encode(Image.fromarray(BASE).convert("L")), (48, 64)),
    "alpha": (encode(Image.fromarray(BASE).convert("RGBA")), (48, 64)),
    "1-bit tiff": (encode(Image.fromarray(BASE).convert("1"), "TIFF"), (48, 64)),
    "animated png": (animated("PNG"), (40, 56)),
    "animated webp": (animated("WEBP"), (40, 56)),
    "multi-page tiff": (animated("TIFF"), (40, 56)),
    **{f"exif orientation {o}": (oriented(o), (56, 40) if o >= 5 else (40, 56)) for o in range(1, 9)},
    "bmp": (encode(BASE, "BMP"), (48, 64)),
    "webp": (encode(BASE, "WEBP"), (48, 64)),
}
VALID_PNG = encode(BASE)


def truncated(image_format: str) -> bytes:
    data = encode(random_image(7, 64, 64), image_format)
    return data[: len(data) * 2 // 3]


# name: (bytes, content type, status, code)
INVALID: dict[str, tuple[bytes, str, int, str]] = {
    **{
        f"truncated {f}": (truncated(f), "image/png", 400, "invalid_image")
        for f in ("PNG", "JPEG", "WEBP", "TIFF")
    },
    "corrupt png chunk": (VALID_PNG[:40] + b"\xff" * 20 + VALID_PNG[60:], "image/png", 400, "invalid_image"),
    "zero bytes": (b"", "image/png", 400, "invalid_image"),
    "random bytes": (np.random.default_rng(1).bytes(5000), "image/jpeg", 400, "invalid_image"),
    "gif": (encode(BASE, "GIF"), "image/gif", 415, "unsupported_media_type"),
    "gif declared png": (encode(BASE, "GIF"), "image/png", 415, "unsupported_media_type"),
    "ppm": (encode(BASE, "PPM"), "image/png", 415, "unsupported_media_type"),
    "bomb": (png_header_only(100_000, 100_000), "image/png", 413, "too_many_pixels"),
    # Over the service's largest limit (CENTERMASK_MAX_TILED_PIXELS, 100 MP), under the 200 MP where Pillow's
    # own guard raises: the service's check must catch it.
    "bomb under pillow's guard": (png_header_only(12_000, 12_000), "image/png", 413, "too_many_pixels"),
    "no content type": (VALID_PNG, "", 415, "unsupported_media_type"),
    "text content type": (VALID_PNG, "text/plain", 415, "unsupported_media_type"),
    "json content type": (VALID_PNG, "application/json", 415, "unsupported_media_type"),
}


def assert_error(response: Any, status: int, code: str, **extra: object) -> None:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == code
    assert {key: error[key] for key in extra} == extra
    assert "Traceback" not in response.text and "/work/" not in response.text


async def test_unusual_valid_images_answer_200_with_their_size(small_served: Served) -> None:
    for name, (data, size) in VALID.items():
        response = await small_served.client.post(
            "/segment", content=data, headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        assert (body["height"], body["width"]) == size, name
        for instance in body["instances"]:
            assert instance["mask"]["size"] == list(size)


async def test_unusual_valid_images_in_one_batch_request(small_served: Served) -> None:
    files = [
        ("images", (f"{name}.img", data, "application/octet-stream")) for name, (data, _) in VALID.items()
    ]
    response = await small_served.client.post("/segment/batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["height"], r["width"]) for r in results] == [size for _, size in VALID.values()]


@pytest.mark.parametrize("case", INVALID)
async def test_invalid_images_get_their_4xx(small_served: Served, case: str) -> None:
    data, content_type, status, code = INVALID[case]
    response = await small_served.client.post(
        "/segment", content=data, headers={"Content-Type": content_type}
    )
    assert_error(response, status, code)


@pytest.mark.parametrize("case", [c for c in INVALID if "content type" not in c])
async def test_an_invalid_image_in_a_batch_is_named_by_its_index(small_served: Served, case: str) -> None:
    data, _, status, code = INVALID[case]
    files = [("images", ("ok.png", VALID_PNG, "image/png")), ("images", ("bad", data, "image/png"))]
    response = await small_served.client.post("/segment/batch", files=files)
    assert_error(response, status, code, index=1)


MULTIPART = "multipart/form-data; boundary=xyz"


def part(name: str, data: bytes, filename: bytes | None = b"a.png", boundary: str = "xyz") -> bytes:
    disposition = f'form-data; name="{name}"'.encode() + (
        b'; filename="' + filename + b'"' if filename else b""
    )
    return (
        f"--{boundary}\r\n".encode()
        + b"Content-Disposition: "
        + disposition
        + b"\r\nContent-Type: image/png\r\n\r\n"
        + data
        + b"\r\n"
    )


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"not multipart at all", MULTIPART, 400, "invalid_request"),
        (part("image", VALID_PNG), MULTIPART, 422, "invalid_parameter"),  # unterminated: no complete part
        (
            part("image", VALID_PNG) + b"--xyz--\r\n",
            "multipart/form-data",
            400,
            "invalid_request",
        ),  # no boundary
        (part("image", VALID_PNG, boundary="abc") + b"--abc--\r\n", MULTIPART, 400, "invalid_request"),
        (part("image", VALID_PNG, filename=None) + b"--xyz--\r\n", MULTIPART, 422, "invalid_parameter"),
        (part("other", VALID_PNG) + b"--xyz--\r\n", MULTIPART, 422, "invalid_parameter"),
        (
            part("image", VALID_PNG)
            + b'--xyz\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n--xyz--\r\n',
            MULTIPART,
            400,
            "invalid_request",
        ),
        (part("image", VALID_PNG) * 2 + b"--xyz--\r\n", MULTIPART, 413, "too_many_images"),
        (
            b"--xyz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--xyz--\r\n",
            MULTIPART,
            400,
            "invalid_request",
        ),
        (b"--xyz\r\n\r\n\r\n--xyz--\r\n", MULTIPART, 400, "invalid_request"),
    ],
    ids=[
        "garbage",
        "unterminated",
        "no boundary parameter",
        "other boundary",
        "field without filename",
        "wrong field",
        "another field beside the image",
        "two images",
        "part without name",
        "part without headers",
    ],
)
async def test_malformed_multipart_bodies(
    small_served: Served, body: bytes, content_type: str, status: int, code: str
) -> None:
    response = await small_served.client.post(
        "/segment", content=body, headers={"Content-Type": content_type}
    )
    assert_error(response, status, code)


async def test_a_valid_hand_written_multipart_body(small_served: Served) -> None:
    # A filename that is not valid UTF-8 comes back as text all the same.
    body = part("image", VALID_PNG, filename=b"\xc3\xbc\xff\xfe.png") + b"--xyz--\r\n"
    response = await small_served.client.post("/segment", content=body, headers={"Content-Type": MULTIPART})
    assert response.status_code == 200, response.text
    assert response.json()["file"].endswith(".png")


@pytest.mark.parametrize(
    "query",
    [
        "score_threshold=-0.1",
        "score_threshold=nan",
        "score_threshold=1e400",
        "score_threshold=",
        "max_detections=0",
        "max_detections=1.5",
        "mask_format=bitmap",
        "classes=nothing",
        "classes=" + "9" * 5000,
        "classes=²",
        "classes=%00",
        "classes=" + "a" * 10_000,
    ],
)
async def test_invalid_parameters_are_422(small_served: Served, query: str) -> None:
    response = await small_served.client.post(
        f"/segment?{query}", content=VALID_PNG, headers={"Content-Type": "image/png"}
    )
    assert_error(response, 422, "invalid_parameter")
    assert len(response.json()["error"]["message"]) < 500
