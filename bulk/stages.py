"""The work of each stage of the pipeline on one batch, as plain functions of pyarrow tables (no Ray here:
`bulk.pipeline` runs them as Ray Data tasks and actors, and the tests call them directly).

    read_images     tasks:  (image_id, path) → the decoded pixels, or the error that stopped them
    Segmenter       actors: one Predictor each; pixels → rows (`bulk.shards`), batched by padded shape
    draw_overlays   tasks:  rows + pixels → rows + PNG overlay (only with --overlays)

An image that fails anywhere becomes a row with its error, and the batch goes on.
"""

from __future__ import annotations

import posixpath
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import torch
from PIL import Image as PILImage

from bulk.inputs import is_url
from bulk.shards import RowFormat, ShardFormat, failed_row, shard_format
from centermask_client.overlay import draw_overlay, encode_image
from centermask_client.schemas import ImageResult, MaskFormat
from model.inference.detections import Selection
from model.inference.images import DecodedImage, ImageError, load_image
from model.inference.load import load_predictor
from model.inference.options import PredictorOptions
from model.inference.preprocess import PreparedImage
from model.wire.records import image_record

# A Segmenter's rows carry when its model was ready (wall clock): the run's statistics leave start-up out by it.
READY_AT = "_ready_at"
PIXEL_COLUMNS = ("pixels", "decoded_height", "decoded_width", "height", "width")
DECODED = pa.schema(
    [
        pa.field("image_id", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        # The decoded (h, w, 3) uint8 RGB pixels, row-major; null when the image failed.
        pa.field("pixels", pa.large_binary()),
        pa.field("decoded_height", pa.int64()),
        pa.field("decoded_width", pa.int64()),
        # The full upright image's size: smaller pixels mean a JPEG decoded reduced (--jpeg-draft).
        pa.field("height", pa.int64()),
        pa.field("width", pa.int64()),
        pa.field("error", pa.string()),
    ]
)


def file_name(location: str) -> str:
    return posixpath.basename(location.rstrip("/"))


def read_error(error: Exception) -> str:
    """What went wrong reading an image, for its row: the decoder's own message, or the I/O failure."""
    if isinstance(error, ImageError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return f"cannot read the file: {error.strerror}"
    if isinstance(error, FileNotFoundError):
        return "cannot read the file: no such file"
    return f"cannot read the file: {type(error).__name__}: {error}"


def read_one(location: str, draft_to: tuple[int, int] | None, max_pixels: int) -> DecodedImage:
    """Read and decode one image: a local path directly, a URL through fsspec; the one decoder either way."""
    if is_url(location):
        with fsspec.open(location, "rb") as stream:
            return load_image(stream.read(), draft_to=draft_to, max_pixels=max_pixels)
    return load_image(location, draft_to=draft_to, max_pixels=max_pixels)


def read_images(
    batch: pa.Table, *, draft_to: tuple[int, int] | None, max_pixels: int, threads: int
) -> pa.Table:
    """(image_id, path) rows → `DECODED` rows. `threads` images are read at a time: reading from an object
    store is mostly waiting, and Pillow decodes without holding the GIL."""
    paths = batch.column("path").to_pylist()

    def attempt(location: str) -> DecodedImage | str:
        try:
            return read_one(location, draft_to, max_pixels)
        except Exception as error:  # an unreadable image is a row with its error, never a failed job
            return read_error(error)

    if threads > 1 and len(paths) > 1:
        with ThreadPoolExecutor(min(threads, len(paths))) as pool:
            results = list(pool.map(attempt, paths))
    else:
        results = [attempt(location) for location in paths]
    columns: dict[str, list[Any]] = {name: [] for name in DECODED.names}
    columns["image_id"] = batch.column("image_id").to_pylist()
    columns["path"] = paths
    for result in results:
        if isinstance(result, str):
            for name in PIXEL_COLUMNS:
                columns[name].append(None)
            columns["error"].append(result)
            continue
        columns["pixels"].append(result.pixels.tobytes())
        columns["decoded_height"].append(result.pixels.shape[0])
        columns["decoded_width"].append(result.pixels.shape[1])
        columns["height"].append(result.size[0])
        columns["width"].append(result.size[1])
        columns["error"].append(None)
    return pa.Table.from_pydict(columns, schema=DECODED)


def decoded_image(batch: pa.Table, row: int) -> DecodedImage:
    """Row `row` of a `DECODED` table as the decoder gave it (the pixels are not copied)."""
    height = batch.column("decoded_height")[row].as_py()
    width = batch.column("decoded_width")[row].as_py()
    buffer = batch.column("pixels")[row].as_buffer()
    pixels = np.frombuffer(buffer, dtype=np.uint8).reshape(height, width, 3)
    return DecodedImage(pixels, (batch.column("height")[row].as_py(), batch.column("width")[row].as_py()))


@dataclass(frozen=True)
class SegmentSettings:
    """What an actor needs besides the predictor's options: what to keep and how to write it."""

    mask_format: MaskFormat = "rle"
    row_format: RowFormat = "parquet"
    score_threshold: float | None = None
    class_agnostic_iou: float | None = None
    # Images per forward pass (of one padded shape).
    batch_size: int = 1
    # torch's threads in the actor; None leaves torch's default (Ray sets it to the actor's CPUs).
    threads: int | None = None
    # Hand the pixels on to the overlay stage.
    keep_pixels: bool = False


class Segmenter:
    """One Predictor, loaded once per actor; each call segments a batch of `DECODED` rows into rows."""

    def __init__(self, options: dict[str, Any], settings: SegmentSettings) -> None:
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        self.settings = settings
        self.predictor = load_predictor(PredictorOptions(**options))
        if self.predictor.compiled:
            # Compiling happens at warm-up only (model.inference.dense), one shape at a time.
            for shape in self.predictor.common_shapes():
                self.predictor.warm_up(shape, batch_size=settings.batch_size)
        self.selection = Selection(score_threshold=settings.score_threshold)
        self.shards: ShardFormat = shard_format(settings.row_format, settings.mask_format)
        self.ready_at = time.time()

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = batch.column("path").to_pylist()
        ids = batch.column("image_id").to_pylist()
        errors = batch.column("error").to_pylist()
        rows: list[dict[str, Any] | None] = [None] * len(paths)
        groups: dict[tuple[int, int], list[tuple[int, PreparedImage]]] = defaultdict(list)
        for row, error in enumerate(errors):
            if error is not None:
                rows[row] = failed_row(paths[row], ids[row], file_name(paths[row]), error)
                continue
            try:
                prepared = self.predictor.prepare(decoded_image(batch, row))
            except Exception as exc:  # a bad image fails alone
                rows[row] = failed_row(paths[row], ids[row], file_name(paths[row]), _failure(exc))
                continue
            groups[prepared.padded_shape].append((row, prepared))
        size = max(1, self.settings.batch_size)
        for members in groups.values():
            for start in range(0, len(members), size):
                for row, outcome in self._segment(members[start : start + size]):
                    if isinstance(outcome, str):
                        rows[row] = failed_row(paths[row], ids[row], file_name(paths[row]), outcome)
                        continue
                    record = image_record(
                        file_name(paths[row]),
                        outcome,
                        self.predictor.class_names,
                        self.predictor.category_ids,
                        self.settings.mask_format,
                    )
                    rows[row] = {"path": paths[row], "image_id": ids[row], **record, "error": None}
        table = self.shards.table([row for row in rows if row is not None])
        table = table.append_column(READY_AT, pa.array([self.ready_at] * table.num_rows, pa.float64()))
        if self.settings.keep_pixels:
            for name in PIXEL_COLUMNS:
                table = table.append_column(f"_{name}", batch.column(name))
        return table

    def _segment(self, members: list[tuple[int, PreparedImage]]) -> list[tuple[int, Any]]:
        """(row, Detections or an error) of images of one padded shape, in one forward pass; if that
        fails, one image at a time, so that only the image at fault fails."""
        try:
            found = self.predictor.infer(
                [prepared for _, prepared in members], [self.selection] * len(members)
            )
        except Exception as exc:
            if len(members) == 1:
                return [(members[0][0], _failure(exc))]
            return [result for member in members for result in self._segment([member])]
        if self.settings.class_agnostic_iou is not None:
            found = [detections.class_agnostic_nms(self.settings.class_agnostic_iou) for detections in found]
        return [(row, detections) for (row, _), detections in zip(members, found, strict=True)]


def _failure(error: Exception) -> str:
    return f"segmentation failed: {type(error).__name__}: {error}"


def draw_overlays(batch: pa.Table, *, row_format: RowFormat, mask_format: MaskFormat) -> pa.Table:
    """Rows from a `Segmenter` that kept its pixels → the same rows with `overlay`, the PNG of the image with
    its instances drawn (null for a failed image), and `overlay_name`, its file name; without the pixels."""
    shards = shard_format(row_format, mask_format)
    records = shards.records(batch)
    overlays: list[bytes | None] = []
    for row, record in enumerate(records):
        if record["error"] is not None:
            overlays.append(None)
            continue
        pixels = batch.column("_pixels")[row].as_buffer()
        height, width = (
            batch.column("_decoded_height")[row].as_py(),
            batch.column("_decoded_width")[row].as_py(),
        )
        image = PILImage.fromarray(np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3))
        if (height, width) != (record["height"], record["width"]):
            # Decoded reduced (--jpeg-draft): the masks are in the full image's pixels.
            image = image.resize((record["width"], record["height"]), PILImage.Resampling.BILINEAR)
        result = ImageResult.model_validate(
            {key: record[key] for key in ("file", "height", "width", "instances")}
        )
        overlays.append(encode_image(draw_overlay(image, result.instances), "png"))
    # Named by image id (unique), then the file's name (readable).
    names = [f"{record['image_id']}-{posixpath.splitext(record['file'])[0]}.png" for record in records]
    table = batch.drop_columns([f"_{name}" for name in PIXEL_COLUMNS])
    table = table.append_column(pa.field("overlay", pa.large_binary()), pa.array(overlays, pa.large_binary()))
    return table.append_column(pa.field("overlay_name", pa.string()), pa.array(names, pa.string()))
