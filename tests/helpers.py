"""Helpers shared by every test package: the real server in a subprocess, reached over loopback HTTP."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
# Generous: the machine is shared, and nothing here should take long unless something is wrong.
STARTUP_TIMEOUT_S = 120
# The API key of the `tiny_server` fixture.
TINY_SERVER_KEY = "tiny-server-key"
# What the `centermask-serve` console script (and the image's ENTRYPOINT) runs, without the package installed.
CENTERMASK_SERVE = [sys.executable, "-c", "from service.app import main; main()"]


@dataclass(frozen=True)
class LiveServer:
    url: str
    log: Path
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_environment(**settings: str) -> dict[str, str]:
    """The test process's environment without CENTERMASK_* variables, plus `settings`."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("CENTERMASK_")}
    return clean | settings


@contextlib.contextmanager
def live_server(log: Path, *flags: str, **settings: str) -> Iterator[LiveServer]:
    """`centermask-serve` on a free 127.0.0.1 port with these flags, once /readyz answers 200."""
    port = free_port()
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [*CENTERMASK_SERVE, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", *flags],
            cwd=REPO,
            env=clean_environment(**settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, f"the server exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not ready after {STARTUP_TIMEOUT_S} s\n{log.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)  # polling readiness, with the deadline above
        yield LiveServer(url, log, process)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
