"""Every JSON body the service and the command lines write, built here and nowhere else.

The fields are defined and documented once, in `centermask_client.schemas` (the client parses answers into
those models); this module builds the same shapes as plain dicts, which serialise far faster than models
holding large mask payloads. The tests validate each builder's output against its model, so a field renamed
in one place and not the other fails them.

* `instances_to_json`, `image_record`: detections → `Instance`, `ImageResult` records (`tiling_info`: the
  `TilingInfo` of a tiled image);
* `segment_response`, `batch_response`: the `/segment` and `/segment/batch` envelopes around records;
* `video_frame_line`, `stream_frame_message`: a video's NDJSON line and a stream's answer for one frame;
* `with_track_ids`: a frame's records with their `track_id` (`track=true`);
* `timing_ms`: where a request's time went (`Timing`);
* `error_body`: the `{"error": {...}}` body of every error (`ErrorBody`);
* `instance_columns`: the records' fields as columns, the Open Inference Protocol's output tensors;
* `coco_results`: an image's records as COCO results (what `pycocotools`' `loadRes` reads).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from centermask_client.schemas import MaskFormat
from model.inference.detections import Detections
from model.inference.tiling import TilePlan
from model.wire.polygons import crop_to_polygons
from model.wire.rle import encode_pasted


def instances_to_json(
    detections: Detections,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    mask_format: MaskFormat = "rle",
) -> list[dict[str, Any]]:
    """The `Instance` records of one image's detections, in their order (best score first)."""
    height, width = detections.image_size
    masks: Sequence[dict[str, Any] | None] = [None] * len(detections)
    if mask_format == "rle":
        masks = encode_pasted(detections.pasted_masks)
    elif mask_format == "polygon":
        masks = [
            {"size": [height, width], "polygons": crop_to_polygons(crop.crop, crop.x0, crop.y0)}
            for crop in detections.mask_crops()
        ]
    records = []
    for box, score, class_id, mask_score, mask in zip(
        detections.boxes.tolist(),
        detections.scores.tolist(),
        detections.class_ids.tolist(),
        detections.mask_scores.tolist(),
        masks,
        strict=True,
    ):
        record: dict[str, Any] = {
            "box": box,
            "score": score,
            "class_id": class_id,
            "category_id": int(category_ids[class_id]),
            "class_name": class_names[class_id],
            "mask_score": mask_score,
        }
        if mask is not None:
            record["mask"] = mask
        records.append(record)
    return records


def image_record(
    file: str | None,
    detections: Detections,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    mask_format: MaskFormat = "rle",
    tiles: TilePlan | None = None,
) -> dict[str, Any]:
    """The `ImageResult` record of one image: file name, size and instances; with `tiles`, the plan a tiled
    image was segmented by (`TilingInfo`)."""
    height, width = detections.image_size
    record: dict[str, Any] = {
        "file": file,
        "height": height,
        "width": width,
        "instances": instances_to_json(detections, class_names, category_ids, mask_format),
    }
    if tiles is not None:
        record["tiling"] = tiling_info(tiles)
    return record


def tiling_info(plan: TilePlan) -> dict[str, int]:
    """The `TilingInfo` of a tiled image: the tiles it was cut into."""
    return {
        "tiles": len(plan.tiles),
        "tile_size": plan.tile_size,
        "tile_overlap": plan.tile_overlap,
        "passes": plan.passes,
    }


def timing_ms(decode_s: float, queue_s: float, inference_s: float, postprocess_s: float) -> dict[str, float]:
    """The `Timing` record: where an image's time went, in milliseconds (to the microsecond)."""
    return {
        "decode": round(decode_s * 1000, 3),
        "queue": round(queue_s * 1000, 3),
        "inference": round(inference_s * 1000, 3),
        "postprocess": round(postprocess_s * 1000, 3),
    }


def segment_response(
    record: dict[str, Any],
    *,
    model: str,
    request_id: str,
    timing: dict[str, float],
    total_ms: float,
    model_version: str | None = None,
) -> dict[str, Any]:
    """The `SegmentResponse` of `/segment`: the image's record, the model and its version, the request id
    and timing."""
    return {
        **record,
        "model": model,
        **({"model_version": model_version} if model_version is not None else {}),
        "request_id": request_id,
        "timing_ms": {**timing, "total": round(total_ms, 3)},
    }


def batch_response(
    records: Sequence[tuple[dict[str, Any], dict[str, float]]],
    *,
    model: str,
    request_id: str,
    total_ms: float,
    model_version: str | None = None,
) -> dict[str, Any]:
    """The `BatchResponse` of `/segment/batch`: each image's record with its timing, in upload order."""
    return {
        "model": model,
        **({"model_version": model_version} if model_version is not None else {}),
        "request_id": request_id,
        "results": [{**record, "timing_ms": timing} for record, timing in records],
        "timing_ms": {"total": round(total_ms, 3)},
    }


def with_track_ids(
    instances: Sequence[dict[str, Any]], track_ids: Sequence[int | None]
) -> list[dict[str, Any]]:
    """`Instance` records with their `track_id` (None: the tracker has not confirmed the instance), in the
    records' order. Only a tracked video's or stream's records have the field."""
    return [
        {**instance, "track_id": track_id} for instance, track_id in zip(instances, track_ids, strict=True)
    ]


def video_frame_line(
    frame: int, time_s: float, record: dict[str, Any], *, model: str, model_version: str
) -> dict[str, Any]:
    """The `VideoFrameResult` of a video frame: its position and time, its image record's instances, and
    the model and version that segmented it."""
    return {
        "frame": frame,
        "time_s": round(time_s, 6),
        "height": record["height"],
        "width": record["width"],
        "instances": record["instances"],
        "model": model,
        "model_version": model_version,
    }


def stream_frame_message(
    frame: int,
    dropped: int,
    record: dict[str, Any],
    timing: dict[str, float],
    total_ms: float,
    *,
    model: str,
    model_version: str,
) -> dict[str, Any]:
    """The `StreamFrameResult` of a stream's frame: its message index, the frames dropped so far, its
    instances, the model and version that segmented it, and timing."""
    return {
        "frame": frame,
        "dropped": dropped,
        "height": record["height"],
        "width": record["width"],
        "instances": record["instances"],
        "model": model,
        "model_version": model_version,
        "timing_ms": {**timing, "total": round(total_ms, 3)},
    }


def error_body(code: str, message: str, index: int | None = None, file: str | None = None) -> dict[str, Any]:
    """The `ErrorBody` of every error answer; `index` and `file` name the failing image of a batch request."""
    error: dict[str, Any] = {"code": code, "message": message}
    if index is not None:
        error["index"] = index
    if file is not None:
        error["file"] = file
    return {"error": error}


# The Open Inference Protocol's outputs: each a column of the instances of all of a request's images.
# (image index, instance record) → the column's values for that instance.
INSTANCE_COLUMNS: dict[str, Callable[[int, dict[str, Any]], list[Any]]] = {
    "boxes": lambda _, instance: instance["box"],
    "scores": lambda _, instance: [instance["score"]],
    "class_ids": lambda _, instance: [instance["class_id"]],
    "class_names": lambda _, instance: [instance["class_name"]],
    "mask_scores": lambda _, instance: [instance["mask_score"]],
    "masks": lambda _, instance: [instance["mask"]],
    "image_index": lambda index, _: [index],
}


def instance_columns(records: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """Named columns (INSTANCE_COLUMNS) of the instances of every record, concatenated in record order;
    flat (a box contributes its four values to `boxes`)."""
    rows = [(index, instance) for index, record in enumerate(records) for instance in record["instances"]]
    return {
        name: [value for index, instance in rows for value in INSTANCE_COLUMNS[name](index, instance)]
        for name in names
    }


def coco_results(
    image_id: int, instances: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One image's `Instance` records as COCO results: (box results, mask results).

    As COCO evaluation and centermask2's evaluator want them: boxes as [x, y, width, height] ranked by `score`,
    masks as the RLE itself ranked by `mask_score`, each with the dataset's `category_id`. Mask results only
    for RLE masks (COCO's polygons cannot hold holes).
    """
    boxes, masks = [], []
    for instance in instances:
        x1, y1, x2, y2 = instance["box"]
        category = instance["category_id"]
        boxes.append(
            {
                "image_id": image_id,
                "category_id": category,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": instance["score"],
            }
        )
        mask = instance.get("mask")
        if mask is not None and "counts" in mask:
            masks.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": mask,
                    "score": instance["mask_score"],
                }
            )
    return boxes, masks
