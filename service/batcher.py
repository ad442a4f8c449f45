"""Dynamic batching: requests' images are queued and run through the network together.

One worker per device takes the oldest queued image, then keeps collecting until it has
`max_batch_size` images or `max_batch_delay` has passed since that first image was queued (an image
that already waited longer than that does not wait again). The window is then split by padded shape
and each shape's images run as one forward pass, in order of their oldest image, so nothing starves.

Why only equal padded shapes share a forward pass: the network pads every image of a batch to the
batch's largest size, and detections in the padding survive into the output. Mixing shapes would make
a result depend on which other requests happened to arrive with it. With shapes kept apart, the
companions of an image change nothing in its result (only the batch size can, by float rounding of
the convolution kernels: docs/service.md). The cost: traffic of many different image sizes forms
smaller batches. Images of one camera or one resolution, the common production case, batch fully.

Threads: `infer` runs in one dedicated daemon thread, so the event loop never blocks and the network
is only ever called from one thread (daemon: a forward pass stuck in a kernel must not keep the process
from exiting). Callers decode and prepare images elsewhere, in parallel with inference.

Failures: a batch that raises is split in halves and each half retried, down to single images, so one
poison image (or an out-of-memory error on a large batch) fails only its own request, with its own
error. A retry starts only once the failed attempt's exception is dropped (its traceback's frames hold
the batch's tensors); after an out-of-memory error `release_memory` then hands the freed blocks back
before the smaller batches run. A fault that leaves the device unusable, a forward pass running past
the watchdog, or the inference thread dying stops the worker for good: the batch and everything queued
get WorkerFailed, later submissions too, and `on_failure` tells the owner, whose liveness probe then
fails so that the process is restarted.

Images whose future was cancelled (the client went away, or the caller gave up at its deadline) or
whose deadline has passed are dropped before they reach the network.
"""

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from service.errors import (
    DeadlineExceeded,
    InferenceFailed,
    NotReady,
    OutOfMemory,
    Overloaded,
    ServiceError,
    WorkerFailed,
)
from service.faults import Fault
from service.metrics import Metrics

logger = logging.getLogger(__name__)


class Batchable(Protocol):
    @property
    def padded_shape(self) -> tuple[int, int]: ...


ItemT = TypeVar("ItemT", bound=Batchable)
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Inference(Generic[ResultT]):
    """An item's result, with its time in the queue and in the forward pass; `started` is when that pass
    began (the event loop's clock) and `batch_size` how many items it held."""

    result: ResultT
    queue_s: float
    inference_s: float
    started: float
    batch_size: int


@dataclass(eq=False)
class _Queued(Generic[ItemT, ResultT]):
    item: ItemT
    deadline: float
    enqueued_at: float
    future: "asyncio.Future[Inference[ResultT]]" = field(repr=False)


@dataclass(frozen=True)
class _Failed:
    """A failed attempt, described without keeping its exception (and the frames that hold)."""

    kind: str  # a Fault, or "hung"
    description: str


class InferenceThread:
    """Runs submitted calls one at a time in a daemon thread.

    A call that raises a BaseException that is not an Exception (SystemExit, ...) ends the thread, as
    it would end any thread; `is_alive` then turns false.
    """

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[
            tuple[Callable[..., Any], tuple[Any, ...], concurrent.futures.Future]
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, function: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((function, args, future))
        return asyncio.wrap_future(future)

    def stop(self) -> None:
        """End the thread after the calls already submitted (a call that never returns keeps it)."""
        self._calls.put((_stop, (), concurrent.futures.Future()))

    def _serve(self) -> None:
        while True:
            function, args, future = self._calls.get()
            if function is _stop:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args))
                except BaseException as error:
                    future.set_exception(error)
                    if not isinstance(error, Exception):
                        return
            # Nothing of this call may outlive it here: its arguments are the batch's tensors.
            del function, args, future


def _stop() -> None:
    """The marker call that ends an InferenceThread."""


class Batcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        infer: Callable[[list[ItemT]], Sequence[ResultT]],
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        max_queue: int,
        metrics: Metrics,
        classify: Callable[[BaseException], Fault] = lambda _: Fault.ERROR,
        release_memory: Callable[[], None] = lambda: None,
        on_failure: Callable[[str], None] = lambda _: None,
    ) -> None:
        """`classify` says what a raised error means; `release_memory` runs (in the inference thread)
        before the retries of an out-of-memory batch; `on_failure` hears once that the worker stopped."""
        self._infer = infer
        self._max_batch_size = max_batch_size
        self._max_batch_delay_s = max_batch_delay_s
        self._metrics = metrics
        self._classify = classify
        self._release_memory = release_memory
        self._on_failure = on_failure
        self._queue: asyncio.Queue[_Queued[ItemT, ResultT]] = asyncio.Queue(max_queue)
        self._thread = InferenceThread("centermask-infer")
        self._worker: asyncio.Task[None] | None = None
        self._watchdog_s: float | None = None
        self._closing = False
        self.failure: str | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def free_slots(self) -> int:
        return self._queue.maxsize - self._queue.qsize()

    @property
    def is_running(self) -> bool:
        if self.failure is not None or not self._thread.is_alive:
            return False
        return self._worker is not None and not self._worker.done()

    async def warm_up(self, steps: Sequence[tuple[dict[str, Any], Callable[[], object]]]) -> float:
        """Run each warm-up step (what it covers, for the log; the call) in the inference thread, before
        serving; returns the slowest, in seconds.

        First calls of a shape and batch size are slow (allocator growth, cuDNN autotuning on GPU); the
        first requests should not pay for that. Warm-up is not counted in the metrics, and not watched.
        """
        slowest = 0.0
        for step, (what, call) in enumerate(steps, start=1):
            started = time.perf_counter()
            await self._thread.submit(call)
            seconds = time.perf_counter() - started
            slowest = max(slowest, seconds)
            logger.info(
                "warm-up", extra={**what, "step": step, "of": len(steps), "seconds": round(seconds, 3)}
            )
        return slowest

    def start(self, *, watchdog_s: float | None = None) -> None:
        """Serve the queue; a forward pass running longer than `watchdog_s` stops the worker."""
        self._watchdog_s = watchdog_s
        self._worker = asyncio.create_task(self._run(), name="centermask-batcher")
        self._worker.add_done_callback(self._worker_ended)

    def submit(
        self, items: Sequence[ItemT], *, deadline: float
    ) -> list["asyncio.Future[Inference[ResultT]]"]:
        """Queue all of `items` or, when the queue lacks room for all of them, none (Overloaded).

        `deadline` is in `loop.time()` seconds. Cancelling a returned future withdraws its item.
        Raises WorkerFailed once the worker has stopped for good.
        """
        if self.failure is not None or not self._thread.is_alive:
            raise WorkerFailed("the inference worker failed; this instance awaits a restart")
        if len(items) > self.free_slots:
            raise Overloaded("the inference queue is full; retry later")
        loop = asyncio.get_running_loop()
        now = loop.time()
        queued = [_Queued(item, deadline, now, loop.create_future()) for item in items]
        for entry in queued:
            self._queue.put_nowait(entry)
        return [entry.future for entry in queued]

    async def put(self, item: ItemT, *, deadline: float) -> "asyncio.Future[Inference[ResultT]]":
        """Queue `item`, waiting for room while the queue is full (`submit` refuses instead).

        For callers that pace themselves by their own answers, such as a video's frames: their wait is
        their backpressure, and what they already queued is not turned away. Cancelling the wait queues
        nothing; cancelling the returned future withdraws the item. Raises WorkerFailed once the worker
        has stopped for good, NotReady once the batcher is closing.
        """
        if self.failure is not None or not self._thread.is_alive:
            raise WorkerFailed("the inference worker failed; this instance awaits a restart")
        if self._closing:
            raise NotReady("the service is shutting down")
        loop = asyncio.get_running_loop()
        entry = _Queued(item, deadline, loop.time(), loop.create_future())
        await self._queue.put(entry)
        # Queued now (the wait for room is not queueing): put returns without yielding once it has put,
        # so the worker has not seen the entry yet.
        entry.enqueued_at = loop.time()
        # Room may have come from `close` or a failure emptying the queue: then nothing will ever run the item.
        if self.failure is not None:
            self._resolve_error(entry, WorkerFailed("the inference worker failed; retry"))
        elif self._closing:
            self._resolve_error(entry, NotReady("the service is shutting down"))
        return entry.future

    async def close(self, timeout_s: float) -> None:
        """Let the queued images finish for up to `timeout_s`, then stop the worker.

        Images still queued after that get NotReady. A forward pass that is running when the worker
        stops still completes in its thread; its results are dropped. Closing again does nothing.
        """
        if self._closing:
            return
        if self.failure is None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout_s)
            except TimeoutError:
                logger.warning("drain timeout: %d images still queued", self._queue.qsize())
        self._closing = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._fail_queued(NotReady("the service is shutting down"))
        self._thread.stop()

    async def _run(self) -> None:
        while self.failure is None:
            window = [await self._queue.get()]
            try:
                await self._fill_window(window)
                for group in _group_by_shape(window):
                    await self._run_group(group)
            except asyncio.CancelledError:
                for entry in window:
                    self._resolve_error(entry, NotReady("the service is shutting down"))
                raise
            except Exception:
                logger.exception("batcher failure; its requests fail, the worker carries on")
                for entry in window:
                    self._resolve_error(entry, InferenceFailed())
            finally:
                for _ in window:
                    self._queue.task_done()

    async def _fill_window(self, window: list[_Queued[ItemT, ResultT]]) -> None:
        closes_at = window[0].enqueued_at + self._max_batch_delay_s
        loop = asyncio.get_running_loop()
        while len(window) < self._max_batch_size:
            if self._queue.empty():
                remaining = closes_at - loop.time()
                if remaining <= 0:
                    return
                try:
                    window.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    return
            else:
                window.append(self._queue.get_nowait())

    async def _run_group(self, group: list[_Queued[ItemT, ResultT]]) -> None:
        runnable = self._still_wanted(group)
        if not runnable or self.failure is not None:
            for entry in runnable:
                self._resolve_error(entry, WorkerFailed("the inference worker failed; retry"))
            return
        started = asyncio.get_running_loop().time()
        outcome = await self._attempt([entry.item for entry in runnable])
        if isinstance(outcome, _Failed):
            # Here, outside the attempt, nothing refers to the failed pass any more.
            await self._recover(runnable, outcome)
            return
        elapsed = asyncio.get_running_loop().time() - started
        self._metrics.batch_inference.observe(elapsed)
        self._metrics.batch_size.observe(len(runnable))
        for entry, result in zip(runnable, outcome, strict=True):
            queue_s = started - entry.enqueued_at
            self._metrics.queue_wait.observe(queue_s)
            if not entry.future.done():
                entry.future.set_result(Inference(result, queue_s, elapsed, started, len(runnable)))

    async def _attempt(self, items: list[ItemT]) -> Sequence[ResultT] | _Failed:
        """One forward pass, under the watchdog. Never raises; a failure comes back as _Failed."""
        call = self._thread.submit(self._infer, items)
        done, _ = await asyncio.wait({call}, timeout=self._watchdog_s)
        if not done:
            return _Failed(
                "hung", f"a forward pass of {len(items)} images ran past the {self._watchdog_s:g} s watchdog"
            )
        error = call.exception()
        if error is None:
            results = call.result()
            if len(results) == len(items):
                return results
            error = RuntimeError(f"infer returned {len(results)} results for {len(items)} images")
        if not isinstance(error, Exception):
            kind, description = Fault.FATAL, f"the inference thread died ({type(error).__name__})"
        else:
            kind, description = self._classify(error), f"{type(error).__name__}: {error}"[:500]
        # The traceback goes to the log as text: a handler that keeps records (a test's log capture)
        # must not keep the exception, and with it the batch's tensors, alive.
        logger.error(
            "a forward pass of %d images failed (%s)",
            len(items),
            kind,
            extra={"exception": "".join(traceback.format_exception(error))},
        )
        return _Failed(kind, description)

    async def _recover(self, runnable: list[_Queued[ItemT, ResultT]], failed: _Failed) -> None:
        self._metrics.inference_failures.labels(failed.kind).inc()
        if failed.kind in (Fault.FATAL, "hung"):
            self._fail(failed.description)
            for entry in runnable:
                self._resolve_error(entry, WorkerFailed("the inference worker failed; retry"))
            return
        if failed.kind == Fault.OUT_OF_MEMORY:
            await self._thread.submit(self._release_memory)
        if len(runnable) > 1:
            half = len(runnable) // 2
            logger.warning("retrying a failed batch of %d images as two halves", len(runnable))
            await self._run_group(runnable[:half])
            await self._run_group(runnable[half:])
            return
        error: ServiceError = (
            OutOfMemory("the model ran out of memory on this image, even alone; retry later")
            if failed.kind == Fault.OUT_OF_MEMORY
            else InferenceFailed()
        )
        self._resolve_error(runnable[0], error)

    def _fail(self, reason: str) -> None:
        """Stop for good: the device or the thread cannot be trusted any more."""
        if self.failure is not None:
            return
        self.failure = reason
        logger.error("the inference worker stopped: %s", reason)
        self._fail_queued(WorkerFailed("the inference worker failed; retry"))
        self._on_failure(reason)

    def _worker_ended(self, worker: "asyncio.Task[None]") -> None:
        if not self._closing and not worker.cancelled():
            error = worker.exception()
            self._fail(f"the batching worker ended ({type(error).__name__ if error else 'returned'})")

    def _fail_queued(self, error: ServiceError) -> None:
        while not self._queue.empty():
            self._resolve_error(self._queue.get_nowait(), error)
            self._queue.task_done()

    def _still_wanted(self, group: list[_Queued[ItemT, ResultT]]) -> list[_Queued[ItemT, ResultT]]:
        now = asyncio.get_running_loop().time()
        wanted = []
        for entry in group:
            if entry.future.done():  # cancelled by its request
                continue
            if now >= entry.deadline:
                entry.future.set_exception(
                    DeadlineExceeded("the request deadline passed while it was queued")
                )
                continue
            wanted.append(entry)
        return wanted

    @staticmethod
    def _resolve_error(entry: _Queued[ItemT, ResultT], error: Exception) -> None:
        if not entry.future.done():
            entry.future.set_exception(error)


def _group_by_shape(window: list[_Queued[ItemT, ResultT]]) -> list[list[_Queued[ItemT, ResultT]]]:
    """Split into equal-padded-shape groups, ordered by each group's oldest entry."""
    groups: dict[tuple[int, int], list[_Queued[ItemT, ResultT]]] = {}
    for entry in window:
        groups.setdefault(entry.item.padded_shape, []).append(entry)
    return list(groups.values())
