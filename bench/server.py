"""A `centermask-serve` process for the benchmarks that load the service over HTTP (bench/load.py,
bench/soak.py): started on a free 127.0.0.1 port, awaited until ready, and read from /proc while it runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

# Loading a model and warming up every batch size can take minutes on a small CPU.
READY_TIMEOUT_S = 600


@dataclass
class Server:
    """A server to load: `url`, and with `process` one this script started (None: already running)."""

    url: str
    process: subprocess.Popen | None = None
    log: Path | None = None
    exit_status: int | None = field(default=None, init=False)

    def _status_kib(self, key: str) -> int | None:
        if self.process is None:
            return None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
        return None

    def rss_bytes(self) -> int | None:
        """Resident memory now (VmRSS), for a server this script started."""
        kib = self._status_kib("VmRSS")
        return None if kib is None else kib * 1024

    def peak_rss_bytes(self) -> int | None:
        """Peak resident memory so far (VmHWM), for a server this script started."""
        kib = self._status_kib("VmHWM")
        return None if kib is None else kib * 1024

    def open_fds(self) -> int:
        assert self.process is not None, "only a started server's descriptors can be counted"
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def settled_fds(self, baseline: int, timeout_s: float = 15) -> int:
        """Descriptors once idle connections have been closed (the server's idle timeout), or at the timeout."""
        deadline = time.monotonic() + timeout_s
        count = self.open_fds()
        while count > baseline and time.monotonic() < deadline:
            time.sleep(0.2)
            count = self.open_fds()
        return count

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM, then the exit status once it has drained (killed after `timeout_s`)."""
        if self.process is None or self.exit_status is not None:
            return self.exit_status
        self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_status = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exit_status = self.process.wait()
        return self.exit_status


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def spawned_server(
    weights: Path, options: Sequence[str], log: Path, ready_timeout_s: float = READY_TIMEOUT_S
) -> Iterator[Server]:
    """`centermask-serve --weights weights *options` on a free port, ready within `ready_timeout_s`; stopped
    on exit. Its output goes to `log`."""
    port = free_port()
    command = [sys.executable, "-c", "from service.server import main; main()"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--weights", str(weights), *options]
    if "--grpc-port" not in options:  # no gRPC unless asked for: two benchmarks must not both want 8001
        command += ["--grpc-port", "0"]
    with log.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy())
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        wait_ready(server, ready_timeout_s)
        yield server
    finally:
        server.stop()


@contextmanager
def running_server(url: str) -> Iterator[Server]:
    """A server someone else started, once ready."""
    server = Server(url)
    wait_ready(server)
    yield server


def wait_ready(server: Server, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Return once /readyz answers 200; exit the script if the server dies or never gets ready."""
    where = f"its log: {server.log}" if server.log else "(not started here)"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process is not None and server.process.poll() is not None:
            sys.exit(f"the server exited with {server.process.returncode}; {where}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    sys.exit(f"{server.url} was not ready within {timeout_s:g} s; {where}")
