"""The server process: `centermask-serve` (`main`), uvicorn hardened against idle and slow connections,
draining on SIGTERM, reloading the models whose files changed on SIGHUP."""

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from uvicorn.protocols.http.h11_impl import H11Protocol

from model.inference.load import check_options
from service.app import app_version, create_app
from service.logging import configure_logging
from service.runtime import Phase, Runtime
from service.settings import Settings

logger = logging.getLogger(__name__)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, where a connection must also send each request head in time.

    uvicorn closes a keep-alive connection that stays silent after an answer, but not one that never
    completes a request head: a client trickling header bytes (or sending none after connecting) would
    hold its connection forever. Here every connection gets `timeout_keep_alive` seconds, from
    connecting or from its last answer, to deliver a complete request head; a request being served is
    left to the application's own deadlines (body timeout, request deadline).
    """

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._restart_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._restart_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The connection becomes a WebSocket's (another protocol object, with its own timeouts): no more
        # request heads to time here.
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().handle_websocket_upgrade(event)

    def _restart_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_overdue)

    def _head_overdue(self) -> None:
        serving = self.cycle is not None and not self.cycle.response_complete
        if not serving:
            self.timeout_keep_alive_handler()


class DrainingServer(uvicorn.Server):
    """On SIGTERM: unready at once, yet still listening, so that requests still arriving (an ingress
    that has not yet seen the endpoint go) get a clean 503 instead of a refused connection; admitted
    requests finish. Once none is left, or the drain timeout has passed, uvicorn's own graceful
    shutdown follows. A second signal stops at once.

    On SIGHUP: every model whose files changed is reloaded without downtime (`Runtime.reload_changed`);
    signals arriving during a reload are taken together for one more reload after it."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime, *, drain_timeout_s: float) -> None:
        super().__init__(config)
        self._runtime = runtime
        self._drain_timeout_s = drain_timeout_s
        self._drain_started: float | None = None
        self._reload_asked = False
        self._reloading: asyncio.Task[dict[str, str]] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            with super().capture_signals():
                yield
            return
        previous = signal.signal(signal.SIGHUP, self._ask_reload)
        try:
            with super().capture_signals():
                yield
        finally:
            signal.signal(signal.SIGHUP, previous)

    def _ask_reload(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: only an attribute is set here; `on_tick` starts the reload.
        self._reload_asked = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started is None and not self.should_exit:
            # A signal handler: only attributes are set here; `on_tick` does the rest.
            self._runtime.begin_draining()
            self._drain_started = time.monotonic()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self._reload_asked and (self._reloading is None or self._reloading.done()):
            self._reload_asked = False
            logger.info("SIGHUP: reloading the models whose files changed")
            self._reloading = asyncio.create_task(self._runtime.reload_changed(), name="centermask-reload")
        if self._drain_started is None:
            return False
        # Here, in the event loop (unlike the signal handler), open streams can be told to close.
        self._runtime.close_streams()
        elapsed = time.monotonic() - self._drain_started
        if self._runtime.in_flight and elapsed < self._drain_timeout_s:
            return False
        if self._runtime.in_flight:
            await self._runtime.stop_inference()
        # What is left of the drain timeout (at least a second, for the answers just given) bounds
        # uvicorn's wait for open connections.
        self.config.timeout_graceful_shutdown = max(1, round(self._drain_timeout_s - elapsed))
        return True


def run(app: FastAPI, settings: Settings) -> None:
    runtime: Runtime = app.state.runtime
    DrainingServer(server_config(app, settings), runtime, drain_timeout_s=settings.drain_timeout_s).run()
    if runtime.phase is Phase.FAILED:
        # The model could not be loaded, or the worker died: say so to systemd, Docker and Kubernetes.
        sys.exit(1)


def server_config(app: FastAPI, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's configuration for the app under these settings (`overrides`: tests pick their port)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": GuardedH11Protocol,
        "timeout_keep_alive": settings.idle_timeout_s,  # a float works: a timer's delay
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": max(1, round(settings.drain_timeout_s)),
        # /segment/stream: a frame may be as large as an image upload; a larger message is closed with 1009
        # by uvicorn before it is held. Frames are JPEG or PNG, which per-message deflate only slows down.
        "ws_max_size": settings.max_image_bytes + 1,
        "ws_per_message_deflate": False,
    }
    return uvicorn.Config(app, **(options | overrides))


def main(argv: Sequence[str] | None = None) -> None:
    """`centermask-serve`: every setting as a flag (`--port 8080`) or as CENTERMASK_* in the environment.

    Exits 1, with a message, for settings that cannot work (refused before loading anything: a precision the
    device cannot run, a missing weights file), and when the model fails to load or the worker dies later.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    if "--version" in arguments:
        print(f"centermask-serve {app_version()}")
        return
    try:
        settings = Settings.from_command_line(arguments)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        sys.exit(f"centermask-serve: invalid settings\n{problems}")
    configure_logging(settings.log_level)
    try:
        check_options(settings.predictor_options())
    except (RuntimeError, OSError, ValueError) as error:
        sys.exit(f"centermask-serve: cannot serve: {error}")
    run(create_app(settings), settings)
