"""`centermask-bulk INPUT... --output OUT`: segment a whole dataset on Ray Data, resumably, each image once.

INPUTs are folders, globs, COCO annotation files, text files of paths, or fsspec URLs of any of these
(`bulk.inputs`). OUT (a folder or an fsspec URL) receives sharded rows (Parquet or JSON Lines, one per image),
COCO results and the manifest (`bulk.manifest`, `bulk.coco`). Killed at any point, the same command resumes
where the output stands; `--retry-failed` segments the images that failed again.

Without --address a local Ray starts (or the cluster in RAY_ADDRESS is joined); with `--address auto` or
`ray://head:10001` the same command runs on a cluster. Every model flag (--weights, --precision, --backend ...)
comes from `PredictorOptions`. Exit status: 0 when every image was segmented, 1 when some failed (each is a
row with its error), 2 when the command cannot run or the cluster stopped it (what was written stays: the same
command resumes).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pydantic

from bulk.coco import DERIVED, MANIFEST, write_coco, write_manifest
from bulk.inputs import InputError, find_images, normalise
from bulk.manifest import (
    SHARDS,
    JobMismatch,
    State,
    check_job,
    job_differs,
    pending,
    read_images,
    read_job,
    start_job,
)
from bulk.pipeline import ClusterError, Resources, RunStats, check_device
from bulk.shards import ROW_FORMATS, shard_format
from bulk.stages import SegmentSettings
from bulk.storage import Output, OutputLocked
from centermask_client.schemas import MaskFormat
from model.inference.detections import CLASS_AGNOSTIC_IOU
from model.inference.images import DEFAULT_MAX_PIXELS
from model.inference.options import PredictorOptions, add_arguments, from_arguments
from model.weights import DEFAULT_WEIGHTS
from model.weights.checkpoint import (
    CheckpointError,
    file_sha256,
    read_checkpoint,
    resolve_category_ids,
    resolve_config,
)

EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(ValueError):
    """The command cannot run as given: exit status 2 with the message."""


@dataclass(frozen=True)
class ModelFacts:
    """What the driver needs of the checkpoint without building the network."""

    config_name: str
    class_names: list[str]
    category_ids: list[int]
    sha256: str
    resize: tuple[int, int]


def model_facts(options: PredictorOptions) -> ModelFacts:
    """Read the checkpoint once in the driver: a bad file fails here, before any cluster work, and the job
    records which weights made its results."""
    path = options.weights if options.weights is not None else DEFAULT_WEIGHTS
    checkpoint = read_checkpoint(path)
    config, class_names = resolve_config(checkpoint, options.config, str(path))
    category_ids = resolve_category_ids(checkpoint, len(class_names), str(path))
    return ModelFacts(
        config.name,
        class_names,
        category_ids,
        file_sha256(Path(path)),
        (config.min_size_test, config.max_size_test),
    )


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="centermask-bulk",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a folder, glob, COCO annotation file (.json), text file of paths (.txt, .lst) or image; a local "
        "path or an fsspec URL (s3://, gs://, file://, ...)",
    )
    parser.add_argument("--output", required=True, help="folder or fsspec URL of the job's output")
    out = parser.add_argument_group("what to write")
    out.add_argument("--format", choices=ROW_FORMATS, default="parquet", help="format of the row shards")
    out.add_argument("--mask-format", choices=get_args(MaskFormat), default="rle")
    out.add_argument(
        "--score-threshold",
        type=float,
        help="keep detections scoring at least this (default: the model's full output)",
    )
    out.add_argument(
        "--class-agnostic-nms",
        type=float,
        nargs="?",
        const=CLASS_AGNOSTIC_IOU,
        metavar="IOU",
        help="keep only the best-scoring of detections whose boxes overlap with IoU above IOU "
        f"(default {CLASS_AGNOSTIC_IOU}) whatever their classes",
    )
    out.add_argument(
        "--overlays", action="store_true", help="also draw each image's results (overlays/*.png)"
    )
    out.add_argument(
        "--image-root",
        help="where the file_names of COCO annotation INPUTs are (default: each annotation file's folder)",
    )
    out.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="images with more pixels fail (read from the header, before decoding)",
    )
    run = parser.add_argument_group("what to run")
    run.add_argument("--retry-failed", action="store_true", help="segment the images that failed again")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="list the images a run would segment (stdout) and the job's state (stderr); change nothing",
    )
    cluster = parser.add_argument_group("where to run (docs/bulk.md)")
    cluster.add_argument(
        "--address",
        help="Ray cluster: auto (the one on this machine), ray://HEAD:10001, ... (default: $RAY_ADDRESS, "
        "else a new local Ray)",
    )
    cluster.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    cluster.add_argument("--actors", type=int, help="predictors (default: one per GPU, or per CPU left)")
    cluster.add_argument("--cpus-per-actor", type=float, default=1.0)
    cluster.add_argument(
        "--gpus-per-actor", type=float, help="0.5: two actors per GPU (default: 1 with GPUs, else 0)"
    )
    cluster.add_argument("--threads-per-actor", type=int, help="torch threads (default: its CPUs)")
    cluster.add_argument(
        "--batch-size", type=int, help="images per forward pass and actor (default: 1 on CPU, 8 on GPU)"
    )
    cluster.add_argument("--read-tasks", type=int, help="reading tasks at once (default: as CPUs allow)")
    cluster.add_argument("--read-threads", type=int, default=4, help="images each reading task reads at once")
    cluster.add_argument("--read-batch", type=int, default=16, help="images per reading task call")
    cluster.add_argument("--shard-size", type=int, default=1000, help="rows per shard, at most")
    cluster.add_argument(
        "--shard-seconds", type=float, default=60.0, help="seconds of results a kill can lose, at most"
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return execute(args)
    except (
        UsageError,
        InputError,
        JobMismatch,
        OutputLocked,
        ClusterError,
        CheckpointError,
        FileNotFoundError,
    ) as error:
        print(f"centermask-bulk: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # The rows that had arrived were written (bulk.pipeline.run); nothing else needs undoing.
        print("centermask-bulk: interrupted; run the same command to resume", file=sys.stderr)
        return 130
    except pydantic.ValidationError as error:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        print(f"centermask-bulk: error: {problems}", file=sys.stderr)
        return EXIT_USAGE


def _check_numbers(args: argparse.Namespace) -> None:
    positive = ("actors", "cpus_per_actor", "threads_per_actor", "batch_size", "read_tasks", "num_cpus")
    for name in (*positive, "read_threads", "read_batch", "shard_size", "shard_seconds", "max_pixels"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.gpus_per_actor is not None and args.gpus_per_actor < 0:
        raise UsageError(f"--gpus-per-actor cannot be negative, got {args.gpus_per_actor}")
    if args.class_agnostic_nms is not None and not 0 < args.class_agnostic_nms <= 1:
        raise UsageError(f"--class-agnostic-nms takes an IoU in (0, 1], got {args.class_agnostic_nms}")


def _absolute(options: PredictorOptions) -> PredictorOptions:
    """Local files as absolute paths: Ray's workers do not run in the driver's directory."""
    updates = {
        name: getattr(options, name).resolve()
        for name in ("weights", "onnx_model")
        if getattr(options, name) is not None
    }
    return options.model_copy(update=updates)


def execute(args: argparse.Namespace) -> int:
    _check_numbers(args)
    options = _absolute(from_arguments(args))
    check_device(options)
    facts = model_facts(options)
    settings = SegmentSettings(
        mask_format=args.mask_format,
        row_format=args.format,
        score_threshold=args.score_threshold,
        class_agnostic_iou=args.class_agnostic_nms,
    )
    job = {
        "inputs": [normalise(given) for given in args.inputs],
        "image_root": normalise(args.image_root) if args.image_root else None,
        "config": facts.config_name,
        "weights_sha256": facts.sha256,
        "precision": options.precision.value,
        "backend": options.backend.value,
        "jpeg_draft": options.jpeg_draft,
        "format": args.format,
        "mask_format": args.mask_format,
        "score_threshold": args.score_threshold,
        "class_agnostic_iou": args.class_agnostic_nms,
        "overlays": args.overlays,
    }
    output = Output.open(args.output)
    shards = shard_format(args.format, args.mask_format)
    if args.dry_run:
        return _dry_run(args, output, job, shards)
    with output.lock():
        existing = read_job(output)
        if existing is not None and not output.sizes(SHARDS) and job_differs(existing, job):
            # Nothing written yet (a run that stopped before its first shard: a typo in a flag, actors that
            # could not start): the new command is the job now.
            print(
                f"centermask-bulk: {output.url} holds a job with no results yet; replacing it",
                file=sys.stderr,
            )
            existing = None
        if existing is None:
            images = find_images(args.inputs, args.image_root, exclude=args.output)
            _clear_derived(output)
            start_job(output, job, images)
            print(f"centermask-bulk: a new job of {len(images)} images in {output.url}", file=sys.stderr)
        else:
            check_job(existing, job, output.url)
        state = State.load(output, shards)
        table = read_images(output)
        if args.retry_failed:
            retried = state.forget_failed()
            print(f"centermask-bulk: {retried} failed images to segment again", file=sys.stderr)
        todo = pending(table, state.done_ids())
        stats: RunStats | None = None
        if todo.num_rows:
            print(f"centermask-bulk: {todo.num_rows} of {table.num_rows} images to segment", file=sys.stderr)
            _clear_derived(output)
            stats = _segment(args, todo, state, options, settings, facts)
        else:
            print(f"centermask-bulk: all {table.num_rows} images are done already", file=sys.stderr)
        complete = pending(table, state.done_ids()).num_rows == 0
        if complete and (stats is not None or not all(output.exists(name) for name in _expected(args))):
            write_coco(state, facts.class_names, facts.category_ids, masks=args.mask_format == "rle")
        # A run with nothing to do keeps the report of the last one that did something.
        last_run = _run_summary(stats) if stats is not None else _previous_run(output)
        manifest = write_manifest(state, job, table.num_rows, complete, last_run)
        _report(stats, manifest, output.url)
        return 0 if complete and not manifest["failed"] else EXIT_FAILED


def _previous_run(output: Output) -> dict[str, Any] | None:
    if not output.exists(MANIFEST):
        return None
    previous = json.loads(output.read(MANIFEST)).get("last_run")
    return dict(previous) if isinstance(previous, dict) else None


def _expected(args: argparse.Namespace) -> list[str]:
    names = [name for name in DERIVED if name != MANIFEST]
    return [name for name in names if args.mask_format == "rle" or "segm" not in name]


def _clear_derived(output: Output) -> None:
    """Files that describe a finished job go while it is not one, so none of them is ever stale."""
    for name in DERIVED:
        output.remove(name)


def _segment(
    args: argparse.Namespace,
    todo: Any,
    state: State,
    options: PredictorOptions,
    settings: SegmentSettings,
    facts: ModelFacts,
) -> RunStats:
    from bulk import pipeline

    resources = Resources(
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
        threads_per_actor=args.threads_per_actor,
        batch_size=args.batch_size,
        read_tasks=args.read_tasks,
        read_threads=args.read_threads,
        read_batch=args.read_batch,
        shard_size=args.shard_size,
        shard_seconds=args.shard_seconds,
    )
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("Ray is not installed: pip install 'centermask-serve[bulk]'") from None
    return pipeline.run(
        todo,
        state,
        options,
        settings,
        resources,
        draft_to=facts.resize if options.jpeg_draft else None,
        max_pixels=args.max_pixels,
        overlays=args.overlays,
        address=args.address,
        num_cpus=args.num_cpus,
    )


def _run_summary(stats: RunStats) -> dict[str, Any]:
    steady = stats.steady_images_per_second
    return {
        "images": stats.images,
        "failed": stats.failed,
        "instances": stats.instances,
        "started_at": round(stats.started_at, 3),
        "seconds": round(stats.finished, 3),
        "ray_start_seconds": round(stats.ray_ready, 3),
        "actors_ready_seconds": None if stats.actors_ready is None else round(stats.actors_ready, 3),
        "first_rows_seconds": None if stats.first_rows is None else round(stats.first_rows, 3),
        "images_per_second": round(stats.images_per_second, 3),
        "steady_images_per_second": None if steady is None else round(steady, 3),
    }


def _report(stats: RunStats | None, manifest: dict[str, Any], location: str) -> None:
    if stats is not None:
        steady = stats.steady_images_per_second
        after = (
            "" if steady is None else f"; {steady:.2f}/s from the model ready at {stats.actors_ready:.1f} s"
        )
        print(
            f"centermask-bulk: this run: {stats.images} images, {stats.instances} instances, "
            f"{stats.failed} failed, {stats.finished:.1f} s ({stats.images_per_second:.2f} images/s{after})",
            file=sys.stderr,
        )
        for path, error in stats.failures:
            print(f"  failed: {path}: {error}", file=sys.stderr)
        if stats.failed > len(stats.failures):
            print(
                f"  ... and {stats.failed - len(stats.failures)} more (rows with an error)", file=sys.stderr
            )
    state = "complete" if manifest["complete"] else f"{manifest['missing']} images missing"
    print(
        f"centermask-bulk: the job: {manifest['done']} of {manifest['images']} images ({state}), "
        f"{manifest['instances']} instances, {manifest['failed']} failed → {location}",
        file=sys.stderr,
    )


def _dry_run(args: argparse.Namespace, output: Output, job: dict[str, Any], shards: Any) -> int:
    existing = read_job(output)
    if existing is not None and not output.sizes(SHARDS) and job_differs(existing, job):
        existing = None  # replaced, as a run would
    if existing is None:
        images = find_images(args.inputs, args.image_root, exclude=args.output)
        for image in images:
            print(image.location)
        print(f"centermask-bulk: a new job: {len(images)} images to segment", file=sys.stderr)
        return 0
    check_job(existing, job, output.url)
    table = read_images(output)
    state = State.load(output, shards, read_only=True)
    done = state.done_ids()
    failed = state.failed_ids()
    if args.retry_failed:
        done = done[~_isin(done, failed)]
    todo = pending(table, done)
    for path in todo.column("path").to_pylist():
        print(path)
    print(
        f"centermask-bulk: {table.num_rows} images in the job, {len(state.done_ids())} done "
        f"({len(failed)} failed), {todo.num_rows} to segment",
        file=sys.stderr,
    )
    return 0


def _isin(values: Any, wanted: list[int]) -> Any:
    import numpy as np

    return np.isin(values, np.asarray(wanted, dtype=np.int64))


if __name__ == "__main__":
    raise SystemExit(main())
