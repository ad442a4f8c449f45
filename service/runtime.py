"""The service's life: loading its models, admitting requests, draining at shutdown.

Phases: loading → ready → draining. The models themselves, by name, are the registry's
(service/registry.py); each has its own batcher (service/served.py). A model that cannot be loaded at
start ends in `failed`, which stops the process (the message is logged; Kubernetes restarts the pod and
shows it); a load or reload asked for later that fails leaves the server as it was. An inference worker
that stops for good (a device fault, a hung forward pass, a dead thread: service/batcher.py) also ends
in `failed`: the liveness probe fails, so that the orchestrator restarts the process, and requests get
503.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Any, TypeVar

from model.inference.predictor import Predictor
from service.errors import NotReady, Overloaded, UnknownModel, WorkerFailed
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.served import ImageFailed, PredictorLoader, Segmented, ServedModel
from service.settings import Settings

__all__ = ["ImageFailed", "Phase", "PredictorLoader", "Runtime", "Segmented", "ServedModel"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


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
        self._on_fatal_error = on_fatal_error
        self.phase = Phase.LOADING
        self._cpu_pool = ThreadPoolExecutor(settings.cpu_workers, thread_name_prefix="centermask-cpu")
        self.models = ModelRegistry(
            settings, metrics, load_predictor, self._cpu_pool, on_worker_failure=self._worker_failed
        )
        self._loader: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_started: float | None = None
        # Set once draining has begun, in the event loop (begin_draining runs in a signal handler): open
        # streams wait on it to close.
        self._streams_closing = asyncio.Event()
        metrics.track(
            queue_depth=lambda: self.models.depth,
            requests_in_flight=lambda: self._in_flight,
            model_loaded=lambda: bool(self.models.loaded()),
            model_ready=lambda: self.is_ready,
        )

    @property
    def is_ready(self) -> bool:
        """Readiness (/readyz): serving, and every model meant to be loaded is loaded and warm."""
        return self.phase is Phase.READY and self.models.all_ready

    @property
    def predictor(self) -> Predictor:
        """The default model's predictor (NotReady while it loads)."""
        return self.models.get().predictor

    @property
    def max_batch_size(self) -> int:
        """The default model's most images in one forward pass (resolved for its device once loaded)."""
        return self.models.get().max_batch_size

    @property
    def watchdog_s(self) -> float | None:
        """The default model's inference watchdog (None until warm-up has measured it)."""
        try:
            return self.models.get().watchdog_s
        except (NotReady, UnknownModel):
            return None

    @property
    def is_alive(self) -> bool:
        if self.phase is Phase.FAILED:
            return False
        return self.models.is_alive or self.phase is Phase.DRAINING

    @property
    def in_flight(self) -> int:
        """Segmentation requests admitted and not yet answered."""
        return self._in_flight

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
        """Drain: finish admitted requests for up to the drain timeout, then stop the workers."""
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
        await self.models.close(remaining_s())
        self._cpu_pool.shutdown(wait=False, cancel_futures=True)
        logger.info("stopped")

    async def stop_inference(self) -> None:
        """The drain time is up: queued and running images get 503 now, so that their requests are
        still answered (in JSON) before the server closes their connections."""
        await self.models.close(0)

    @contextlib.asynccontextmanager
    async def admitted(self, model: ServedModel) -> AsyncIterator[None]:
        """A segmentation request's stay on `model`: refused unless ready, and waited for by the drain."""
        if self.phase is Phase.FAILED:
            raise WorkerFailed("the service has failed and awaits a restart; retry")
        if self.phase is not Phase.READY:
            raise NotReady(f"the service is {self.phase}")
        # Refuse before reading the body when the queue is already full.
        if model.free_slots == 0:
            raise Overloaded("the inference queue is full; retry later")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def in_cpu_pool(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking work (decoding a video's next frame) in the decode/encode pool."""
        return await asyncio.get_running_loop().run_in_executor(self._cpu_pool, function, *args)

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            await self.models.load_initial()
        except Exception as exc:
            self.phase = Phase.FAILED
            logger.error("cannot load the model: %s", getattr(exc, "message", exc))
            self._on_fatal_error()
            return
        if self.phase is Phase.LOADING:
            self.phase = Phase.READY
        settings = self._settings
        base_url = settings.base_url
        default = self.models.get()
        logger.info(
            "ready",
            extra={
                "page": f"{base_url}/",
                "docs": f"{base_url}/docs",
                "models": {served.name: served.version for served in self.models.loaded()},
                "load_s": round(time.perf_counter() - started, 3),
                "inference_watchdog_s": round(default.watchdog_s, 3),
                # What warm-up achieved: false where compiling or a capture failed (a warning says why).
                "compiled": default.predictor.compiled,
                "cuda_graphs": default.predictor.cuda_graphs,
                # The settings in force: defaults that depend on the device resolved.
                "settings": {**settings.effective(), "max_batch_size": default.max_batch_size},
            },
        )

    async def reload_changed(self) -> dict[str, str]:
        """SIGHUP: reload the models whose files changed (see `ModelRegistry.reload_changed`)."""
        if self.phase is not Phase.READY:
            logger.warning("SIGHUP ignored: the service is %s", self.phase)
            return {}
        return await self.models.reload_changed()

    def _worker_failed(self, reason: str) -> None:
        self.phase = Phase.FAILED
        logger.error("the service has failed and awaits a restart (liveness now fails): %s", reason)
