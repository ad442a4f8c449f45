"""POST /segment/video: a line per frame in order, equal to /segment on the same decoded frame; sampling;
errors before the first line and as the last line; batching; a client that leaves frees its queue slots.

The apps run under real uvicorn (`serve_http`): lines are streamed and disconnections are real."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from centermask_client.video import VideoReader
from model.inference import video as video_decoder
from service.runtime import Phase, PredictorLoader
from tests.helpers import TIMEOUT_S, corrupted_mid_file
from tests.service.helpers import (
    ControlledPredictor,
    Faults,
    HttpServed,
    encode,
    metric_value,
    serve_http,
    tiny_settings,
    wait_for,
)
from training.data.clips import moving_frames, write_clip

FPS = 10
FRAMES = 12
LIMITS = {"max_video_bytes": 400_000, "max_video_pixels": 200 * 150, "max_video_duration_s": 5.0}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    paths = {suffix: folder / f"clip.{suffix}" for suffix in ("mp4", "webm", "mkv", "mov")}
    for path in paths.values():
        write_clip(path, FRAMES, 120, 160, fps=FPS)
    # Longer than the app's limit of 5 s, at one frame per second.
    paths["long"] = folder / "long.mp4"
    write_clip(paths["long"], 7, 120, 160, fps=1)
    paths["large"] = folder / "large.mp4"
    write_clip(paths["large"], 2, 240, 320, fps=FPS)
    return paths


@pytest.fixture(scope="module")
def served(small_weights: Path) -> Iterator[HttpServed]:
    """Batches of one image, so that a frame's result is bit-identical to /segment's on the same pixels."""
    with serve_http(tiny_settings(small_weights, max_batch_size=1, **LIMITS)) as served:
        yield served


def post_video(served: HttpServed, data: bytes, query: str = "", **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", {"Content-Type": "video/mp4"})
    return httpx.post(f"{served.url}/segment/video{query}", content=data, timeout=TIMEOUT_S, **kwargs)


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


def decoded(data: bytes, **sampling: Any) -> list[Any]:
    with VideoReader(data) as reader:
        return list(reader.frames(**sampling))


def test_each_frame_is_answered_in_order_as_segment_answers_that_frame(
    served: HttpServed, clips: dict[str, Path]
) -> None:
    data = clips["mp4"].read_bytes()
    query = "?score_threshold=0.05&mask_format=rle"
    response = post_video(served, data, query + "&max_frames=6")
    answered = lines(response)
    frames = decoded(data, max_frames=6)
    assert response.headers["X-Video-Frames"] == "6"
    assert [line["frame"] for line in answered] == list(range(6))
    assert [line["time_s"] for line in answered] == pytest.approx([i / FPS for i in range(6)])
    assert sum(len(line["instances"]) for line in answered) > 0
    with httpx.Client(base_url=served.url, timeout=TIMEOUT_S) as client:
        for line, frame in zip(answered, frames, strict=True):
            direct = client.post(
                f"/segment{query}", content=encode(frame.pixels), headers={"Content-Type": "image/png"}
            ).json()
            assert (line["height"], line["width"]) == (direct["height"], direct["width"]) == (120, 160)
            assert line["instances"] == direct["instances"]
            # Each line names the model and version that ran it, as /segment's answer does.
            assert (line["model"], line["model_version"]) == (direct["model"], direct["model_version"])


@pytest.mark.parametrize("container", ["webm", "mkv", "mov"])
def test_every_container_is_read(served: HttpServed, clips: dict[str, Path], container: str) -> None:
    data = clips[container].read_bytes()
    response = post_video(served, data, "?max_frames=2&mask_format=none")
    assert [line["frame"] for line in lines(response)] == [0, 1]
    assert response.headers["X-Video-Frames"] == "2"


def test_fps_samples_and_max_frames_bounds(served: HttpServed, clips: dict[str, Path]) -> None:
    data = clips["mp4"].read_bytes()
    response = post_video(served, data, "?fps=4&max_frames=3&mask_format=none")
    expected = decoded(data, fps=4, max_frames=3)
    assert [(line["frame"], line["time_s"]) for line in lines(response)] == [
        (frame.index, pytest.approx(frame.time_s)) for frame in expected
    ]
    assert [frame.index for frame in expected] == [0, 3, 5]
    assert response.headers["X-Video-Frames"] == "3"


def test_a_multipart_upload_works_too(served: HttpServed, clips: dict[str, Path]) -> None:
    files = {"video": ("clip.webm", clips["webm"].read_bytes(), "video/webm")}
    response = httpx.post(f"{served.url}/segment/video?max_frames=1", files=files, timeout=TIMEOUT_S)
    assert [line["frame"] for line in lines(response)] == [0]


def other_codec() -> bytes:
    """A Matroska file of FFV1 video: a container we read, a codec we do not."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in moving_frames(2, 48, 64):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"", "video/mp4", 400, "invalid_video"),
        (b"not a video at all", "video/mp4", 400, "invalid_video"),
        ("truncated", "video/mp4", 400, "invalid_video"),
        (encode(np.zeros((8, 8, 3), np.uint8)), "video/mp4", 415, "unsupported_media_type"),
        ("ffv1", "video/x-matroska", 415, "unsupported_media_type"),
        ("mp4", "text/plain", 415, "unsupported_media_type"),
        ("large", "video/mp4", 413, "too_many_pixels"),
        ("long", "video/mp4", 413, "video_too_long"),
        (b"\x00" * 400_001, "video/mp4", 413, "video_too_large"),
    ],
)
def test_what_is_wrong_with_the_file_is_a_status_before_any_line(
    served: HttpServed, clips: dict[str, Path], body: Any, content_type: str, status: int, code: str
) -> None:
    if body == "truncated":
        body = clips["mp4"].read_bytes()[:2000]  # the index (moov) is at the end: the header is gone
    elif body == "ffv1":
        body = other_codec()
    elif isinstance(body, str):
        body = clips[body].read_bytes()
    response = post_video(served, body, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    assert served.runtime.in_flight == 0


def test_without_pyav_the_endpoint_says_so(
    served: HttpServed, clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(video_decoder, "video_available", lambda: False)
    response = post_video(served, clips["mp4"].read_bytes())
    assert response.status_code == 501
    assert response.json()["error"]["code"] == "not_implemented"
    assert "centermask-serve[video]" in response.json()["error"]["message"]


def test_a_decoding_failure_mid_file_ends_with_an_error_line(
    served: HttpServed, clips: dict[str, Path]
) -> None:
    broken, good = corrupted_mid_file(clips["mp4"].read_bytes())
    answered = lines(post_video(served, broken, "?mask_format=none"))
    assert [line["frame"] for line in answered[:-1]] == list(range(good))
    assert answered[-1]["error"]["code"] == "invalid_video"
    assert answered[-1]["error"]["index"] == good


def test_a_failing_frame_is_the_last_line_with_its_index(served: HttpServed, clips: dict[str, Path]) -> None:
    faults = Faults(served.runtime.predictor)
    try:

        def third_pass_fails(_batch: Any) -> None:
            if faults.calls == 3:
                raise RuntimeError("injected")

        faults.plan = third_pass_fails
        answered = lines(post_video(served, clips["mp4"].read_bytes(), "?mask_format=none"))
    finally:
        faults.remove()
    assert [line.get("frame") for line in answered[:-1]] == [0, 1]
    assert answered[-1] == {
        "error": {"code": "inference_failed", "message": "internal error while running the model", "index": 2}
    }
    # The request leaves once its last line is out, just after the client has it.
    wait_for(lambda: served.runtime.in_flight == 0)


@pytest.fixture
def gated(
    small_weights: Path, controlled: tuple[PredictorLoader, Any]
) -> Iterator[tuple[HttpServed, ControlledPredictor]]:
    load, predictor = controlled
    settings = tiny_settings(
        small_weights, max_batch_size=2, max_batch_delay_ms=500, video_frames_in_flight=4
    )
    with serve_http(settings, load) as served:
        yield served, predictor()


def test_frames_in_flight_batch_together(
    gated: tuple[HttpServed, ControlledPredictor], clips: dict[str, Path]
) -> None:
    served, predictor = gated
    predictor.hold()
    with httpx.stream(
        "POST",
        f"{served.url}/segment/video?max_frames=5&mask_format=none",
        content=clips["mp4"].read_bytes(),
        headers={"Content-Type": "video/mp4"},
        timeout=TIMEOUT_S,
    ) as response:
        assert predictor.entered.wait(TIMEOUT_S)
        # The first pass holds frames 0 and 1 (the batch delay gathers both); 2 and 3 wait behind it.
        wait_for(lambda: metric_value(served.app, "centermask_queue_depth") == 2)
        predictor.release()
        answered = [json.loads(line) for line in response.iter_lines()]
    assert [line["frame"] for line in answered] == [0, 1, 2, 3, 4]
    assert predictor.batches == [[(120, 160)] * 2, [(120, 160)] * 2, [(120, 160)]]


def test_a_client_that_leaves_stops_the_decoding_and_frees_its_queue_slots(
    gated: tuple[HttpServed, ControlledPredictor], clips: dict[str, Path]
) -> None:
    served, predictor = gated
    metrics = served.app.state.metrics.registry
    predictor.hold()
    with httpx.stream(
        "POST",
        f"{served.url}/segment/video?mask_format=none",
        content=clips["mp4"].read_bytes(),
        headers={"Content-Type": "video/mp4"},
        timeout=TIMEOUT_S,
    ) as response:
        assert response.status_code == 200
        assert predictor.entered.wait(TIMEOUT_S)
        # 4 in flight: 2 in the held pass, 2 queued.
        wait_for(lambda: metric_value(served.app, "centermask_queue_depth") == 2)
    # The connection is closed: the request ends, its queued frames are withdrawn.
    wait_for(lambda: served.runtime.in_flight == 0)
    assert (
        metrics.get_sample_value("centermask_rejected_total", {"reason": "client_gone", "protocol": "http"})
        == 1
    )
    predictor.release()
    wait_for(lambda: metric_value(served.app, "centermask_queue_depth") == 0)
    assert served.runtime.phase is Phase.READY
    assert metrics.get_sample_value("centermask_video_frames_total") == 0
    # Decoding stopped: the 4 frames in flight were the only ones prepared.
    assert metrics.get_sample_value("centermask_preprocess_seconds_count") == 4
    # Only the pass that was running when the client left ever ran.
    assert len(predictor.batches) == 1


def test_a_drain_that_runs_out_of_time_ends_the_answer_with_not_ready(
    small_weights: Path, controlled: tuple[PredictorLoader, Any], clips: dict[str, Path]
) -> None:
    load, get_predictor = controlled
    settings = tiny_settings(small_weights, max_batch_size=1, drain_timeout_s=0.5)
    with serve_http(settings, load) as served:
        predictor = get_predictor()
        predictor.hold()
        with httpx.stream(
            "POST",
            f"{served.url}/segment/video?mask_format=none",
            content=clips["mp4"].read_bytes(),
            headers={"Content-Type": "video/mp4"},
            timeout=TIMEOUT_S,
        ) as response:
            assert predictor.entered.wait(TIMEOUT_S)
            served.sigterm()  # frame 0 is held in its forward pass past the drain timeout
            answered = [json.loads(line) for line in response.iter_lines()]
        predictor.release()
        assert answered == [
            {"error": {"code": "not_ready", "message": "the service is shutting down", "index": 0}}
        ]
        served.thread.join(TIMEOUT_S)
        assert not served.thread.is_alive()
