"""Overload and drain under real load, against the real server (uvicorn in a subprocess).

A burst of ten times the queue capacity gets only 200 or 503 + Retry-After, every accepted request is
answered, memory stays bounded and service returns to normal afterwards. On SIGTERM under load the
server turns unready at once, answers new requests 503, finishes every accepted one and exits.
"""

import asyncio
import signal
import socket
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.helpers import LiveServer, live_server
from tests.service.helpers import (
    TIMEOUT_S,
    encode,
    random_image,
    wait_for_exit,
)

pytestmark = pytest.mark.slow

MAX_QUEUE = 4
IMAGE = encode(random_image(0, 48, 64))
HEADERS = {"Content-Type": "image/png"}
MiB = 1024 * 1024


async def burst(server: LiveServer, requests: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=requests)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=TIMEOUT_S) as client:
        return await asyncio.gather(
            *(client.post("/segment", content=IMAGE, headers=HEADERS) for _ in range(requests))
        )


def test_a_burst_of_ten_times_the_queue_gets_200_or_503_and_service_recovers(
    small_weights: Path, tmp_path: Path
) -> None:
    flags = ("--max-queue", str(MAX_QUEUE), "--max-batch-size", "2", "--cpu-workers", "2")
    with live_server(tmp_path / "server.log", "--weights", str(small_weights), *flags) as server:
        assert httpx.post(f"{server.url}/segment", content=IMAGE, headers=HEADERS).status_code == 200
        rss = [server.rss_bytes()]
        statuses: Counter[int] = Counter()
        for _ in range(3):
            responses = asyncio.run(burst(server, 10 * MAX_QUEUE))
            for response in responses:
                statuses[response.status_code] += 1
                if response.status_code == 503:
                    assert response.json()["error"]["code"] == "overloaded"
                    assert int(response.headers["Retry-After"]) >= 1
                else:
                    assert response.status_code == 200, response.text
                    assert len(response.json()["instances"]) > 0
            rss.append(server.rss_bytes())
        assert set(statuses) == {200, 503}, statuses
        # Memory is bounded by the queue and upload limits: the first burst may grow the allocator's
        # pools, later ones do not add to them.
        assert rss[1] - rss[0] < 256 * MiB, rss
        assert rss[3] - rss[1] < 64 * MiB, rss
        # Nothing is left over, and requests within capacity are all served again.
        assert server.metric("centermask_queue_depth") == 0
        assert server.metric("centermask_requests_in_flight") == 0
        after = asyncio.run(burst(server, MAX_QUEUE))
        assert [r.status_code for r in after] == [200] * MAX_QUEUE


def test_sigterm_under_load_drains_every_accepted_request(small_weights: Path, tmp_path: Path) -> None:
    drain_timeout_s = 20
    flags = ("--max-batch-size", "2", "--drain-timeout-s", str(drain_timeout_s), "--body-timeout-s", "60")
    with live_server(tmp_path / "server.log", "--weights", str(small_weights), *flags) as server:
        # An upload in progress: admitted, so the drain must wait for it, and the test decides when
        # it completes.
        held = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S)
        held.sendall(
            f"POST /segment HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: {len(IMAGE)}\r\n\r\n".encode()
            + IMAGE[:100]
        )
        server.wait_for(lambda: server.metric("centermask_requests_in_flight") >= 1, "the held upload")

        answers: list[httpx.Response | Exception] = []
        lock = threading.Lock()
        clients_served = threading.Semaphore(0)

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT_S) as http:
                first = True
                while True:
                    try:
                        response = http.post("/segment", content=IMAGE, headers=HEADERS)
                    except httpx.HTTPError as error:
                        with lock:
                            answers.append(error)
                        return
                    with lock:
                        answers.append(response)
                    if first and response.status_code == 200:
                        clients_served.release()
                        first = False
                    if response.status_code == 503:
                        return  # the server is draining: a real client would go elsewhere

        clients = [threading.Thread(target=client) for _ in range(4)]
        for thread in clients:
            thread.start()
        for _ in clients:
            assert clients_served.acquire(timeout=TIMEOUT_S)

        server.process.send_signal(signal.SIGTERM)
        server.wait_for(lambda: httpx.get(f"{server.url}/readyz").status_code == 503, "readiness to turn off")
        late = httpx.post(f"{server.url}/segment", content=IMAGE, headers=HEADERS)
        assert late.status_code == 503 and late.json()["error"]["code"] == "not_ready"
        assert int(late.headers["Retry-After"]) >= 1
        for thread in clients:
            thread.join(TIMEOUT_S)

        # The held upload, accepted before the signal, still gets its answer.
        held.sendall(IMAGE[100:])
        response = held.recv(65536)
        assert response.startswith(b"HTTP/1.1 200 "), response[:200]
        held.close()
        assert wait_for_exit(server.process, drain_timeout_s + 10) in (0, -signal.SIGTERM)

    errors = [answer for answer in answers if isinstance(answer, Exception)]
    assert not errors, errors
    statuses = Counter(answer.status_code for answer in answers)
    assert set(statuses) <= {200, 503} and statuses[200] >= 4, statuses
    for answer in answers:
        if answer.status_code == 503:
            assert answer.json()["error"]["code"] == "not_ready" and "Retry-After" in answer.headers
