"""The real thing: the server in a subprocess on a free loopback port, driven over HTTP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn

from service.app import DrainingServer, create_app
from service.runtime import Phase
from tests.service.helpers import TIMEOUT_S, encode, random_image, tiny_settings

REPO = Path(__file__).resolve().parents[2]
# What the `centermask-serve` console script runs, without needing the package installed.
CENTERMASK_SERVE = [sys.executable, "-c", "from service.app import main; main()"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(**settings: str) -> dict[str, str]:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("CENTERMASK_")}
    return clean | settings


def wait_for_exit(process: subprocess.Popen) -> int:
    try:
        return process.wait(TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.fixture
def server(tiny_weights: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """`centermask-serve` with flags, ready to serve; yields (process, base URL, log file)."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [
                *CENTERMASK_SERVE,
                *("--host", "127.0.0.1", "--port", str(port), "--weights", str(tiny_weights)),
                *("--device", "cpu", "--max-batch-size", "1", "--cpu-workers", "1"),
            ],
            cwd=REPO,
            env=environment(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"not ready after {TIMEOUT_S} s\n{log.read_text()}"
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.1)
        yield process, base_url, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serves_over_http_and_stops_cleanly_on_sigterm(server) -> None:
    process, base_url, log = server
    image = encode(random_image(0, 120, 160))
    response = httpx.post(
        f"{base_url}/segment", content=image, headers={"Content-Type": "image/png"}, timeout=TIMEOUT_S
    )
    assert response.status_code == 200
    assert len(response.json()["instances"]) > 0
    assert httpx.get(f"{base_url}/healthz").status_code == 200

    process.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status is "killed by SIGTERM".
    assert wait_for_exit(process) in (0, -signal.SIGTERM)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    messages = [entry["message"] for entry in entries]
    assert "ready" in messages and "stopped" in messages
    [access] = [entry for entry in entries if entry.get("path") == "/segment"]
    assert access["status"] == 200 and access["request_id"] == response.headers["X-Request-ID"]


def exits_at_startup(**settings: str) -> str:
    """Run `uvicorn service.app:app` with these settings; it must stop by itself. Returns its log."""
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "service.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
        ],
        cwd=REPO,
        env=environment(**settings),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert process.returncode != 0
    assert "Traceback" not in process.stderr
    return process.stderr


def test_a_missing_model_stops_the_server_with_a_clear_message(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.pth"
    log = exits_at_startup(CENTERMASK_WEIGHTS=str(missing))
    assert f"cannot load the model: weights file not found: {missing}" in log


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
def test_asking_for_cuda_without_it_stops_the_server(tiny_weights: Path) -> None:
    log = exits_at_startup(CENTERMASK_WEIGHTS=str(tiny_weights), CENTERMASK_DEVICE="cuda")
    assert "cannot load the model: CUDA was requested but no CUDA device is available" in log


def test_sigterm_makes_the_service_unready_before_uvicorn_drains(tiny_weights: Path) -> None:
    app = create_app(tiny_settings(tiny_weights))
    server = DrainingServer(uvicorn.Config(app), app.state.runtime)
    server.handle_exit(signal.SIGTERM, None)
    assert app.state.runtime.phase is Phase.DRAINING
    assert server.should_exit
