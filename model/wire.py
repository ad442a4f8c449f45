"""The JSON contract's producing side: detections → the records `centermask_client.schemas` describes.

The service, `python -m model.predict` and the client all speak this format; its fields are defined
and documented once, in `centermask_client.schemas`. Records are plain dicts (fast to serialise) and
validate against those models (the tests check it).

`classes=` selectors of the API are parsed here too: what a name or an id means is part of the contract.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from centermask_client.schemas import MaskFormat
from model.detections import Detections
from model.polygons import crop_to_polygons
from model.rle import encode_pasted

CLASS_ID_PREFIX = "class_id:"
CATEGORY_ID_PREFIX = "category_id:"
_INTEGER = re.compile(r"[+-]?[0-9]+")


def instances_to_json(
    detections: Detections,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    mask_format: MaskFormat = "rle",
) -> list[dict[str, Any]]:
    """The `Instance` records of one image's detections, in their order (best score first)."""
    height, width = detections.image_size
    masks: list[dict[str, Any] | None] = [None] * len(detections)
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
) -> dict[str, Any]:
    """The `ImageResult` record of one image: file name, size and instances."""
    height, width = detections.image_size
    return {
        "file": file,
        "height": height,
        "width": width,
        "instances": instances_to_json(detections, class_names, category_ids, mask_format),
    }


def select_classes(
    selectors: Sequence[str], class_names: Sequence[str], category_ids: Sequence[int]
) -> frozenset[int]:
    """The class ids that `classes=` selectors name. Raises ValueError for one that names no class.

    A selector is a class name (case-insensitive), `class_id:N` (the contiguous index) or
    `category_id:N` (the dataset's id). A bare number is refused unless it is a class's name: it could
    mean either id.
    """
    by_name = {name.lower(): class_id for class_id, name in enumerate(class_names)}
    by_category = {int(category): class_id for class_id, category in enumerate(category_ids)}
    selected = set()
    for selector in selectors:
        lowered = selector.lower()
        if lowered in by_name:
            selected.add(by_name[lowered])
        elif lowered.startswith(CLASS_ID_PREFIX):
            class_id = _integer(selector, CLASS_ID_PREFIX)
            if class_id is None or not 0 <= class_id < len(class_names):
                raise ValueError(
                    f"unknown class {selector!r}: class ids run from 0 to {len(class_names) - 1}"
                )
            selected.add(class_id)
        elif lowered.startswith(CATEGORY_ID_PREFIX):
            category = _integer(selector, CATEGORY_ID_PREFIX)
            if category not in by_category:
                raise ValueError(f"unknown class {selector!r}: no class has that category id")
            selected.add(by_category[category])
        elif _INTEGER.fullmatch(selector.strip()):
            raise ValueError(
                f"ambiguous class {selector!r}: write class_id:{selector} (the contiguous index) or "
                f"category_id:{selector} (the dataset's id)"
            )
        else:
            raise ValueError(f"unknown class {selector!r}; see /v1/model for the class names")
    return frozenset(selected)


def _integer(selector: str, prefix: str) -> int | None:
    value = selector[len(prefix) :].strip()
    return int(value) if _INTEGER.fullmatch(value) else None
