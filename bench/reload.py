"""Reloads under steady load: how many requests fail across a model reload, and how long a reload takes.

    python -m bench.reload --concurrency 4 --reloads 3 --settle-s 5

Starts `centermask-serve` on a model repository of rule weights (--rule-config at --rule-test-size; two
weights files of different bytes, so that each reload is a new version), then keeps --concurrency clients
POSTing one image to /segment?model=people back to back. After --settle-s seconds it reloads the model
--reloads times through `POST /v2/repository/models/people/load` (the weights alternating, each renamed
over model.pth first), --settle-s seconds apart, and stops --settle-s seconds after the last one.

Prints and writes (bench/results/reload-*.json): requests, answers by status, how many times each client
saw the version change (one per reload, never back), each reload's duration (load + warm-up + switch), and
latency percentiles outside and during reloads. With --sighup the reloads are SIGHUPs instead (their
duration then is until the first answer of the new version).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.results import write_result
from bench.server import Server, free_port, wait_ready
from tests.rule_weights import write_rule_checkpoint

ADMIN_KEY = "bench-admin-key"


@dataclass(frozen=True)
class Answer:
    client: int
    sent: float
    received: float
    status: int
    version: str


def image_bytes(height: int = 240, width: int = 320) -> bytes:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    pixels = np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))[:height, :width]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def put_weights(folder: Path, weights: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, folder / ".model.pth.new")
    os.replace(folder / ".model.pth.new", folder / "model.pth")


async def run(
    args: argparse.Namespace, server: Server, repository: Path, versions: list[Path]
) -> dict[str, Any]:
    image = image_bytes()
    answers: list[Answer] = []
    reloads: list[tuple[float, float, int]] = []  # started, ended (monotonic), status
    stop = asyncio.Event()
    headers = {"Content-Type": "image/jpeg"}

    async def client(slot: int, http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = await http.post(
                    "/segment", params={"model": "people"}, content=image, headers=headers
                )
                status = response.status_code
                version = response.json().get("model_version", "") if status == 200 else ""
            except httpx.HTTPError:
                status, version = 0, ""
            answers.append(Answer(slot, sent, time.monotonic(), status, version))

    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        clients = [asyncio.ensure_future(client(slot, http)) for slot in range(args.concurrency)]
        await asyncio.sleep(args.settle_s)
        for index in range(args.reloads):
            put_weights(repository / "people", versions[(index + 1) % 2])
            started = time.monotonic()
            if args.sighup:
                assert server.process is not None
                count = len(answers)
                server.process.send_signal(signal.SIGHUP)
                expected = _sha_prefix(versions[(index + 1) % 2])
                while not any(answer.version == expected for answer in answers[count:]):
                    await asyncio.sleep(0.01)
                status = 200
            else:
                response = await http.post(
                    "/v2/repository/models/people/load", headers={"X-API-Key": ADMIN_KEY}, timeout=600
                )
                status = response.status_code
            reloads.append((started, time.monotonic(), status))
            await asyncio.sleep(args.settle_s)
        stop.set()
        await asyncio.gather(*clients)
    return summarise(args, answers, reloads)


def _sha_prefix(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def summarise(
    args: argparse.Namespace, answers: list[Answer], reloads: list[tuple[float, float, int]]
) -> dict[str, Any]:
    statuses = Counter(answer.status for answer in answers)
    switches = []
    for slot in range(args.concurrency):
        seen = [answer.version for answer in sorted(answers, key=lambda a: a.sent) if answer.client == slot]
        switches.append(sum(1 for a, b in itertools.pairwise(seen) if a != b))

    def during(answer: Answer) -> bool:
        return any(start <= answer.received and answer.sent <= end for start, end, _ in reloads)

    def percentiles(latencies: list[float]) -> dict[str, float]:
        if not latencies:
            return {}
        ordered = sorted(latencies)
        return {
            "n": len(ordered),
            "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
            "max_ms": round(1000 * ordered[-1], 1),
        }

    return {
        "requests": len(answers),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "failed": sum(count for status, count in statuses.items() if status != 200),
        "version_switches_per_client": switches,
        "reloads": [{"seconds": round(end - start, 2), "status": status} for start, end, status in reloads],
        "latency_outside_reloads": percentiles([a.received - a.sent for a in answers if not during(a)]),
        "latency_during_reloads": percentiles([a.received - a.sent for a in answers if during(a)]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--reloads", type=int, default=3)
    parser.add_argument("--settle-s", type=float, default=5.0)
    parser.add_argument(
        "--sighup", action="store_true", help="reload by SIGHUP instead of the repository API"
    )
    parser.add_argument("--rule-config", default="centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x")
    parser.add_argument("--rule-test-size", type=int, nargs=2, default=(320, 512), metavar=("MIN", "MAX"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="result JSON (default bench/results/reload-<time>.json)")
    args, server_options = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        low, high = args.rule_test_size
        versions = [
            write_rule_checkpoint(directory / "a.pth", args.rule_config, 80, low, high),
            write_rule_checkpoint(directory / "b.pth", args.rule_config, 80, low, high - 32),
        ]
        repository = directory / "repository"
        put_weights(repository / "people", versions[0])
        port = free_port()
        command = [sys.executable, "-c", "from service.server import main; main()", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--device", args.device, "--model-repository", str(repository)]
        log = directory / "server.log"
        environment = os.environ | {"CENTERMASK_ADMIN_KEY": ADMIN_KEY}
        with log.open("w") as log_file:
            process = subprocess.Popen(
                [*command, *server_options], stdout=log_file, stderr=subprocess.STDOUT, env=environment
            )
        server = Server(f"http://127.0.0.1:{port}", process, log)
        try:
            wait_ready(server)
            result = asyncio.run(run(args, server, repository, versions))
        finally:
            server.stop()
    print(result)
    parameters = {key: value for key, value in vars(args).items() if key != "out"} | {
        "server_options": server_options
    }
    write_result("reload", parameters, [result], args.out)


if __name__ == "__main__":
    main()
