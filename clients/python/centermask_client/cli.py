"""`centermask`: the service from the command line.

    centermask segment IMAGE|DIR... --url URL [--out-dir DIR] [--format json|png] [--concurrency N]

Sends every image (directories are searched recursively for JPEG, PNG, WebP, BMP and TIFF files) to
`/segment`, several at a time, with a progress bar on stderr. With --out-dir it writes one JSON file
per image (the service's answer) and, with --format png, the overlay drawn over the image
(`NAME.overlay.png`); without --out-dir it prints one JSON line per image on stdout. It ends with a
summary line and exits with status 1 if any image failed (each failure is listed with its error code).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from centermask_client.errors import ApiError, CenterMaskError, ConnectionFailed
from centermask_client.schemas import SegmentResponse

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
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
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
        raise UsageError("no images found")
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
    segment.add_argument("inputs", nargs="+", metavar="IMAGE|DIR", help="image files or directories of them")
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
        help="json: the answer of each image; png: the answer and the overlay drawn over the image "
        "(needs --out-dir) (default: json)",
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
    started = time.perf_counter()
    outcomes = asyncio.run(_segment_all(jobs, args))
    elapsed = time.perf_counter() - started
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    unreachable = [outcome for outcome in failed if outcome.unreachable]
    if unreachable and len(unreachable) == len(jobs):
        # Nothing reached the service: one line says so, not one per image.
        print(
            f"centermask: the service at {args.url} did not answer: {unreachable[0].error}", file=sys.stderr
        )
        return EXIT_FAILED
    for outcome in failed:
        print(f"failed: {outcome.job.source}: {outcome.error}", file=sys.stderr)
    succeeded = len(jobs) - len(failed)
    instances = sum(len(outcome.result.instances) for outcome in outcomes if outcome.result is not None)
    where = f"; results in {args.out_dir}" if args.out_dir is not None and succeeded else ""
    rate = f" ({succeeded / elapsed:.1f} images/s)" if succeeded else ""
    count = f"{len(jobs)} image{'s' if len(jobs) != 1 else ''}"
    print(
        f"centermask: {count}, {succeeded} segmented, {len(failed)} failed, "
        f"{instances} instances in {elapsed:.1f} s{rate}{where}",
        file=sys.stderr,
    )
    return EXIT_FAILED if failed else 0


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
