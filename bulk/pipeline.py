"""The job on Ray Data: the streaming pipeline, its resources, and the driver that writes what comes out.

    the missing images (image_id, path)
      → map_batches(read_images)   tasks, `read_tasks` at a time, `read_threads` images each: read + decode
      → map_batches(Segmenter)     a pool of `actors` actors, each with one Predictor on `cpus_per_actor`
                                   CPUs and `gpus_per_actor` GPUs, `batch_size` images per forward pass
      → map_batches(draw_overlays) tasks (only with --overlays)
      → the driver: rows into shards (`ShardWriter`), every `shard_size` rows or `shard_seconds`

Ray Data streams: a block of images moves on as soon as a stage is done with it, and its backpressure keeps
the blocks in flight within the object store's budget, so memory does not grow with the input. Ray retries the
tasks and restarts the actors of a worker that dies (Ray Data's defaults for both), and the driver writes each
image once whatever Ray recomputes (`bulk.manifest`).
"""

from __future__ import annotations

import logging
import math
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bulk.manifest import OVERLAYS, State, merge_indexes
from bulk.shards import Index
from bulk.stages import READY_AT, Segmenter, SegmentSettings, draw_overlays, read_images
from model.inference.options import PredictorOptions

logger = logging.getLogger(__name__)
# Failures listed in the summary; all of them are in the rows.
MAX_LISTED_FAILURES = 20
# Model batch per GPU actor when none is given: enough images per forward pass to keep a GPU busy.
GPU_BATCH_SIZE = 8
# Blocks of the pending images at most: each is an object in Ray's object store, put there by the driver.
MAX_BLOCKS = 20_000


class ClusterError(RuntimeError):
    """The Ray cluster cannot run the job as asked (no GPUs for --device cuda, actors that cannot load the
    model, say)."""


@dataclass(frozen=True)
class Resources:
    """How the job spreads over the cluster; None picks a default from the cluster's resources."""

    # Actors in the pool, each holding one Predictor. Default: as many as the GPUs hold (GPUs /
    # gpus_per_actor) with GPUs, else one per CPU beyond the one left for reading and writing.
    actors: int | None = None
    cpus_per_actor: float = 1.0
    # GPUs per actor: 0.5 puts two actors on each GPU. Default: 1 where the device may be CUDA and the cluster
    # has GPUs, else 0.
    gpus_per_actor: float | None = None
    # torch's threads in each actor. Default: its CPUs.
    threads_per_actor: int | None = None
    # Images per forward pass. Default: 1 on CPUs (results as `predict` gives them, bit for bit), 8 on GPUs.
    batch_size: int | None = None
    # Reading tasks running at once. Default: as many as Ray Data schedules on the CPUs left.
    read_tasks: int | None = None
    read_cpus: float = 1.0
    read_threads: int = 4
    # Images per reading task call.
    read_batch: int = 16
    shard_size: int = 1000
    shard_seconds: float = 60.0


@dataclass
class RunStats:
    """What one run did. Times are seconds from the run's start."""

    images: int = 0
    failed: int = 0
    instances: int = 0
    # The run's start, wall clock (seconds since the epoch): what the times below count from.
    started_at: float = 0.0
    ray_ready: float = 0.0
    # When the first actor had its model loaded, and when the first rows reached the driver.
    actors_ready: float | None = None
    first_rows: float | None = None
    finished: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.finished if self.finished else 0.0

    @property
    def steady_images_per_second(self) -> float | None:
        """Throughput from the moment the first actor was ready: Ray's start-up and the loading of the model
        left out (the reading of the first images, which overlaps them, not)."""
        if self.actors_ready is None or self.finished <= self.actors_ready:
            return None
        return self.images / (self.finished - self.actors_ready)


class ShardWriter:
    """The driver's end of the pipeline: the one writer of rows (see `bulk.manifest` for why that matters)."""

    def __init__(
        self, state: State, shard_size: int, shard_seconds: float, clock: Callable[[], float]
    ) -> None:
        self.state = state
        self.shard_size = shard_size
        self.shard_seconds = shard_seconds
        self.clock = clock
        self.written: set[int] = set()
        self.tables: list[pa.Table] = []
        self.indexes: list[Index] = []
        self.rows = 0
        self.opened = clock()
        self.stats = RunStats()
        # The earliest actor's ready time (wall clock, as the actors report it).
        self.ready_at: float | None = None

    def add(self, table: pa.Table) -> None:
        if READY_AT in table.column_names:
            ready = pc.min(table.column(READY_AT)).as_py()
            if ready is not None and (self.ready_at is None or ready < self.ready_at):
                self.ready_at = ready
            table = table.drop_columns([READY_AT])
        ids = table.column("image_id").to_pylist()
        fresh = [image_id not in self.written for image_id in ids]
        if not all(fresh):
            # A row Ray computed twice (a retried task): written once already.
            table = table.filter(pa.array(fresh))
            ids = [image_id for image_id, keep in zip(ids, fresh, strict=True) if keep]
        if not ids:
            return
        self.written.update(ids)
        if "overlay" in table.column_names:
            self._write_overlays(table)
            table = table.drop_columns(["overlay", "overlay_name"])
        index = self.state.shards.index(table)
        self.tables.append(table)
        self.indexes.append(index)
        self.rows += len(ids)
        self.stats.images += len(ids)
        self.stats.failed += len(index.failed)
        self.stats.instances += index.instances
        if len(self.stats.failures) < MAX_LISTED_FAILURES and index.failed:
            for row in self.state.shards.records(table):
                if row["error"] is not None and len(self.stats.failures) < MAX_LISTED_FAILURES:
                    self.stats.failures.append((row["path"], row["error"]))
        if self.rows >= self.shard_size or self.clock() - self.opened >= self.shard_seconds:
            self.flush()

    def _write_overlays(self, table: pa.Table) -> None:
        names = table.column("overlay_name").to_pylist()
        for name, overlay in zip(names, table.column("overlay").to_pylist(), strict=True):
            if overlay is not None:
                # Written again, whole, when a resume segments the image again.
                self.state.output.write(posixpath.join(OVERLAYS, name), overlay)

    def flush(self) -> None:
        if self.tables:
            self.state.commit(self.tables, merge_indexes(self.indexes))
        self.tables, self.indexes, self.rows = [], [], 0
        self.opened = self.clock()


def check_device(options: PredictorOptions) -> None:
    """Refuse a device no actor can have, before anything runs."""
    if options.device.startswith("cuda") and options.device not in ("cuda", "cuda:0"):
        raise ClusterError(
            f"--device {options.device}: Ray gives each actor its own GPU, visible to it as cuda; use --device cuda"
        )


def gpu_plan(options: PredictorOptions, cluster_gpus: float, gpus_per_actor: float | None) -> float:
    """GPUs per actor for this device option on a cluster with `cluster_gpus` GPUs."""
    check_device(options)
    if options.device == "cpu" or options.backend.value == "onnxruntime":
        if gpus_per_actor:
            raise ClusterError(
                f"--gpus-per-actor {gpus_per_actor} with --device cpu: the actors would not use them"
            )
        return 0.0
    wanted = gpus_per_actor if gpus_per_actor is not None else (1.0 if cluster_gpus > 0 else 0.0)
    if options.device.startswith("cuda") and (cluster_gpus <= 0 or wanted <= 0):
        raise ClusterError(
            f"--device {options.device} needs GPUs, and "
            + ("the Ray cluster has none" if cluster_gpus <= 0 else "--gpus-per-actor is 0")
        )
    if wanted > cluster_gpus:
        raise ClusterError(f"--gpus-per-actor {wanted}: the Ray cluster has {cluster_gpus:g} GPUs")
    return wanted


def plan(
    options: PredictorOptions, resources: Resources, cluster: dict[str, float]
) -> tuple[int, float, int, int]:
    """(actors, gpus per actor, threads per actor, batch size) on a cluster of these resources."""
    gpus = gpu_plan(options, cluster.get("GPU", 0.0), resources.gpus_per_actor)
    cpus = cluster.get("CPU", 1.0)
    if resources.cpus_per_actor > cpus:
        raise ClusterError(
            f"--cpus-per-actor {resources.cpus_per_actor:g}: the Ray cluster has {cpus:g} CPUs"
        )
    if resources.actors is not None:
        actors = resources.actors
    elif gpus > 0:
        actors = max(1, math.floor(cluster["GPU"] / gpus + 1e-9))
    else:
        actors = max(1, math.floor((cpus - resources.read_cpus) / resources.cpus_per_actor + 1e-9))
    threads = resources.threads_per_actor or max(1, round(resources.cpus_per_actor))
    batch_size = resources.batch_size or (GPU_BATCH_SIZE if gpus > 0 else 1)
    return actors, gpus, threads, batch_size


def connect(address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at `address`, or start a local one; True when this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    if address is not None and num_cpus is not None:
        raise ClusterError("--num-cpus sizes a local Ray; a cluster at --address has its own")
    ray.init(address=address, num_cpus=num_cpus, include_dashboard=False)
    return True


def run(
    pending: pa.Table,
    state: State,
    options: PredictorOptions,
    settings: SegmentSettings,
    resources: Resources,
    *,
    draft_to: tuple[int, int] | None,
    max_pixels: int,
    overlays: bool,
    address: str | None = None,
    num_cpus: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> RunStats:
    """Segment the pending images into the output's shards; the statistics of the run."""
    import ray
    import ray.data
    import ray.exceptions

    started, started_wall = clock(), time.time()
    owned = connect(address, num_cpus)
    writer = ShardWriter(state, resources.shard_size, resources.shard_seconds, clock)
    stats = writer.stats
    stats.started_at = started_wall
    try:
        stats.ray_ready = clock() - started
        actors, gpus, threads, batch_size = plan(options, resources, ray.cluster_resources())
        logger.info(
            "%d actors, %g GPUs and %d threads each, batches of %d", actors, gpus, threads, batch_size
        )
        settings = replace(settings, batch_size=batch_size, threads=threads, keep_pixels=overlays)
        dataset = _dataset(pending, resources.read_batch)
        dataset = dataset.map_batches(
            read_images,
            fn_kwargs={"draft_to": draft_to, "max_pixels": max_pixels, "threads": resources.read_threads},
            batch_format="pyarrow",
            batch_size=resources.read_batch,
            num_cpus=resources.read_cpus,
            concurrency=resources.read_tasks,
            # Ray's default for tasks (a worker runs any number of them), stated: remote arguments unlike the
            # actors' keep Ray Data from fusing reading into the actors, where it would run in turn with
            # inference instead of beside it.
            max_calls=0,
        )
        dataset = dataset.map_batches(
            Segmenter,
            fn_constructor_kwargs={"options": options.model_dump(mode="json"), "settings": settings},
            batch_format="pyarrow",
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=resources.cpus_per_actor,
            num_gpus=gpus,
        )
        if overlays:
            dataset = dataset.map_batches(
                draw_overlays,
                fn_kwargs={"row_format": settings.row_format, "mask_format": settings.mask_format},
                batch_format="pyarrow",
                batch_size=resources.read_batch,
                num_cpus=resources.read_cpus,
            )
        try:
            for table in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                if stats.first_rows is None:
                    stats.first_rows = clock() - started
                writer.add(table)
        except ray.exceptions.RayError as error:
            # Ray's message ends with the remote traceback; its last line is what went wrong (an actor that
            # could not load the model, say). What was written stays: the same command resumes.
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            raise ClusterError(
                f"the job stopped on the cluster: {lines[-1] if lines else error!r}"
            ) from error
    finally:
        # Rows that arrived are complete: keep them, whatever ended the run (Ctrl-C, a failed stage).
        writer.flush()
        stats.finished = clock() - started
        if writer.ready_at is not None:
            stats.actors_ready = max(0.0, writer.ready_at - started_wall)
        if owned:
            ray.shutdown()
    return stats


def _dataset(pending: pa.Table, read_batch: int) -> Any:
    """The pending images as a dataset of small blocks: a block is what one reading task takes at a time."""
    import ray.data

    # A block is the unit that moves through the stages and reaches the driver: one reading batch, so rows
    # stream out steadily; bigger for huge jobs, so that they stay within MAX_BLOCKS.
    rows = max(read_batch, math.ceil(pending.num_rows / MAX_BLOCKS))
    blocks = [pending.slice(start, rows) for start in range(0, pending.num_rows, rows)]
    return ray.data.from_arrow(blocks)
