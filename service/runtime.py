"""The model's life in the service: loading, warm-up, serving requests' images, draining at shutdown.

Phases: loading → ready → draining. A model that cannot be loaded ends in `failed`, which stops the
process (the message is logged; Kubernetes restarts the pod and shows it). An inference worker that
stops for good (a device fault, a hung forward pass, a dead thread: service/batcher.py) also ends in
`failed`: the liveness probe fails, so that the orchestrator restarts the process, and requests get 503.
"""

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import torch

from model.inference.backends import Backend
from model.inference.detections import Detections, Selection
from model.inference.images import DecodedImage
from model.inference.options import PredictorOptions
from model.inference.predictor import Predictor
from model.inference.preprocess import PreparedImage
from model.inference.tiling import Tiling
from model.wire.records import image_record, timing_ms
from service import faults
from service.batcher import Batcher, Inference
from service.errors import DeadlineExceeded, NotReady, Overloaded, ServiceError, WorkerFailed
from service.metrics import Metrics
from service.options import NO_TILING, SegmentOptions
from service.settings import Settings
from service.tiling import TiledImage, TiledOutcome, Tiler
from service.uploads import Upload

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The default inference watchdog: this many times the slowest warm-up batch (first calls of a size
# are the slowest ones), and never less than the floor, so that a loaded machine is not taken for a
# hung one.
_WATCHDOG_FACTOR = 10
_WATCHDOG_FLOOR_S = 30.0


# `model.inference.load.load_predictor`, or a wrapper of it (tests control timing and failures so).
PredictorLoader = Callable[[PredictorOptions], Predictor]


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass(frozen=True)
class Job:
    """One image queued for inference, with what its request wants of the model's output."""

    image: PreparedImage
    selection: Selection

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.image.padded_shape


@dataclass(frozen=True)
class Segmented:
    """One image's `predict` JSON object and where its time went, in seconds."""

    record: dict[str, Any]
    decode_s: float
    queue_s: float
    inference_s: float
    postprocess_s: float

    def timing_ms(self) -> dict[str, float]:
        """The `Timing` record of these times."""
        return timing_ms(self.decode_s, self.queue_s, self.inference_s, self.postprocess_s)


class ImageFailed(Exception):
    """The image at `index` of a request failed with `error`."""

    def __init__(self, index: int, error: ServiceError) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


class Runtime:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        load_predictor: PredictorLoader,
        *,
        on_fatal_error: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._load_predictor = load_predictor
        self._on_fatal_error = on_fatal_error
        self.phase = Phase.LOADING
        self._predictor: Predictor | None = None
        self._batcher: Batcher[Job, Detections] | None = None
        self._tiler: Tiler | None = None
        self._max_batch_size = 1
        self._cpu_pool = ThreadPoolExecutor(settings.cpu_workers, thread_name_prefix="centermask-cpu")
        self._loader: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_started: float | None = None
        # Set once draining has begun, in the event loop (begin_draining runs in a signal handler): open
        # streams wait on it to close.
        self._streams_closing = asyncio.Event()
        self._watchdog_s: float | None = None
        metrics.track(
            queue_depth=lambda: self._batcher.depth if self._batcher else 0,
            requests_in_flight=lambda: self._in_flight,
            model_loaded=lambda: self._predictor is not None,
            model_ready=lambda: self.phase is Phase.READY,
        )

    @property
    def predictor(self) -> Predictor:
        if self._predictor is None:
            raise NotReady("the model is still loading")
        return self._predictor

    @property
    def is_alive(self) -> bool:
        if self.phase is Phase.FAILED:
            return False
        return self._batcher is None or self._batcher.is_running or self.phase is Phase.DRAINING

    @property
    def in_flight(self) -> int:
        """Segmentation requests admitted and not yet answered."""
        return self._in_flight

    @property
    def watchdog_s(self) -> float | None:
        """The inference watchdog in force (None until warm-up has measured the default)."""
        return self._watchdog_s

    def start(self) -> None:
        """Load and warm up in the background: the probes answer meanwhile."""
        self._loader = asyncio.create_task(self._load(), name="centermask-load")

    def begin_draining(self) -> None:
        """Stop admitting requests. Safe to call from a signal handler: it only sets attributes."""
        if self.phase is not Phase.FAILED:
            self.phase = Phase.DRAINING
        if self._drain_started is None:
            self._drain_started = time.monotonic()

    def close_streams(self) -> None:
        """Tell open streams (`/segment/stream`) to answer their frame in flight and close. Called in the
        event loop once draining has begun (the server's tick, or `stop`)."""
        self._streams_closing.set()

    async def until_streams_close(self) -> None:
        """Returns once open streams should close (the service is draining)."""
        await self._streams_closing.wait()

    async def stop(self) -> None:
        """Drain: finish admitted requests for up to the drain timeout, then stop the worker."""
        self.begin_draining()
        self.close_streams()
        drain_started = self._drain_started
        assert drain_started is not None
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()

        def remaining_s() -> float:
            return max(0.0, self._settings.drain_timeout_s - (time.monotonic() - drain_started))

        try:
            await asyncio.wait_for(self._idle.wait(), remaining_s())
        except TimeoutError:
            logger.warning("drain timeout: %d requests still running", self._in_flight)
        if self._batcher is not None:
            await self._batcher.close(remaining_s())
        self._cpu_pool.shutdown(wait=False, cancel_futures=True)
        logger.info("stopped")

    async def stop_inference(self) -> None:
        """The drain time is up: queued and running images get 503 now, so that their requests are
        still answered (in JSON) before the server closes their connections."""
        if self._batcher is not None:
            await self._batcher.close(0)

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """A segmentation request's stay: refused unless ready, and waited for by the drain."""
        if self.phase is Phase.FAILED:
            raise WorkerFailed("the service has failed and awaits a restart; retry")
        if self.phase is not Phase.READY:
            raise NotReady(f"the service is {self.phase}")
        assert self._batcher is not None
        # Refuse before reading the body when the queue is already full.
        if self._batcher.free_slots == 0:
            raise Overloaded("the inference queue is full; retry later")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def segment(self, uploads: Sequence[Upload], options: SegmentOptions) -> list[Segmented]:
        """Segment the images of one request; all its images are queued together, so they batch.

        The request's deadline (`Settings.request_deadline_s`) starts now. Raises ImageFailed for the
        first failing image.
        """
        assert self._batcher is not None and self._tiler is not None
        settings = self._settings
        deadline_s = settings.request_deadline_s(len(uploads), self._max_batch_size)
        started = asyncio.get_running_loop().time()
        deadline = started + deadline_s
        passes = len(uploads)
        try:
            async with asyncio.timeout_at(deadline) as scope:
                prepared = await _each(
                    self._in_cpu_pool(self._preprocess, upload.data, options.tiling) for upload in uploads
                )
                # Tiled images (service/tiling.py) take a pass per tile besides their own: each counts.
                tiled = {i: image for i, (image, _) in enumerate(prepared) if isinstance(image, TiledImage)}
                if tiled:
                    passes += sum(image.plan.passes - 1 for image in tiled.values())
                    deadline_s = settings.request_deadline_s(passes, self._max_batch_size)
                    deadline = started + deadline_s
                    scope.reschedule(deadline)
                ordinary = [i for i in range(len(uploads)) if i not in tiled]
                jobs = [Job(prepared[i][0], options.before_masks) for i in ordinary]
                pending: dict[int, Awaitable[Any]] = dict(
                    zip(ordinary, self._batcher.submit(jobs, deadline=deadline), strict=True)
                )
                for i, image in tiled.items():
                    pending[i] = self._tiler.segment(uploads[i].filename, image, options, deadline)
                outcomes = await _each(pending[i] for i in range(len(uploads)))
                records = await _each(
                    self._in_cpu_pool(self._postprocess, upload.filename, outcome, options)
                    for upload, outcome in zip(uploads, outcomes, strict=True)
                    if not isinstance(outcome, TiledOutcome)
                )
        except TimeoutError:
            counted = (
                f"; each tiled image counts its {passes - len(uploads) + len(tiled)} passes" if tiled else ""
            )
            raise DeadlineExceeded(
                f"the request took longer than its deadline of {deadline_s:g} s "
                f"(CENTERMASK_REQUEST_TIMEOUT_S = {settings.request_timeout_s:g} s per "
                f"{self._max_batch_size} images{counted}); raise CENTERMASK_REQUEST_TIMEOUT_S for slower devices"
            ) from None
        self._metrics.images.inc(len(uploads))
        ordinary_records = iter(records)
        results = []
        for (_, decode_s), outcome in zip(prepared, outcomes, strict=True):
            if isinstance(outcome, TiledOutcome):
                results.append(
                    Segmented(
                        outcome.record, decode_s, outcome.queue_s, outcome.inference_s, outcome.postprocess_s
                    )
                )
            else:
                record, postprocess_s = next(ordinary_records)
                results.append(
                    Segmented(record, decode_s, outcome.queue_s, outcome.inference_s, postprocess_s)
                )
        return results

    async def segment_frame(self, image: DecodedImage, decode_s: float, options: SegmentOptions) -> Segmented:
        """Segment one decoded video frame, as `segment` does an uploaded image once decoded.

        Unlike `segment`, a full queue is waited for rather than refused: a video's frames are paced by
        their own answers (a bounded number in flight), and its request has already been admitted. The
        deadline (`request_deadline_s` for one image) starts now. Raises the frame's ServiceError.
        """
        assert self._batcher is not None
        deadline_s = self._settings.request_deadline_s(1, self._max_batch_size)
        deadline = asyncio.get_running_loop().time() + deadline_s
        try:
            async with asyncio.timeout_at(deadline):
                prepared, prepare_s = await self._in_cpu_pool(self._prepare, image)
                future = await self._batcher.put(Job(prepared, options.before_masks), deadline=deadline)
                inference = await future
                record, postprocess_s = await self._in_cpu_pool(self._postprocess, None, inference, options)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the frame took longer than its deadline of {deadline_s:g} s (CENTERMASK_REQUEST_TIMEOUT_S)"
            ) from None
        self._metrics.images.inc()
        return Segmented(
            record, decode_s + prepare_s, inference.queue_s, inference.inference_s, postprocess_s
        )

    @property
    def frames_in_flight(self) -> int:
        """Frames of one video decoded and queued ahead of the one answered next."""
        return self._settings.frames_in_flight(self._max_batch_size)

    async def in_cpu_pool(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking work (decoding a video's next frame) in the decode/encode pool."""
        return await self._in_cpu_pool(function, *args)

    async def _load(self) -> None:
        try:
            await self._load_and_warm_up()
        except Exception as exc:
            self.phase = Phase.FAILED
            logger.error("cannot load the model: %s", exc)
            self._on_fatal_error()

    async def _load_and_warm_up(self) -> None:
        settings = self._settings
        options = settings.predictor_options()
        logger.info(
            "loading the model",
            extra={
                "weights": str(options.weights) if options.weights is not None else "bundled",
                "config": options.config,
                "device": options.device,
                "backend": str(options.backend),
            },
        )
        started = time.perf_counter()
        torch.set_num_threads(settings.torch_threads)
        predictor = await asyncio.to_thread(self._load_predictor, options)
        if predictor.device.type == "cpu" and options.device != "cpu" and options.backend is Backend.TORCH:
            logger.warning("no CUDA device available: serving on the CPU, which is much slower")
        self._predictor = predictor
        logger.info(
            "model loaded",
            extra={
                "config": predictor.config_name,
                "device": str(predictor.device),
                "precision": str(predictor.precision),
                "backend": str(predictor.backend),
                "weights": str(predictor.weights_path),
                "classes": len(predictor.class_names),
                "load_s": round(time.perf_counter() - started, 3),
            },
        )
        self._max_batch_size = settings.batch_size_for(predictor.device.type)
        batcher = Batcher(
            self._infer,
            max_batch_size=self._max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000,
            max_queue=settings.max_queue,
            metrics=self._metrics,
            classify=faults.classify,
            release_memory=lambda: faults.release_memory(predictor.device),
            on_failure=self._worker_failed,
        )
        started = time.perf_counter()
        slowest_s = await batcher.warm_up(
            [
                (
                    {"shape": list(shape), "batch_size": size},
                    functools.partial(predictor.warm_up, shape, size),
                )
                for shape in predictor.common_shapes()
                for size in predictor.batch_sizes(self._max_batch_size)
            ]
        )
        self._watchdog_s = settings.inference_watchdog_s or max(
            _WATCHDOG_FLOOR_S, _WATCHDOG_FACTOR * slowest_s
        )
        batcher.start(watchdog_s=self._watchdog_s)
        self._batcher = batcher
        self._tiler = Tiler(
            predictor,
            settings,
            self._metrics,
            queue_image=lambda image, selection, deadline: batcher.put(
                Job(image, selection), deadline=deadline
            ),
            in_pool=self._in_cpu_pool,
            window=settings.tiles_in_flight_for(self._max_batch_size),
        )
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY
        base_url = settings.base_url
        logger.info(
            "ready",
            extra={
                "page": f"{base_url}/",
                "docs": f"{base_url}/docs",
                "warm_up_s": round(time.perf_counter() - started, 3),
                "inference_watchdog_s": round(self._watchdog_s, 3),
                # What warm-up achieved: false where compiling or a capture failed (a warning says why).
                "compiled": predictor.compiled,
                "cuda_graphs": predictor.cuda_graphs,
                # The settings in force: defaults that depend on the device resolved.
                "settings": {**settings.effective(), "max_batch_size": self._max_batch_size},
            },
        )

    def _worker_failed(self, reason: str) -> None:
        self.phase = Phase.FAILED
        logger.error("the service has failed and awaits a restart (liveness now fails): %s", reason)

    @property
    def max_batch_size(self) -> int:
        """The most images in one forward pass (resolved for the device once the model is loaded)."""
        return self._max_batch_size

    def _infer(self, jobs: list[Job]) -> list[Detections]:
        predictor = self.predictor
        with self._metrics.cuda_memory_peak(predictor.device):
            return predictor.infer([job.image for job in jobs], [job.selection for job in jobs])

    def _preprocess(
        self, data: bytes, tiling: Tiling = NO_TILING
    ) -> tuple[PreparedImage | TiledImage, float]:
        started = time.perf_counter()
        predictor = self.predictor
        assert self._tiler is not None
        image = self._tiler.decode(data, tiling)
        # A tiled image's tiles are prepared as they are queued (service/tiling.py).
        prepared = image if isinstance(image, TiledImage) else predictor.prepare(image)
        elapsed = time.perf_counter() - started
        self._metrics.preprocess.observe(elapsed)
        return prepared, elapsed

    def _prepare(self, image: DecodedImage) -> tuple[PreparedImage, float]:
        started = time.perf_counter()
        prepared = self.predictor.prepare(image)
        elapsed = time.perf_counter() - started
        self._metrics.preprocess.observe(elapsed)
        return prepared, elapsed

    def _postprocess(
        self, filename: str | None, inference: Inference[Detections], options: SegmentOptions
    ) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        detections = options.after_masks(inference.result)
        predictor = self.predictor
        record = image_record(
            filename, detections, predictor.class_names, predictor.category_ids, options.mask_format
        )
        elapsed = time.perf_counter() - started
        self._metrics.postprocess.observe(elapsed)
        return record, elapsed

    async def _in_cpu_pool(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu_pool, function, *args)


async def _each(awaitables: Any) -> list[Any]:
    """Await all; raise ImageFailed for the first (by position) that raised a ServiceError."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for index, result in enumerate(results):
        if isinstance(result, ServiceError):
            raise ImageFailed(index, result)
        if isinstance(result, BaseException):
            raise result
    return results
