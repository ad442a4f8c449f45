"""Tracking ids (`track=true`) against the real service, on generated clips of moving shapes.

    python -m bench.tracking --frames 150 --seeds 3

Starts `centermask-serve` with the bundled model (or --weights) on a free 127.0.0.1 port; options this
script does not know are passed on to it. For each seed, writes a clip of --frames frames at --size
(640×480 by default) with `training.data.clips` (four shapes gliding and bouncing; they cross each other
now and then), POSTs it to /segment/video with track=true (and --query), and scores the lines against the
clip's ground truth (`tests.helpers.track_score`: instances matched to the objects by box IoU ≥ 0.5):

- ID switches: times an object's track id differs from its previous one; ids shared by two objects;
- tracked: the fraction of object-frames matched by an instance with a track id;
- the tracker's cost per frame: the answered instances fed again, frame by frame, to a fresh
  `service.tracking.Tracker` (what the service runs per line), timed.

Prints the numbers and writes bench/results/tracking-*.json. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from bench.results import write_result
from bench.server import spawned_server
from model.weights import DEFAULT_WEIGHTS
from service.tracking import Tracker
from tests.helpers import track_score
from training.data.clips import moving_scenes, write_clip


def tracked_lines(url: str, clip: bytes, query: str) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{url}/segment/video?track=true&{query}",
        content=clip,
        headers={"Content-Type": "video/mp4"},
        timeout=3600,
    )
    response.raise_for_status()
    return [json.loads(line) for line in response.text.splitlines()]


def tracker_cost_ms(lines: list[dict[str, Any]], rate: float) -> list[float]:
    """Each frame's `Tracker.update` time in milliseconds, on the answered instances."""
    tracker = Tracker(rate)
    costs = []
    for line in lines:
        instances = [{k: v for k, v in instance.items() if k != "track_id"} for instance in line["instances"]]
        started = time.perf_counter()
        tracker.update(instances, line["time_s"])
        costs.append((time.perf_counter() - started) * 1000)
    return costs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tracking", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="default: the bundled model")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--seeds", type=int, default=3, help="clips 0..N-1")
    parser.add_argument("--query", default="mask_format=none", help="more query parameters")
    args, server_options = parser.parse_known_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    rows: list[dict[str, Any]] = []
    with spawned_server(args.weights, ["--device", "cpu", *server_options], folder / "server.log") as server:
        for seed in range(args.seeds):
            path = folder / f"clip-{seed}.mp4"
            write_clip(path, args.frames, *args.size, fps=args.fps, seed=seed)
            truth = [boxes for _, boxes in moving_scenes(args.frames, *args.size, seed=seed)]
            started = time.perf_counter()
            lines = tracked_lines(server.url, path.read_bytes(), args.query)
            seconds = time.perf_counter() - started
            score = track_score(truth, [line["instances"] for line in lines])
            costs = tracker_cost_ms(lines, args.fps)
            given = {i["track_id"] for line in lines for i in line["instances"]} - {None}
            row = {
                "seed": seed,
                "frames": len(lines),
                "objects": score.objects,
                "switches": score.switches,
                "shared_ids": sorted(score.shared_ids),
                "tracked": score.tracked,
                "ids_given": len(given),
                "instances_per_frame": statistics.mean(len(line["instances"]) for line in lines),
                "tracker_ms_p50": statistics.median(costs),
                "tracker_ms_p90": statistics.quantiles(costs, n=10)[-1],
                "tracker_ms_max": max(costs),
                "video_seconds": seconds,
                "ids": score.ids,
            }
            rows.append(row)
            print(
                f"seed {seed}: {row['frames']} frames, {score.objects} objects: {score.switches} ID switches, "
                f"ids shared by two objects {row['shared_ids'] or 'none'}, tracked {score.tracked:.1%} of "
                f"object-frames, {len(given)} ids given; {row['instances_per_frame']:.1f} instances/frame; "
                f"tracker {row['tracker_ms_p50']:.2f} ms/frame p50, {row['tracker_ms_p90']:.2f} p90, "
                f"{row['tracker_ms_max']:.2f} max (the video took {seconds:.1f} s)"
            )
    switches = sum(row["switches"] for row in rows)
    frames = sum(row["frames"] for row in rows)
    costs_p50 = statistics.median(row["tracker_ms_p50"] for row in rows)
    print(
        f"all: {switches} ID switches in {frames} frames of {len(rows)} clips; tracker p50 {costs_p50:.2f} ms/frame"
    )
    out = write_result(
        "tracking", {**vars(args), "weights": str(args.weights), "server": server_options}, rows
    )
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
