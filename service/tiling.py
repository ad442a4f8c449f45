"""A tiled image in the service: decoded at full resolution, its tiles cut, prepared and queued a window at a time
through the ordinary batcher, its whole-image pass with them, and the merge in the CPU pool.

The tiles and merging are `model.inference.tiling`'s; this module only schedules them:

- **Which images.** `decode` reads the header first. An image that the request's `tiling` plans no tiles for
  is decoded exactly as without tiling (the ordinary pixel limit, reduced JPEG decoding); one it tiles is
  decoded at full resolution, within CENTERMASK_MAX_TILED_PIXELS.
- **Each tile an image of its own.** A tile is cut from the pixels (a view), prepared in the CPU pool and put
  in the batcher's queue (`Batcher.put`: waiting for room, as a video's frames do, since the request was
  admitted), so that the tiles of one image batch together, and with other requests' images of their padded
  shape. The whole image's pass goes first (objects larger than a tile).
- **Memory bounded by the window.** At most CENTERMASK_TILES_IN_FLIGHT tiles are prepared and queued at once;
  as each is done its detections are reduced, in the pool, to crops in the image's pixels
  (`tile_candidates`), so a tiled image holds its pixels, the window's tiles and its detections' crops,
  whatever its size.
- **Deadline.** The request's deadline counts each pass of a tiled image as an image
  (`Settings.request_deadline_s`). Once a window of tiles is done, a tiled image whose remaining passes, at
  the pace so far, would end after the deadline fails at once with `deadline_exceeded`, saying so, instead
  of running to it.
- **Cancellation.** When the request is cancelled (the client left, the deadline passed, another image of
  the batch failed), the queued tiles are withdrawn (their futures cancelled, which the batcher skips) and
  no further tile is cut.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from model.inference.detections import Detections, Selection
from model.inference.images import DecodedImage
from model.inference.predictor import Predictor
from model.inference.preprocess import PreparedImage
from model.inference.tiling import Candidates, TilePlan, Tiling, merge, tile_candidates, whole_candidates
from model.wire.records import image_record
from service.batcher import Inference
from service.errors import DeadlineExceeded
from service.images import decode_image, image_size
from service.metrics import Metrics, Protocol
from service.options import SegmentOptions
from service.settings import Settings

T = TypeVar("T")

# Queue one prepared image with what its request wants (`ServedModel`: a Job through its `Batcher.put`).
QueueImage = Callable[[PreparedImage, Selection, float], Awaitable["asyncio.Future[Inference[Detections]]"]]
InPool = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class TiledImage:
    """An image to segment in tiles: its pixels at full resolution and its plan."""

    image: DecodedImage
    plan: TilePlan


@dataclass(frozen=True)
class TiledOutcome:
    """A tiled image's record and where its time went, in seconds: `queue` until its first pass ran,
    `inference` from then to its last pass's end (tiles cut and prepared meanwhile), `postprocess` merging
    and encoding. `queued` (loop time) is when its passes began to be queued, `merged` (perf_counter) when
    merging began: the clock readings of its trace spans."""

    record: dict[str, Any]
    queue_s: float
    inference_s: float
    postprocess_s: float
    tiles: int
    queued: float
    merged: float


class Tiler:
    """Segments tiled images through one model's batcher and the CPU pool (`ServedModel` holds one);
    `labels` (model, version) label its metrics."""

    def __init__(
        self,
        predictor: Predictor,
        settings: Settings,
        metrics: Metrics,
        *,
        queue_image: QueueImage,
        in_pool: InPool,
        window: int,
        labels: tuple[str, str],
    ) -> None:
        self._predictor = predictor
        self._settings = settings
        self._metrics = metrics
        self._queue_image = queue_image
        self._in_pool = in_pool
        self._window = window
        self._labels = labels

    def decode(self, data: bytes, tiling: Tiling) -> DecodedImage | TiledImage:
        """The upload decoded for how it will be segmented (blocking: run it in the CPU pool)."""
        predictor, settings = self._predictor, self._settings
        plan = None
        if tiling.mode != "off":
            plan = tiling.plan(image_size(data), predictor.resize)
        if plan is None:
            return decode_image(data, max_pixels=settings.max_image_pixels, draft_to=predictor.draft_to)
        return TiledImage(decode_image(data, max_pixels=settings.max_tiled_pixels), plan)

    async def segment(
        self,
        filename: str | None,
        tiled: TiledImage,
        options: SegmentOptions,
        deadline: float,
        protocol: Protocol,
    ) -> TiledOutcome:
        """The record of a tiled image, which `protocol` carried (it labels the tiles counted). Raises its
        ServiceError; DeadlineExceeded when its remaining passes would end after `deadline` (loop time)."""
        plan, pixels = tiled.plan, tiled.image.pixels
        selection = options.tile_selection
        loop = asyncio.get_running_loop()
        started = loop.time()
        queued: collections.deque[tuple[int, asyncio.Future[Inference[Detections]]]] = collections.deque()
        whole: asyncio.Future[Inference[Detections]] | None = None
        reducing: list[asyncio.Future[Candidates]] = []
        first_run: float | None = None
        done = 0

        async def collect() -> None:
            """Wait for the oldest queued tile; reduce its detections to crops in the pool."""
            nonlocal first_run, done
            index, future = queued[0]
            inference = await future
            queued.popleft()
            done += 1
            if first_run is None:
                first_run = loop.time() - inference.inference_s
            reducing.append(
                asyncio.ensure_future(self._in_pool(tile_candidates, plan, index, inference.result))
            )
            self._check_pace(done, plan.passes, started, deadline)

        try:
            prepared = await self._in_pool(self._predictor.prepare, tiled.image)
            whole = await self._queue_image(prepared, selection, deadline)
            for index in range(len(plan.tiles)):
                while len(queued) >= self._window:
                    await collect()
                tile = await self._in_pool(self._prepare_tile, pixels, plan, index)
                queued.append((index, await self._queue_image(tile, selection, deadline)))
            while queued:
                await collect()
            whole_inference = await whole
            candidates = await asyncio.gather(*reducing)
        finally:
            for _, future in queued:
                future.cancel()
            if whole is not None:
                whole.cancel()
            for reduction in reducing:
                reduction.cancel()
        self._metrics.tiles.labels(*self._labels, protocol).inc(len(plan.tiles))
        ended = loop.time()
        postprocess_started = time.perf_counter()
        record = await self._in_pool(
            self._record, filename, plan, whole_inference.result, candidates, options
        )
        postprocess_s = time.perf_counter() - postprocess_started
        first = first_run if first_run is not None else ended
        return TiledOutcome(
            record,
            max(0.0, first - started),
            max(0.0, ended - first),
            postprocess_s,
            tiles=len(plan.tiles),
            queued=started,
            merged=postprocess_started,
        )

    def _check_pace(self, done: int, passes: int, started: float, deadline: float) -> None:
        """Fail now, rather than at the deadline, when the passes left would not end in time at the pace so far
        (judged once a window of tiles is done, so that the first passes' queueing does not decide it)."""
        if done < self._window:
            return
        now = asyncio.get_running_loop().time()
        needed = (now - started) / done * (passes - done)
        if now + needed > deadline:
            raise DeadlineExceeded(
                f"the tiled image would not be done before its deadline: {done} of its {passes} passes took "
                f"{now - started:.1f} s, and the {passes - done} left need about {needed:.0f} s at that pace, "
                f"with {max(0.0, deadline - now):.0f} s left (CENTERMASK_REQUEST_TIMEOUT_S = "
                f"{self._settings.request_timeout_s:g} s per batch of passes). Use larger tiles (tile_size), "
                "tiling=off, or raise CENTERMASK_REQUEST_TIMEOUT_S"
            )

    def _prepare_tile(self, pixels: Any, plan: TilePlan, index: int) -> PreparedImage:
        return self._predictor.prepare(plan.cut(pixels, index))

    def _record(
        self,
        filename: str | None,
        plan: TilePlan,
        whole: Detections,
        candidates: list[Candidates],
        options: SegmentOptions,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        merged = options.after_merge(merge(plan, whole_candidates(plan, whole), candidates))
        predictor = self._predictor
        record = image_record(
            filename, merged, predictor.class_names, predictor.category_ids, options.mask_format, plan
        )
        self._metrics.postprocess.observe(time.perf_counter() - started)
        return record
