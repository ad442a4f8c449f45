"""Writing a generated instance-segmentation dataset in the COCO layout that `training.data.coco` reads.

``OUT/images/`` holds the images, ``OUT/annotations.json`` the labels: image ids are ``index + 1``, category
ids ``class index + 1`` (in the order of the class names given), annotation ids ``1..n`` in image order, and
every mask a compressed RLE whose box and area are computed from the mask itself.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_util

ImageJob = Callable[[int], tuple[dict[str, Any], list[dict[str, Any]]]]


def mask_bbox(mask: np.ndarray) -> list[int]:
    """Tight COCO box [x, y, w, h] of a non-empty bool mask (H, W)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def instance_annotation(image_id: int, category_id: int, mask: np.ndarray) -> dict[str, Any]:
    """The COCO annotation (without its id) of one object's non-empty bool mask (H, W)."""
    height, width = mask.shape
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": mask_bbox(mask),
        "area": int(np.count_nonzero(mask)),
        "iscrowd": 0,
        "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
    }


def write_dataset(
    out_dir: str | Path,
    num_images: int,
    job: ImageJob,
    class_names: Sequence[str],
    info: dict[str, Any],
    workers: int = 1,
) -> Path:
    """Run ``job(index)`` for every image (it saves the image under ``out_dir/images`` and returns its COCO
    image record and annotations without ids), then write ``out_dir/annotations.json``; return its path.

    ``workers`` > 1 spreads the jobs over processes (``job`` must then pickle); the output does not depend on
    it as long as each job depends only on its index.
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            chunk = max(1, num_images // (4 * workers))
            results = list(pool.map(job, range(num_images), chunksize=chunk))
    else:
        results = [job(index) for index in range(num_images)]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record, image_annotations in results:
        images.append(record)
        for annotation in image_annotations:
            annotations.append({"id": len(annotations) + 1, **annotation})
    coco = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": index + 1, "name": name, "supercategory": "shape"}
            for index, name in enumerate(class_names)
        ],
    }
    json_path = out_dir / "annotations.json"
    json_path.write_text(json.dumps(coco))
    return json_path
