"""Client behaviour that needs no server: 503 retries within the budget, typed errors, bad answers.

A mock transport plays the service; the clients' sleeps are recorded instead of slept.
"""

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from centermask_client import (
    NO_RETRY,
    AsyncClient,
    CenterMaskError,
    Client,
    ConnectionFailed,
    InvalidRequest,
    PayloadTooLarge,
    RetryPolicy,
    ServiceUnavailable,
    Unauthorized,
)
from centermask_client.client import retry_after_s

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
OK = {
    "file": None,
    "height": 2,
    "width": 3,
    "instances": [],
    "model": "m",
    "request_id": "r",
    "timing_ms": {"decode": 1, "queue": 0, "inference": 2, "postprocess": 0, "total": 3},
}


def overloaded(retry_after: str | None = "2") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    error = {"error": {"code": "overloaded", "message": "the inference queue is full; retry later"}}
    return httpx.Response(503, json=error, headers=headers)


def scripted(*answers: httpx.Response) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport giving these answers in turn, and the requests it received."""
    received: list[httpx.Request] = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return queue.pop(0)

    return httpx.MockTransport(handle), received


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """What the clients would have slept, in order; nothing is slept."""
    slept: list[float] = []

    async def no_async_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(time, "sleep", slept.append)
    monkeypatch.setattr(asyncio, "sleep", no_async_sleep)
    return slept


def test_a_503_is_retried_after_its_retry_after(sleeps: list[float]) -> None:
    transport, received = scripted(overloaded("2"), overloaded("1"), httpx.Response(200, json=OK))
    with Client("http://service", transport=transport) as client:
        result = client.segment(PNG)
    assert result.model == "m"
    assert sleeps == [2.0, 1.0]
    assert len(received) == 3
    assert all(request.content == PNG for request in received)  # the body is sent again each time


def test_without_retry_after_the_wait_doubles(sleeps: list[float]) -> None:
    answers = [overloaded(None)] * 5 + [httpx.Response(200, json=OK)]
    transport, _ = scripted(*answers)
    with Client(
        "http://service", transport=transport, retry=RetryPolicy(budget_s=60, backoff_s=0.5)
    ) as client:
        client.segment(PNG)
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_the_budget_bounds_the_waiting(sleeps: list[float]) -> None:
    transport, received = scripted(*[overloaded("4")] * 10)
    client = Client("http://service", transport=transport, retry=RetryPolicy(budget_s=10))
    with client, pytest.raises(ServiceUnavailable) as raised:
        client.segment(PNG)
    assert sleeps == [4.0, 4.0]  # a third wait would pass the 10 s budget
    assert len(received) == 3
    error = raised.value
    assert (error.status, error.code, error.retry_after_s) == (503, "overloaded", 4.0)


def test_no_retry(sleeps: list[float]) -> None:
    transport, received = scripted(overloaded("1"))
    with (
        Client("http://service", transport=transport, retry=NO_RETRY) as client,
        pytest.raises(ServiceUnavailable),
    ):
        client.segment(PNG)
    assert sleeps == [] and len(received) == 1


@pytest.mark.anyio
async def test_the_async_client_retries_the_same_way(sleeps: list[float]) -> None:
    transport, received = scripted(overloaded("3"), httpx.Response(200, json=OK))
    async with AsyncClient("http://service", transport=transport) as client:
        result = await client.segment(PNG)
    assert result.request_id == "r"
    assert sleeps == [3.0] and len(received) == 2


@pytest.mark.parametrize(
    ("status", "code", "error_class"),
    [
        (400, "invalid_image", InvalidRequest),
        (401, "unauthorized", Unauthorized),
        (413, "too_many_pixels", PayloadTooLarge),
    ],
)
def test_errors_are_typed_and_carry_the_servers_code(status: int, code: str, error_class: type) -> None:
    body = {"error": {"code": code, "message": "explained", "index": 2}}
    transport, _ = scripted(httpx.Response(status, json=body, headers={"X-Request-ID": "abc"}))
    with Client("http://service", transport=transport) as client, pytest.raises(error_class) as raised:
        client.segment_batch([PNG, PNG, PNG])
    error = raised.value
    assert (error.status, error.code, error.message, error.index, error.request_id) == (
        status,
        code,
        "explained",
        2,
        "abc",
    )
    assert str(error) == f"{status} {code} (image 2): explained"


def test_an_answer_that_is_not_the_service_s() -> None:
    transport, _ = scripted(httpx.Response(502, text="<html>Bad Gateway</html>"))
    with Client("http://service", transport=transport) as client, pytest.raises(CenterMaskError) as raised:
        client.segment(PNG)
    assert raised.value.code == "http_error" and "Bad Gateway" in raised.value.message
    transport, _ = scripted(httpx.Response(200, json={"unexpected": True}))
    with (
        Client("http://service", transport=transport) as client,
        pytest.raises(CenterMaskError, match="not a"),
    ):
        client.segment(PNG)


def test_an_unreachable_service() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with Client("http://service", transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(ConnectionFailed, match="cannot reach http://service"):
            client.model_info()
        assert client.is_ready() is False


def test_requests_carry_the_key_and_the_parameters() -> None:
    transport, received = scripted(httpx.Response(200, json=OK))
    with Client("http://service/", api_key="k", transport=transport) as client:
        client.segment(PNG, score_threshold=0.5, max_detections=3, classes=["ring", "category_id:2"])
    [request] = received
    assert request.headers["X-API-Key"] == "k"
    assert request.headers["Content-Type"] == "image/png"
    assert dict(request.url.params) == {
        "mask_format": "rle",
        "score_threshold": "0.5",
        "max_detections": "3",
        "classes": "ring,category_id:2",
    }
    with Client("http://service", transport=transport) as client, pytest.raises(TypeError, match="list"):
        client.segment(PNG, classes="ring")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("-2", 0.0),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after_values(value: str | None, expected: float | None) -> None:
    headers = {"Retry-After": value} if value is not None else {}
    assert retry_after_s(httpx.Response(503, headers=headers)) == expected


def test_retry_after_as_an_http_date() -> None:
    in_30_s = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = retry_after_s(httpx.Response(503, headers={"Retry-After": in_30_s}))
    assert seconds is not None and 25 <= seconds <= 30
