"""A video request's frames through the runtime, answered as JSON lines in frame order.

`open_upload` opens and checks the upload and decodes its first sampled frame, so that everything wrong
with the file itself is answered with a status (400, 413, 415) before any line is written. `frame_lines`
then decodes the rest one frame at a time in the CPU pool and keeps up to `Runtime.frames_in_flight`
frames queued (they batch with each other and with other requests, as the images of a batch request do);
lines are written in frame order as each frame's turn comes.

How a stream of lines ends:
- after the last frame (or `max_frames`), with nothing more;
- when decoding fails or breaks a limit mid-file: the frames already decoded are answered, then a final
  `{"error": {...}}` line (`invalid_video`, `too_many_pixels`, `video_too_long`) with `index`, the frame
  that could not be given;
- when a frame fails (its deadline, a failed forward pass, the drain's end): its error, with its frame as
  `index`, is the final line; the frames after it are withdrawn;
- when the client disconnects: decoding stops and the queued frames are withdrawn (freeing their slots).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator

import orjson

from centermask_client.video import Frame
from model.inference.images import DecodedImage
from model.inference.video import (
    CheckedVideo,
    CorruptVideo,
    FrameTooLarge,
    UnsupportedVideo,
    VideoError,
    VideoLimits,
    VideoUnavailable,
    open_video,
)
from model.inference.video import VideoTooLong as VideoRunsTooLong
from model.wire.records import error_body, video_frame_line, with_track_ids
from service.errors import (
    InternalError,
    InvalidVideo,
    NotImplementedHere,
    ServiceError,
    TooManyPixels,
    UnsupportedMediaType,
    VideoTooLong,
)
from service.metrics import Metrics
from service.options import SegmentOptions
from service.runtime import Runtime, Segmented, ServedModel
from service.settings import Settings
from service.tracking import Tracker

logger = logging.getLogger(__name__)

_ERRORS: dict[type[VideoError], type[ServiceError]] = {
    CorruptVideo: InvalidVideo,
    UnsupportedVideo: UnsupportedMediaType,
    FrameTooLarge: TooManyPixels,
    VideoRunsTooLong: VideoTooLong,
    VideoUnavailable: NotImplementedHere,
}


def service_error(error: VideoError) -> ServiceError:
    return _ERRORS.get(type(error), InvalidVideo)(str(error))


class OpenedVideo:
    """A checked upload and its sampled frames, the first of them already decoded."""

    def __init__(self, video: CheckedVideo, fps: float | None, max_frames: int | None) -> None:
        self.video = video
        self.expected_frames = video.expected_frames(fps, max_frames)
        # The rate of the frames given: the video's, or fps= when that samples it slower.
        rate = video.frame_rate
        self.frame_rate = fps if rate is None or (fps is not None and fps < rate) else rate
        self._frames = video.frames(fps, max_frames)
        # Held while a pool thread decodes, and by `close`: FFmpeg's state must not be freed under a
        # decode that a cancelled request left running in its thread.
        self._lock = threading.Lock()
        self.first: tuple[Frame, float] | None = None

    def next_frame(self) -> tuple[Frame, float] | None:
        """The next sampled frame and its decoding time in seconds; None after the last. Blocking; raises
        VideoError."""
        with self._lock:
            started = time.perf_counter()
            frame = next(self._frames, None)
            return None if frame is None else (frame, time.perf_counter() - started)

    def close(self) -> None:
        with self._lock:
            self.video.close()


async def open_upload(
    runtime: Runtime, data: bytes, settings: Settings, fps: float | None, max_frames: int | None
) -> OpenedVideo:
    """The upload opened, checked and its first sampled frame decoded, in the CPU pool; raises the service
    error of what is wrong with it."""
    limits = VideoLimits(max_pixels=settings.max_video_pixels, max_duration_s=settings.max_video_duration_s)
    try:
        video = await runtime.in_cpu_pool(open_video, data, limits)
    except VideoError as error:
        raise service_error(error) from None
    opened = OpenedVideo(video, fps, max_frames)
    try:
        opened.first = await runtime.in_cpu_pool(opened.next_frame)
    except VideoError as error:
        await runtime.in_cpu_pool(opened.close)
        raise service_error(error) from None
    except BaseException:
        await runtime.in_cpu_pool(opened.close)
        raise
    if opened.first is None:
        await runtime.in_cpu_pool(opened.close)
        raise InvalidVideo("the video has no frames that can be decoded")
    return opened


async def frame_lines(
    runtime: Runtime,
    model: ServedModel,
    opened: OpenedVideo,
    options: SegmentOptions,
    metrics: Metrics,
    tracker: Tracker | None = None,
) -> AsyncGenerator[bytes, None]:
    """The NDJSON lines of the video's frames segmented by `model`, in order (see the module's docstring for
    how they end). With a tracker, each frame's instances get their `track_id` as the frame's turn comes: in
    frame order, whatever order the frames in flight finish in."""
    window: deque[tuple[Frame, float, asyncio.Task[Segmented]]] = deque()
    upcoming = opened.first
    decoded = -1  # the index of the last frame decoded
    exhausted = False
    last: ServiceError | None = None
    try:
        while True:
            while not exhausted and len(window) < model.frames_in_flight:
                if upcoming is None:
                    try:
                        upcoming = await runtime.in_cpu_pool(opened.next_frame)
                    except VideoError as error:
                        last = service_error(error).for_image(decoded + 1)
                    if upcoming is None:
                        exhausted = True
                        break
                frame, decode_s = upcoming
                upcoming, decoded = None, frame.index
                image = DecodedImage(frame.pixels, (frame.pixels.shape[0], frame.pixels.shape[1]))
                task = asyncio.ensure_future(model.segment_frame(image, decode_s, options))
                window.append((frame, time.perf_counter() - decode_s, task))
            if not window:
                break
            frame, decoded_at, task = window[0]
            try:
                segmented = await task
            except ServiceError as error:
                last = error.for_image(frame.index)
                break
            window.popleft()
            record = segmented.record
            if tracker is not None:
                track_ids = tracker.update(record["instances"], frame.time_s)
                record = {**record, "instances": with_track_ids(record["instances"], track_ids)}
            yield _line(
                video_frame_line(
                    frame.index, frame.time_s, record, model=model.name, model_version=model.version
                )
            )
            metrics.video_frames.inc()
            metrics.video_frame_latency.observe(time.perf_counter() - decoded_at)
        if last is not None:
            yield _line(error_body(last.code, last.message, last.index))
    except Exception:
        # The answer has begun, so no status can say it: the last line does, and the log has the rest.
        logger.exception("a video request failed")
        failure = InternalError("internal error while segmenting the video")
        yield _line(error_body(failure.code, failure.message))
    finally:
        for _, _, task in window:
            task.cancel()
        await asyncio.gather(*(task for _, _, task in window), return_exceptions=True)
        try:
            await runtime.in_cpu_pool(opened.close)
        except RuntimeError:  # the pool is shut down (a drain ran out of time): close here
            opened.close()


def _line(body: dict[str, object]) -> bytes:
    return orjson.dumps(body) + b"\n"
