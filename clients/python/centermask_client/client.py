"""`Client` and `AsyncClient`: the CenterMask service's HTTP API as typed Python calls, over httpx.

    from centermask_client import Client

    with Client("http://localhost:8000") as client:
        result = client.segment("shapes.png", score_threshold=0.5)
        for instance in result.instances:
            print(instance.class_name, instance.score, instance.mask_array().sum())

Both clients share everything but sending: request building, response parsing and the retry rule
live here once. A 503 (model loading, queue full, draining) is retried after the server's Retry-After
for as long as the retry budget lasts; every other error raises at once (`centermask_client.errors`).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
from pydantic import BaseModel, ValidationError

from centermask_client.errors import CenterMaskError, ConnectionFailed, error_class
from centermask_client.frames import (
    MAX_ANSWER_BYTES,
    AsyncFrameStream,
    AsyncVideoFrames,
    FrameStream,
    VideoFrames,
    import_websockets,
    sequence_parameters,
    stream_url,
)
from centermask_client.frames import unchecked_parameters as _parameters
from centermask_client.inputs import EncodedImage, ImageInput, encode_input
from centermask_client.schemas import (
    BatchResponse,
    ImageFormat,
    MaskFormat,
    ModelInfo,
    ModelList,
    SegmentParameters,
    SegmentResponse,
    TilingMode,
    VideoParameters,
)
from centermask_client.video import VideoSource, video_bytes

DEFAULT_URL = "http://localhost:8000"
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep retrying a 503.

    budget_s: the most time spent waiting between attempts, in total. A Retry-After longer than what
        is left of it is not waited for: the 503 is raised (its `retry_after_s` says when to come back).
    backoff_s: the first wait when the answer has no Retry-After; it doubles each time, up to 8x.
    """

    budget_s: float = 30.0
    backoff_s: float = 0.5

    def delay_s(self, retry_after_s: float | None, attempt: int, waited_s: float) -> float | None:
        """Seconds to wait before retry `attempt` (0 for the first), or None to give up."""
        delay = retry_after_s if retry_after_s is not None else self.backoff_s * 2 ** min(attempt, 3)
        return delay if waited_s + delay <= self.budget_s else None


NO_RETRY = RetryPolicy(budget_s=0.0)


def _video_parameters(
    parameters: SegmentParameters, fps: float | None, max_frames: int | None, track: bool
) -> VideoParameters:
    return VideoParameters.model_construct(**dict(parameters), track=track, fps=fps, max_frames=max_frames)


class _Api:
    """What both clients share: building requests and reading answers. No I/O."""

    def __init__(self, url: str, api_key: str | None, retry: RetryPolicy) -> None:
        self.url = url.rstrip("/")
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.retry = retry

    def segment_request(
        self, http: httpx.Client | httpx.AsyncClient, image: EncodedImage, params: dict[str, str]
    ) -> httpx.Request:
        if image.filename is None:
            # A raw body: the answer's `file` is null, as for any image sent without a name.
            headers = {**self.headers, "Content-Type": image.content_type}
            return http.build_request(
                "POST", f"{self.url}/segment", params=params, content=image.data, headers=headers
            )
        files = {"image": (image.filename, image.data, image.content_type)}
        return http.build_request(
            "POST", f"{self.url}/segment", params=params, files=files, headers=self.headers
        )

    def video_request(
        self, http: httpx.Client | httpx.AsyncClient, video: tuple[bytes, str], params: dict[str, str]
    ) -> httpx.Request:
        data, content_type = video
        headers = {**self.headers, "Content-Type": content_type}
        return http.build_request(
            "POST", f"{self.url}/segment/video", params=params, content=data, headers=headers
        )

    def stream_options(self, query: dict[str, str], timeout_s: float) -> dict[str, Any]:
        """The WebSocket connection's URL (with `query`) and options (for websockets' `connect`)."""
        return {
            "uri": stream_url(self.url, query),
            "additional_headers": self.headers,
            "max_size": MAX_ANSWER_BYTES,
            "open_timeout": timeout_s,
            # Frames are already compressed (JPEG, PNG); the service does not deflate either.
            "compression": None,
        }

    def connection_failed(self, error: Exception) -> ConnectionFailed:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status is not None:
            return ConnectionFailed(
                f"{self.url} refused the WebSocket /segment/stream with HTTP {status}: not a CenterMask "
                "service with streams, or a proxy that does not pass WebSockets"
            )
        return ConnectionFailed(f"cannot open a stream to {self.url}: {error}")

    def batch_request(
        self, http: httpx.Client | httpx.AsyncClient, images: Sequence[EncodedImage], params: dict[str, str]
    ) -> httpx.Request:
        # Multipart parts need a file name; unnamed images are called image-<position>.<ext>.
        files = [
            ("images", (image.filename or f"image-{i}.{image.extension}", image.data, image.content_type))
            for i, image in enumerate(images)
        ]
        return http.build_request(
            "POST", f"{self.url}/segment/batch", params=params, files=files, headers=self.headers
        )

    def get_request(self, http: httpx.Client | httpx.AsyncClient, path: str) -> httpx.Request:
        return http.build_request("GET", f"{self.url}{path}", headers=self.headers)

    def retry_delay_s(self, response: httpx.Response, attempt: int, waited_s: float) -> float | None:
        if response.status_code != 503:
            return None
        return self.retry.delay_s(retry_after_s(response), attempt, waited_s)

    @staticmethod
    def check(response: httpx.Response) -> httpx.Response:
        """The response itself if it succeeded; else raise the typed error its body names."""
        if response.is_success:
            return response
        status = response.status_code
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
            index, file = error.get("index"), error.get("file")
        except (ValueError, KeyError, TypeError):
            code, message = "http_error", response.text[:200] or response.reason_phrase
            index = file = None
        raise error_class(status)(
            status,
            code,
            message,
            index=index,
            file=file,
            request_id=response.headers.get("X-Request-ID"),
            retry_after_s=retry_after_s(response),
        )

    @classmethod
    def parse(cls, response: httpx.Response, model: type[ModelT]) -> ModelT:
        cls.check(response)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise CenterMaskError(
                f"the answer from {response.request.url} is not a CenterMask {model.__name__}: {exc}"
            ) from None


class Client:
    """A synchronous client of one CenterMask service. Thread-safe; reuse it (it pools connections).

    url: the service's base URL. api_key: sent as X-API-Key when the service requires one.
    timeout_s: per HTTP attempt. retry: how long to keep retrying 503s (`NO_RETRY` to never).
    transport: an httpx transport, e.g. `httpx.MockTransport` in tests.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._api = _Api(url, api_key, retry)
        self._timeout_s = timeout_s
        self._http = httpx.Client(timeout=timeout_s, transport=transport)

    def segment(
        self,
        image: ImageInput,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_format: MaskFormat = "rle",
        filename: str | None = None,
        model: str | None = None,
        tiling: TilingMode | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
    ) -> SegmentResponse:
        """Segment one image. Unset parameters take the service's defaults (`model_info()`).

        classes: names (case-insensitive), "class_id:N" or "category_id:N". model: a model's name on a
        server with several (`models()`); unset, its default model.
        tiling: "auto" segments an image much larger than the model's input in tiles at full resolution
        (`tile_size`, `tile_overlap` in pixels; the answer's `tiling` says what was used), "off" never.
        """
        parameters = _parameters(
            score_threshold, max_detections, classes, mask_format, tiling, tile_size, tile_overlap
        )
        encoded = encode_input(image, filename)
        response = self._send(
            lambda: self._api.segment_request(self._http, encoded, _with_model(parameters.query(), model))
        )
        return self._api.parse(response, SegmentResponse)

    def segment_batch(
        self,
        images: Sequence[ImageInput],
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_format: MaskFormat = "rle",
        model: str | None = None,
        tiling: TilingMode | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
    ) -> BatchResponse:
        """Segment several images in one request (at most the service's max_images_per_request).

        One failing image fails the request; the error's `index` names it.
        """
        parameters = _parameters(
            score_threshold, max_detections, classes, mask_format, tiling, tile_size, tile_overlap
        )
        encoded = [encode_input(image) for image in images]
        response = self._send(
            lambda: self._api.batch_request(self._http, encoded, _with_model(parameters.query(), model))
        )
        return self._api.parse(response, BatchResponse)

    def render(
        self,
        image: ImageInput,
        *,
        image_format: ImageFormat = "png",
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        model: str | None = None,
        tiling: TilingMode | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
    ) -> bytes:
        """The image with its masks, boxes and labels drawn by the service (`/segment?format=png`)."""
        parameters = _parameters(
            score_threshold,
            max_detections,
            classes,
            tiling=tiling,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
        )
        encoded = encode_input(image)
        query = _with_model({**parameters.query(), "format": image_format}, model)
        response = self._send(lambda: self._api.segment_request(self._http, encoded, query))
        return self._api.check(response).content

    def segment_video(
        self,
        video: VideoSource,
        *,
        fps: float | None = None,
        max_frames: int | None = None,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_format: MaskFormat = "rle",
        track: bool = False,
        model: str | None = None,
    ) -> VideoFrames:
        """Segment the frames of a video (MP4, MOV, MKV, WebM: a path, bytes or a binary file); iterate the
        result for each frame's `VideoFrameResult`, in frame order, as the service answers them.

        fps: at most this many frames per second of video; max_frames: at most this many frames. track:
        give each instance a `track_id`, the same for one object across the video's frames (None where the
        tracker has not confirmed it; the service needs its `track` extra). model: a model's name on a
        server with several (`models()`); unset, its default model. What is wrong with the file (or an
        unknown model) raises here; a failure later raises while iterating, after the frames before it.
        """
        parameters = _parameters(score_threshold, max_detections, classes, mask_format)
        query = _with_model(_video_parameters(parameters, fps, max_frames, track).query(), model)
        upload = video_bytes(video)
        response = self._send(lambda: self._api.video_request(self._http, upload, query), stream=True)
        if not response.is_success:
            response.read()
            response.close()
            self._api.check(response)
        return VideoFrames(response)

    def stream(
        self,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_format: MaskFormat = "rle",
        track: bool = False,
        model: str | None = None,
    ) -> FrameStream:
        """Open a `/segment/stream` WebSocket: `send` frames, `receive` answers (latest-frame-wins). Needs
        the `stream` extra (websockets). track: each answer's instances get a `track_id`, the same for
        one object across the connection's answered frames. model: a model's name on a server with
        several; unset, its default model (an unknown one: the first `receive` raises NotFound)."""
        websockets = import_websockets()
        from websockets.sync.client import connect

        parameters = sequence_parameters(
            _parameters(score_threshold, max_detections, classes, mask_format), track
        )
        query = _with_model(parameters.query(), model)
        try:
            connection = connect(**self._api.stream_options(query, self._timeout_s))
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            raise self._api.connection_failed(exc) from exc
        return FrameStream(connection)

    def model_info(self, model: str | None = None) -> ModelInfo:
        """A served model (default: the default one): config, classes, device, batching and the parameters'
        defaults."""
        response = self._send(lambda: self._api.get_request(self._http, _model_path(model)))
        return self._api.parse(response, ModelInfo)

    def models(self) -> ModelList:
        """Every model of the server, with its version and state, and which one is the default."""
        response = self._send(lambda: self._api.get_request(self._http, "/v1/models"))
        return self._api.parse(response, ModelList)

    def is_ready(self) -> bool:
        """Whether the service is loaded, warm and not draining (`/readyz`); never retries."""
        try:
            return self._http.send(self._api.get_request(self._http, "/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, build: Callable[[], httpx.Request], *, stream: bool = False) -> httpx.Response:
        attempt, waited_s = 0, 0.0
        while True:
            try:
                response = self._http.send(build(), stream=stream)
            except httpx.TransportError as exc:
                raise ConnectionFailed(f"cannot reach {self._api.url}: {exc}") from exc
            delay = self._api.retry_delay_s(response, attempt, waited_s)
            if delay is None:
                return response
            response.close()
            time.sleep(delay)
            attempt, waited_s = attempt + 1, waited_s + delay


class AsyncClient:
    """The asynchronous twin of `Client` (same arguments, same methods, awaited)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._api = _Api(url, api_key, retry)
        self._timeout_s = timeout_s
        self._http = httpx.AsyncClient(timeout=timeout_s, transport=transport)

    async def segment(
        self,
        image: ImageInput,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_format: MaskFormat = "rle",
        filename: str | None = None,
        model: str | None = None,
        tiling: TilingMode | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
    ) -> SegmentResponse:
        parameters = _parameters(
            score_threshold, max_detections, classes, mask_format, tiling, tile_size, tile_overlap
        )
        encoded = encode_input(image, filename)
        response = await self._send(
            lambda: self._api.segment_request(self._http, encoded, _with_model(parameters.query(), model))
        )
        return self._api.parse(response, SegmentResponse)

    async def segment_batch(
        self,
        images: Sequence[ImageInput],
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_format: MaskFormat = "rle",
        model: str | None = None,
        tiling: TilingMode | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
    ) -> BatchResponse:
        parameters = _parameters(
            score_threshold, max_detections, classes, mask_format, tiling, tile_size, tile_overlap
        )
        encoded = [encode_input(image) for image in images]
        response = await self._send(
            lambda: self._api.batch_request(self._http, encoded, _with_model(parameters.query(), model))
        )
        return self._api.parse(response, BatchResponse)

    async def render(
        self,
        image: ImageInput,
        *,
        image_format: ImageFormat = "png",
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        model: str | None = None,
        tiling: TilingMode | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
    ) -> bytes:
        parameters = _parameters(
            score_threshold,
            max_detections,
            classes,
            tiling=tiling,
            tile_size=tile_size,
            tile_overlap=tile_overlap,
        )
        encoded = encode_input(image)
        query = _with_model({**parameters.query(), "format": image_format}, model)
        response = await self._send(lambda: self._api.segment_request(self._http, encoded, query))
        return self._api.check(response).content

    async def segment_video(
        self,
        video: VideoSource,
        *,
        fps: float | None = None,
        max_frames: int | None = None,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_format: MaskFormat = "rle",
        track: bool = False,
        model: str | None = None,
    ) -> AsyncVideoFrames:
        parameters = _parameters(score_threshold, max_detections, classes, mask_format)
        query = _with_model(_video_parameters(parameters, fps, max_frames, track).query(), model)
        upload = video_bytes(video)
        response = await self._send(lambda: self._api.video_request(self._http, upload, query), stream=True)
        if not response.is_success:
            await response.aread()
            await response.aclose()
            self._api.check(response)
        return AsyncVideoFrames(response)

    async def stream(
        self,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: Sequence[str] | None = None,
        mask_format: MaskFormat = "rle",
        track: bool = False,
        model: str | None = None,
    ) -> AsyncFrameStream:
        websockets = import_websockets()
        from websockets.asyncio.client import connect

        parameters = sequence_parameters(
            _parameters(score_threshold, max_detections, classes, mask_format), track
        )
        query = _with_model(parameters.query(), model)
        try:
            connection = await connect(**self._api.stream_options(query, self._timeout_s))
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            raise self._api.connection_failed(exc) from exc
        return AsyncFrameStream(connection)

    async def model_info(self, model: str | None = None) -> ModelInfo:
        response = await self._send(lambda: self._api.get_request(self._http, _model_path(model)))
        return self._api.parse(response, ModelInfo)

    async def models(self) -> ModelList:
        response = await self._send(lambda: self._api.get_request(self._http, "/v1/models"))
        return self._api.parse(response, ModelList)

    async def is_ready(self) -> bool:
        try:
            response = await self._http.send(self._api.get_request(self._http, "/readyz"))
        except httpx.TransportError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _send(self, build: Callable[[], httpx.Request], *, stream: bool = False) -> httpx.Response:
        attempt, waited_s = 0, 0.0
        while True:
            try:
                response = await self._http.send(build(), stream=stream)
            except httpx.TransportError as exc:
                raise ConnectionFailed(f"cannot reach {self._api.url}: {exc}") from exc
            delay = self._api.retry_delay_s(response, attempt, waited_s)
            if delay is None:
                return response
            await response.aclose()
            await asyncio.sleep(delay)
            attempt, waited_s = attempt + 1, waited_s + delay


def _with_model(query: dict[str, str], model: str | None) -> dict[str, str]:
    """A request's query string, naming its model when one is chosen."""
    return query if model is None else {**query, "model": model}


def _model_path(model: str | None) -> str:
    return "/v1/model" if model is None else f"/v1/model?{urlencode({'model': model})}"


def retry_after_s(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (it may be a number or an HTTP date); None if absent or bad."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
