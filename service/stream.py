"""One `/segment/stream` connection: encoded frames in, answers out, latest-frame-wins.

Two tasks serve a connection. The reader takes every message as it arrives: a binary message is a frame
(its `frame` index is its position among the connection's binary messages), which goes into the one
waiting slot, and a frame already waiting there is dropped (counted in `dropped`, never answered); a text
message is a `StreamControl` (new parameters). The worker takes the waiting frame whenever it is free,
segments it as `/segment` does an image (`Runtime.segment`: decode, batcher, postprocess), and sends its
answer. So at most one frame of a connection is in flight and one waits: when frames arrive faster than
the model answers, the connection skips frames instead of falling behind, and an answer's latency stays
within about two inferences (the one running when the frame arrives, then its own).

How a connection ends, with its close code:
- 1000: the client closed it, or sent nothing for `stream_idle_timeout_s`;
- 1001: the service is draining (SIGTERM): the frame in flight is answered first;
- 1007: a text message that is not a JSON `StreamControl`, or invalid parameters in the URL (track=true
  on a service without the `track` extra among them, said as `not_implemented`);
- 1008: no valid API key (in the handshake's headers, or as the first message's `api_key`), or a browser
  page of another origin than the service's and `cors_origins`';
- 1009: a frame larger than `max_image_bytes`;
- 1011: an unexpected error;
- 1013: try again later: not ready, `max_streams` connections already open, or a failed worker.
Before closing for a reason other than the client's own, the server sends `{"error": {...}}` saying why.
A frame that fails (undecodable, too many pixels, a failed forward pass, a deadline) is answered with
`{"error": {..., "index": frame}}` and the connection goes on; so do invalid parameters in a control
message (the previous ones stay in force).

With `track=true`, the connection has its own tracker (`service.tracking`), fed the answered frames in
order (a dropped or failed frame is not seen by it) at their measured rate: each answer's instances get
their `track_id`. Parameters without `track` stop the tracking; tracking started again begins new tracks,
whose ids go on from the last one given, so the new tracker never reuses an id of the old one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from centermask_client.schemas import SequenceParameters, StreamControl
from model.wire.records import error_body, stream_frame_message, with_track_ids
from service import tracking
from service.deps import api_key_is_valid, offered_api_key
from service.errors import (
    ForbiddenOrigin,
    ImageTooLarge,
    InvalidParameter,
    InvalidRequest,
    NotImplementedHere,
    NotReady,
    ServiceError,
    TooManyStreams,
    Unauthorized,
    WorkerFailed,
    describe_problems,
)
from service.metrics import Metrics, Protocol
from service.options import SegmentOptions, resolve_options
from service.runtime import ImageFailed, Phase, Runtime
from service.settings import Settings
from service.uploads import Upload

logger = logging.getLogger(__name__)

# WebSocket close reasons are at most 123 bytes (RFC 6455); the JSON error message before the close
# has the whole text.
_MAX_REASON_BYTES = 123


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013


@dataclass(frozen=True)
class Closing:
    """Why the server closes a connection: the code, and the error it sends first (none for 1000)."""

    code: CloseCode
    error: ServiceError | None = None

    @property
    def reason(self) -> str:
        if self.error is None:
            return ""
        text = f"{self.error.code}: {self.error.message}"
        return text.encode()[:_MAX_REASON_BYTES].decode("utf-8", "ignore")


# Failures that end the connection rather than one frame: the service cannot take frames now.
_FATAL: dict[type[ServiceError], CloseCode] = {
    NotReady: CloseCode.GOING_AWAY,
    WorkerFailed: CloseCode.TRY_AGAIN_LATER,
}


@dataclass(frozen=True)
class _Waiting:
    index: int
    data: bytes
    options: SegmentOptions
    track: bool
    received_at: float


def query_parameters(websocket: WebSocket) -> SequenceParameters:
    """The handshake URL's query string as `SequenceParameters` (as `/segment` reads its own)."""
    query = websocket.query_params
    values: dict[str, Any] = {}
    for name in SequenceParameters.model_fields:
        if name == "classes":
            if query.getlist(name):
                values[name] = query.getlist(name)
        elif name in query:
            values[name] = query[name]
    try:
        return SequenceParameters.model_validate(values)
    except ValidationError as error:
        raise InvalidParameter(describe_problems(error.errors())) from None


def _draining() -> Closing:
    """How a stream closes when the service drains: 1001, saying why."""
    return Closing(CloseCode.GOING_AWAY, NotReady("the service is shutting down; reconnect"))


class StreamSession:
    """The state of one accepted connection; `run` serves it and says how it ends."""

    def __init__(self, websocket: WebSocket, runtime: Runtime, settings: Settings, metrics: Metrics) -> None:
        self._websocket = websocket
        self._runtime = runtime
        self._settings = settings
        self._metrics = metrics
        # The parameters in force: set before `run` (from the URL, or the first message's), then replaced
        # by each control message's.
        self.options: SegmentOptions | None = None
        self.track = False
        self.first_parameters: SequenceParameters | None = None
        # The `model=` of the connection's URL: None is the default model.
        self.model_name: str | None = None
        # Tracking: the tracker while frames are tracked, and the last track id given on the connection.
        self._tracker: tracking.Tracker | None = None
        self._last_track_id = 0
        self._waiting: _Waiting | None = None
        self._frame_arrived = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self.received = 0
        self.dropped = 0
        self.answered = 0

    async def set_parameters(self, parameters: SequenceParameters) -> None:
        """Put parameters in force; raises InvalidParameter or NotImplementedHere (track=true without the
        extra), leaving the previous ones."""
        predictor = self._runtime.models.get(self.model_name).predictor
        options = resolve_options(self._settings, predictor, parameters)
        if parameters.track and not tracking.loaded():
            await self._runtime.in_cpu_pool(tracking.load_or_refuse)
        self.options, self.track = options, parameters.track

    async def authenticate(self) -> Closing | None:
        """None once the client has shown the API key (or none is needed); else how to close."""
        settings = self._settings
        if settings.api_key is None:
            return None
        refused = Closing(
            CloseCode.POLICY_VIOLATION,
            Unauthorized(
                "a valid API key is required: in X-API-Key or Authorization: Bearer, or as the first "
                'message, {"api_key": "..."}'
            ),
        )
        offered = offered_api_key(self._websocket.headers)
        if offered is not None:
            return None if api_key_is_valid(settings, offered) else refused
        try:
            async with asyncio.timeout(settings.stream_idle_timeout_s):
                message = await self._websocket.receive()
        except TimeoutError:
            return refused
        text = message.get("text")
        if message["type"] != "websocket.receive" or text is None:
            return refused
        try:
            control = StreamControl.model_validate_json(text)
        except ValidationError:
            return refused
        if control.api_key is None or not api_key_is_valid(settings, control.api_key):
            return refused
        self.first_parameters = control.parameters
        return None

    async def run(self) -> Closing | None:
        """Serve frames until the client leaves (None) or the server closes (how)."""
        reader = asyncio.ensure_future(self._read())
        worker = asyncio.ensure_future(self._work())
        draining = asyncio.ensure_future(self._runtime.until_streams_close())
        try:
            done, _ = await asyncio.wait({reader, worker, draining}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                return reader.result()
            if worker in done:
                return worker.result()
            # Draining: take no more frames, answer the one in flight (the drain timeout bounds it: then
            # the runtime fails it with 503), then close.
            reader.cancel()
            self._drop_waiting()
            self._frame_arrived.set()  # wakes an idle worker, which then finds no frame and stops
            await asyncio.wait({worker})
            return _draining()
        finally:
            for task in (reader, worker, draining):
                task.cancel()
            await asyncio.gather(reader, worker, draining, return_exceptions=True)
            self._drop_waiting()

    def _drop_waiting(self) -> None:
        if self._waiting is not None:
            self.dropped += 1
            self._metrics.stream_frames.labels("dropped").inc()
            self._waiting = None

    async def send(self, body: dict[str, Any]) -> None:
        async with self._send_lock:
            await self._websocket.send_text(orjson.dumps(body).decode())

    async def _read(self) -> Closing | None:
        while True:
            try:
                async with asyncio.timeout(self._settings.stream_idle_timeout_s):
                    message = await self._websocket.receive()
            except TimeoutError:
                return Closing(CloseCode.NORMAL)
            if message["type"] == "websocket.disconnect":
                return None
            data = message.get("bytes")
            if data is not None:
                if closing := self._take_frame(data):
                    return closing
            elif closing := await self._control(message.get("text") or ""):
                return closing

    def _take_frame(self, data: bytes) -> Closing | None:
        index = self.received
        self.received += 1
        if len(data) > self._settings.max_image_bytes:
            return Closing(
                CloseCode.TOO_BIG,
                ImageTooLarge(f"frame {index} is larger than {self._settings.max_image_bytes} bytes"),
            )
        # Latest frame wins: a frame still waiting is older than this one and was never started.
        self._drop_waiting()
        assert self.options is not None
        self._waiting = _Waiting(index, data, self.options, self.track, time.perf_counter())
        self._frame_arrived.set()
        return None

    async def _control(self, text: str) -> Closing | None:
        try:
            body = orjson.loads(text)
            control = StreamControl.model_validate(body)
        except orjson.JSONDecodeError:
            return Closing(CloseCode.INVALID_DATA, InvalidRequest("a text message must be a JSON object"))
        except ValidationError as error:
            if all(problem["loc"][:1] == ("parameters",) for problem in error.errors()):
                # Recoverable: say what is wrong, keep the parameters in force.
                problems = describe_problems(error.errors(), skip=1)
                await self.send(error_body(InvalidParameter.code, problems))
                return None
            return Closing(
                CloseCode.INVALID_DATA,
                InvalidRequest(f"not a control message ({describe_problems(error.errors())})"),
            )
        if control.parameters is not None:
            try:
                await self.set_parameters(control.parameters)
            except (InvalidParameter, NotImplementedHere) as error:
                await self.send(error_body(error.code, error.message))
        return None

    async def _work(self) -> Closing | None:
        while True:
            await self._frame_arrived.wait()
            self._frame_arrived.clear()
            if self._runtime.phase is Phase.DRAINING:
                # SIGTERM has begun the drain and streams are told a moment later (`close_streams`): the
                # waiting frame is the drain's to drop, not one to start.
                self._drop_waiting()
                return _draining()
            waiting, self._waiting = self._waiting, None
            if waiting is None:  # woken to stop (draining)
                return None
            if closing := await self._answer(waiting):
                return closing

    async def _answer(self, waiting: _Waiting) -> Closing | None:
        error: ServiceError | None = None
        try:
            # The model is looked up per frame: a reload switches an open stream to the new version.
            with self._runtime.models.lease(self.model_name) as model:
                [result] = await model.segment(
                    [Upload(None, waiting.data)], waiting.options, protocol=Protocol.HTTP
                )
                # The version that ran this frame (a reload meanwhile serves the next frame).
                name, version = model.name, model.version
        except ImageFailed as failed:
            error = failed.error
        except ServiceError as raised:  # refused before its image was queued, or past its deadline
            error = raised
        if error is not None:
            error = error.for_image(waiting.index)
            self._metrics.stream_frames.labels("failed").inc()
            fatal = next((code for kind, code in _FATAL.items() if isinstance(error, kind)), None)
            if fatal is not None:
                return Closing(fatal, error)
            await self.send(error_body(error.code, error.message, error.index))
            return None
        record = self._tracked(result.record, waiting)
        total_s = time.perf_counter() - waiting.received_at
        await self.send(
            stream_frame_message(
                waiting.index,
                self.dropped,
                record,
                result.timing_ms(),
                total_s * 1000,
                model=name,
                model_version=version,
            )
        )
        self.answered += 1
        self._metrics.stream_frames.labels("answered").inc()
        self._metrics.stream_frame_latency.observe(total_s)
        return None

    def _tracked(self, record: dict[str, Any], waiting: _Waiting) -> dict[str, Any]:
        """The record with its instances' track ids when the frame is tracked; the tracker follows the
        frame's `track`."""
        if not waiting.track:
            self._tracker = None
            return record
        if self._tracker is None:
            self._tracker = tracking.Tracker(None, first_id=self._last_track_id + 1)
        track_ids = self._tracker.update(record["instances"], waiting.received_at)
        self._last_track_id = self._tracker.last_id
        return {**record, "instances": with_track_ids(record["instances"], track_ids)}


async def close(websocket: WebSocket, session: StreamSession | None, closing: Closing | None) -> None:
    """Say why (when the server closes), then close; nothing to do when the client already left."""
    if closing is None or websocket.application_state is WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        if closing.error is not None:
            body = error_body(closing.error.code, closing.error.message, closing.error.index)
            if session is not None:
                await session.send(body)
            else:
                await websocket.send_text(orjson.dumps(body).decode())
        await websocket.close(int(closing.code), closing.reason)


def refusal(websocket: WebSocket, settings: Settings, open_streams: int) -> Closing | None:
    """Why a new connection cannot be served now, if it cannot."""
    origin = websocket.headers.get("origin")
    # Browsers send their page's origin and let any page open a WebSocket anywhere (CORS does not apply):
    # only the service's own pages and the configured origins may use a visitor's browser to stream here.
    if origin is not None and not (
        urlsplit(origin).netloc == websocket.headers.get("host")
        or "*" in settings.cors_origins
        or origin in settings.cors_origins
    ):
        return Closing(
            CloseCode.POLICY_VIOLATION,
            ForbiddenOrigin(f"pages of {origin[:100]} may not open streams here (CENTERMASK_CORS_ORIGINS)"),
        )
    if open_streams >= settings.max_streams:
        return Closing(
            CloseCode.TRY_AGAIN_LATER,
            TooManyStreams(f"{open_streams} streams are already open (CENTERMASK_MAX_STREAMS); retry later"),
        )
    return None
