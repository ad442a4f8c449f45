"""The WebSocket /segment/stream under real uvicorn: answers equal /segment's, latest-frame-wins, control
messages, the API key, per-frame errors, close codes, limits and the drain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from service.runtime import PredictorLoader
from tests.helpers import TIMEOUT_S
from tests.service.helpers import (
    ControlledPredictor,
    HttpServed,
    encode,
    metric_value,
    random_image,
    serve_http,
    tiny_settings,
    wait_for,
)

KEY = "stream-key"
MAX_IMAGE_BYTES = 200_000
FRAMES = [encode(random_image(seed, 96, 128)) for seed in range(3)]


@pytest.fixture(scope="module")
def served(small_weights: Path) -> Iterator[HttpServed]:
    settings = tiny_settings(
        small_weights, max_batch_size=1, api_key=KEY, max_image_bytes=MAX_IMAGE_BYTES, max_streams=2
    )
    with serve_http(settings) as served:
        yield served


def open_stream(served: HttpServed, query: str = "", *, key: str | None = KEY) -> ClientConnection:
    headers = {"X-API-Key": key} if key is not None else {}
    return connect(
        f"{served.ws_url}/segment/stream{query}", additional_headers=headers, open_timeout=TIMEOUT_S
    )


def receive(stream: ClientConnection) -> dict[str, Any]:
    message = stream.recv(timeout=TIMEOUT_S)
    assert isinstance(message, str)
    return json.loads(message)


def closed_with(stream: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            stream.recv(timeout=TIMEOUT_S)
    assert closed.value.rcvd is not None, "the server closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_each_frame_is_answered_as_segment_answers_it(served: HttpServed) -> None:
    query = "?score_threshold=0.05"
    with open_stream(served, query) as stream:
        answers = []
        for frame in FRAMES:
            stream.send(frame)
            answers.append(receive(stream))
        assert metric_value(served.app, "centermask_streams_open") == 1
    assert [(a["frame"], a["dropped"]) for a in answers] == [(0, 0), (1, 0), (2, 0)]
    with httpx.Client(base_url=served.url, headers={"X-API-Key": KEY}, timeout=TIMEOUT_S) as client:
        for answer, frame in zip(answers, FRAMES, strict=True):
            direct = client.post(
                f"/segment{query}", content=frame, headers={"Content-Type": "image/png"}
            ).json()
            assert (answer["height"], answer["width"], answer["instances"]) == (
                direct["height"],
                direct["width"],
                direct["instances"],
            )
            # Each answer names the model and version that ran its frame, as /segment's answer does.
            assert (answer["model"], answer["model_version"]) == (direct["model"], direct["model_version"])
            assert answer["timing_ms"]["total"] >= answer["timing_ms"]["inference"] > 0
    assert sum(len(a["instances"]) for a in answers) > 0
    wait_for(lambda: metric_value(served.app, "centermask_streams_open") == 0)
    assert metric_value(served.app, "centermask_stream_frames_total", {"outcome": "answered"}) >= 3


def test_a_control_message_changes_the_parameters_of_later_frames(served: HttpServed) -> None:
    with open_stream(served, "?score_threshold=0") as stream:
        stream.send(FRAMES[0])
        everything = receive(stream)
        stream.send(json.dumps({"parameters": {"score_threshold": 1.5}}))
        assert receive(stream)["error"]["code"] == "invalid_parameter"
        stream.send(json.dumps({"parameters": {"mask_format": "none", "max_detections": 1}}))
        stream.send(FRAMES[0])
        fewer = receive(stream)
    assert len(everything["instances"]) > 1 and "mask" in everything["instances"][0]
    assert fewer["frame"] == 1
    assert [{**i, "mask": None} for i in fewer["instances"]] == [
        {**i, "mask": None} for i in everything["instances"][:1]
    ]
    assert "mask" not in fewer["instances"][0]


def test_a_bad_frame_is_answered_with_its_error_and_the_stream_goes_on(served: HttpServed) -> None:
    with open_stream(served) as stream:
        stream.send(b"not an image")
        assert receive(stream) == {
            "error": {
                "code": "invalid_image",
                "message": "cannot identify the image; send JPEG, PNG, WEBP, BMP, TIFF",
                "index": 0,
            }
        }
        stream.send(FRAMES[1])
        assert receive(stream)["frame"] == 1


def test_the_api_key_in_a_header_or_as_the_first_message(served: HttpServed) -> None:
    with open_stream(served, key=None) as stream:
        stream.send(json.dumps({"api_key": KEY, "parameters": {"mask_format": "none"}}))
        stream.send(FRAMES[0])
        answer = receive(stream)
        assert answer["frame"] == 0 and "mask" not in answer["instances"][0]
    with open_stream(served, key="wrong") as stream:
        assert receive(stream)["error"]["code"] == "unauthorized"
        assert closed_with(stream)[0] == 1008
    with open_stream(served, key=None) as stream:
        stream.send(FRAMES[0])  # a frame before the key
        assert receive(stream)["error"]["code"] == "unauthorized"
        assert closed_with(stream)[0] == 1008


@pytest.mark.parametrize(
    ("message", "code", "error"),
    [
        ("not json", 1007, "invalid_request"),
        (json.dumps({"unknown": 1}), 1007, "invalid_request"),
        (b"\x00" * (MAX_IMAGE_BYTES + 1), 1009, "image_too_large"),
    ],
)
def test_what_the_server_cannot_take_closes_with_a_code_and_says_why(
    served: HttpServed, message: str | bytes, code: int, error: str
) -> None:
    with open_stream(served) as stream:
        stream.send(message)
        assert receive(stream)["error"]["code"] == error
        closed_code, reason = closed_with(stream)
    assert closed_code == code and reason.startswith(error)


def test_pages_of_other_origins_may_not_stream(served: HttpServed) -> None:
    headers = {"X-API-Key": KEY, "Origin": "http://elsewhere.example"}
    with connect(
        f"{served.ws_url}/segment/stream", additional_headers=headers, open_timeout=TIMEOUT_S
    ) as stream:
        assert receive(stream)["error"]["code"] == "forbidden_origin"
        assert closed_with(stream)[0] == 1008
    headers["Origin"] = served.url  # the service's own page
    with connect(
        f"{served.ws_url}/segment/stream", additional_headers=headers, open_timeout=TIMEOUT_S
    ) as stream:
        stream.send(FRAMES[0])
        assert receive(stream)["frame"] == 0


def test_invalid_parameters_in_the_url_close_with_1007(served: HttpServed) -> None:
    with open_stream(served, "?classes=no-such-class") as stream:
        assert receive(stream)["error"]["code"] == "invalid_parameter"
        assert closed_with(stream)[0] == 1007


def test_connections_beyond_the_limit_are_told_to_come_back(served: HttpServed) -> None:
    turned_away = {"reason": "streams_full", "protocol": "http"}
    before = metric_value(served.app, "centermask_rejected_total", turned_away)
    with open_stream(served) as first, open_stream(served) as second:
        for stream in (first, second):  # both served, so both counted
            stream.send(FRAMES[0])
            receive(stream)
        with open_stream(served) as third:
            assert receive(third)["error"]["code"] == "overloaded"
            assert closed_with(third)[0] == 1013
    # Counted before the error is sent, as /segment counts its own rejections.
    assert metric_value(served.app, "centermask_rejected_total", turned_away) == before + 1


@pytest.fixture
def gated(
    small_weights: Path, controlled: tuple[PredictorLoader, Any]
) -> Iterator[tuple[HttpServed, ControlledPredictor]]:
    load, predictor = controlled
    with serve_http(tiny_settings(small_weights, max_batch_size=1), load) as served:
        yield served, predictor()


def test_the_latest_frame_wins(gated: tuple[HttpServed, ControlledPredictor]) -> None:
    served, predictor = gated
    predictor.hold()
    with open_stream(served) as stream:
        stream.send(FRAMES[0])
        assert predictor.entered.wait(TIMEOUT_S)
        for _ in range(4):  # frames 1-4 arrive while frame 0 is being segmented
            stream.send(FRAMES[1])
        stream.send(FRAMES[2])
        wait_for(
            lambda: metric_value(served.app, "centermask_stream_frames_total", {"outcome": "dropped"}) == 4
        )
        # Nothing of this connection waits in the queue: the newest frame waits in its slot.
        assert metric_value(served.app, "centermask_queue_depth") == 0
        predictor.release()
        first, second = receive(stream), receive(stream)
    assert (first["frame"], first["dropped"]) == (0, 4)
    assert (second["frame"], second["dropped"]) == (5, 4)
    assert len(predictor.batches) == 2


def test_a_drain_answers_the_frame_in_flight_then_closes_with_1001(
    gated: tuple[HttpServed, ControlledPredictor],
) -> None:
    served, predictor = gated
    predictor.hold()
    with open_stream(served) as stream:
        stream.send(FRAMES[0])
        assert predictor.entered.wait(TIMEOUT_S)
        stream.send(FRAMES[1])  # waiting: dropped by the drain
        served.sigterm()
        wait_for(lambda: served.runtime.phase.value == "draining")
        predictor.release()
        assert receive(stream)["frame"] == 0
        assert receive(stream)["error"]["code"] == "not_ready"
        assert closed_with(stream)[0] == 1001
    # Nothing is left to drain: the server stops by itself.
    served.thread.join(TIMEOUT_S)
    assert not served.thread.is_alive()


def test_a_frame_waiting_when_the_drain_begins_is_never_started(
    gated: tuple[HttpServed, ControlledPredictor],
) -> None:
    """SIGTERM marks the service draining at once and tells streams a moment later: a frame that waited for
    the one in flight is dropped in that moment too, not segmented (seen once under load in CI)."""
    served, predictor = gated
    predictor.hold()
    with open_stream(served) as stream:
        stream.send(FRAMES[0])
        assert predictor.entered.wait(TIMEOUT_S)
        stream.send(FRAMES[1])  # read now or after the drain began: either way it waits for frame 0
        served.runtime.begin_draining()  # what the signal handler does; streams are not told yet
        predictor.release()
        assert receive(stream)["frame"] == 0
        assert receive(stream)["error"]["code"] == "not_ready"
        assert closed_with(stream)[0] == 1001
    assert len(predictor.batches) == 1
