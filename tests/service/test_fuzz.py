"""Fuzzing the app in-process: generated bodies, mutated images, headers, query strings and multipart
bodies never get a 5xx or an escaping exception, and the app still answers a valid image correctly.

Over 1000 inputs in all; most are rejected before inference, which keeps this affordable in CI. The
examples are derandomised, so CI runs the same inputs every time; run with
`--hypothesis-seed=<n>` and `derandomize` off to explore others.
"""

import io
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from model.inference.predictor import Predictor
from service.app import create_app
from tests.service.helpers import TIMEOUT_S, tiny_settings

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

FUZZ = settings(
    deadline=None,
    max_examples=200,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# A small real image: the reference answer, and the seed of the mutations.
REFERENCE = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def encoded(image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(REFERENCE).save(buffer, image_format, **options)
    return buffer.getvalue()


SEEDS = {
    "PNG": encoded("PNG"),
    "JPEG": encoded("JPEG", quality=80),
    "WEBP": encoded("WEBP", quality=80),
    "BMP": encoded("BMP"),
    "TIFF": encoded("TIFF", compression="tiff_lzw"),
    "GIF": encoded("GIF"),
}
CONTENT_TYPES = [
    "image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff", "image/gif", "text/plain", "",
    "multipart/form-data", "multipart/form-data; boundary=", "IMAGE/PNG; charset=utf-8", "application/json",
]  # fmt: skip


@pytest.fixture(scope="module")
def client(small_weights: Path) -> Iterator[TestClient]:
    # Decoding errors are what is fuzzed here; short body and request limits keep the worst cases cheap.
    settings_ = tiny_settings(
        small_weights, max_batch_size=2, max_image_bytes=200_000, max_images_per_request=4
    )
    app = create_app(settings_)
    # raise_server_exceptions: an exception escaping the app fails the test, as well as any 5xx.
    with TestClient(app, raise_server_exceptions=True) as client:
        deadline = time.monotonic() + TIMEOUT_S
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the app did not get ready"
            time.sleep(0.05)
        yield client


def answered_correctly(client: TestClient) -> None:
    """The app still gives the predictor's own answer for the reference image."""
    response = client.post(
        "/segment?score_threshold=0", content=SEEDS["PNG"], headers={"Content-Type": "image/png"}
    )
    assert response.status_code == 200, response.text
    predictor: Predictor = client.app.state.runtime.predictor  # type: ignore[attr-defined]
    (expected,) = predictor.predict([REFERENCE])
    boxes = [instance["box"] for instance in response.json()["instances"]]
    # The service default keeps one label per object (CENTERMASK_CLASS_AGNOSTIC_NMS).
    expected = expected.class_agnostic_nms().filter(max_detections=100)
    np.testing.assert_allclose(boxes, expected.boxes, atol=1e-3)


def assert_clean(response) -> None:
    event(f"status {response.status_code}")  # --hypothesis-show-statistics shows the mix
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400 and response.request.method != "HEAD":
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
        assert "Traceback" not in error["message"] and "/work/" not in error["message"]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "duplicate"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if operation == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif operation == "truncate":
            del data[position:]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        else:
            data[position:position] = data[position : position + draw(st.integers(1, 256))]
    return bytes(data)


@settings(FUZZ, max_examples=250)
@given(body=st.binary(max_size=4096), content_type=st.sampled_from(CONTENT_TYPES))
def test_random_bytes(client: TestClient, body: bytes, content_type: str) -> None:
    assert_clean(client.post("/segment", content=body, headers={"Content-Type": content_type}))


@settings(FUZZ, max_examples=250)
@given(body=mutated_images(), content_type=st.sampled_from(CONTENT_TYPES[:6]))
def test_mutated_images(client: TestClient, body: bytes, content_type: str) -> None:
    assert_clean(
        client.post("/segment?mask_format=none", content=body, headers={"Content-Type": content_type})
    )


HEADER_NAMES = [
    "Content-Type", "X-Request-ID", "Authorization", "X-API-Key", "Accept", "Content-Encoding", "Expect",
    "Origin", "Cookie", "Range", "Content-Disposition",
]  # fmt: skip
header_values = st.binary(max_size=200).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b""))


@settings(FUZZ, max_examples=200)
@given(
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=5),
    path=st.sampled_from(
        ["/segment", "/segment/batch", "/v1/model", "/healthz", "/readyz", "/metrics", "/x"]
    ),
    method=st.sampled_from(["GET", "POST", "PUT", "OPTIONS", "HEAD"]),
)
def test_headers(client: TestClient, headers: dict[str, bytes], path: str, method: str) -> None:
    response = client.request(method, path, content=b"garbage", headers=headers)
    assert_clean(response)


QUERY_NAMES = ["score_threshold", "max_detections", "classes", "mask_format", "x", "", "classes[]"]
query_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["0", "1", "0.5", "-1", "nan", "inf", "1e309", "person,car", "rle", "polygon", "none", "80"]
    ),
    st.integers(-(2**70), 2**70).map(str),
)


@settings(FUZZ, max_examples=200)
@given(params=st.lists(st.tuples(st.sampled_from(QUERY_NAMES), query_values), max_size=5))
def test_query_strings(client: TestClient, params: list[tuple[str, str]]) -> None:
    query = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in params)
    # Most of these are refused before the body is read; the valid ones run on a tiny image.
    response = client.post(f"/segment?{query}", content=SEEDS["PNG"], headers={"Content-Type": "image/png"})
    assert_clean(response)


boundaries = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=80)
part_names = st.sampled_from(["image", "images", "image", "images", "file", "", 'im"age', "image\r\n"])
filenames = st.one_of(
    st.none(), st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("latin-1"))
)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(st.one_of(st.just("b0undary"), boundaries))
    # Mostly the boundary the body uses, so that the parts themselves get parsed.
    declared = boundary if draw(st.integers(0, 3)) else draw(boundaries)
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        disposition = f'form-data; name="{draw(part_names)}"'
        filename = draw(filenames)
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"Content-Disposition: {disposition}\r\n"
        if draw(st.booleans()):
            head += f"Content-Type: {draw(st.sampled_from(CONTENT_TYPES))}\r\n"
        payload = draw(
            st.one_of(st.sampled_from(sorted(SEEDS.values())), mutated_images(), st.binary(max_size=256))
        )
        separator = draw(st.sampled_from(["\r\n", "\r\n", "\n", ""]))
        parts.append(
            f"--{boundary}{separator}{head}{separator}".encode("latin-1", "replace") + payload + b"\r\n"
        )
    ending = draw(st.sampled_from([f"--{boundary}--\r\n", f"--{boundary}", "", "--"]))
    body = b"".join(parts) + ending.encode("latin-1", "replace")
    return body, f"multipart/form-data; boundary={declared}"


@settings(FUZZ, max_examples=200)
@given(body=multipart_bodies(), path=st.sampled_from(["/segment", "/segment/batch"]))
def test_multipart_bodies(client: TestClient, body: tuple[bytes, str], path: str) -> None:
    data, content_type = body
    assert_clean(
        client.post(f"{path}?mask_format=none", content=data, headers={"Content-Type": content_type})
    )


def test_the_reference_image_is_still_answered_correctly(client: TestClient) -> None:
    answered_correctly(client)
