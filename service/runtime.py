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
from collections.abc import AsyncIterator, Callable, Sequence
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
from model.wire.records import image_record, timing_ms
from service import faults, tracing
from service.batcher import Batcher, Inference
from service.errors import DeadlineExceeded, NotReady, Overloaded, ServiceError, WorkerFailed
from service.images import decode_image
from service.metrics import Metrics
from service.options import SegmentOptions
from service.settings import Settings
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

    async def segment(
        self, uploads: Sequence[Upload], options: SegmentOptions, *, client_deadline_s: float | None = None
    ) -> list[Segmented]:
        """Segment the images of one request; all its images are queued together, so they batch.

        The request's deadline (`Settings.request_deadline_s`) starts now; `client_deadline_s`, the time the
        client itself still waits (a gRPC deadline), shortens it. Raises ImageFailed for the first failing
        image.
        """
        assert self._batcher is not None
        settings = self._settings
        deadline_s = settings.request_deadline_s(len(uploads), self._max_batch_size)
        clients_binds = False
        if client_deadline_s is not None and client_deadline_s < deadline_s:
            deadline_s, clients_binds = max(0.0, client_deadline_s), True
        deadline = asyncio.get_running_loop().time() + deadline_s
        try:
            async with asyncio.timeout_at(deadline):
                prepared = await _each(self._in_cpu_pool(self._preprocess, upload.data) for upload in uploads)
                jobs = [Job(image, options.before_masks) for image, _, _ in prepared]
                futures = self._batcher.submit(jobs, deadline=deadline)
                inferences = await _each(futures)
                records = await _each(
                    self._in_cpu_pool(self._postprocess, upload.filename, inference, options)
                    for upload, inference in zip(uploads, inferences, strict=True)
                )
        except TimeoutError:
            if clients_binds:
                raise DeadlineExceeded(
                    f"the request took longer than the client's deadline ({deadline_s:.3g} s left on arrival)"
                ) from None
            raise DeadlineExceeded(
                f"the request took longer than its deadline of {deadline_s:g} s "
                f"(CENTERMASK_REQUEST_TIMEOUT_S = {settings.request_timeout_s:g} s per "
                f"{self._max_batch_size} images); raise CENTERMASK_REQUEST_TIMEOUT_S for slower devices"
            ) from None
        self._metrics.images.inc(len(uploads))
        trace = tracing.current()
        if trace is not None:
            for index, ((_, decoded, decode_s), inference, (_, postprocessed, postprocess_s)) in enumerate(
                zip(prepared, inferences, records, strict=True)
            ):
                _record_stages(trace, index, decoded, decode_s, inference, postprocessed, postprocess_s)
        return [
            Segmented(record, decode_s, inference.queue_s, inference.inference_s, postprocess_s)
            for (_, _, decode_s), inference, (record, _, postprocess_s) in zip(
                prepared, inferences, records, strict=True
            )
        ]

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
                record, _, postprocess_s = await self._in_cpu_pool(
                    self._postprocess, None, inference, options
                )
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

    def _preprocess(self, data: bytes) -> tuple[PreparedImage, float, float]:
        """Decode and prepare an image: it, when that began (perf_counter) and how long it took."""
        started = time.perf_counter()
        predictor = self.predictor
        image = decode_image(data, max_pixels=self._settings.max_image_pixels, draft_to=predictor.draft_to)
        prepared = predictor.prepare(image)
        elapsed = time.perf_counter() - started
        self._metrics.preprocess.observe(elapsed)
        return prepared, started, elapsed

    def _prepare(self, image: DecodedImage) -> tuple[PreparedImage, float]:
        started = time.perf_counter()
        prepared = self.predictor.prepare(image)
        elapsed = time.perf_counter() - started
        self._metrics.preprocess.observe(elapsed)
        return prepared, elapsed

    def _postprocess(
        self, filename: str | None, inference: Inference[Detections], options: SegmentOptions
    ) -> tuple[dict[str, Any], float, float]:
        """The image's record, when making it began (perf_counter) and how long it took."""
        started = time.perf_counter()
        detections = options.after_masks(inference.result)
        predictor = self.predictor
        record = image_record(
            filename, detections, predictor.class_names, predictor.category_ids, options.mask_format
        )
        elapsed = time.perf_counter() - started
        self._metrics.postprocess.observe(elapsed)
        return record, started, elapsed

    async def _in_cpu_pool(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._cpu_pool, function, *args)


def _record_stages(
    trace: tracing.RequestTrace,
    index: int,
    decoded: float,
    decode_s: float,
    inference: Inference[Detections],
    postprocessed: float,
    postprocess_s: float,
) -> None:
    """One image's stages as spans of its request, from the clock readings taken along the way."""
    image = {"centermask.image_index": index}
    trace.record("decode", decoded, decoded + decode_s, attributes=image)
    loop_clock = asyncio.get_running_loop().time
    forward_ends = inference.started + inference.inference_s
    trace.record("queue wait", inference.started - inference.queue_s, inference.started, clock=loop_clock)
    trace.record(
        "batch forward",
        inference.started,
        forward_ends,
        clock=loop_clock,
        attributes={tracing.BATCH_SIZE: inference.batch_size},
    )
    trace.record("postprocess", postprocessed, postprocessed + postprocess_s, attributes=image)


async def _each(awaitables: Any) -> list[Any]:
    """Await all; raise ImageFailed for the first (by position) that raised a ServiceError."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for index, result in enumerate(results):
        if isinstance(result, ServiceError):
            raise ImageFailed(index, result)
        if isinstance(result, BaseException):
            raise result
    return results
