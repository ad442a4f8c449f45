"""Videos and live streams against the real service, on a generated clip of moving shapes.

    python -m bench.video --frames 150 --rounds 2 --stream-seconds 20

Starts `centermask-serve` with the bundled model (or --weights) on a free 127.0.0.1 port; options this
script does not know are passed on to it (`--max-batch-size 4`). Then, on a clip of --frames frames at
--size (640×480 by default) written by `training.data.clips`:

1. video vs images, alternated --rounds times in the same run: the clip POSTed to /segment/video (frames
   per second: frames answered / time to the last line), and the same decoded frames, encoded as PNG before
   the clock starts, POSTed one per request to /segment by an async HTTP client with as many in flight as
   the video endpoint keeps (`Runtime.frames_in_flight`, read from the server's settings);
2. one inference: JPEG frames sent over /segment/stream one at a time, each after the previous answer;
   the median answered latency is "one inference" as a stream client sees it, 1 / that the sustainable rate;
3. overload: JPEG frames sent over /segment/stream at 2× that rate for --stream-seconds; answered latency
   p50/p99 against one inference (the answers' own forward passes, measured in the same phase: a shared
   machine's speed drifts), what each answer waited beyond its own pass, frames answered and dropped, and
   the largest queue depth read from /metrics meanwhile (the stream's frame waits in its connection's
   slot, not in the queue).

Prints the numbers and writes bench/results/video-*.json. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.results import write_result
from bench.server import spawned_server
from centermask_client import Client
from centermask_client.video import VideoReader
from model.weights import DEFAULT_WEIGHTS
from tests.helpers import metric_families
from training.data.clips import write_clip


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def percentile_ms(values_s: list[float], q: float) -> float:
    return float(np.percentile(1000 * np.array(values_s), q)) if values_s else float("nan")


# Both runs read the answers as bytes and count them (no parsing into models): what is compared is the
# service's throughput, not this process's JSON parsing, which shares the machine's cores with it.


def video_run(url: str, clip: bytes) -> tuple[int, float]:
    """Frames answered by /segment/video and the seconds to the last line."""
    started = time.perf_counter()
    frames = 0
    headers = {"Content-Type": "video/mp4"}
    with httpx.stream(
        "POST", f"{url}/segment/video?mask_format=rle", content=clip, headers=headers, timeout=600
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith('{"error"'):
                raise RuntimeError(line[:300])
            frames += 1
    return frames, time.perf_counter() - started


async def images_run(url: str, images: list[bytes], concurrency: int) -> tuple[int, float]:
    """The frames as /segment requests, `concurrency` in flight; answered and seconds."""
    pending = iter(images)
    answered = 0
    headers = {"Content-Type": "image/png"}

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal answered
        for data in pending:
            response = await http.post(f"{url}/segment?mask_format=rle", content=data, headers=headers)
            response.raise_for_status()
            answered += 1

    async with httpx.AsyncClient(timeout=600) as http:
        started = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        return answered, time.perf_counter() - started


def sequential_stream(url: str, frames: list[bytes], count: int) -> list[float]:
    """Latency of `count` frames sent one at a time over a stream, each after the previous answer."""
    latencies = []
    with Client(url) as client, client.stream(mask_format="rle") as stream:
        for number in range(count):
            sent = time.perf_counter()
            stream.send(frames[number % len(frames)])
            stream.receive(timeout_s=600)
            latencies.append(time.perf_counter() - sent)
    return latencies


def overloaded_stream(url: str, frames: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    """Frames sent at `rate` per second for `seconds`; each answer's latency from its frame's sending, and
    the forward pass it took (the answer's timing), for the ratio of the two."""
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    inferences: list[float] = []
    last_dropped = 0
    depths: list[float] = []
    stop = threading.Event()

    def watch_queue() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                families = metric_families(http.get(f"{url}/metrics").text)
                depths.append(families["centermask_queue_depth"].samples[0].value)
                stop.wait(0.05)

    with Client(url) as client, client.stream(mask_format="rle") as stream:

        def send() -> None:
            interval = 1 / rate
            start = time.perf_counter()
            number = 0
            while (now := time.perf_counter()) - start < seconds:
                sent_at[stream.sent] = now
                stream.send(frames[number % len(frames)])
                number += 1
                time.sleep(max(0.0, start + number * interval - time.perf_counter()))

        sender = threading.Thread(target=send)
        watcher = threading.Thread(target=watch_queue)
        sender.start()
        watcher.start()
        while sender.is_alive() or len(latencies) + last_dropped < len(sent_at):
            try:
                answer = stream.receive(timeout_s=5)
            except TimeoutError:
                if not sender.is_alive():
                    break
                continue
            latencies.append(time.perf_counter() - sent_at[answer.frame])
            inferences.append(answer.timing_ms.inference / 1000)
            last_dropped = answer.dropped
        sender.join()
        stop.set()
        watcher.join()
    return {
        "sent": len(sent_at),
        "answered": len(latencies),
        "dropped": last_dropped,
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "max_ms": 1000 * max(latencies),
        "inference_p50_ms": percentile_ms(inferences, 50),
        "inference_p99_ms": percentile_ms(inferences, 99),
        # Each answer's latency in units of its own forward pass: a shared machine's speed drifts within a
        # run, and this ratio is what latest-frame-wins bounds (by about 2).
        "ratio_p50": float(
            np.percentile([lat / inf for lat, inf in zip(latencies, inferences, strict=True)], 50)
        ),
        "ratio_p99": float(
            np.percentile([lat / inf for lat, inf in zip(latencies, inferences, strict=True)], 99)
        ),
        # What each answer waited beyond its own forward pass: the rest of the pass before it, at most.
        "wait_p50_ms": percentile_ms([lat - inf for lat, inf in zip(latencies, inferences, strict=True)], 50),
        "wait_p99_ms": percentile_ms([lat - inf for lat, inf in zip(latencies, inferences, strict=True)], 99),
        "max_queue_depth": max(depths) if depths else float("nan"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.video", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="default: the bundled model")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=2, help="video/images alternations (0: streams only)")
    parser.add_argument("--stream-frames", type=int, default=20, help="frames sent one at a time")
    parser.add_argument("--stream-seconds", type=float, default=20)
    args, server_options = parser.parse_known_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bench-video-"))
    clip_path = folder / "clip.mp4"
    write_clip(clip_path, args.frames, *args.size, fps=args.fps)
    clip = clip_path.read_bytes()
    with VideoReader(clip) as reader:
        decoded = [frame.pixels for frame in reader.frames()]
    # Lossless for the per-frame requests (the same pixels as the video's frames); JPEG for the stream,
    # as cameras and browsers send.
    images = [png(pixels) for pixels in decoded]
    jpegs = [jpeg(pixels) for pixels in decoded]
    print(f"clip: {len(images)} frames of {args.size[1]}×{args.size[0]}, {len(clip)} bytes", file=sys.stderr)

    rows: list[dict[str, Any]] = []
    with spawned_server(args.weights, ["--device", "cpu", *server_options], folder / "server.log") as server:
        info = httpx.get(f"{server.url}/v1/model", timeout=30).json()
        log = (folder / "server.log").read_text()
        batch = info["batching"]["max_batch_size"]
        in_flight = _frames_in_flight(log, batch, info["batching"]["max_queue"])
        print(
            f"server: {info['config_name']} on {info['device']}, batch {batch}, {in_flight} frames in flight"
        )
        # Unmeasured: first requests of a size pay for allocations.
        video_run(server.url, _head(folder, args))
        for round_number in range(args.rounds):
            for kind in ("video", "images"):
                if kind == "video":
                    answered, seconds = video_run(server.url, clip)
                else:
                    answered, seconds = asyncio.run(images_run(server.url, images, in_flight))
                rows.append(
                    {
                        "round": round_number,
                        "kind": kind,
                        "frames": answered,
                        "seconds": seconds,
                        "fps": answered / seconds,
                    }
                )
                print(
                    f"round {round_number}: {kind:6} {answered} frames in {seconds:.1f} s: {answered / seconds:.2f} frames/s"
                )
        one = sequential_stream(server.url, jpegs, args.stream_frames)
        one_ms = percentile_ms(one, 50)
        rate = 2 * 1000 / one_ms
        print(
            f"stream, one frame at a time: p50 {one_ms:.0f} ms, p99 {percentile_ms(one, 99):.0f} ms → sustainable {1000 / one_ms:.2f} frames/s"
        )
        overload = overloaded_stream(server.url, jpegs, rate, args.stream_seconds)
        inference_ms = overload["inference_p50_ms"]
        print(
            f"stream at {rate:.2f} frames/s (2×) for {args.stream_seconds:g} s: {overload['sent']} sent, "
            f"{overload['answered']} answered, {overload['dropped']} dropped; answered latency p50 "
            f"{overload['p50_ms']:.0f} ms, p99 {overload['p99_ms']:.0f} ms, max {overload['max_ms']:.0f} ms; "
            f"one inference meanwhile p50 {inference_ms:.0f} ms (p99 {overload['inference_p99_ms']:.0f}): "
            f"latency p50 {overload['p50_ms'] / inference_ms:.2f}×, p99 {overload['p99_ms'] / inference_ms:.2f}× one "
            f"inference; each answer's latency / its own pass p50 {overload['ratio_p50']:.2f}, p99 "
            f"{overload['ratio_p99']:.2f}; waiting beyond its own pass p50 {overload['wait_p50_ms']:.0f} ms, p99 "
            f"{overload['wait_p99_ms']:.0f} ms; queue depth at most {overload['max_queue_depth']:g}"
        )
    video_fps = [row["fps"] for row in rows if row["kind"] == "video"]
    image_fps = [row["fps"] for row in rows if row["kind"] == "images"]
    if rows:
        print(
            f"video endpoint {statistics.mean(video_fps):.2f} frames/s vs per-frame /segment "
            f"{statistics.mean(image_fps):.2f} frames/s at {in_flight} in flight "
            f"({statistics.mean(video_fps) / statistics.mean(image_fps):.2f}×)"
        )
    write_result(
        "video",
        {
            **vars(args),
            "weights": str(args.weights),
            "server_options": server_options,
            "frames_in_flight": in_flight,
        },
        [
            *rows,
            {"kind": "stream_sequential", "p50_ms": one_ms, "p99_ms": percentile_ms(one, 99)},
            {"kind": "stream_overload", "rate": rate, "one_inference_ms": one_ms, **overload},
        ],
    )
    return 0


def _frames_in_flight(log: str, batch: int, max_queue: int) -> int:
    """The server's frames in flight per video: its setting from the ready line, else the default."""
    import json

    for line in log.splitlines():
        if '"ready"' in line:
            configured = json.loads(line).get("settings", {}).get("video_frames_in_flight")
            if configured:
                return min(int(configured), max_queue)
    return min(2 * batch, max_queue)


def _head(folder: Path, args: argparse.Namespace) -> bytes:
    """A short clip of the same size, for the unmeasured first requests."""
    path = folder / "head.mp4"
    write_clip(path, 4, *args.size, fps=args.fps, seed=1)
    return path.read_bytes()


if __name__ == "__main__":
    raise SystemExit(main())
