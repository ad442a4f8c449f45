"""model.wire.records: every body it builds is exactly what centermask_client.schemas describes (no field
missing, none extra, so a field renamed on one side only fails here); classes= selectors."""

from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from centermask_client.schemas import (
    BatchResponse,
    ErrorBody,
    ImageResult,
    ModelInfo,
    SegmentResponse,
    StreamFrameResult,
    VideoFrameResult,
)
from model.inference.detections import Detections
from model.wire.records import (
    INSTANCE_COLUMNS,
    batch_response,
    coco_results,
    error_body,
    image_record,
    instance_columns,
    segment_response,
    stream_frame_message,
    timing_ms,
    video_frame_line,
    with_track_ids,
)
from model.wire.selectors import select_classes
from service import openapi
from service.v2.models import OUTPUTS

NAMES = ["circle", "rectangle", "ring"]
CATEGORY_IDS = [3, 1, 12]  # not 1..K, and not in class order: ids are the dataset's


def detections() -> Detections:
    """Three instances on a 60×80 image; the last one's mask has a hole (a ring)."""
    ys, xs = np.mgrid[0:28, 0:28] + 0.5
    radius = np.hypot(ys - 14, xs - 14)
    ring = ((radius <= 13) & (radius >= 6)).astype(np.float32)
    solid = np.ones((28, 28), dtype=np.float32)
    return Detections(
        image_size=(60, 80),
        boxes=np.array([[5, 5, 30, 25], [40, 10, 70, 50], [10, 30, 38, 58]], dtype=np.float32),
        scores=np.array([0.9, 0.6, 0.4], dtype=np.float32),
        class_ids=np.array([0, 1, 2], dtype=np.int64),
        mask_scores=np.array([0.8, 0.5, 0.3], dtype=np.float32),
        mask_probs=torch.from_numpy(np.stack([solid, solid, ring])),
    )


def test_rle_records_validate_and_decode_to_the_pasted_masks() -> None:
    found = detections()
    record = image_record("a.png", found, NAMES, CATEGORY_IDS)
    result = ImageResult.model_validate(record)
    assert [i.category_id for i in result.instances] == CATEGORY_IDS
    assert [i.class_name for i in result.instances] == NAMES
    for instance, expected in zip(result.instances, found.dense_masks(), strict=True):
        np.testing.assert_array_equal(instance.mask_array(), expected)


def test_polygon_records_validate_and_keep_the_hole() -> None:
    record = image_record(None, detections(), NAMES, CATEGORY_IDS, "polygon")
    ring = ImageResult.model_validate(record).instances[2]
    assert ring.mask is not None and ring.mask.polygons is not None
    [part] = ring.mask.polygons
    assert len(part.holes) == 1
    with pytest.raises(ValueError, match="mask_format=rle"):
        ring.mask_array()


def test_records_without_masks() -> None:
    record = image_record(None, detections(), NAMES, CATEGORY_IDS, "none")
    assert all("mask" not in instance for instance in record["instances"])
    assert all(i.mask is None for i in ImageResult.model_validate(record).instances)


def test_coco_results_load_in_pycocotools_and_keep_the_masks() -> None:
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    found = detections()
    boxes, masks = coco_results(7, image_record("a.png", found, NAMES, CATEGORY_IDS)["instances"])
    assert [b["bbox"] for b in boxes] == [[5, 5, 25, 20], [40, 10, 30, 40], [10, 30, 28, 28]]
    assert [b["score"] for b in boxes] == pytest.approx([0.9, 0.6, 0.4])
    assert [m["score"] for m in masks] == pytest.approx([0.8, 0.5, 0.3])  # masks rank by mask_score
    gt = COCO()
    categories = [{"id": c, "name": n} for n, c in zip(NAMES, CATEGORY_IDS, strict=True)]
    gt.dataset = {
        "images": [{"id": 7, "height": 60, "width": 80}],
        "annotations": [],
        "categories": categories,
    }
    gt.createIndex()
    for results in (boxes, masks):
        loaded = gt.loadRes(results)
        assert sorted(a["category_id"] for a in loaded.anns.values()) == sorted(CATEGORY_IDS)
    for result, expected in zip(masks, found.dense_masks(), strict=True):
        np.testing.assert_array_equal(mask_utils.decode(result["segmentation"]), expected)
    # COCO's polygons cannot hold holes: no mask results from polygon records.
    assert coco_results(7, image_record("a.png", found, NAMES, CATEGORY_IDS, "polygon")["instances"])[1] == []


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        (["circle"], {0}),
        (["RING", "Rectangle"], {1, 2}),
        (["class_id:1"], {1}),
        (["category_id:12", "category_id:3"], {0, 2}),
        (["category_id: 1", "class_id:+0"], {0, 1}),
    ],
)
def test_class_selectors(selectors: list[str], expected: set[int]) -> None:
    assert select_classes(selectors, NAMES, CATEGORY_IDS) == expected


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("1", "ambiguous class '1'"),
        ("unicorn", "unknown class 'unicorn'"),
        ("class_id:3", "class ids run from 0 to 2"),
        ("class_id:-1", "class ids run from 0 to 2"),
        ("category_id:2", "no class has that category id"),
        ("category_id:x", "no class has that category id"),
    ],
)
def test_bad_selectors(selector: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_classes([selector], NAMES, CATEGORY_IDS)


def test_a_name_that_looks_like_a_number_is_a_name() -> None:
    assert select_classes(["7"], ["5", "7"], [1, 2]) == {1}


def assert_body_of(model: type[BaseModel], body: dict[str, Any]) -> None:
    """`body` validates as `model` and holds its fields and nothing else, at every level."""
    parsed = model.model_validate(body)
    assert parsed.model_dump(mode="json", exclude_unset=True) == body


def test_every_envelope_is_its_schema_exactly() -> None:
    record = image_record("a.png", detections(), NAMES, CATEGORY_IDS)
    timing = timing_ms(0.0031, 0.0004, 0.0602, 0.002)
    assert_body_of(ImageResult, record)
    assert_body_of(
        SegmentResponse, segment_response(record, model="m", request_id="r", timing=timing, total_ms=66.9)
    )
    batch = batch_response([(record, timing), (record, timing)], model="m", request_id="r", total_ms=70)
    assert_body_of(BatchResponse, batch)
    model = {"model": "m", "model_version": "0123456789ab"}
    assert_body_of(VideoFrameResult, video_frame_line(3, 0.1, record, **model))
    assert_body_of(StreamFrameResult, stream_frame_message(5, 2, record, timing, total_ms=70.1, **model))
    # Tracked (track=true): each instance has its track_id, an int or null.
    track_ids = [7, None, *range(len(record["instances"]) - 2)]
    tracked = {**record, "instances": with_track_ids(record["instances"], track_ids)}
    assert_body_of(VideoFrameResult, video_frame_line(3, 0.1, tracked, **model))
    assert_body_of(StreamFrameResult, stream_frame_message(5, 2, tracked, timing, total_ms=70.1, **model))
    assert_body_of(ErrorBody, error_body("invalid_image", "cannot identify the image"))
    assert_body_of(ErrorBody, error_body("invalid_image", "cannot identify the image", index=2))


def test_the_documented_examples_are_their_schemas_exactly() -> None:
    example = openapi.response_example()
    assert_body_of(SegmentResponse, example)
    [batch] = [openapi.batch_responses()[200]["content"]["application/json"]["example"]]
    assert_body_of(BatchResponse, batch)
    assert_body_of(ModelInfo, openapi.MODEL_INFO_EXAMPLE)
    for status in openapi.ERROR_CODES:
        examples = openapi.error_responses(status)[status]["content"]["application/json"]["examples"]
        for documented in examples.values():
            assert_body_of(ErrorBody, documented["value"])


def test_the_inference_protocol_outputs_are_the_records_columns() -> None:
    records = [
        image_record(None, detections(), NAMES, CATEGORY_IDS),
        image_record(None, detections(), NAMES, CATEGORY_IDS),
    ]
    assert set(INSTANCE_COLUMNS) == set(OUTPUTS)
    columns = instance_columns(records, list(OUTPUTS))
    instances = [instance for record in records for instance in record["instances"]]
    assert columns["boxes"] == [value for instance in instances for value in instance["box"]]
    assert columns["class_names"] == [instance["class_name"] for instance in instances]
    assert columns["image_index"] == [0, 0, 0, 1, 1, 1]
    assert columns["masks"] == [instance["mask"] for instance in instances]
