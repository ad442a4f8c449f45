"""The real thing: the server in a subprocess on a free loopback port, driven over HTTP."""

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn

from service.app import create_app
from service.runtime import Phase
from service.server import DrainingServer
from tests.helpers import REPO, clean_environment, free_port, live_server
from tests.service.helpers import (
    TIMEOUT_S,
    encode,
    random_image,
    tiny_settings,
    wait_for_exit,
)


@pytest.fixture
def server(tiny_weights: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """`centermask-serve` with flags, ready to serve; yields (process, base URL, log file)."""
    flags = ("--max-batch-size", "1", "--cpu-workers", "1")
    with live_server(tmp_path / "server.log", "--weights", str(tiny_weights), *flags) as running:
        yield running.process, running.url, running.log


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
        env=clean_environment(**settings),
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
    assert f"cannot load the model: no weights file at {missing}" in log


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA")
def test_asking_for_cuda_without_it_stops_the_server(tiny_weights: Path) -> None:
    log = exits_at_startup(CENTERMASK_WEIGHTS=str(tiny_weights), CENTERMASK_DEVICE="cuda")
    assert "cannot load the model: CUDA was requested but no CUDA device is available" in log


def test_cuda_graphs_on_the_cpu_stop_the_server_with_a_clear_message(tiny_weights: Path) -> None:
    settings = {"CENTERMASK_DEVICE": "cpu", "CENTERMASK_CUDA_GRAPHS": "true"}
    log = exits_at_startup(CENTERMASK_WEIGHTS=str(tiny_weights), **settings)
    assert "cannot load the model: CUDA graphs are captured on a CUDA device, not on cpu" in log


def test_sigterm_makes_the_service_unready_and_stops_uvicorn_once_idle(tiny_weights: Path) -> None:
    app = create_app(tiny_settings(tiny_weights))
    server = DrainingServer(uvicorn.Config(app), app.state.runtime, drain_timeout_s=5)
    server.handle_exit(signal.SIGTERM, None)
    assert app.state.runtime.phase is Phase.DRAINING
    # Still listening, so that late requests get a 503 rather than a refused connection...
    assert not server.should_exit
    # ...until nothing is in flight: the next tick of uvicorn's main loop then stops it.
    assert asyncio.run(server.on_tick(1))
    server.handle_exit(signal.SIGTERM, None)
    assert server.should_exit  # a second signal stops at once
