"""Slow, stalled and idle clients against the real server (uvicorn in a subprocess), over raw sockets.

A body that does not arrive in time gets 408 and its connection is closed; only so many bodies are
received at once (503 beyond); connections that never send a request, or sit idle after one, are
closed and do not keep others from being served.
"""

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import LiveServer, live_server
from tests.service.helpers import TIMEOUT_S, encode, random_image

BODY_TIMEOUT_S = 2
IDLE_TIMEOUT_S = 1
MAX_UPLOADS = 2
IMAGE = encode(random_image(0, 48, 64))


@pytest.fixture(scope="module")
def server(small_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("slow") / "server.log"
    flags = [
        *("--max-batch-size", "1", "--cpu-workers", "1"),
        *("--body-timeout-s", str(BODY_TIMEOUT_S), "--idle-timeout-s", str(IDLE_TIMEOUT_S)),
        *("--max-concurrent-uploads", str(MAX_UPLOADS)),
    ]
    with live_server(log, "--weights", str(small_weights), *flags) as running:
        yield running


def connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S)


def request_head(content_length: int, path: str = "/segment") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, lower-cased headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed in the middle of the response body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def is_closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def in_flight(server: LiveServer) -> float:
    return server.metric("centermask_requests_in_flight")


def test_a_stalled_body_gets_408_and_the_connection_is_closed(server: LiveServer) -> None:
    with connect(server) as sock:
        sock.sendall(request_head(len(IMAGE)) + IMAGE[:100])
        status, headers, body = read_response(sock)
        assert status == 408
        assert headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert is_closed_by_server(sock, TIMEOUT_S)
    server.wait_for(lambda: in_flight(server) == 0, "the request to end")


def test_a_trickled_body_is_cut_off_at_the_body_deadline(server: LiveServer) -> None:
    with connect(server) as sock:
        sock.sendall(request_head(len(IMAGE)))
        stop = threading.Event()

        def trickle() -> None:
            # The slow client itself: a byte every 50 ms, each one resetting any idle timer.
            for byte in IMAGE:
                if stop.wait(0.05):
                    return
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    return

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        started = time.monotonic()
        try:
            status, headers, _ = read_response(sock)
        finally:
            stop.set()
            sender.join(TIMEOUT_S)
        assert status == 408 and headers["connection"] == "close"
        assert time.monotonic() - started < BODY_TIMEOUT_S + 10


def test_bodies_received_at_once_are_bounded(server: LiveServer) -> None:
    stalled = [connect(server) for _ in range(MAX_UPLOADS)]
    try:
        for sock in stalled:
            sock.sendall(request_head(len(IMAGE)) + IMAGE[:10])
        server.wait_for(lambda: in_flight(server) == MAX_UPLOADS, "the stalled uploads to be admitted")
        refused = httpx.post(f"{server.url}/segment", content=IMAGE, headers={"Content-Type": "image/png"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["Retry-After"]) >= 1
        assert server.metric("centermask_rejected_total", {"reason": "uploads_full", "protocol": "http"}) >= 1
        # The stalled ones time out and free their slots...
        for sock in stalled:
            assert read_response(sock)[0] == 408
    finally:
        for sock in stalled:
            sock.close()
    # ...after which a normal client is served.
    served = httpx.post(
        f"{server.url}/segment", content=IMAGE, headers={"Content-Type": "image/png"}, timeout=TIMEOUT_S
    )
    assert served.status_code == 200


def test_idle_and_half_open_connections_neither_starve_others_nor_stay(server: LiveServer) -> None:
    baseline_fds = server.open_fds()
    silent = [connect(server) for _ in range(100)]
    partial = [connect(server) for _ in range(50)]
    for sock in partial:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")  # never finishes its head
    kept_alive = [connect(server) for _ in range(50)]
    for sock in kept_alive:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_response(sock)[0] == 200
    idle = silent + partial + kept_alive
    try:
        # Meanwhile, someone else gets answered at once.
        with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as client:
            assert client.get("/healthz").status_code == 200
            assert (
                client.post("/segment", content=IMAGE, headers={"Content-Type": "image/png"}).status_code
                == 200
            )
        # And the server closes every idle connection by itself.
        assert all(is_closed_by_server(sock, TIMEOUT_S) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
    server.wait_for(lambda: server.open_fds() <= baseline_fds + 2, "the server to release the sockets")


def test_a_stream_outlives_the_time_given_to_request_heads(server: LiveServer) -> None:
    """An upgraded connection is a WebSocket's, no longer HTTP: the timer of its request heads stops at
    the upgrade (before, it fired later on the handed-over connection: an error in the log per stream)."""
    from websockets.sync.client import connect as open_stream

    with open_stream(f"ws://127.0.0.1:{server.port}/segment/stream?mask_format=none") as stream:
        stream.send(IMAGE)
        assert json.loads(stream.recv(timeout=TIMEOUT_S))["frame"] == 0
        time.sleep(IDLE_TIMEOUT_S * 2.5)
        stream.send(IMAGE)
        assert json.loads(stream.recv(timeout=TIMEOUT_S))["frame"] == 1
    assert "_head_overdue" not in server.log.read_text()
