"""What tracing costs a request: the same app with tracing off (no OTLP endpoint: what runs by default) and on
(the OpenTelemetry SDK recording every span, batched to an exporter that drops them: the SDK's cost without
the network's), in one process, requests alternating between the two, same model and image.

    python -m bench.tracing_cost --requests 200

Also times what tracing costs when off, alone: the hooks a request passes through (one context variable read
in the runtime, two `tracing.stage` calls in the endpoint), repeated a million times.

Writes bench/results/tracing-*.json and prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.load import synthetic_jpeg
from bench.results import Results
from service import tracing
from service.app import create_app
from service.runtime import Phase
from service.settings import Settings
from tests.rule_weights import write_rule_checkpoint


class _Dropping:
    """A span exporter that keeps nothing (what the SDK costs, without a network)."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def traced_provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Dropping()))  # type: ignore[arg-type]
    return provider


async def alternate(settings: Settings, image: bytes, requests: int) -> dict[str, list[float]]:
    apps = {"off": create_app(settings), "on": create_app(settings, tracer_provider=traced_provider())}
    latencies: dict[str, list[float]] = {name: [] for name in apps}
    async with (
        apps["off"].router.lifespan_context(apps["off"]),
        apps["on"].router.lifespan_context(apps["on"]),
    ):
        clients = {
            name: httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=300
            )
            for name, app in apps.items()
        }
        while not all(app.state.runtime.phase is Phase.READY for app in apps.values()):
            await asyncio.sleep(0.1)
        headers = {"Content-Type": "image/jpeg"}
        for name in apps:  # warm-up
            for _ in range(3):
                (await clients[name].post("/segment", content=image, headers=headers)).raise_for_status()
        for index in range(requests):
            order = ("off", "on") if index % 2 == 0 else ("on", "off")
            for name in order:
                started = time.perf_counter()
                response = await clients[name].post("/segment", content=image, headers=headers)
                latencies[name].append(time.perf_counter() - started)
                response.raise_for_status()
        for client in clients.values():
            await client.aclose()
    return latencies


def disabled_hooks_ns(repeat: int) -> float:
    """Nanoseconds a request spends in the tracing hooks when tracing is off."""
    assert tracing.current() is None
    started = time.perf_counter_ns()
    for _ in range(repeat):
        tracing.current()
        with tracing.stage("receive"):
            pass
        with tracing.stage("encode"):
            pass
    return (time.perf_counter_ns() - started) / repeat


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rule-config", default="centermask_lite_V_19_slim_eSE_FPN_ms_4x")
    parser.add_argument("--rule-test-size", type=int, nargs=2, default=[128, 192], metavar=("MIN", "MAX"))
    parser.add_argument("--image-size", type=int, nargs=2, default=[160, 240], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=200, help="requests to each app, alternating")
    parser.add_argument("--out", type=Path, help="the result file (default: bench/results/tracing-*.json)")
    args = parser.parse_args(argv)
    results = Results("tracing", {k: str(v) for k, v in vars(args).items()}, args.out)
    image = synthetic_jpeg(*args.image_size)
    with tempfile.TemporaryDirectory() as scratch:
        min_size, max_size = args.rule_test_size
        weights = write_rule_checkpoint(
            Path(scratch) / "rule.pth", args.rule_config, min_size_test=min_size, max_size_test=max_size
        )
        settings = Settings(
            weights=weights, device="cpu", torch_threads=args.threads, grpc_port=0, log_level="warning"
        )
        latencies = asyncio.run(alternate(settings, image, args.requests))
    for name, values in latencies.items():
        ordered = sorted(values)
        row = {
            "tracing": name,
            "requests": len(values),
            "mean_ms": round(1000 * statistics.fmean(values), 2),
            "p50_ms": round(1000 * ordered[len(ordered) // 2], 2),
            "p95_ms": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 2),
        }
        results.add(row)
        print(row, file=sys.stderr)
    difference = statistics.fmean(latencies["on"]) - statistics.fmean(latencies["off"])
    hooks = disabled_hooks_ns(1_000_000)
    print(
        f"on - off: {1000 * difference:+.2f} ms per request; hooks when off: {hooks:.0f} ns", file=sys.stderr
    )
    results.finish(on_minus_off_ms=round(1000 * difference, 3), disabled_hooks_ns=round(hooks, 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
