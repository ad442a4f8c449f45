"""`centermask-bulk` against the other ways to segment a folder, on this machine: `python -m bench.bulk`.

    python -m bench.bulk --images 300 --rounds 2 --http          # throughput
    python -m bench.bulk --images 0 --memory 10000               # memory on 10^4 images

Throughput, on the same drawn images (PNG, 96-160 px) with the same checkpoint (the tests' tiny rule weights,
lite V-19-slim-dw at 320/512, unless --weights) and the same torch threads (--threads), one program at a time
and alternated round by round, so that the background load of a shared machine falls on all of them:

* loop: in this process, what a script of one's own does: `load_image` → `predict` → `image_record` → one
  JSON line per image into a file (the predictor loaded and warmed up beforehand: not timed);
* bulk: `centermask-bulk --format jsonl` in a subprocess on a local Ray of --num-cpus CPUs, timed twice: the
  whole command (Python, the checkpoint read, Ray's start-up, the actor loading its model), and from the moment
  its actor had the model loaded to the end (manifest.json's `steady_images_per_second`): Ray's and the model's
  start-up left out;
* http (--http): `centermask segment DIR --concurrency 4` against a `centermask-serve` of the same weights and
  threads, started beforehand (its start-up not timed).

Beside images per second, the CPU seconds each image cost: the loop's own, the bulk run's summed over every
process under it (sampled every 0.25 s from /proc) from the model ready to the end, the client's and the
server's. On a machine busy with other work, a program of several processes gets more of the CPU than a loop
of one thread does; CPU per image is what it would cost on a quiet one.

Memory (--memory N): `centermask-bulk` on N images of 256×192 (the small rule weights, 64/128), sampling
every second the driver's RSS and the proportional set size (PSS: shared pages split between their users) of
every process under it, Ray's workers and object store included; the decoded pixels of all N images are
printed beside it: what holding them would cost.

The driver alone (--writer N): N synthetic rows of 20 instances each (RLE masks) through the driver's
`ShardWriter` into shards on local disk, as they arrive from the actors in tables of 16: the ceiling the one
writer puts on a cluster's throughput, in rows per second, per format.

Prints the numbers; writes bench/results/bulk-*.json. Uses --num-cpus CPUs at most.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from PIL import Image, ImageDraw

from bench.results import write_result
from bench.server import spawned_server
from model.inference.images import load_image
from model.inference.load import load_predictor
from model.wire.records import image_record
from tests.rule_weights import write_rule_checkpoint

CONFIG = "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x"
REPO = Path(__file__).resolve().parents[1]


def draw(seed: int, size: tuple[int, int] | None = None) -> Image.Image:
    """Filled shapes on a flat background (small files; decoding still yields every pixel)."""
    rng = np.random.default_rng(seed)
    width, height = size or (int(rng.integers(96, 161)), int(rng.integers(96, 161)))
    image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 256, 3)))
    pen = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        x1, y1 = x0 + int(rng.integers(8, width // 2)), y0 + int(rng.integers(8, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (pen.ellipse if rng.random() < 0.5 else pen.rectangle)((x0, y0, x1, y1), fill=colour)
    return image


def write_images(folder: Path, count: int, size: tuple[int, int] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"{index:06d}.png"
        draw(index, size).save(path, compress_level=1)
        paths.append(path)
    return paths


def loop(predictor: Any, paths: list[Path], out: Path) -> tuple[float, float]:
    """(seconds, CPU seconds) of the plain loop over the images (results as JSON lines into `out`)."""
    started, cpu = time.perf_counter(), time.process_time()
    with out.open("wb") as stream:
        for path in paths:
            (detections,) = predictor.predict([load_image(path)])
            record = image_record(path.name, detections, predictor.class_names, predictor.category_ids)
            stream.write(orjson.dumps(record) + b"\n")
    return time.perf_counter() - started, time.process_time() - cpu


def environment() -> dict[str, str]:
    paths = [str(REPO / "clients" / "python"), str(REPO)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}


def bulk(folder: Path, out: Path, weights: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One `centermask-bulk` run: its wall time, manifest.json's last_run, and the CPU seconds per image of all
    its processes from the moment its first actor had loaded the model."""
    command = [sys.executable, "-m", "bulk", str(folder), "--output", str(out), "--weights", str(weights)]
    command += ["--device", "cpu", "--num-cpus", str(args.num_cpus), "--threads-per-actor", str(args.threads)]
    command += ["--format", "jsonl"]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = CpuSampler(process.pid, out / "index")
    _, errors = process.communicate()
    sampler.stop()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        sys.exit(f"centermask-bulk failed ({process.returncode}):\n{errors.decode()[-3000:]}")
    last_run = json.loads((out / "manifest.json").read_text())["last_run"]
    ready = last_run["started_at"] + last_run["actors_ready_seconds"]
    return {
        "wall_s": wall,
        "steady_cpu_s_per_image": sampler.cpu_per_image_after(ready, args.images),
        **last_run,
    }


def http(folder: Path, out: Path, server: Any, concurrency: int) -> tuple[float, float]:
    """(seconds, CPU seconds of the client and the server) for `centermask segment` over the folder."""
    command = [sys.executable, "-c", "from centermask_client.cli import main; raise SystemExit(main())"]
    command += [
        "segment",
        str(folder),
        "--url",
        server.url,
        "--out-dir",
        str(out),
        "--concurrency",
        str(concurrency),
    ]
    before = _children_cpu() + _tree_cpu(server.process.pid)
    started = time.perf_counter()
    finished = subprocess.run(command, env=environment(), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if finished.returncode != 0:
        sys.exit(f"centermask segment failed ({finished.returncode}):\n{finished.stderr[-3000:]}")
    return seconds, _children_cpu() + _tree_cpu(server.process.pid) - before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _tree_cpu(root: int) -> float:
    return sum((int(fields[11]) + int(fields[12])) / TICK for fields in tree(root).values())


def throughput(args: argparse.Namespace, work: Path, weights: Path) -> list[dict[str, Any]]:
    paths = write_images(work / "images", args.images)
    torch.set_num_threads(args.threads)
    predictor = load_predictor(weights=weights, device="cpu")
    predictor.predict([load_image(paths[0])])  # warm
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        server = None
        if args.http:
            options = ["--device", "cpu", "--torch-threads", str(args.threads), "--log-level", "warning"]
            server = stack.enter_context(spawned_server(weights, options, work / "server.log"))
        for round_ in range(args.rounds):
            seconds, cpu = loop(predictor, paths, work / "loop.jsonl")
            rows.append(
                {"round": round_, "program": "loop", "images_per_second": args.images / seconds,
                 "cpu_s_per_image": cpu / args.images}
            )  # fmt: skip
            print(
                f"round {round_}: loop  {args.images / seconds:6.2f} images/s, {cpu / args.images:.3f} CPU s an image",
                file=sys.stderr,
            )
            run = bulk(work / "images", work / f"bulk-{round_}", weights, args)
            whole = args.images / run["wall_s"]
            rows.append({"round": round_, "program": "bulk", **run, "whole_command_images_per_second": whole})
            print(
                f"round {round_}: bulk  {run['steady_images_per_second']:6.2f} images/s from the model ready "
                f"(at {run['actors_ready_seconds']:.1f} s; Ray started in {run['ray_start_seconds']:.1f} s), "
                f"{whole:6.2f} images/s for the whole command ({run['wall_s']:.1f} s), "
                f"{run['steady_cpu_s_per_image']:.3f} CPU s an image from the model ready",
                file=sys.stderr,
            )
            if server is not None:
                seconds, cpu = http(work / "images", work / f"http-{round_}", server, args.concurrency)
                rows.append(
                    {"round": round_, "program": "http", "images_per_second": args.images / seconds,
                     "cpu_s_per_image": cpu / args.images}
                )  # fmt: skip
                print(
                    f"round {round_}: http  {args.images / seconds:6.2f} images/s, {cpu / args.images:.3f} CPU s an image (client and server)",
                    file=sys.stderr,
                )
    return rows


def tree(root: int) -> dict[int, list[str]]:
    """pid → the fields of /proc/pid/stat after the command name, for `root` and every process under it."""
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The command name in parentheses may hold spaces: the fields after it are what we want.
                stats[int(entry.name)] = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
    members = {}
    for pid, fields in stats.items():
        walk: int | None = pid
        while walk is not None and walk not in (root, 0, 1):
            walk = int(stats[walk][1]) if walk in stats else None
        if walk == root or pid == root:
            members[pid] = fields
    return members


TICK = os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """CPU seconds of a process tree, sampled every `interval` s (a process's last sample stands for it once it
    has gone: a worker's last fraction of a second may be missed), with the rows the output's index holds."""

    def __init__(self, root: int, index: Path, interval: float = 0.25) -> None:
        self.root, self.index, self.interval = root, index, interval
        self.latest: dict[int, float] = {}
        self.samples: list[tuple[float, float, int]] = []  # (wall clock, CPU seconds so far, rows indexed)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seen: set[Path] = set()
        rows = 0
        while not self.stopped.is_set():
            for pid, fields in tree(self.root).items():
                # utime and stime: fields 14 and 15 of stat, 11 and 12 after the command name.
                self.latest[pid] = (int(fields[11]) + int(fields[12])) / TICK
            for entry in sorted(self.index.glob("*.json")) if self.index.is_dir() else ():
                if entry not in seen:
                    try:
                        rows += len(json.loads(entry.read_text())["ids"])
                        seen.add(entry)
                    except (OSError, ValueError):
                        pass  # being written: next time
            self.samples.append((time.time(), sum(self.latest.values()), rows))
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()

    def cpu_per_image_after(self, moment: float, images: int) -> float | None:
        """CPU seconds an image cost from `moment` (wall clock) to the end."""
        before = [sample for sample in self.samples if sample[0] <= moment]
        if not before or not self.samples:
            return None
        return (self.samples[-1][1] - before[-1][1]) / images


def pss_under(root: int) -> tuple[int, int]:
    """(RSS of `root`, PSS of `root` and every process under it), in bytes."""
    rss = pss = 0
    for pid in tree(root):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                elif line.startswith("Rss:") and pid == root:
                    rss = int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def memory(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    weights = write_rule_checkpoint(work / "small.pth", CONFIG, min_size_test=64, max_size_test=128)
    size = (256, 192)
    print(f"drawing {args.memory} images of {size[0]}×{size[1]} ...", file=sys.stderr)
    write_images(work / "many", args.memory, size)
    out = work / "many-out"
    command = [
        sys.executable,
        "-m",
        "bulk",
        str(work / "many"),
        "--output",
        str(out),
        "--weights",
        str(weights),
    ]
    command += ["--device", "cpu", "--num-cpus", str(args.num_cpus), "--threads-per-actor", str(args.threads)]
    command += ["--format", "jsonl", "--shard-size", "500", "--score-threshold", "0.3"]
    samples: list[dict[str, Any]] = []
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read() if process.stderr else b""))
    reader.start()
    started = time.perf_counter()
    while process.poll() is None:
        rss, pss = pss_under(process.pid)
        done = 0
        for entry in (out / "index").glob("*.json") if (out / "index").is_dir() else ():
            try:
                done += len(json.loads(entry.read_text())["ids"])
            except (OSError, ValueError):
                continue
        samples.append(
            {
                "seconds": time.perf_counter() - started,
                "images_done": done,
                "driver_rss": rss,
                "total_pss": pss,
            }
        )
        time.sleep(1.0)
    reader.join()
    if process.returncode != 0:
        sys.exit(f"centermask-bulk failed ({process.returncode}):\n{b''.join(errors).decode()[-3000:]}")
    last_run = json.loads((out / "manifest.json").read_text())["last_run"]
    decoded = args.memory * size[0] * size[1] * 3
    print(
        f"{args.memory} images in {last_run['seconds']:.0f} s; decoded pixels of all: {decoded / 2**20:.0f} MiB",
        file=sys.stderr,
    )
    print(" images done   driver RSS   PSS of all processes", file=sys.stderr)
    for fraction in (0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        window = [s for s in samples if s["images_done"] <= fraction * args.memory]
        if window:
            driver = max(s["driver_rss"] for s in window)
            total = max(s["total_pss"] for s in window)
            print(
                f" ≤{fraction * args.memory:8.0f}   {driver / 2**20:7.0f} MiB   {total / 2**20:7.0f} MiB (peak so far)",
                file=sys.stderr,
            )
    return [
        {
            "program": "bulk-memory",
            "images": args.memory,
            "decoded_bytes": decoded,
            **last_run,
            "samples": samples,
        }
    ]


def writer(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from bulk.manifest import State
    from bulk.pipeline import ShardWriter
    from bulk.shards import ROW_FORMATS, shard_format
    from bulk.storage import Output

    rng = np.random.default_rng(0)

    def instance() -> dict[str, Any]:
        counts = "".join(chr(c) for c in rng.integers(48, 112, 60))  # the length of a small object's RLE
        box = [float(v) for v in rng.uniform(0, 400, 4)]
        return {"box": box, "score": 0.5, "class_id": 2, "category_id": 3, "class_name": "car",
                "mask_score": 0.4, "mask": {"size": [480, 640], "counts": counts}}  # fmt: skip

    rows = []
    for row_format in ROW_FORMATS:
        shards = shard_format(row_format, "rle")
        records = [
            {"path": f"/data/{i}.jpg", "image_id": i, "file": f"{i}.jpg", "height": 480, "width": 640,
             "instances": [instance() for _ in range(20)], "error": None}
            for i in range(args.writer)
        ]  # fmt: skip
        tables = [shards.table(records[i : i + 16]) for i in range(0, args.writer, 16)]
        state = State.load(Output.open(str(work / f"writer-{row_format}")), shards)
        shard_writer = ShardWriter(state, 1000, 60.0, time.perf_counter)
        started = time.perf_counter()
        for table in tables:
            shard_writer.add(table)
        shard_writer.flush()
        seconds = time.perf_counter() - started
        size = sum(entry.bytes for entry in state.entries.values()) / args.writer
        print(
            f"driver alone, {row_format}: {args.writer / seconds:8.0f} rows/s ({size / 1024:.1f} KiB a row)",
            file=sys.stderr,
        )
        rows.append(
            {
                "program": "writer",
                "format": row_format,
                "rows_per_second": args.writer / seconds,
                "bytes_per_row": size,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="images of the throughput runs (0: none)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--weights", type=Path, help="default: the tests' tiny rule weights (320/512)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the loop, the actor, the server"
    )
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--http", action="store_true", help="also `centermask segment` against a server")
    parser.add_argument("--concurrency", type=int, default=4, help="of `centermask segment`")
    parser.add_argument("--memory", type=int, default=0, help="images of the memory run (0: none)")
    parser.add_argument("--writer", type=int, default=0, help="rows through the driver alone (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as directory:
        work = Path(directory)
        rows: list[dict[str, Any]] = []
        if args.images:
            weights = args.weights or write_rule_checkpoint(
                work / "tiny.pth", CONFIG, min_size_test=320, max_size_test=512
            )
            rows += throughput(args, work, weights)
            summarise(rows)
        if args.memory:
            rows += memory(args, work)
        if args.writer:
            rows += writer(args, work)
    write_result("bulk", vars(args), rows)


def summarise(rows: list[dict[str, Any]]) -> None:
    loops = [r["images_per_second"] for r in rows if r["program"] == "loop"]
    steady = [r["steady_images_per_second"] for r in rows if r["program"] == "bulk"]
    whole = [r["whole_command_images_per_second"] for r in rows if r["program"] == "bulk"]
    https = [r["images_per_second"] for r in rows if r["program"] == "http"]
    base = statistics.mean(loops)
    print(f"loop {base:.2f} images/s (mean of {len(loops)})", file=sys.stderr)
    print(
        f"bulk/loop, Ray's and the model's start-up left out: {statistics.mean(steady) / base:.2f}×",
        file=sys.stderr,
    )
    print(
        f"bulk/loop, the whole command:                    {statistics.mean(whole) / base:.2f}×",
        file=sys.stderr,
    )
    cpu_loop = statistics.mean(r["cpu_s_per_image"] for r in rows if r["program"] == "loop")
    cpu_bulk = [
        r["steady_cpu_s_per_image"] for r in rows if r["program"] == "bulk" and r["steady_cpu_s_per_image"]
    ]
    if cpu_bulk:
        print(
            f"CPU s an image, bulk (start-up left out)/loop:   {statistics.mean(cpu_bulk) / cpu_loop:.2f}×",
            file=sys.stderr,
        )
    if https:
        print(
            f"bulk (after start-up)/http:                      {statistics.mean(steady) / statistics.mean(https):.2f}×",
            file=sys.stderr,
        )
        print(
            f"http/loop:                                       {statistics.mean(https) / base:.2f}×",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
