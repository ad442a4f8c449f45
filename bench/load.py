"""Load test of the HTTP service, compared with the model's own throughput in this process.

    python -m bench.load --spawn --batch-size 1 --concurrency 4 --requests 60 --duration 120

With --spawn the script starts `centermask-serve` on a free 127.0.0.1 port (rule weights for
--rule-config, or --weights/--config), with --max-batch-size set to --batch-size; options this script
does not know are passed on to the server (`--max-batch-delay-ms 10`), and CENTERMASK_* variables
reach it through the environment. Without --spawn it loads --url, which must already be serving.

Phases, one after the other so they never compete for the CPU:
1. in-process: `predictor.infer` on that image, prepared once, at --batch-size (needs --spawn or
   --weights, so that the same model is measured);
2. load: --concurrency clients POST the same JPEG to /segment until --requests answers or --duration
   seconds, whichever comes first (after a few unmeasured warm-up requests);
3. the spawned server is stopped and the in-process measurement repeated. The ratio uses the mean of
   both: on a shared machine the background load drifts.

Prints throughput (images/s), latency percentiles, answers by status, mean server-side stage times,
and the ratio of service throughput to in-process throughput (the serving overhead: 1.0 is free).
"""

import argparse
import asyncio
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from model.images import load_rgb
from model.predict import load_predictor
from model.testing import write_rule_checkpoint

READY_TIMEOUT_S = 300
WARM_UP_REQUESTS = 2


@dataclass
class LoadResult:
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int | str] = field(default_factory=Counter)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        return self.statuses[200]


def synthetic_jpeg(height: int, width: int) -> bytes:
    """Blocky random colours: like a photo, the rule-weight model finds ~50 instances in it."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    pixels = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def spawned_server(
    weights: Path, config: str | None, batch_size: int, threads: int, extra: Sequence[str]
) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-c", "from service.app import main; main()"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--weights", str(weights)]
    command += ["--max-batch-size", str(batch_size), "--log-level", "warning", *extra]
    if config is not None:
        command += ["--config", config]
    with tempfile.NamedTemporaryFile("w+", prefix="centermask-serve-", suffix=".log", delete=False) as log:
        environment = os.environ | {"OMP_NUM_THREADS": str(threads)}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log.name)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(url: str, process: subprocess.Popen | None, log_name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode}; its log: {log_name}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    sys.exit(f"{url} was not ready within {READY_TIMEOUT_S} s; log: {log_name}")


async def run_load(url: str, image: bytes, concurrency: int, requests: int, duration_s: float) -> LoadResult:
    result = LoadResult()
    headers = {"Content-Type": "image/jpeg"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        for _ in range(WARM_UP_REQUESTS):
            (await client.post("/segment", content=image, headers=headers)).raise_for_status()

        started = time.perf_counter()
        stop_at = started + duration_s
        issued = 0

        async def worker() -> None:
            nonlocal issued
            while issued < requests and time.perf_counter() < stop_at:
                issued += 1
                sent = time.perf_counter()
                try:
                    response = await client.post("/segment", content=image, headers=headers)
                except httpx.HTTPError as exc:
                    result.statuses[type(exc).__name__] += 1
                    continue
                result.latencies_s.append(time.perf_counter() - sent)
                result.statuses[response.status_code] += 1
                if response.status_code == 200:
                    for stage, ms in response.json()["timing_ms"].items():
                        result.stage_ms.setdefault(stage, []).append(ms)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - started
    return result


class InProcessModel:
    """The same model in this process, for the throughput `predictor.infer` reaches without serving."""

    def __init__(self, weights: Path, config: str | None, image: bytes, batch_size: int) -> None:
        self.predictor = load_predictor(weights=weights, config=config, device="cpu")
        self.batch = [self.predictor.prepare(load_rgb(image))] * batch_size
        self.predictor.infer(self.batch)  # warm-up

    def throughput(self, runs: int) -> float:
        started = time.perf_counter()
        for _ in range(runs):
            self.predictor.infer(self.batch)
        return runs * len(self.batch) / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spawn", action="store_true", help="start centermask-serve for the run")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service, without --spawn")
    parser.add_argument("--weights", type=Path, help="checkpoint; default with --spawn: rule weights")
    parser.add_argument("--config", help="config name, for official checkpoints")
    parser.add_argument("--rule-config", default="centermask_lite_V_19_slim_eSE_FPN_ms_4x")
    parser.add_argument(
        "--batch-size", type=int, default=1, help="server max batch size and in-process batch"
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--requests", type=int, default=60, help="stop after this many answers")
    parser.add_argument("--duration", type=float, default=120, help="or after this many seconds")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--in-process-runs", type=int, default=6, help="batches, before and after")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads, here and in the server"
    )
    args, server_args = parser.parse_known_args(argv)

    torch.set_num_threads(args.threads)
    image = synthetic_jpeg(args.height, args.width)
    with tempfile.TemporaryDirectory() as scratch:
        weights, config = args.weights, args.config
        if weights is None and args.spawn:
            weights = write_rule_checkpoint(Path(scratch) / "rule.pth", args.rule_config)
        model = InProcessModel(weights, config, image, args.batch_size) if weights is not None else None
        # Measured before and after the load phase: on a shared machine the background load drifts.
        model_rates = [model.throughput(args.in_process_runs)] if model else []
        if args.spawn:
            with spawned_server(weights, config, args.batch_size, args.threads, server_args) as url:
                load = asyncio.run(run_load(url, image, args.concurrency, args.requests, args.duration))
        else:
            wait_ready(args.url, None, "(not spawned)")
            load = asyncio.run(run_load(args.url, image, args.concurrency, args.requests, args.duration))
        if model:
            model_rates.append(model.throughput(args.in_process_runs))

    service_rate = load.succeeded / load.elapsed_s
    latencies_ms = 1000 * np.array(load.latencies_s)
    p50, p90, p99 = np.percentile(latencies_ms, [50, 90, 99]) if len(latencies_ms) else (np.nan,) * 3
    print(
        f"{args.height}x{args.width} JPEG, batch size {args.batch_size}, {args.concurrency} clients, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"service:    {service_rate:.2f} images/s ({load.succeeded} in {load.elapsed_s:.1f} s)")
    print(f"latency:    p50 {p50:.0f} ms, p90 {p90:.0f} ms, p99 {p99:.0f} ms")
    print(
        "answers:    "
        + ", ".join(f"{status}: {count}" for status, count in sorted(load.statuses.items(), key=str))
    )
    print("server ms:  " + ", ".join(f"{stage} {np.mean(ms):.1f}" for stage, ms in load.stage_ms.items()))
    if model_rates:
        model_rate = statistics.mean(model_rates)
        print(
            f"in-process: {model_rate:.2f} images/s (predictor.infer, batch {args.batch_size}; "
            f"{model_rates[0]:.2f} before the load phase, {model_rates[1]:.2f} after)"
        )
        print(f"ratio:      {service_rate / model_rate:.3f} (service / in-process)")
    return 0 if load.succeeded == sum(load.statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
