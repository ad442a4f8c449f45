"""track=true: track ids across a video's frames and a stream connection's answers (service/tracking.py).

The end-to-end tests run the bundled shapes model (at a test resize of 240/320, so a 240×320 frame runs
at its own size) under real uvicorn on a generated clip of moving shapes, and score the answers against
the clip's ground truth (`tests.helpers.track_score`): on this clip (seed 2, 40 frames) every object keeps
one id and no id names two objects. ByteTrack follows boxes by IoU and motion only, so objects that cross
each other can swap ids: `python -m bench.tracking` counts those switches on longer clips (bench/RESULTS.md).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from model.weights import DEFAULT_WEIGHTS
from service import tracking
from tests.helpers import TIMEOUT_S, track_score
from tests.service.helpers import HttpServed, encode, serve_http, tiny_settings
from training.data.clips import moving_scenes, write_clip

HEIGHT, WIDTH, FPS = 240, 320, 30
FRAMES = 40
SEED = 2  # four shapes that never hide one another for long
# The most ID switches allowed on this clip (it has none today): decoding and float differences between
# machines may move a box by a pixel, never a crossing.
MAX_SWITCHES = 1
QUERY = "?track=true&mask_format=none"


@pytest.fixture(scope="module")
def shapes_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model with a test resize of 240/320: the clip's frames run at their own size."""
    pytest.importorskip("supervision", reason="tracking needs the track extra (pip install -e .[track])")
    checkpoint = torch.load(DEFAULT_WEIGHTS, map_location="cpu", weights_only=False)
    checkpoint["config_overrides"] = {"min_size_test": HEIGHT, "max_size_test": WIDTH}
    path = tmp_path_factory.mktemp("weights") / "shapes-240.pth"
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def served(shapes_weights: Path) -> Iterator[HttpServed]:
    with serve_http(tiny_settings(shapes_weights, max_batch_size=2, video_frames_in_flight=4)) as served:
        yield served


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    """The clip's frames and their ground-truth boxes."""
    return list(moving_scenes(FRAMES, HEIGHT, WIDTH, seed=SEED))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_clip(path, FRAMES, HEIGHT, WIDTH, fps=FPS, seed=SEED)
    return path.read_bytes()


def post_video(served: HttpServed, data: bytes, query: str) -> httpx.Response:
    return httpx.post(
        f"{served.url}/segment/video{query}",
        content=data,
        headers={"Content-Type": "video/mp4"},
        timeout=TIMEOUT_S * 2,
    )


def lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.fixture(scope="module")
def tracked(served: HttpServed, clip: bytes) -> list[dict[str, Any]]:
    """The clip's lines with track=true."""
    return lines(post_video(served, clip, QUERY))


def test_each_object_keeps_one_track_id_across_the_videos_frames(
    tracked: list[dict[str, Any]], scenes: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    assert [line["frame"] for line in tracked] == list(range(FRAMES))
    assert all("track_id" in instance for line in tracked for instance in line["instances"])
    score = track_score([boxes for _, boxes in scenes], [line["instances"] for line in tracked])
    assert score.switches <= MAX_SWITCHES, score.ids
    assert not score.shared_ids, score.ids
    assert score.tracked >= 0.9, score.ids
    # Ids differ between objects: the objects' main ids are four different numbers.
    main_ids = [max(set(ids) - {None}, key=ids.count) for ids in score.ids]
    assert len(set(main_ids)) == len(main_ids) == 4
    # The first frame confirms its objects at once, numbered from 1.
    first = [instance["track_id"] for instance in tracked[0]["instances"]]
    assert sorted(i for i in first if i is not None)[:4] == [1, 2, 3, 4]


def test_a_second_video_starts_fresh(served: HttpServed, clip: bytes, tracked: list[dict[str, Any]]) -> None:
    again = lines(post_video(served, clip, QUERY + "&max_frames=10"))
    # Its own tracker: the same frames give the same ids, counted from 1 again, not after the first's.
    # (Compared as sets: frames batch differently in the two requests, which may reorder equal scores.)
    assert [{(i["class_id"], i["track_id"]) for i in line["instances"]} for line in again] == [
        {(i["class_id"], i["track_id"]) for i in line["instances"]} for line in tracked[:10]
    ]


def test_frames_are_tracked_in_frame_order_with_fps_sampling(
    served: HttpServed, clip: bytes, scenes: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    sampled = lines(post_video(served, clip, QUERY + "&fps=10"))
    frames = [line["frame"] for line in sampled]
    assert frames == list(range(0, FRAMES, 3))
    score = track_score([scenes[frame][1] for frame in frames], [line["instances"] for line in sampled])
    assert score.switches <= MAX_SWITCHES and not score.shared_ids, score.ids


def test_without_track_there_is_no_track_id(served: HttpServed, clip: bytes) -> None:
    for query in ("?mask_format=none&max_frames=2", "?mask_format=none&max_frames=2&track=false"):
        answered = lines(post_video(served, clip, query))
        assert answered[0]["instances"]
        assert not any("track_id" in instance for line in answered for instance in line["instances"])


@pytest.mark.parametrize("value", ["maybe", "2", ""])
def test_track_must_be_a_boolean(served: HttpServed, clip: bytes, value: str) -> None:
    response = post_video(served, clip, f"?track={value}")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_parameter"
    assert "track" in response.json()["error"]["message"]


@pytest.fixture
def without_supervision(monkeypatch: pytest.MonkeyPatch) -> None:
    """An installation without the track extra: importing supervision fails."""
    monkeypatch.setattr(tracking, "_loaded", None)
    monkeypatch.setitem(sys.modules, "supervision", None)


@pytest.mark.usefixtures("without_supervision")
def test_without_the_extra_a_video_with_track_is_refused_with_501(served: HttpServed, clip: bytes) -> None:
    response = post_video(served, clip, QUERY)
    assert response.status_code == 501
    assert response.json()["error"] == {
        "code": "not_implemented",
        "message": "this service cannot track: it was installed without supervision (centermask-serve[track])",
    }
    assert served.runtime.in_flight == 0
    # Without track the video is answered as ever.
    assert lines(post_video(served, clip, "?mask_format=none&max_frames=1"))[0]["frame"] == 0


def open_stream(served: HttpServed, query: str = "") -> ClientConnection:
    return connect(f"{served.ws_url}/segment/stream{query}", open_timeout=TIMEOUT_S)


def receive(stream: ClientConnection) -> dict[str, Any]:
    message = stream.recv(timeout=TIMEOUT_S * 2)
    assert isinstance(message, str)
    return json.loads(message)


def close_code(stream: ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            stream.recv(timeout=TIMEOUT_S)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


def test_each_stream_connection_has_its_own_tracker(
    served: HttpServed, scenes: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    frames = [encode(image) for image, _ in scenes[:12]]
    answers: dict[str, list[dict[str, Any]]] = {"first": [], "second": []}
    with open_stream(served, QUERY) as first, open_stream(served, QUERY) as second:
        # Interleaved: each connection's tracker sees only its own frames.
        for index, frame in enumerate(frames):
            first.send(frame)
            answers["first"].append(receive(first))
            if index >= 4:  # the second connection starts later in the clip
                second.send(frame)
                answers["second"].append(receive(second))
    for name, answered in answers.items():
        truth = [boxes for _, boxes in scenes[12 - len(answered) : 12]]
        score = track_score(truth, [answer["instances"] for answer in answered])
        assert score.switches == 0 and not score.shared_ids, (name, score.ids)
        assert score.tracked >= 0.9, (name, score.ids)
        first_ids = sorted(i["track_id"] for i in answered[0]["instances"] if i["track_id"] is not None)
        assert first_ids[:4] == [1, 2, 3, 4], name


def test_tracking_stopped_and_started_again_gives_new_ids(
    served: HttpServed, scenes: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    frames = [encode(image) for image, _ in scenes[:4]]
    with open_stream(served, QUERY) as stream:
        stream.send(frames[0])
        before = {i["track_id"] for i in receive(stream)["instances"]} - {None}
        stream.send(json.dumps({"parameters": {"mask_format": "none"}}))
        stream.send(frames[1])
        assert not any("track_id" in i for i in receive(stream)["instances"])
        stream.send(json.dumps({"parameters": {"mask_format": "none", "track": True}}))
        stream.send(frames[2])
        after = {i["track_id"] for i in receive(stream)["instances"]} - {None}
        stream.send(frames[3])
        kept = {i["track_id"] for i in receive(stream)["instances"]}
    # The new tracker's ids go on from the last one given: it never reuses an id of the old one.
    assert len(before) >= 4 and len(after) >= 4
    assert min(after) > max(before)
    assert after <= kept


def test_invalid_track_parameters_on_a_stream(served: HttpServed) -> None:
    with open_stream(served, "?track=maybe") as stream:
        assert receive(stream)["error"]["code"] == "invalid_parameter"
        assert close_code(stream) == 1007
    with open_stream(served, QUERY) as stream:
        stream.send(json.dumps({"parameters": {"track": "maybe"}}))
        assert receive(stream)["error"]["code"] == "invalid_parameter"
        stream.send(encode(np.full((HEIGHT, WIDTH, 3), 128, np.uint8)))
        assert receive(stream)["frame"] == 0  # the stream goes on, its parameters unchanged


@pytest.mark.usefixtures("without_supervision")
def test_without_the_extra_a_stream_with_track_is_refused(
    served: HttpServed, scenes: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    with open_stream(served, QUERY) as stream:
        error = receive(stream)["error"]
        assert error["code"] == "not_implemented" and "centermask-serve[track]" in error["message"]
        assert close_code(stream) == 1007
    # Asked for in a control message: said, and the stream goes on without tracking.
    with open_stream(served, "?mask_format=none") as stream:
        stream.send(json.dumps({"parameters": {"track": True}}))
        assert receive(stream)["error"]["code"] == "not_implemented"
        stream.send(encode(scenes[0][0]))
        answer = receive(stream)
        assert answer["frame"] == 0 and answer["instances"]
        assert not any("track_id" in i for i in answer["instances"])


def instances(*boxes: tuple[float, float, float, float], score: float = 0.9) -> list[dict[str, Any]]:
    return [{"box": list(box), "score": score, "class_id": 0} for box in boxes]


def test_the_tracker_keeps_every_instance_and_counts_from_first_id() -> None:
    pytest.importorskip("supervision")
    tracker = tracking.Tracker(30.0, first_id=8)
    a, b, c = (10.0, 10.0, 50.0, 50.0), (100.0, 100.0, 150.0, 150.0), (200.0, 10.0, 240.0, 50.0)
    assert tracker.update(instances(a, b), 0.0) == [8, 9]
    # A new object after the first frame is unconfirmed on its first frame: kept, without an id.
    assert tracker.update(instances(b, a, c), 1 / 30) == [9, 8, None]
    assert tracker.update(instances(c, a, b), 2 / 30) == [10, 8, 9]
    assert tracker.update([], 3 / 30) == []
    assert tracker.last_id == 10
    # A box too small to track (no area) is kept too.
    assert tracker.update(instances(a, (5.0, 5.0, 5.0, 9.0)), 4 / 30) == [8, None]


def test_a_lost_track_ends_after_its_buffer_in_frames_of_the_rate() -> None:
    pytest.importorskip("supervision")
    box = (10.0, 10.0, 50.0, 50.0)
    # At 5 frames per second, 1 s is 5 frames: a track missed on 5 frames (or 6: the library counts from the
    # last frame that found it) is found again, on 7 it has ended.
    for gap, same in ((5, True), (6, True), (7, False)):
        tracker = tracking.Tracker(5.0)
        assert tracker.frame_rate == 5.0
        tracker.update(instances(box), 0.0)
        for step in range(1, gap + 1):
            tracker.update([], step / 5)
        tracker.update(instances(box), (gap + 1) / 5)
        # Confirmed again on the frame after (a new track waits a frame), with its old id or a new one.
        assert tracker.update(instances(box), (gap + 2) / 5) == ([1] if same else [2])


def test_a_streams_tracker_measures_its_rate() -> None:
    pytest.importorskip("supervision")
    tracker = tracking.Tracker(None)
    assert tracker.frame_rate == tracking.ASSUMED_RATE
    for step in range(10):
        tracker.update(instances((10.0, 10.0, 50.0, 50.0)), 100 + step / 8)
    assert tracker.frame_rate == 8.0


def test_the_track_extra_brings_no_opencv_gui_build() -> None:
    """opencv-python would share the cv2 module with this project's opencv-python-headless (and need libGL,
    which the image lacks): supervision from 0.30 on requires no OpenCV, `trackers` (ByteTrack's home
    after 0.31) requires that build."""
    pytest.importorskip("supervision")
    requirements = importlib.metadata.requires("supervision") or []
    assert not [r for r in requirements if re.match(r"opencv-python(?!-headless)", r, re.IGNORECASE)]
    assert hasattr(tracking.load(), "ByteTrack")
