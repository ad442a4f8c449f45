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

Threads: `infer` runs in one dedicated thread, so the event loop never blocks and the network is only
ever called from one thread. Callers decode and prepare images elsewhere, in parallel with inference.

Failure isolation: if a batch raises, each of its images is retried alone, so one poison image (or an
out-of-memory error on a large batch) fails only its own request. The worker always carries on.
Images whose future was cancelled (the client went away, or the caller gave up at its deadline) or
whose deadline has passed are dropped before they reach the network.
"""

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.metrics import Metrics

logger = logging.getLogger(__name__)


class Batchable(Protocol):
    @property
    def padded_shape(self) -> tuple[int, int]: ...


ItemT = TypeVar("ItemT", bound=Batchable)
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Inference(Generic[ResultT]):
    result: ResultT
    queue_s: float
    inference_s: float


@dataclass(eq=False)
class _Queued(Generic[ItemT, ResultT]):
    item: ItemT
    deadline: float
    enqueued_at: float
    future: "asyncio.Future[Inference[ResultT]]" = field(repr=False)


class Batcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        infer: Callable[[list[ItemT]], Sequence[ResultT]],
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        max_queue: int,
        metrics: Metrics,
    ) -> None:
        self._infer = infer
        self._max_batch_size = max_batch_size
        self._max_batch_delay_s = max_batch_delay_s
        self._metrics = metrics
        self._queue: asyncio.Queue[_Queued[ItemT, ResultT]] = asyncio.Queue(max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="centermask-infer")
        self._worker: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def free_slots(self) -> int:
        return self._queue.maxsize - self._queue.qsize()

    @property
    def is_running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def warm_up(self, item: ItemT) -> None:
        """Run every batch size the worker can form once, before serving.

        First calls of a size are slow (allocator growth, cuDNN autotuning on GPU); the first requests
        should not pay for that. Warm-up batches are not counted in the metrics.
        """
        loop = asyncio.get_running_loop()
        for size in range(1, self._max_batch_size + 1):
            started = loop.time()
            await loop.run_in_executor(self._executor, self._infer, [item] * size)
            logger.info(
                "warm-up",
                extra={
                    "batch_size": size,
                    "of": self._max_batch_size,
                    "seconds": round(loop.time() - started, 3),
                },
            )

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="centermask-batcher")

    def submit(
        self, items: Sequence[ItemT], *, deadline: float
    ) -> list["asyncio.Future[Inference[ResultT]]"]:
        """Queue all of `items` or, when the queue lacks room for all of them, none (Overloaded).

        `deadline` is in `loop.time()` seconds. Cancelling a returned future withdraws its item.
        """
        if len(items) > self.free_slots:
            raise Overloaded("the inference queue is full; retry later")
        loop = asyncio.get_running_loop()
        now = loop.time()
        queued = [_Queued(item, deadline, now, loop.create_future()) for item in items]
        for entry in queued:
            self._queue.put_nowait(entry)
        return [entry.future for entry in queued]

    async def close(self, timeout_s: float) -> None:
        """Let the queued images finish for up to `timeout_s`, then stop the worker.

        Images still queued after that get NotReady. A forward pass that is running when the worker
        stops still completes in its thread; its results are dropped.
        """
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            logger.warning("drain timeout: %d images still queued", self._queue.qsize())
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while not self._queue.empty():
            self._resolve_error(self._queue.get_nowait(), NotReady("the service is shutting down"))
            self._queue.task_done()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        while True:
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
                    self._resolve_error(entry, InferenceFailed("internal error while running the batch"))
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

    async def _run_group(
        self, group: list[_Queued[ItemT, ResultT]], *, isolate_failures: bool = True
    ) -> None:
        runnable = self._still_wanted(group)
        if not runnable:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await loop.run_in_executor(
                self._executor, self._infer, [entry.item for entry in runnable]
            )
            if len(results) != len(runnable):
                raise RuntimeError(f"infer returned {len(results)} results for {len(runnable)} images")
        except Exception as exc:
            if isolate_failures and len(runnable) > 1:
                logger.warning(
                    "a batch of %d images failed (%s); retrying each image alone", len(runnable), exc
                )
                for entry in runnable:
                    await self._run_group([entry], isolate_failures=False)
                return
            logger.error("inference failed", exc_info=exc)
            message = f"inference failed: {type(exc).__name__}: {exc}"[:300]
            for entry in runnable:
                self._resolve_error(entry, InferenceFailed(message))
            return
        elapsed = loop.time() - started
        self._metrics.batch_inference.observe(elapsed)
        self._metrics.batch_size.observe(len(runnable))
        for entry, result in zip(runnable, results, strict=True):
            queue_s = started - entry.enqueued_at
            self._metrics.queue_wait.observe(queue_s)
            if not entry.future.done():
                entry.future.set_result(Inference(result, queue_s, elapsed))

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
