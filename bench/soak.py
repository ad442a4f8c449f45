"""Soak test of the HTTP service: thousands of mixed requests, then memory, descriptors and answers.

    nice -n 10 python -m bench.soak --requests 2000 --concurrency 8

With --spawn (the default) the script starts `centermask-serve` on a free 127.0.0.1 port with rule
weights for the tiny lite V-19-slim-dw model at a small test resize (--min-size/--max-size), so that
a run takes minutes on a CPU; options this script does not know are passed on to the server. With
--url it loads a server that is already running (RSS and descriptors are then not measured).

The mix, drawn at random with a fixed seed: valid single images (raw body and multipart), batch
requests of 2-4 images, invalid requests (corrupt, truncated, unsupported, oversized, decompression
bombs, bad parameters, malformed multipart), and uploads the client abandons half-way.

Reports answers by kind and status, every unexpected status, requests lost (a valid request without
an answer), 5xx answers, the server's RSS after warm-up and at the end (goal: growth at most 5 %),
and its open file descriptors before and after. Exit status 1 when anything was unexpected.
"""

import argparse
import asyncio
import io
import random
import signal
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.server import running_server, spawned_server
from tests.rule_weights import write_rule_checkpoint

CONFIG = "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x"
MAX_IMAGE_BYTES = 1_000_000
WARM_UP_REQUESTS = 200
# Kind: (weight, statuses that are expected for it).
KINDS: dict[str, tuple[int, frozenset[int]]] = {
    "valid raw": (35, frozenset({200, 503})),
    "valid multipart": (15, frozenset({200, 503})),
    "batch": (10, frozenset({200, 503})),
    "invalid": (30, frozenset({400, 413, 415, 422, 503})),
    "cancelled upload": (10, frozenset()),
}


def encode(pixels: np.ndarray, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))


@dataclass
class Corpus:
    images: list[bytes]
    # (description, path and query, content type, body)
    invalid: list[tuple[str, str, str, bytes]]

    @classmethod
    def build(cls, rng: np.random.Generator) -> "Corpus":
        pixels = [
            rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for h, w in [(48, 64), (64, 48), (90, 120), (1, 300)]
        ]
        images = [encode(p, "PNG") for p in pixels] + [encode(p, "JPEG", quality=85) for p in pixels]
        png = images[0]
        noise = rng.integers(0, 256, (800, 800, 3), dtype=np.uint8)
        invalid = [
            ("corrupt", "/segment", "image/png", rng.bytes(3000)),
            ("truncated png", "/segment", "image/png", png[: len(png) // 2]),
            ("truncated jpeg", "/segment", "image/jpeg", images[4][: len(images[4]) // 2]),
            ("gif", "/segment", "image/gif", encode(pixels[0], "GIF")),
            ("empty", "/segment", "image/png", b""),
            ("text", "/segment", "text/plain", b"hello"),
            ("oversized", "/segment", "image/png", encode(noise, "PNG")),
            ("bomb", "/segment", "image/png", png_header_only(60_000, 60_000)),
            ("bad threshold", "/segment?score_threshold=2", "image/png", png),
            ("unknown class", "/segment?classes=unicorn", "image/png", png),
            ("bad mask format", "/segment?mask_format=svg", "image/png", png),
            ("malformed multipart", "/segment", "multipart/form-data; boundary=x", b"--x\r\ngarbage"),
            ("batch without multipart", "/segment/batch", "image/png", png),
        ]
        return cls(images, invalid)


@dataclass
class Tally:
    answers: Counter[tuple[str, int | str]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    lost: int = 0
    server_errors: int = 0


class Soak:
    def __init__(self, url: str, corpus: Corpus, seed: int) -> None:
        self.url = url
        self.corpus = corpus
        self.random = random.Random(seed)
        host_port = url.removeprefix("http://")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.tally = Tally()

    def draw(self) -> str:
        kinds = list(KINDS)
        return self.random.choices(kinds, weights=[KINDS[k][0] for k in kinds])[0]

    async def one(self, client: httpx.AsyncClient, kind: str) -> None:
        pick = self.random.choice
        try:
            if kind == "valid raw":
                response = await client.post(
                    "/segment", content=pick(self.corpus.images), headers={"Content-Type": "image/png"}
                )
            elif kind == "valid multipart":
                response = await client.post(
                    "/segment?mask_format=polygon",
                    files={"image": ("photo.jpg", pick(self.corpus.images), "image/jpeg")},
                )
            elif kind == "batch":
                count = self.random.randint(2, 4)
                files = [
                    ("images", (f"{i}.png", pick(self.corpus.images), "image/png")) for i in range(count)
                ]
                response = await client.post("/segment/batch", files=files)
            elif kind == "invalid":
                name, path, content_type, body = pick(self.corpus.invalid)
                kind = f"invalid: {name}"
                response = await client.post(path, content=body, headers={"Content-Type": content_type})
            else:
                await self.abandoned_upload()
                self.tally.answers[(kind, "abandoned")] += 1
                return
        except httpx.HTTPError as error:
            self.tally.lost += 1
            self.tally.unexpected.append(f"{kind}: no answer ({type(error).__name__}: {error})")
            return
        status = response.status_code
        self.tally.answers[(kind, status)] += 1
        expected = KINDS["invalid" if kind.startswith("invalid") else kind][1]
        if status >= 500 and status != 503:
            self.tally.server_errors += 1
        if status not in expected or (status == 503 and "Retry-After" not in response.headers):
            self.tally.unexpected.append(f"{kind}: {status} {response.text[:200]}")

    async def abandoned_upload(self) -> None:
        """Send the head and half the body of an upload, then hang up."""
        body = self.random.choice(self.corpus.images)
        _, writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST /segment HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        writer.write(head + body[: len(body) // 2])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def run(self, requests: int, concurrency: int) -> float:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        kinds = [self.draw() for _ in range(requests)]
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=120) as client:
            next_index = 0
            started = time.perf_counter()

            async def worker() -> None:
                nonlocal next_index
                while next_index < len(kinds):
                    kind = kinds[next_index]
                    next_index += 1
                    await self.one(client, kind)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="a running server; default: spawn one")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests, after the warm-up")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--min-size", type=int, default=64, help="test resize of the spawned model")
    parser.add_argument("--max-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args, server_args = parser.parse_known_args(argv)

    corpus = Corpus.build(np.random.default_rng(args.seed))
    with tempfile.TemporaryDirectory() as scratch:
        if args.url is None:
            weights = write_rule_checkpoint(
                Path(scratch) / "rule.pth", CONFIG, min_size_test=args.min_size, max_size_test=args.max_size
            )
            options = ["--device", "cpu", "--max-queue", "16", "--max-batch-size", "4", "--cpu-workers", "2"]
            options += ["--log-level", "warning", "--max-image-bytes", str(MAX_IMAGE_BYTES), *server_args]
            serving = spawned_server(weights, options, Path(scratch) / "server.log")
        else:
            serving = running_server(args.url)
        with serving as server:
            soak = Soak(server.url, corpus, args.seed)
            asyncio.run(soak.run(WARM_UP_REQUESTS, args.concurrency))
            warm = soak.tally
            soak.tally = Tally()
            started_here = server.process is not None
            if started_here:
                rss_warm, fds_before = server.rss_bytes(), server.settled_fds(0, 0)
            elapsed = asyncio.run(soak.run(args.requests, args.concurrency))
            tally = soak.tally
            metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
            if started_here:
                rss_end = server.rss_bytes()
                fds_after = server.settled_fds(fds_before)
                exit_status = server.stop()
                server_log = server.log.read_text()

    total = sum(tally.answers.values())
    print(f"{total} requests in {elapsed:.1f} s ({total / elapsed:.1f}/s), concurrency {args.concurrency}, "
          f"after {WARM_UP_REQUESTS} warm-up requests ({len(warm.unexpected)} unexpected among them)")  # fmt: skip
    print("answers by kind and status:")
    for (kind, status), count in sorted(
        tally.answers.items(), key=lambda item: (item[0][0], str(item[0][1]))
    ):
        print(f"  {kind:32} {status!s:>9}  {count}")
    print(f"unexpected: {len(tally.unexpected)} (warm-up: {len(warm.unexpected)})")
    for line in [*warm.unexpected, *tally.unexpected][:50]:
        print(f"  {line}")
    print(f"requests lost (valid, no answer): {tally.lost}")
    print(f"5xx answers other than 503: {tally.server_errors}")
    ok = not tally.unexpected and not warm.unexpected and tally.lost == 0
    for line in metrics.splitlines():
        if line.startswith(("centermask_rejected_total{", "centermask_inference_failures_total{")):
            print(f"  {line}")
    if started_here:
        growth = (rss_end - rss_warm) / rss_warm
        print(
            f"RSS: {rss_warm / 2**20:.1f} MiB after warm-up, {rss_end / 2**20:.1f} MiB at the end ({growth:+.1%})"
        )
        print(f"open file descriptors: {fds_before} before, {fds_after} after")
        print(f"server exit status after SIGTERM: {exit_status}")
        tracebacks = server_log.count("Traceback")
        print(f"tracebacks in the server log: {tracebacks}")
        ok = ok and growth <= 0.05 and fds_after <= fds_before + 2 and exit_status in (0, -signal.SIGTERM)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
