"""What a finished job adds to its shards: COCO files for evaluation tools, and the manifest.

    coco_bbox_results.json   COCO box results: [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]
    coco_segm_results.json   COCO mask results (RLE masks only): [{"image_id", "category_id", "segmentation",
                             "score": mask_score}]
    coco_images.json         a COCO dataset of the job's images without annotations (id, file_name, height,
                             width; the checkpoint's categories): `COCO(...).loadRes(...)` takes the results
                             against it when the images came from folders rather than an annotation file
    manifest.json            the job, its totals and its shards

The results are split as COCO's evaluation wants them: boxes ranked by `score`, masks by `mask_score`
(`model.wire.records.coco_results`). They are streamed shard by shard, never held whole.
"""

from __future__ import annotations

import contextlib
import io
import posixpath
from collections.abc import Sequence
from typing import IO, Any

import orjson

from bulk.manifest import State
from model.wire.records import coco_results

BBOX_RESULTS = "coco_bbox_results.json"
SEGM_RESULTS = "coco_segm_results.json"
IMAGES = "coco_images.json"
MANIFEST = "manifest.json"
DERIVED = (BBOX_RESULTS, SEGM_RESULTS, IMAGES, MANIFEST)


class _JsonArray:
    """A JSON array written one element at a time."""

    def __init__(self, stream: IO[bytes], opening: bytes = b"[") -> None:
        self.stream = stream
        self.first = True
        stream.write(opening)

    def add(self, item: Any) -> None:
        self.stream.write(b"\n" if self.first else b",\n")
        self.first = False
        self.stream.write(orjson.dumps(item))


def write_coco(state: State, class_names: Sequence[str], category_ids: Sequence[int], masks: bool) -> None:
    """The three COCO files of a finished job (the mask results only when `masks`: RLE)."""
    output = state.output
    categories = [
        {"id": int(category), "name": name} for name, category in zip(class_names, category_ids, strict=True)
    ]
    with contextlib.ExitStack() as files:
        bbox_stream = files.enter_context(output.write_stream(BBOX_RESULTS))
        images_stream = files.enter_context(output.write_stream(IMAGES))
        # Without RLE masks there are no mask results: the file is not written (an old one goes).
        segm_stream = files.enter_context(output.write_stream(SEGM_RESULTS)) if masks else io.BytesIO()
        boxes, segments = _JsonArray(bbox_stream), _JsonArray(segm_stream)
        images = _JsonArray(images_stream, b'{"images": [')
        for shard in state.shard_files():
            for row in state.shards.rows(output.read(shard)):
                if row["error"] is not None:
                    continue
                images.add(
                    {
                        "id": row["image_id"],
                        "file_name": row["path"],
                        "height": row["height"],
                        "width": row["width"],
                    }
                )
                box_results, mask_results = coco_results(row["image_id"], row["instances"])
                for result in box_results:
                    boxes.add(result)
                for result in mask_results:
                    segments.add(result)
        for stream in (bbox_stream, segm_stream):
            stream.write(b"\n]\n")
        images_stream.write(
            b"\n], " + orjson.dumps({"annotations": [], "categories": categories})[1:] + b"\n"
        )
    if not masks:
        output.remove(SEGM_RESULTS)


def write_manifest(
    state: State, job: dict[str, Any], images: int, complete: bool, last_run: dict[str, Any] | None = None
) -> dict[str, Any]:
    """manifest.json: the job, its totals, every shard with its rows, and what the last run did (when it
    segmented anything); returns it."""
    entries = [state.entries[posixpath.basename(path)] for path in state.shard_files()]
    done = sum(len(entry.ids) for entry in entries)
    manifest = {
        "job": job,
        "complete": complete,
        "images": images,
        "done": done,
        "missing": images - done,
        "failed": sum(len(entry.failed) for entry in entries),
        "instances": sum(entry.instances for entry in entries),
        "shards": [
            {
                "file": posixpath.join("shards", entry.shard),
                "rows": len(entry.ids),
                "failed": len(entry.failed),
                "instances": entry.instances,
                "bytes": entry.bytes,
            }
            for entry in entries
        ],
        "last_run": last_run,
    }
    state.output.write(MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest
