"""Helpers of the bulk tests: drawn images, the rows an output holds, and what `predict` gives for them."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from bulk.shards import shard_format


def draw_image(seed: int, size: tuple[int, int] | None = None) -> Image.Image:
    """A small image of a few filled shapes on noise; its size varies with the seed unless given."""
    rng = np.random.default_rng(seed)
    width, height = size or (int(rng.integers(48, 160)), int(rng.integers(48, 160)))
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        x1, y1 = x0 + int(rng.integers(8, width // 2)), y0 + int(rng.integers(8, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    return image


def encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def write_images(folder: Path, count: int, first_seed: int = 0) -> list[Path]:
    """`count` drawn images, PNG and JPEG alternately, some in a subfolder."""
    paths = []
    for index in range(count):
        seed = first_seed + index
        suffix, image_format = (".png", "PNG") if index % 2 == 0 else (".jpg", "JPEG")
        path = folder / ("nested" if index % 5 == 4 else "") / f"image-{seed:03d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(draw_image(seed), image_format))
        paths.append(path)
    return paths


def output_rows(output: Path) -> list[dict[str, Any]]:
    """Every row of an output's shards, whichever their format."""
    job = json.loads((output / "job.json").read_text())
    shards = shard_format(job["format"], job["mask_format"])
    return [row for path in sorted((output / "shards").iterdir()) for row in shards.rows(path.read_bytes())]


def reference_records(
    predictor: Any,
    paths: Iterable[str],
    read: Callable[[str], str | bytes] = lambda path: path,
    mask_format: str = "rle",
) -> dict[str, list[dict[str, Any]]]:
    """Path → the instances `predict` gives for the image alone (read by `read`), with one torch thread, as
    the actors run (float sums depend on how many threads share them)."""
    from model.inference.images import load_image
    from model.wire.records import image_record

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        records = {}
        for path in paths:
            (detections,) = predictor.predict([load_image(read(path))])
            record = image_record(
                path.rsplit("/", 1)[-1],
                detections,
                predictor.class_names,
                predictor.category_ids,
                mask_format,
            )
            records[path] = record["instances"]
        return records
    finally:
        torch.set_num_threads(threads)
