"""Answers that come frame by frame: a video's NDJSON lines and the `/segment/stream` WebSocket.

    with client.segment_video("clip.mp4", fps=5) as frames:      # VideoFrames
        for frame in frames:                                     # VideoFrameResult, in frame order
            print(frame.frame, frame.time_s, len(frame.instances))

    with client.stream(score_threshold=0.5) as stream:          # FrameStream
        index = stream.send(jpeg_bytes)                          # the frame's index in the connection
        answer = stream.receive()                                # StreamFrameResult (or the newest's)

`Client.segment_video`, `Client.stream` and their `AsyncClient` twins return these. An error inside the
answers (a video's last line, a stream's error message) raises the typed error of its code
(`centermask_client.errors`), with the frame as `index`; a closed stream raises StreamClosed.
`Client.stream` needs the `stream` extra (websockets): `pip install 'centermask-client[stream]'`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import httpx
from pydantic import ValidationError

from centermask_client.errors import CenterMaskError, ConnectionFailed, StreamClosed, error_from_body
from centermask_client.inputs import ImageInput, encode_input
from centermask_client.schemas import (
    MaskFormat,
    SegmentParameters,
    SequenceParameters,
    StreamFrameResult,
    TilingMode,
    VideoFrameResult,
)

# The answers' header that says how many lines to expect (absent when the video's header does not say).
FRAMES_HEADER = "X-Video-Frames"
# The largest answer a stream accepts: a frame's instances with their masks (websockets' default is 1 MiB).
MAX_ANSWER_BYTES = 64 * 1024 * 1024


def unchecked_parameters(
    score_threshold: float | None,
    max_detections: int | None,
    classes: Sequence[str] | None,
    mask_format: MaskFormat = "rle",
    tiling: TilingMode | None = None,
    tile_size: int | None = None,
    tile_overlap: int | None = None,
) -> SegmentParameters:
    """A request's parameters, checked by the server (constructed here without validation, so that the
    server's answer, not a client-side error, says what is wrong)."""
    if isinstance(classes, str):
        raise TypeError("classes must be a list of selectors, e.g. ['circle', 'category_id:3']")
    return SegmentParameters.model_construct(
        score_threshold=score_threshold,
        max_detections=max_detections,
        classes=list(classes) if classes else None,
        mask_format=mask_format,
        class_agnostic_nms=None,
        tiling=tiling,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
    )


def sequence_parameters(parameters: SegmentParameters, track: bool) -> SequenceParameters:
    """A stream's parameters: a request's, plus `track` (unchecked too)."""
    return SequenceParameters.model_construct(**dict(parameters), track=track)


def parse_line(line: str, request_id: str | None = None) -> VideoFrameResult:
    """One NDJSON line of `/segment/video`: a frame's result, or its error raised."""
    try:
        body = json.loads(line)
        if isinstance(body, dict) and "error" in body:
            raise error_from_body(body, request_id=request_id)
        return VideoFrameResult.model_validate(body)
    except (ValueError, ValidationError) as exc:  # json's and pydantic's
        if isinstance(exc, CenterMaskError):
            raise
        raise CenterMaskError(f"a line of the answer is not a CenterMask VideoFrameResult: {exc}") from None


def _parse_message(message: str | bytes) -> StreamFrameResult:
    try:
        body = json.loads(message)
    except ValueError:
        raise CenterMaskError("a stream message is not JSON") from None
    if isinstance(body, dict) and "error" in body:
        raise error_from_body(body)
    try:
        return StreamFrameResult.model_validate(body)
    except ValidationError as exc:
        raise CenterMaskError(f"a stream message is not a CenterMask StreamFrameResult: {exc}") from None


def _expected(response: httpx.Response) -> int | None:
    value = response.headers.get(FRAMES_HEADER, "")
    return int(value) if value.isdigit() else None


class VideoFrames:
    """The frames of one `/segment/video` answer, read as they arrive. Iterate once; close when done early
    (leaving the block or closing tells the service to stop decoding)."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.expected_frames = _expected(response)
        """How many frames the service expects to answer (from the video's header), or None."""
        self.request_id = response.headers.get("X-Request-ID")

    def __iter__(self) -> Iterator[VideoFrameResult]:
        try:
            for line in self._response.iter_lines():
                if line.strip():
                    yield parse_line(line, self.request_id)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"the answer broke off: {exc}") from exc
        finally:
            self.close()

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> VideoFrames:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncVideoFrames:
    """`VideoFrames` of `AsyncClient`: `async for frame in frames`."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.expected_frames = _expected(response)
        self.request_id = response.headers.get("X-Request-ID")

    async def __aiter__(self) -> AsyncIterator[VideoFrameResult]:
        try:
            async for line in self._response.aiter_lines():
                if line.strip():
                    yield parse_line(line, self.request_id)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"the answer broke off: {exc}") from exc
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        await self._response.aclose()

    async def __aenter__(self) -> AsyncVideoFrames:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def import_websockets() -> Any:
    try:
        import websockets
    except ImportError:
        raise ImportError("streams need websockets: pip install 'centermask-client[stream]'") from None
    return websockets


def stream_url(base_url: str, query: Mapping[str, str]) -> str:
    """The WebSocket URL of `/segment/stream` on a service at `base_url`, with this query string (the
    parameters', and the model's name)."""
    scheme, separator, rest = base_url.partition("://")
    ws_scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme)
    return f"{ws_scheme}{separator}{rest}/segment/stream?{httpx.QueryParams(query)}"


def _closed(error: Exception) -> StreamClosed:
    received = getattr(error, "rcvd", None)
    return StreamClosed(received.code if received else None, received.reason if received else "")


def _control(parameters: SegmentParameters) -> str:
    return json.dumps({"parameters": parameters.model_dump(exclude_none=True)})


class FrameStream:
    """A `/segment/stream` connection (from `Client.stream`). `send` and `receive` may run in different
    threads (a camera loop sending, another thread drawing answers).

    The service answers frames latest-first: while it segments one frame, only the newest frame sent waits;
    older ones are skipped (each answer's `dropped` counts them). So send at whatever rate frames come,
    and expect fewer answers than frames when the model is slower than the camera.
    """

    def __init__(self, connection: Any) -> None:
        # websockets (since 17.1) wants its sync connection entered, as a context manager; this object is
        # the one its users hold as such, and `close` closes the connection.
        self._connection = connection.__enter__()
        self._websockets = import_websockets()
        self.sent = 0
        """Frames sent so far; the next frame's index."""

    def send(self, image: ImageInput) -> int:
        """Send one frame (JPEG, PNG, WebP, BMP, TIFF bytes or a path, array or PIL image: arrays and PIL
        images go as PNG); returns its index, which its answer's `frame` repeats."""
        data = encode_input(image).data
        try:
            self._connection.send(data)
        except self._websockets.exceptions.ConnectionClosed as closed:
            raise _closed(closed) from None
        self.sent += 1
        return self.sent - 1

    def set_parameters(
        self,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_format: MaskFormat = "rle",
        track: bool = False,
    ) -> None:
        """New parameters for the frames sent after this call; unset ones take the service's defaults (so
        pass track=True again to keep tracking: tracking stopped and started again begins new tracks).
        Invalid ones are answered with an InvalidParameter (raised by a later `receive`); the previous
        ones then stay in force."""
        parameters = sequence_parameters(
            unchecked_parameters(score_threshold, max_detections, classes, mask_format), track
        )
        try:
            self._connection.send(_control(parameters))
        except self._websockets.exceptions.ConnectionClosed as closed:
            raise _closed(closed) from None

    def receive(self, timeout_s: float | None = None) -> StreamFrameResult:
        """The next answer. Raises the frame's typed error (its `index` is the frame) for a frame that failed,
        StreamClosed once the connection is closed, TimeoutError after `timeout_s`."""
        try:
            message = self._connection.recv(timeout=timeout_s)
        except self._websockets.exceptions.ConnectionClosed as closed:
            raise _closed(closed) from None
        return _parse_message(message)

    def __iter__(self) -> Iterator[StreamFrameResult]:
        """Answers until the connection closes normally (1000); any other close raises StreamClosed."""
        while True:
            try:
                yield self.receive()
            except StreamClosed as closed:
                if closed.code == 1000:
                    return
                raise

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncFrameStream:
    """`FrameStream` of `AsyncClient` (same methods, awaited; `async for answer in stream`)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._websockets = import_websockets()
        self.sent = 0

    async def send(self, image: ImageInput) -> int:
        data = encode_input(image).data
        try:
            await self._connection.send(data)
        except self._websockets.exceptions.ConnectionClosed as closed:
            raise _closed(closed) from None
        self.sent += 1
        return self.sent - 1

    async def set_parameters(
        self,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_format: MaskFormat = "rle",
        track: bool = False,
    ) -> None:
        parameters = sequence_parameters(
            unchecked_parameters(score_threshold, max_detections, classes, mask_format), track
        )
        try:
            await self._connection.send(_control(parameters))
        except self._websockets.exceptions.ConnectionClosed as closed:
            raise _closed(closed) from None

    async def receive(self) -> StreamFrameResult:
        try:
            message = await self._connection.recv()
        except self._websockets.exceptions.ConnectionClosed as closed:
            raise _closed(closed) from None
        return _parse_message(message)

    async def __aiter__(self) -> AsyncIterator[StreamFrameResult]:
        while True:
            try:
                yield await self.receive()
            except StreamClosed as closed:
                if closed.code == 1000:
                    return
                raise

    async def aclose(self) -> None:
        await self._connection.close()

    async def __aenter__(self) -> AsyncFrameStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
