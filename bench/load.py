"""Load test of the HTTP service, against the same model's throughput in this process.

    python -m bench.load --spawn --concurrency 1 4 16 --requests 200 --duration 60

With --spawn the script starts `centermask-serve` on a free 127.0.0.1 port (rule weights for
--rule-config, or --weights/--config) with the given --device, --precision, --threads and
--batch-size; options this script does not know are passed on to the server (`--max-batch-delay-ms 10`),
and CENTERMASK_* variables reach it through the environment. Without --spawn it loads --url, which must
already be serving (then there is no in-process comparison unless --weights names the same model).

Phases, one after the other so that they never compete for the CPU:
1. in-process: the work a program would do to get the same JSON without the service — decode the JPEG,
   `predictor.prepare`, `predictor.infer` with the request's selection, `image_record` — one image at a
   time;
2. saturation: for each --concurrency, that many clients POST the JPEG to /segment back to back until
   --requests answers or --duration seconds (after a few unmeasured warm-up requests);
3. half load: requests arrive at a fixed rate, half the best saturation throughput, for --duration
   seconds; its latency percentiles are the service's latency under a comfortable load;
4. in-process again. The ratio uses the mean of both in-process runs: on a shared machine the
   background load drifts.

Prints a table (throughput, latency percentiles, answers by status, mean server-side stage times), the
service/in-process ratio at saturation and the spawned server's peak RSS; writes bench/results/load-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from bench.model_bench import rule_test_size
from bench.results import Results
from bench.server import running_server, spawned_server
from model.inference.detections import Selection
from model.inference.images import load_rgb
from model.inference.load import load_predictor
from model.inference.precision import Precision
from model.wire.records import image_record
from service.settings import Settings
from tests.rule_weights import write_rule_checkpoint

WARM_UP_REQUESTS = 3


@dataclass
class LoadResult:
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int | str] = field(default_factory=Counter)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        return self.statuses[200]

    @property
    def throughput(self) -> float:
        return self.succeeded / self.elapsed_s if self.elapsed_s else 0.0

    def percentiles_ms(self) -> tuple[float, float, float]:
        if not self.latencies_s:
            return (float("nan"),) * 3
        p50, p90, p99 = np.percentile(1000 * np.array(self.latencies_s), [50, 90, 99])
        return float(p50), float(p90), float(p99)

    def record(self, response: httpx.Response, sent: float) -> None:
        self.latencies_s.append(time.perf_counter() - sent)
        self.statuses[response.status_code] += 1
        if response.status_code == 200:
            for stage, ms in response.json()["timing_ms"].items():
                self.stage_ms.setdefault(stage, []).append(ms)


def synthetic_jpeg(height: int, width: int) -> bytes:
    """Blocky random colours: like a photo, the rule-weight model finds ~50 instances in it."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    pixels = np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def server_options(config: str | None, args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """The command line of the spawned server, beyond its port and weights."""
    options = ["--log-level", "warning", "--device", args.device, "--precision", args.precision]
    options += ["--torch-threads", str(args.threads)]
    if args.batch_size is not None:
        options += ["--max-batch-size", str(args.batch_size)]
    if "--max-queue" not in extra:  # room for every client's request, so that saturation never means 503s
        options += ["--max-queue", str(max(64, *args.concurrency))]
    if config is not None:
        options += ["--config", config]
    return [*options, *extra]


def _client(url: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=300)


async def saturation(
    url: str, image: bytes, concurrency: int, requests: int, duration_s: float
) -> LoadResult:
    """`concurrency` clients, each sending its next request as soon as the last is answered."""
    result = LoadResult()
    headers = {"Content-Type": "image/jpeg"}
    async with _client(url, concurrency) as client:
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
                    result.record(await client.post("/segment", content=image, headers=headers), sent)
                except httpx.HTTPError as exc:
                    result.statuses[type(exc).__name__] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - started
    return result


async def fixed_rate(url: str, image: bytes, rate: float, duration_s: float) -> LoadResult:
    """Requests arriving every 1/rate seconds whatever the answers (an open loop), for `duration_s`."""
    result = LoadResult()
    headers = {"Content-Type": "image/jpeg"}
    async with _client(url, 256) as client:

        async def one() -> None:
            sent = time.perf_counter()
            try:
                result.record(await client.post("/segment", content=image, headers=headers), sent)
            except httpx.HTTPError as exc:
                result.statuses[type(exc).__name__] += 1

        started = time.perf_counter()
        tasks = []
        for index in range(max(1, int(rate * duration_s))):
            await asyncio.sleep(max(0.0, started + index / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        result.elapsed_s = time.perf_counter() - started
    return result


class InProcess:
    """The same model in this process, doing what the service does for one request, one at a time."""

    def __init__(self, weights: Path, config: str | None, image: bytes, args: argparse.Namespace) -> None:
        self.predictor = load_predictor(weights, config, args.device, args.precision)
        self.image = image
        self.selection = Selection(Settings().score_threshold, Settings().max_detections)
        self.run()  # warm-up

    def run(self) -> dict[str, Any]:
        predictor = self.predictor
        prepared = predictor.prepare(load_rgb(self.image))
        (detections,) = predictor.infer([prepared], [self.selection])
        return image_record(None, detections, predictor.class_names, predictor.category_ids)

    def throughput(self, seconds: float) -> float:
        started, count = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            self.run()
            count += 1
        return count / (time.perf_counter() - started)


def phase_row(name: str, result: LoadResult) -> dict[str, Any]:
    p50, p90, p99 = result.percentiles_ms()
    return {
        "phase": name,
        "images_per_s": result.throughput,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "answers": dict(sorted(((str(k), v) for k, v in result.statuses.items()))),
        "server_stage_ms": {stage: round(statistics.mean(ms), 1) for stage, ms in result.stage_ms.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spawn", action="store_true", help="start centermask-serve for the run")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service, without --spawn")
    parser.add_argument("--weights", type=Path, help="checkpoint; default with --spawn: rule weights")
    parser.add_argument("--config", help="config name, for official checkpoints")
    parser.add_argument("--rule-config", default="centermask_lite_V_19_slim_eSE_FPN_ms_4x")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=[p.value for p in Precision], default="fp32")
    parser.add_argument("--batch-size", type=int, help="server max batch size (default: the service's)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4])
    parser.add_argument("--requests", type=int, default=60, help="stop a saturation phase after this many")
    parser.add_argument("--duration", type=float, default=60, help="longest phase, in seconds")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--in-process-seconds", type=float, default=15)
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=600, help="seconds the spawned server may take"
    )
    parser.add_argument("--out", type=Path, help="write the results here, after each phase")
    parser.add_argument(
        "--rule-test-size",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="the rule weights' test resize instead of the config's (small images for a rehearsal)",
    )
    args, server_args = parser.parse_known_args(argv)

    torch.set_num_threads(args.threads)
    image = synthetic_jpeg(args.height, args.width)
    phases: dict[str, LoadResult] = {}
    results = Results("load", {k: str(v) for k, v in vars(args).items()}, args.out)
    with tempfile.TemporaryDirectory() as scratch:
        weights, config = args.weights, args.config
        if weights is None and args.spawn:
            weights = write_rule_checkpoint(
                Path(scratch) / "rule.pth", args.rule_config, **rule_test_size(args)
            )
        model = InProcess(weights, config, image, args) if weights is not None else None
        in_process = [model.throughput(args.in_process_seconds)] if model else []
        if model:
            del model.predictor  # the memory goes back before the server starts
        with (
            spawned_server(
                weights,
                server_options(config, args, server_args),
                Path(scratch) / "server.log",
                args.ready_timeout,
            )
            if args.spawn
            else running_server(args.url) as server
        ):
            url = server.url
            for concurrency in args.concurrency:
                name = f"saturation c={concurrency}"
                phases[name] = asyncio.run(saturation(url, image, concurrency, args.requests, args.duration))
                results.add(phase_row(name, phases[name]))
            best = max(result.throughput for result in phases.values())
            name = f"half load {best / 2:.2f}/s"
            phases[name] = asyncio.run(fixed_rate(url, image, best / 2, args.duration))
            results.add(phase_row(name, phases[name]))
            peak_rss = server.peak_rss_bytes()
        if model:
            model = InProcess(weights, config, image, args)
            in_process.append(model.throughput(args.in_process_seconds))

    print(
        f"{args.height}x{args.width} JPEG, device {args.device}, precision {args.precision}, "
        f"torch threads {args.threads}, server batch size {args.batch_size or 'default'}"
    )
    print(f"{'phase':<24} {'img/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  answers / server ms")
    for row in results.rows:
        print(
            f"{row['phase']:<24} {row['images_per_s']:>7.2f} {row['p50_ms']:>8.0f} {row['p90_ms']:>8.0f} "
            f"{row['p99_ms']:>8.0f}  {row['answers']} {row['server_stage_ms']}"
        )
    summary: dict[str, Any] = {}
    if in_process:
        rate = statistics.mean(in_process)
        best = max(result.throughput for name, result in phases.items() if name.startswith("saturation"))
        summary = {"in_process_images_per_s": in_process, "saturation_ratio": best / rate}
        print(f"in-process {rate:.2f} images/s ({in_process[0]:.2f} before, {in_process[1]:.2f} after)")
        print(f"ratio      {best / rate:.3f} (best saturation / in-process)")
    half = next(result for name, result in phases.items() if name.startswith("half load"))
    p50, _, p99 = half.percentiles_ms()
    summary["half_load_p99_over_p50"] = p99 / p50
    print(f"half load  p99 / p50 = {p99 / p50:.2f}")
    if peak_rss is not None:
        summary["server_peak_rss_bytes"] = peak_rss
        print(f"server peak RSS {peak_rss / 2**20:.0f} MiB")
    results.finish(**summary)
    ok = all(result.succeeded == sum(result.statuses.values()) for result in phases.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
