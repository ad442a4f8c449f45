"""Helpers shared by every test package: the real server in a subprocess, reached over loopback HTTP."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
# Generous: the machine is shared, and nothing here should take long unless something is wrong.
STARTUP_TIMEOUT_S = 120
TIMEOUT_S = 60
# The API key of the `tiny_server` fixture.
TINY_SERVER_KEY = "tiny-server-key"
# What the `centermask-serve` console script (and the image's ENTRYPOINT) runs, without the package installed.
CENTERMASK_SERVE = [sys.executable, "-c", "from service.server import main; main()"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_environment(**settings: str) -> dict[str, str]:
    """The test process's environment without CENTERMASK_* variables, plus `settings`."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("CENTERMASK_")}
    return clean | settings


def metric_families(text: str) -> dict[str, Any]:
    """Prometheus exposition text → its metric families by name."""
    return {family.name: family for family in text_string_to_metric_families(text)}


@dataclass(frozen=True)
class LiveServer:
    """A running `centermask-serve`, reached over loopback HTTP."""

    process: subprocess.Popen
    port: int
    log: Path
    # The gRPC port (0: the server runs none).
    grpc_port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        families = metric_families(httpx.get(f"{self.url}/metrics", timeout=TIMEOUT_S).text)
        wanted = labels or {}
        for family in families.values():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items()):
                    return sample.value
        return 0.0

    def wait_for(self, condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
        """Poll `condition` until it holds; fail after `timeout_s`, or as soon as the server exits."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert self.process.poll() is None, (
                f"the server exited while waiting for {what}\n{self.log.read_text()}"
            )
            assert time.monotonic() < deadline, f"no {what} after {timeout_s} s\n{self.log.read_text()}"
            time.sleep(0.02)

    def is_ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False  # not listening yet


@contextlib.contextmanager
def live_server(
    log: Path, *flags: str, command: Sequence[str] = CENTERMASK_SERVE, **settings: str
) -> Iterator[LiveServer]:
    """`command` (by default `centermask-serve`) on a free 127.0.0.1 port with these flags and environment
    `settings`, once /readyz answers 200; killed afterwards if still running. Output goes to `log`. Its gRPC
    server gets a free port too, unless `--grpc-port` or CENTERMASK_GRPC_PORT says otherwise."""
    port = free_port()
    grpc: list[str] = []
    grpc_port = int(settings.get("CENTERMASK_GRPC_PORT", 0))
    if "--grpc-port" in flags:
        grpc_port = int(flags[list(flags).index("--grpc-port") + 1])
    elif "CENTERMASK_GRPC_PORT" not in settings:
        grpc_port = free_port()
        grpc = ["--grpc-port", str(grpc_port)]
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", *grpc, *flags],
            cwd=REPO,
            env=clean_environment(**settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(process, port, log, grpc_port)
    try:
        server.wait_for(server.is_ready, "readiness", STARTUP_TIMEOUT_S)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def corrupted_mid_file(video: bytes) -> tuple[bytes, int]:
    """The video with a run of its frames' bytes overwritten, so that decoding fails after some good frames;
    and how many frames decode before the failure (found by decoding it here, as the service will)."""
    import av

    from centermask_client.video import VideoReader

    for percent in range(50, 95, 5):
        broken = bytearray(video)
        start = len(video) * percent // 100
        broken[start : start + 200] = b"\xff" * 200
        good = 0
        try:
            with VideoReader(bytes(broken)) as reader:
                for _ in reader.frames():
                    good += 1
        except av.error.FFmpegError:
            if good:
                return bytes(broken), good
        except ValueError:  # the header was hit
            continue
    raise AssertionError("no corruption of this video fails after its first frame")
