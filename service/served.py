"""One model being served: its predictor, its own batcher and warm-up, its version, and the requests that
hold it (leases).

A `ServedModel` is built whole by `ServedModel.load` (weights read, batcher warmed up and started) and
is immutable after: a new version of a model is another `ServedModel`, switched in by the registry
(service/registry.py). A request holds a lease on the model it looked up for as long as it runs, so
that the model it started on serves it to the end; `retire` waits for the last lease, closes the
batcher (nothing is queued on it any more) and lets go of the weights.
"""

import asyncio
import contextlib
import functools
import gc
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
from service import faults, tracing
from service.batcher import Batcher, Inference
from service.errors import DeadlineExceeded, ServiceError
from service.metrics import Metrics, Protocol
from service.options import NO_TILING, SegmentOptions
from service.settings import Settings
from service.tiling import TiledImage, TiledOutcome, Tiler
from service.uploads import Upload

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A model's version: this many hex digits of its weights file's SHA-256.
VERSION_LENGTH = 12
# The default inference watchdog: this many times the slowest warm-up batch (first calls of a size
# are the slowest ones), and never less than the floor, so that a loaded machine is not taken for a
# hung one.
_WATCHDOG_FACTOR = 10
_WATCHDOG_FLOOR_S = 30.0

# `model.inference.load.load_predictor`, or a wrapper of it (tests control timing and failures so).
PredictorLoader = Callable[[PredictorOptions], Predictor]


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


class ServedModel:
    """A loaded, warm model under its name; `version` is its weights' SHA-256 prefix. Its `Tiler`
    (service/tiling.py) segments the images that a request's tiling cuts in tiles, through its batcher."""

    def __init__(
        self,
        name: str,
        predictor: Predictor,
        batcher: Batcher[Job, Detections],
        tiler: Tiler,
        *,
        max_batch_size: int,
        watchdog_s: float,
        settings: Settings,
        metrics: Metrics,
        cpu_pool: ThreadPoolExecutor,
        fingerprint: str = "",
    ) -> None:
        self.name = name
        self.predictor = predictor
        self.version = predictor.weights_sha256[:VERSION_LENGTH]
        self.max_batch_size = max_batch_size
        self.watchdog_s = watchdog_s
        # What the registry compares on SIGHUP: the files this version was loaded from.
        self.fingerprint = fingerprint
        self._batcher = batcher
        self._tiler = tiler
        self._settings = settings
        self._metrics = metrics
        self._cpu_pool = cpu_pool
        self._leases = 0
        self._unleased = asyncio.Event()
        self._unleased.set()
        self._retired = False

    @classmethod
    async def load(
        cls,
        name: str | None,
        options: PredictorOptions,
        *,
        load_predictor: PredictorLoader,
        settings: Settings,
        metrics: Metrics,
        cpu_pool: ThreadPoolExecutor,
        on_failure: Callable[[str], None],
        fingerprint: str = "",
    ) -> "ServedModel":
        """Load the weights, warm the batcher up for every common shape and batch size, start it.
        `name` None: the model is named by its config (the server without a repository)."""
        logger.info(
            "loading the model",
            extra={
                "model": name,
                "weights": str(options.weights) if options.weights is not None else "bundled",
                "config": options.config,
                "device": options.device,
                "backend": str(options.backend),
            },
        )
        started = time.perf_counter()
        torch.set_num_threads(settings.torch_threads)
        predictor = await asyncio.to_thread(load_predictor, options)
        if predictor.device.type == "cpu" and options.device != "cpu" and options.backend is Backend.TORCH:
            logger.warning("no CUDA device available: serving on the CPU, which is much slower")
        name = name if name is not None else predictor.config_name
        logger.info(
            "model loaded",
            extra={
                "model": name,
                "config": predictor.config_name,
                "device": str(predictor.device),
                "precision": str(predictor.precision),
                "backend": str(predictor.backend),
                "weights": str(predictor.weights_path),
                "model_version": predictor.weights_sha256[:VERSION_LENGTH],
                "classes": len(predictor.class_names),
                "load_s": round(time.perf_counter() - started, 3),
            },
        )
        max_batch_size = settings.batch_size_for(predictor.device.type)
        # Reads the model through a cell filled in below: the batcher exists before the model does.
        holder: list[ServedModel] = []
        device = predictor.device
        batcher: Batcher[Job, Detections] = Batcher(
            lambda jobs: holder[0].infer(jobs),
            max_batch_size=max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000,
            max_queue=settings.max_queue,
            metrics=metrics,
            classify=faults.classify,
            release_memory=lambda: faults.release_memory(device),
            on_failure=on_failure,
        )
        started = time.perf_counter()
        slowest_s = await batcher.warm_up(
            [
                (
                    {"model": name, "shape": list(shape), "batch_size": size},
                    functools.partial(predictor.warm_up, shape, size),
                )
                for shape in predictor.common_shapes()
                for size in predictor.batch_sizes(max_batch_size)
            ]
        )
        watchdog_s = settings.inference_watchdog_s or max(_WATCHDOG_FLOOR_S, _WATCHDOG_FACTOR * slowest_s)
        tiler = Tiler(
            predictor,
            settings,
            metrics,
            queue_image=lambda image, selection, deadline: batcher.put(
                Job(image, selection), deadline=deadline
            ),
            in_pool=functools.partial(_in_pool, cpu_pool),
            window=settings.tiles_in_flight_for(max_batch_size),
            labels=(name, predictor.weights_sha256[:VERSION_LENGTH]),
        )
        served = cls(
            name,
            predictor,
            batcher,
            tiler,
            max_batch_size=max_batch_size,
            watchdog_s=watchdog_s,
            settings=settings,
            metrics=metrics,
            cpu_pool=cpu_pool,
            fingerprint=fingerprint,
        )
        holder.append(served)
        batcher.start(watchdog_s=watchdog_s)
        logger.info(
            "model ready",
            extra={
                "model": name,
                "model_version": served.version,
                "warm_up_s": round(time.perf_counter() - started, 3),
                "inference_watchdog_s": round(watchdog_s, 3),
                # What warm-up achieved: false where compiling or a capture failed (a warning says why).
                "compiled": predictor.compiled,
                "cuda_graphs": predictor.cuda_graphs,
                "max_batch_size": max_batch_size,
            },
        )
        return served

    # ----------------------------------------------------------------------------------------------
    # Leases and retirement

    @contextlib.contextmanager
    def leased(self) -> Iterator["ServedModel"]:
        """Hold this model for a request: it is not retired before the lease ends."""
        self._leases += 1
        self._unleased.clear()
        try:
            yield self
        finally:
            self._leases -= 1
            if self._leases == 0:
                self._unleased.set()

    @property
    def leases(self) -> int:
        """Requests holding this model."""
        return self._leases

    async def retire(self, timeout_s: float) -> None:
        """Once no request holds this model any more, stop its batcher (nothing is queued on it then)
        and let go of the weights. `timeout_s` bounds only the batcher's last drain."""
        self._retired = True
        await self._unleased.wait()
        await self._batcher.close(timeout_s)
        device = self.predictor.device
        # The tiler holds the predictor too.
        del self.predictor, self._tiler
        gc.collect()
        faults.release_memory(device)
        logger.info("model version retired", extra={"model": self.name, "model_version": self.version})

    async def close(self, timeout_s: float) -> None:
        """Stop the batcher now (shutdown): images queued after `timeout_s` get 503."""
        await self._batcher.close(timeout_s)

    # ----------------------------------------------------------------------------------------------
    # State

    @property
    def is_running(self) -> bool:
        return self._batcher.is_running

    @property
    def depth(self) -> int:
        """Images waiting for inference."""
        return self._batcher.depth

    @property
    def free_slots(self) -> int:
        return self._batcher.free_slots

    @property
    def frames_in_flight(self) -> int:
        """Frames of one video decoded and queued ahead of the one answered next."""
        return self._settings.frames_in_flight(self.max_batch_size)

    # ----------------------------------------------------------------------------------------------
    # Serving

    async def segment(
        self,
        uploads: Sequence[Upload],
        options: SegmentOptions,
        *,
        protocol: Protocol,
        client_deadline_s: float | None = None,
    ) -> list[Segmented]:
        """Segment the images of one request, which `protocol` carried (it labels the metrics); all its
        images are queued together, so they batch.

        The request's deadline (`Settings.request_deadline_s`) starts now, counting each pass of a tiled
        image (service/tiling.py) as an image; `client_deadline_s`, the time the client itself still waits
        (a gRPC deadline), shortens it. Raises ImageFailed for the first failing image.
        """
        settings = self._settings
        passes = len(uploads)
        deadline_s, clients_binds = self._deadline_s(passes, client_deadline_s)
        started = asyncio.get_running_loop().time()
        deadline = started + deadline_s
        tiled: dict[int, TiledImage] = {}
        with self.leased():
            try:
                async with asyncio.timeout_at(deadline) as scope:
                    prepared = await _each(
                        self._in_cpu_pool(self._preprocess, upload.data, options.tiling) for upload in uploads
                    )
                    # Tiled images take a pass per tile besides their own: each counts.
                    tiled = {
                        i: image for i, (image, _, _) in enumerate(prepared) if isinstance(image, TiledImage)
                    }
                    if tiled:
                        passes += sum(image.plan.passes - 1 for image in tiled.values())
                        deadline_s, clients_binds = self._deadline_s(passes, client_deadline_s)
                        deadline = started + deadline_s
                        scope.reschedule(deadline)
                    ordinary = [i for i in range(len(uploads)) if i not in tiled]
                    jobs = [Job(prepared[i][0], options.before_masks) for i in ordinary]
                    pending: dict[int, Awaitable[Any]] = dict(
                        zip(ordinary, self._batcher.submit(jobs, deadline=deadline), strict=True)
                    )
                    for i, image in tiled.items():
                        pending[i] = self._tiler.segment(
                            uploads[i].filename, image, options, deadline, protocol
                        )
                    outcomes = await _each(pending[i] for i in range(len(uploads)))
                    records = await _each(
                        self._in_cpu_pool(self._postprocess, upload.filename, outcome, options)
                        for upload, outcome in zip(uploads, outcomes, strict=True)
                        if not isinstance(outcome, TiledOutcome)
                    )
            except TimeoutError:
                if clients_binds:
                    raise DeadlineExceeded(
                        f"the request took longer than the client's deadline ({deadline_s:.3g} s left on arrival)"
                    ) from None
                counted = (
                    f"; each tiled image counts its {passes - len(uploads) + len(tiled)} passes"
                    if tiled
                    else ""
                )
                raise DeadlineExceeded(
                    f"the request took longer than its deadline of {deadline_s:g} s "
                    f"(CENTERMASK_REQUEST_TIMEOUT_S = {settings.request_timeout_s:g} s per "
                    f"{self.max_batch_size} images{counted}); raise CENTERMASK_REQUEST_TIMEOUT_S for slower "
                    "devices"
                ) from None
        self._metrics.images.labels(self.name, self.version, protocol).inc(len(uploads))
        trace = tracing.current()
        ordinary_records = iter(records)
        results = []
        for index, ((_, decoded, decode_s), outcome) in enumerate(zip(prepared, outcomes, strict=True)):
            if isinstance(outcome, TiledOutcome):
                if trace is not None:
                    _record_tiled_stages(trace, index, decoded, decode_s, outcome)
                results.append(
                    Segmented(
                        outcome.record, decode_s, outcome.queue_s, outcome.inference_s, outcome.postprocess_s
                    )
                )
                continue
            record, postprocessed, postprocess_s = next(ordinary_records)
            if trace is not None:
                _record_stages(trace, index, decoded, decode_s, outcome, postprocessed, postprocess_s)
            results.append(Segmented(record, decode_s, outcome.queue_s, outcome.inference_s, postprocess_s))
        return results

    def _deadline_s(self, passes: int, client_deadline_s: float | None) -> tuple[float, bool]:
        """A request's time for `passes` forward passes, and whether the client's own deadline binds it."""
        deadline_s = self._settings.request_deadline_s(passes, self.max_batch_size)
        if client_deadline_s is not None and client_deadline_s < deadline_s:
            return max(0.0, client_deadline_s), True
        return deadline_s, False

    async def segment_frame(self, image: DecodedImage, decode_s: float, options: SegmentOptions) -> Segmented:
        """Segment one decoded video frame, as `segment` does an uploaded image once decoded.

        Unlike `segment`, a full queue is waited for rather than refused: a video's frames are paced by
        their own answers (a bounded number in flight), and its request has already been admitted. The
        deadline (`request_deadline_s` for one image) starts now. Raises the frame's ServiceError.
        """
        deadline_s = self._settings.request_deadline_s(1, self.max_batch_size)
        deadline = asyncio.get_running_loop().time() + deadline_s
        with self.leased():
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
        # Videos come over HTTP only.
        self._metrics.images.labels(self.name, self.version, Protocol.HTTP).inc()
        return Segmented(
            record, decode_s + prepare_s, inference.queue_s, inference.inference_s, postprocess_s
        )

    def infer(self, jobs: list[Job]) -> list[Detections]:
        """One batch's forward pass (in the batcher's inference thread)."""
        predictor = self.predictor
        with self._metrics.cuda_memory_peak(predictor.device):
            return predictor.infer([job.image for job in jobs], [job.selection for job in jobs])

    def _preprocess(
        self, data: bytes, tiling: Tiling = NO_TILING
    ) -> tuple[PreparedImage | TiledImage, float, float]:
        """Decode and prepare an image: it, when that began (perf_counter) and how long it took. An image
        that `tiling` cuts in tiles is decoded at full resolution; its tiles are prepared as they are
        queued (service/tiling.py)."""
        started = time.perf_counter()
        image = self._tiler.decode(data, tiling)
        prepared = image if isinstance(image, TiledImage) else self.predictor.prepare(image)
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
        return await _in_pool(self._cpu_pool, function, *args)


async def _in_pool(pool: ThreadPoolExecutor, function: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(pool, function, *args)


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


def _record_tiled_stages(
    trace: tracing.RequestTrace, index: int, decoded: float, decode_s: float, outcome: TiledOutcome
) -> None:
    """A tiled image's stages as spans of its request: its passes, all its tiles' queueing and forward
    passes together, in place of one queue wait and one batch forward."""
    image = {"centermask.image_index": index}
    trace.record("decode", decoded, decoded + decode_s, attributes=image)
    loop_clock = asyncio.get_running_loop().time
    first = outcome.queued + outcome.queue_s
    trace.record("queue wait", outcome.queued, first, clock=loop_clock, attributes=image)
    trace.record(
        "tiled passes",
        first,
        first + outcome.inference_s,
        clock=loop_clock,
        attributes={**image, "centermask.tiles": outcome.tiles},
    )
    trace.record("postprocess", outcome.merged, outcome.merged + outcome.postprocess_s, attributes=image)


async def _each(awaitables: Any) -> list[Any]:
    """Await all; raise ImageFailed for the first (by position) that raised a ServiceError."""
    results = await asyncio.gather(*awaitables, return_exceptions=True)
    for index, result in enumerate(results):
        if isinstance(result, ServiceError):
            raise ImageFailed(index, result)
        if isinstance(result, BaseException):
            raise result
    return results
