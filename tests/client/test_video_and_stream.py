"""The clients' videos and streams, and `centermask segment clip.mp4`, against the real service (the tiny
checkpoint behind an API key, in a subprocess)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from centermask_client import (
    AsyncClient,
    Client,
    InvalidRequest,
    StreamClosed,
    StreamFrameResult,
    Unauthorized,
    VideoFrameResult,
)
from centermask_client.cli import main
from centermask_client.overlay import draw_overlay
from centermask_client.video import VideoReader
from tests.helpers import TIMEOUT_S, TINY_SERVER_KEY, LiveServer, corrupted_mid_file
from training.data.clips import moving_frames, write_clip

FRAMES = 6


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_clip(path, FRAMES, 96, 128, fps=10)
    return path


@pytest.fixture(scope="module")
def client(tiny_server: LiveServer) -> Iterator[Client]:
    with Client(tiny_server.url, api_key=TINY_SERVER_KEY) as client:
        yield client


def jpeg(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_segment_video_yields_the_services_lines_typed(
    client: Client, clip: Path, tiny_server: LiveServer
) -> None:
    with client.segment_video(clip, max_frames=4, score_threshold=0.1) as frames:
        assert frames.expected_frames == 4
        results = list(frames)
    raw = httpx.post(
        f"{tiny_server.url}/segment/video?max_frames=4&score_threshold=0.1",
        content=clip.read_bytes(),
        headers={"Content-Type": "video/mp4", "X-API-Key": TINY_SERVER_KEY},
        timeout=TIMEOUT_S,
    )
    direct = [VideoFrameResult.model_validate_json(line) for line in raw.text.splitlines()]
    assert [(r.frame, r.time_s, r.height, r.width) for r in results] == [
        (r.frame, r.time_s, r.height, r.width) for r in direct
    ]
    # Two requests batch differently (the server batches 2): equal up to float rounding.
    for ours, theirs in zip(results, direct, strict=True):
        assert [i.class_id for i in ours.instances] == [i.class_id for i in theirs.instances]
        boxes = [value for instance in theirs.instances for value in instance.box]
        assert [value for instance in ours.instances for value in instance.box] == pytest.approx(
            boxes, abs=1e-2
        )
    assert [r.frame for r in results] == [0, 1, 2, 3]
    assert any(r.instances for r in results)
    assert results[0].instances[0].mask_array().shape == (96, 128)


def test_what_is_wrong_raises_at_once_and_a_late_failure_while_iterating(client: Client, clip: Path) -> None:
    with pytest.raises(InvalidRequest) as raised:
        client.segment_video(b"not a video")
    assert raised.value.code == "invalid_video" and raised.value.status == 400
    broken, good = corrupted_mid_file(clip.read_bytes())
    frames = client.segment_video(broken, mask_format="none")
    seen = []
    with pytest.raises(InvalidRequest) as raised:
        seen.extend(frames)
    assert raised.value.code == "invalid_video" and raised.value.index == len(seen) == good


def test_the_async_client_iterates_as_frames_arrive(tiny_server: LiveServer, clip: Path) -> None:
    async def run() -> list[int]:
        async with AsyncClient(tiny_server.url, api_key=TINY_SERVER_KEY) as client:
            frames = await client.segment_video(clip.read_bytes(), fps=5, mask_format="none")
            return [frame.frame async for frame in frames]

    with VideoReader(clip) as reader:
        expected = [frame.index for frame in reader.frames(fps=5)]
    assert asyncio.run(run()) == expected


def test_a_stream_answers_each_frame_and_its_errors(client: Client) -> None:
    frames = list(moving_frames(2, 96, 128))
    with client.stream(score_threshold=0.1) as stream:
        assert stream.send(jpeg(frames[0])) == 0
        first = stream.receive(timeout_s=TIMEOUT_S)
        assert stream.send(b"broken") == 1
        with pytest.raises(InvalidRequest) as raised:
            stream.receive(timeout_s=TIMEOUT_S)
        assert (raised.value.code, raised.value.index) == ("invalid_image", 1)
        stream.set_parameters(mask_format="none")
        stream.send(frames[1])  # an array goes as PNG
        second = stream.receive(timeout_s=TIMEOUT_S)
    assert isinstance(first, StreamFrameResult) and (first.frame, first.dropped) == (0, 0)
    assert first.instances and first.instances[0].mask is not None
    assert second.frame == 2 and all(instance.mask is None for instance in second.instances)


def test_a_stream_without_the_key_is_refused(tiny_server: LiveServer) -> None:
    with Client(tiny_server.url, api_key="wrong") as client, client.stream() as stream:
        with pytest.raises(Unauthorized):
            stream.receive(timeout_s=TIMEOUT_S)
        with pytest.raises(StreamClosed) as closed:
            stream.receive(timeout_s=TIMEOUT_S)
    assert closed.value.code == 1008


def test_the_async_stream(tiny_server: LiveServer) -> None:
    async def run() -> list[int]:
        async with AsyncClient(tiny_server.url, api_key=TINY_SERVER_KEY) as client:
            stream = await client.stream(mask_format="none")
            async with stream:
                answers = []
                for frame in moving_frames(2, 96, 128):
                    await stream.send(frame)
                    answers.append((await stream.receive()).frame)
                return answers

    assert asyncio.run(run()) == [0, 1]


def test_the_command_line_writes_the_lines_and_the_overlay_clip(
    tiny_server: LiveServer,
    clip: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CENTERMASK_API_KEY", TINY_SERVER_KEY)
    out = tmp_path / "out"
    arguments = ["segment", str(clip), "--url", tiny_server.url, "--out-dir", str(out), "--format", "png"]
    assert main([*arguments, "--max-frames", "3", "--no-progress"]) == 0
    lines = [
        VideoFrameResult.model_validate_json(line) for line in (out / "clip.jsonl").read_text().splitlines()
    ]
    assert [line.frame for line in lines] == [0, 1, 2]
    with VideoReader(clip) as source, VideoReader(out / "clip.overlay.mp4") as overlay:
        originals = list(source.frames(max_frames=3))
        drawn = list(overlay.frames())
    assert [frame.time_s for frame in drawn] == pytest.approx([line.time_s for line in lines])
    for original, line, written in zip(originals, lines, drawn, strict=True):
        expected = np.asarray(draw_overlay(original.pixels, line.instances)).astype(int)
        # H.264 is lossy (and small text suffers): the frame is the overlay, far closer to it than to the
        # original frame.
        to_overlay = np.abs(written.pixels.astype(int) - expected).mean()
        assert to_overlay < np.abs(written.pixels.astype(int) - original.pixels.astype(int)).mean() / 2
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert summary.startswith("centermask: 1 video, 3 frames, 0 failed, ")
    assert "frames/s" in summary


def test_track_gives_instances_track_ids_in_videos_streams_and_the_command_line(
    client: Client,
    tiny_server: LiveServer,
    clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with client.segment_video(clip, max_frames=3, score_threshold=0.1, track=True) as frames:
        results = list(frames)
    ids = [instance.track_id for result in results for instance in result.instances]
    assert ids and all("track_id" in i.model_fields_set for r in results for i in r.instances)
    assert any(isinstance(track_id, int) for track_id in ids)
    with client.segment_video(clip, max_frames=1, score_threshold=0.1) as frames:
        assert not any("track_id" in i.model_fields_set for r in frames for i in r.instances)
    with client.stream(score_threshold=0.1, track=True) as stream:
        for frame in moving_frames(2, 96, 128):
            stream.send(frame)
            answer = stream.receive(timeout_s=TIMEOUT_S)
            assert answer.instances and all("track_id" in i.model_fields_set for i in answer.instances)
        stream.set_parameters(score_threshold=0.1)  # without track: tracking stops
        stream.send(frame)
        assert not any(
            "track_id" in i.model_fields_set for i in stream.receive(timeout_s=TIMEOUT_S).instances
        )
    monkeypatch.setenv("CENTERMASK_API_KEY", TINY_SERVER_KEY)
    out = tmp_path / "out"
    arguments = ["segment", str(clip), "--url", tiny_server.url, "--out-dir", str(out), "--track"]
    assert main([*arguments, "--max-frames", "3", "--score-threshold", "0.1", "--no-progress"]) == 0
    lines = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines()]
    # The CLI's lines leave out null fields: an unconfirmed instance has no track_id there.
    assert [[i.get("track_id") for i in line["instances"]] for line in lines] == [
        [i.track_id for i in result.instances] for result in results
    ]


def test_the_command_line_prints_a_videos_lines_without_an_output_directory(
    tiny_server: LiveServer, clip: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CENTERMASK_API_KEY", TINY_SERVER_KEY)
    assert main(["segment", str(clip), "--url", tiny_server.url, "--fps", "5", "--no-progress"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["frame"] for line in printed] == [0, 2, 4]
