"""`centermask`: the service from the command line.

    centermask segment IMAGE|VIDEO|DIR... --url URL [--out-dir DIR] [--format json|png] [--concurrency N]

Sends every image (directories are searched recursively for JPEG, PNG, WebP, BMP and TIFF files) to
`/segment`, several at a time, with a progress bar on stderr. With --out-dir it writes one JSON file
per image (the service's answer) and, with --format png, the overlay drawn over the image
(`NAME.overlay.png`); without --out-dir it prints one JSON line per image on stdout. Videos (MP4, MOV,
MKV, WebM) go to `/segment/video`, one after another, with a progress bar in frames: `NAME.jsonl` gets a
line per frame and, with --format png, `NAME.overlay.mp4` the frames with their masks drawn (this needs
PyAV: pip install 'centermask-client[video]'); without --out-dir the lines go to stdout. With --track,
each instance of a video gets a track_id (stable across its frames), and the overlay colours and numbers
each track rather than each class (the lines leave out the track_id of an unconfirmed instance: null). It ends with a
summary line and exits with status 1 if any image or video failed (each failure is listed with its error
code).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from centermask_client.errors import ApiError, CenterMaskError, ConnectionFailed
from centermask_client.schemas import TILING_MODES, SegmentResponse, VideoFrameResult
from centermask_client.video import VIDEO_SUFFIXES

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """The command line names no usable input; exit status 2."""


@dataclass(frozen=True)
class Job:
    source: Path
    # The output path without suffix, relative to --out-dir: the file's stem, or its path inside a DIR.
    name: Path

    @property
    def is_video(self) -> bool:
        return self.source.suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class Outcome:
    job: Job
    result: SegmentResponse | None = None
    error: str | None = None
    # The service could not be reached (no answer at all), rather than refusing this image.
    unreachable: bool = False


def find_jobs(inputs: Sequence[str]) -> list[Job]:
    """Files given directly, and image files under the given directories, each named once."""
    jobs: list[Job] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES
            )
            jobs.extend(Job(p, p.relative_to(path).with_suffix("")) for p in found)
        elif path.is_file():
            jobs.append(Job(path, Path(path.stem)))
        else:
            raise UsageError(f"no such file or directory: {given}")
    # Lower-cased: on case-insensitive file systems A.png and a.jpg would still overwrite each other.
    counts = Counter(str(job.name).lower() for job in jobs)
    clashes = sorted(name for name, count in counts.items() if count > 1)
    if clashes:
        raise UsageError(
            f"several inputs would write the same output {clashes[0]!r}; rename them or segment them "
            "in separate runs"
        )
    if not jobs:
        raise UsageError("no images or videos found")
    return jobs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="centermask", description="Client of a CenterMask service.")
    parser.add_argument("--version", action="version", version=f"centermask {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    segment = commands.add_parser(
        "segment",
        help="segment images and save or print the results",
        description=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    segment.add_argument(
        "inputs", nargs="+", metavar="IMAGE|VIDEO|DIR", help="image and video files, or directories of them"
    )
    segment.add_argument(
        "--url",
        default=os.environ.get("CENTERMASK_URL", "http://localhost:8000"),
        help="the service's base URL (default: $CENTERMASK_URL or http://localhost:8000)",
    )
    segment.add_argument("--out-dir", type=Path, metavar="DIR", help="where to write the results")
    segment.add_argument(
        "--format",
        choices=("json", "png"),
        default="json",
        help="json: the answer of each image (a line per frame of a video); png: also the overlay drawn "
        "over the image (NAME.overlay.png) or the video's frames (NAME.overlay.mp4) (needs --out-dir) "
        "(default: json)",
    )
    segment.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        metavar="N",
        help="requests in flight at once; the service batches them (default: 4)",
    )
    segment.add_argument(
        "--score-threshold", type=float, metavar="T", help="keep scores ≥ T (default: the service's)"
    )
    segment.add_argument(
        "--max-detections", type=_positive_int, metavar="N", help="keep the best N (default: the service's)"
    )
    segment.add_argument(
        "--classes",
        metavar="LIST",
        help="comma-separated class names, class_id:N or category_id:N (default: all)",
    )
    segment.add_argument(
        "--tiling",
        choices=TILING_MODES,
        help="images: auto segments one much larger than the model's input in tiles at full resolution, "
        "off never (default: the service's)",
    )
    segment.add_argument(
        "--tile-size",
        type=_positive_int,
        metavar="PX",
        help="images: side of a tile (default: the service's)",
    )
    segment.add_argument(
        "--tile-overlap",
        type=int,
        metavar="PX",
        help="images: pixels neighbouring tiles share (default: the service's)",
    )
    segment.add_argument(
        "--fps",
        type=float,
        metavar="F",
        help="videos: segment at most F frames per second (default: every frame)",
    )
    segment.add_argument(
        "--max-frames",
        type=_positive_int,
        metavar="N",
        help="videos: segment at most N frames (default: all)",
    )
    segment.add_argument(
        "--track",
        action="store_true",
        help="videos: give each instance a track_id, the same for one object across the frames; overlays "
        "then colour and number each track (the service needs its track extra)",
    )
    segment.add_argument(
        "--api-key",
        default=os.environ.get("CENTERMASK_API_KEY"),
        help="the service's API key (default: $CENTERMASK_API_KEY; prefer the variable, flags show in ps)",
    )
    segment.add_argument(
        "--timeout", type=float, default=120.0, metavar="SECONDS", help="per request (default: 120)"
    )
    segment.add_argument("--no-progress", action="store_true", help="no progress bar")
    segment.add_argument(
        "--overwrite", action="store_true", help="replace results already in --out-dir (default: refuse)"
    )
    args = parser.parse_args(argv)
    if args.format == "png" and args.out_dir is None:
        parser.error("--format png writes files: give --out-dir")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        jobs = find_jobs(args.inputs)
        if args.out_dir is not None and not args.overwrite:
            _refuse_to_overwrite(jobs, args)
    except UsageError as error:
        print(f"centermask: {error}", file=sys.stderr)
        return EXIT_USAGE
    images = [job for job in jobs if not job.is_video]
    videos = [job for job in jobs if job.is_video]
    started = time.perf_counter()
    outcomes = asyncio.run(_segment_all(images, args)) if images else []
    video_outcomes = _segment_videos(videos, args) if videos else []
    elapsed = time.perf_counter() - started
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    failed_videos = [outcome for outcome in video_outcomes if outcome.error is not None]
    unreachable = [outcome for outcome in failed if outcome.unreachable]
    if images and not videos and len(unreachable) == len(images):
        # Nothing reached the service: one line says so, not one per image.
        print(
            f"centermask: the service at {args.url} did not answer: {unreachable[0].error}", file=sys.stderr
        )
        return EXIT_FAILED
    for job, problem in [(o.job, o.error) for o in failed] + [(o.job, o.error) for o in failed_videos]:
        print(f"failed: {job.source}: {problem}", file=sys.stderr)
    instances = sum(len(outcome.result.instances) for outcome in outcomes if outcome.result is not None)
    instances += sum(outcome.instances for outcome in video_outcomes)
    frames = sum(outcome.frames for outcome in video_outcomes)
    segmented = len(images) - len(failed)
    counts, rates = [], []
    if images or not videos:
        counts.append(f"{_plural(len(images), 'image')}, {segmented} segmented, {len(failed)} failed")
        if segmented:  # no rate of images that never went
            rates.append(f"{segmented / elapsed:.1f} images/s")
    if videos:
        counts.append(
            f"{_plural(len(videos), 'video')}, {_plural(frames, 'frame')}, {len(failed_videos)} failed"
        )
        if frames:
            rates.append(f"{frames / elapsed:.1f} frames/s")
    where = f"; results in {args.out_dir}" if args.out_dir is not None and (segmented or frames) else ""
    rate = f" ({', '.join(rates)})" if rates else ""
    print(
        f"centermask: {', '.join(counts)}, {instances} instances in {elapsed:.1f} s{rate}{where}",
        file=sys.stderr,
    )
    return EXIT_FAILED if failed or failed_videos else 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


@dataclass
class VideoOutcome:
    job: Job
    frames: int = 0
    instances: int = 0
    error: str | None = None


def _segment_videos(jobs: list[Job], args: argparse.Namespace) -> list[VideoOutcome]:
    """Each video in turn (its frames are already several in flight on the service), a bar in frames."""
    from centermask_client.client import Client

    outcomes = []
    with Client(args.url, api_key=args.api_key, timeout_s=args.timeout) as client:
        for job in jobs:
            outcome = VideoOutcome(job)
            try:
                _segment_video(client, job, args, outcome)
            except ApiError as error:
                where = f" at frame {error.index}" if error.index is not None else ""
                outcome.error = f"{error.status} {error.code}{where}: {error.message}"
            except (CenterMaskError, OSError, ValueError, ImportError) as error:
                outcome.error = str(error)
            outcomes.append(outcome)
    return outcomes


def _segment_video(client: Any, job: Job, args: argparse.Namespace, outcome: VideoOutcome) -> None:
    from tqdm import tqdm

    from centermask_client.video import import_av

    overlay = args.format == "png"
    if overlay:
        import_av()  # before the service does any work: the overlay would fail at the end
    classes = [part.strip() for part in args.classes.split(",") if part.strip()] if args.classes else None
    target = args.out_dir / job.name if args.out_dir is not None else None
    with contextlib.ExitStack() as stack:
        frames = stack.enter_context(
            client.segment_video(
                job.source,
                fps=args.fps,
                max_frames=args.max_frames,
                score_threshold=args.score_threshold,
                max_detections=args.max_detections,
                classes=classes,
                track=args.track,
            )
        )
        bar = stack.enter_context(
            tqdm(
                total=frames.expected_frames,
                unit="frame",
                desc=job.source.name,
                file=sys.stderr,
                disable=True if args.no_progress else None,
            )
        )
        lines = None
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            lines = stack.enter_context(target.with_name(target.name + ".jsonl").open("w"))

        def answered() -> Iterator[VideoFrameResult]:
            for frame in frames:
                text = frame.model_dump_json(exclude_none=True)
                if lines is None:
                    print(text, flush=True)
                else:
                    lines.write(text + "\n")
                outcome.frames += 1
                outcome.instances += len(frame.instances)
                bar.update(1)
                yield frame

        if overlay and target is not None:
            _write_overlay(job.source, answered(), target.with_name(target.name + ".overlay.mp4"), args)
        else:
            for _ in answered():
                pass


def _write_overlay(
    source: Path, answers: Iterator[VideoFrameResult], path: Path, args: argparse.Namespace
) -> None:
    """The answered frames, decoded here again (the same reader as the service's), with their instances
    drawn, into an MP4 that keeps their times."""
    import numpy as np

    from centermask_client.overlay import draw_overlay
    from centermask_client.video import VideoReader, write_video

    with VideoReader(source) as reader:
        rate = args.fps or reader.frame_rate or 30.0
        local = reader.frames(fps=args.fps, max_frames=args.max_frames)

        def drawn() -> Iterator[tuple[float, np.ndarray]]:
            for answer in answers:
                frame = next(local, None)
                if frame is None or frame.index != answer.frame:
                    raise ValueError(
                        f"the video reads differently here than on the service (frame {answer.frame}); "
                        "no overlay for the rest"
                    )
                yield answer.time_s, np.asarray(draw_overlay(frame.pixels, answer.instances))

        write_video(path, drawn(), rate=rate)


def _refuse_to_overwrite(jobs: list[Job], args: argparse.Namespace) -> None:
    """Raise UsageError if a result of these jobs is already in --out-dir."""
    suffixes = [".json", ".overlay.png"] if args.format == "png" else [".json"]
    existing = [
        target
        for job in jobs
        for suffix in suffixes
        if (target := args.out_dir / job.name.with_name(job.name.name + suffix)).exists()
    ]
    if existing:
        more = f" (and {len(existing) - 1} more results)" if len(existing) > 1 else ""
        raise UsageError(f"{existing[0]} is already there{more}; pass --overwrite to replace it")


def _version() -> str:
    try:
        return importlib.metadata.version("centermask-client")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0.0.0"


async def _segment_all(jobs: list[Job], args: argparse.Namespace) -> list[Outcome]:
    from tqdm import tqdm

    from centermask_client.client import AsyncClient

    slots = asyncio.Semaphore(args.concurrency)
    classes = [part.strip() for part in args.classes.split(",") if part.strip()] if args.classes else None
    bar = tqdm(total=len(jobs), unit="image", file=sys.stderr, disable=True if args.no_progress else None)

    async def run(client: AsyncClient, job: Job) -> Outcome:
        async with slots:
            try:
                result = await client.segment(
                    job.source,
                    score_threshold=args.score_threshold,
                    max_detections=args.max_detections,
                    classes=classes,
                    tiling=args.tiling,
                    tile_size=args.tile_size,
                    tile_overlap=args.tile_overlap,
                )
                await asyncio.to_thread(_write, job, result, args)
                outcome = Outcome(job, result=result)
            except ApiError as error:
                outcome = Outcome(job, error=f"{error.status} {error.code}: {error.message}")
            except ConnectionFailed as error:
                outcome = Outcome(job, error=str(error), unreachable=True)
            except (CenterMaskError, OSError, ValueError) as error:
                outcome = Outcome(job, error=str(error))
            bar.update(1)
            return outcome

    try:
        async with AsyncClient(args.url, api_key=args.api_key, timeout_s=args.timeout) as client:
            return list(await asyncio.gather(*(run(client, job) for job in jobs)))
    finally:
        bar.close()


def _write(job: Job, result: SegmentResponse, args: argparse.Namespace) -> None:
    text = result.model_dump_json(exclude_none=True)
    if args.out_dir is None:
        print(text, flush=True)
        return
    target = args.out_dir / job.name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.with_name(target.name + ".json").write_text(text)
    if args.format == "png":
        from PIL import Image, ImageOps

        from centermask_client.overlay import draw_overlay, encode_image

        with Image.open(job.source) as opened:
            upright = ImageOps.exif_transpose(opened).convert("RGB")
        if (upright.height, upright.width) != (result.height, result.width):
            raise ValueError(
                f"the image reads as {upright.height}x{upright.width} here but {result.height}x{result.width} "
                "on the service"
            )
        overlay = draw_overlay(upright, result.instances)
        target.with_name(target.name + ".overlay.png").write_bytes(encode_image(overlay, "png"))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
