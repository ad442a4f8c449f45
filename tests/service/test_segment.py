"""POST /segment and /segment/batch on a ready app: contract, parameters, masks, batching."""

import asyncio
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.ops import nms

from model.inference.images import load_rgb
from model.weights.coco_classes import COCO_CATEGORY_IDS
from service import served as served_module
from tests.service.helpers import Served, encode, metric_value, png_body, random_image

pytestmark = pytest.mark.anyio

IMAGE = random_image(0, 240, 320)


async def test_a_multipart_upload_gets_the_predict_record(served: Served) -> None:
    response = await served.client.post(
        "/segment", files={"image": ("street.png", encode(IMAGE), "image/png")}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["file"] == "street.png"
    assert (body["height"], body["width"]) == (240, 320)
    assert body["model"] == "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert set(body["timing_ms"]) == {"decode", "queue", "inference", "postprocess", "total"}
    assert len(body["instances"]) > 0
    instance = body["instances"][0]
    assert set(instance) == {"box", "score", "class_id", "category_id", "class_name", "mask_score", "mask"}
    # The tiny model has COCO's 80 classes: category ids are COCO's, with its gaps.
    assert all(i["category_id"] == COCO_CATEGORY_IDS[i["class_id"]] for i in body["instances"])
    assert instance["mask"]["size"] == [240, 320]
    assert all(i["score"] >= 0.3 for i in body["instances"])


async def test_a_raw_body_has_no_file_name(served: Served) -> None:
    response = await served.client.post("/segment", **png_body(IMAGE))
    assert response.status_code == 200
    assert response.json()["file"] is None


async def test_a_valid_client_request_id_is_honoured(served: Served) -> None:
    response = await served.client.post(
        "/segment", content=encode(IMAGE), headers={"Content-Type": "image/png", "X-Request-ID": "trace-42"}
    )
    assert response.headers["X-Request-ID"] == "trace-42" == response.json()["request_id"]
    odd = await served.client.get("/healthz", headers={"X-Request-ID": "no spaces allowed"})
    assert odd.headers["X-Request-ID"] != "no spaces allowed"


async def test_masks_decode_to_the_predictors_own_masks(served: Served) -> None:
    response = await served.client.post("/segment", **png_body(IMAGE))
    predictor = served.runtime.predictor
    [detections] = predictor.predict([IMAGE])
    # The service default keeps one label per object (CENTERMASK_CLASS_AGNOSTIC_NMS).
    expected = detections.class_agnostic_nms().filter(score_threshold=0.3, max_detections=100)
    instances = response.json()["instances"]
    assert len(instances) == len(expected) > 0
    masks = np.stack([mask_utils.decode(instance["mask"]) for instance in instances]).astype(bool)
    np.testing.assert_array_equal(masks, expected.dense_masks())
    np.testing.assert_array_equal(np.array([i["box"] for i in instances], dtype=np.float32), expected.boxes)


async def test_score_threshold_and_max_detections_filter_after_the_model(served: Served) -> None:
    everything = (await served.client.post("/segment?score_threshold=0", **png_body(IMAGE))).json()[
        "instances"
    ]
    scores = sorted((i["score"] for i in everything), reverse=True)
    threshold = scores[len(scores) // 2]
    kept = (await served.client.post(f"/segment?score_threshold={threshold}", **png_body(IMAGE))).json()
    assert [i["score"] for i in kept["instances"]] == [s for s in scores if s >= threshold]
    top = (await served.client.post("/segment?score_threshold=0&max_detections=3", **png_body(IMAGE))).json()
    assert top["instances"] == everything[:3]


async def test_classes_by_name_class_id_or_category_id(served: Served) -> None:
    everything = (await served.client.post("/segment?score_threshold=0", **png_body(IMAGE))).json()[
        "instances"
    ]
    first, second = everything[0], next(i for i in everything if i["class_id"] != everything[0]["class_id"])
    wanted = {first["class_id"], second["class_id"]}
    expected = [i for i in everything if i["class_id"] in wanted]
    for query in (
        f"classes={first['class_name']},class_id:{second['class_id']}",
        f"classes=class_id:{first['class_id']}&classes={second['class_name'].upper()}",
        f"classes=category_id:{first['category_id']},category_id:{second['category_id']}",
    ):
        response = await served.client.post(f"/segment?score_threshold=0&{query}", **png_body(IMAGE))
        assert response.json()["instances"] == expected, query


async def test_a_bare_number_is_refused_as_ambiguous(served: Served) -> None:
    response = await served.client.post("/segment?classes=3", **png_body(IMAGE))
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "class_id:3" in message and "category_id:3" in message


@pytest.mark.parametrize(
    "query",
    [
        "score_threshold=1.5",
        "score_threshold=x",
        "max_detections=0",
        "mask_format=png",
        "classes=unicorn",
        "classes=class_id:80",
        "classes=category_id:12",
        "classes=class_id:x",
    ],
)
async def test_invalid_parameters(served: Served, query: str) -> None:
    response = await served.client.post(f"/segment?{query}", **png_body(IMAGE))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_parameter"


async def test_polygon_and_no_masks(served: Served) -> None:
    polygons = (await served.client.post("/segment?mask_format=polygon", **png_body(IMAGE))).json()[
        "instances"
    ]
    assert all("polygons" in i["mask"] and "counts" not in i["mask"] for i in polygons)
    bare = (await served.client.post("/segment?mask_format=none", **png_body(IMAGE))).json()["instances"]
    assert all("mask" not in i for i in bare)
    assert [i["box"] for i in bare] == [i["box"] for i in polygons]


async def test_exif_orientation_is_applied_before_segmenting(served: Served) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encode(IMAGE, "JPEG", exif=exif, quality=95)
    rotated = await served.client.post("/segment", content=jpeg, headers={"Content-Type": "image/jpeg"})
    body = rotated.json()
    assert (body["height"], body["width"]) == (320, 240)
    upright = load_rgb(jpeg)
    reference = await served.client.post("/segment", **png_body(upright))
    assert body["instances"] == reference.json()["instances"]


BAD_INPUTS = {
    "corrupt bytes": (b"\x00\x01garbage", "image/png", 400, "invalid_image"),
    "truncated png": (encode(IMAGE)[:500], "image/png", 400, "invalid_image"),
    "empty body": (b"", "image/jpeg", 400, "invalid_image"),
    "gif": (encode(IMAGE, "GIF"), "image/png", 415, "unsupported_media_type"),
    "text": (b"hello", "text/plain", 415, "unsupported_media_type"),
    "no content type": (encode(IMAGE), "", 415, "unsupported_media_type"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
async def test_bad_input_gets_its_status_and_code(served: Served, case: str) -> None:
    data, content_type, status, code = BAD_INPUTS[case]
    response = await served.client.post("/segment", content=data, headers={"Content-Type": content_type})
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert "Traceback" not in response.text


async def test_a_multipart_body_without_the_image_field(served: Served) -> None:
    response = await served.client.post("/segment", files={"picture": ("a.png", encode(IMAGE), "image/png")})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_parameter"


async def test_an_unexpected_error_is_a_500_without_internals(served: Served, monkeypatch) -> None:
    def broken_record(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise KeyError("secret internal detail")

    monkeypatch.setattr(served_module, "image_record", broken_record)
    response = await served.client.post("/segment", **png_body(IMAGE))
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert (
        response.json()["error"]["message"]
        == f"internal error; request id {response.headers['X-Request-ID']}"
    )
    assert "secret" not in response.text and "KeyError" not in response.text
    assert response.headers["X-Request-ID"]
    monkeypatch.undo()
    assert (await served.client.post("/segment", **png_body(IMAGE))).status_code == 200


async def test_unknown_paths_and_methods_use_the_error_shape(served: Served) -> None:
    missing = await served.client.get("/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = await served.client.get("/segment")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


async def test_batch_results_come_back_in_upload_order(served: Served) -> None:
    images = [random_image(10, 200, 300), random_image(11, 240, 320), random_image(12, 300, 200)]
    files = [("images", (f"{i}.png", encode(image), "image/png")) for i, image in enumerate(images)]
    response = await served.client.post("/segment/batch", files=files)
    assert response.status_code == 200
    body = response.json()
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert [r["file"] for r in body["results"]] == ["0.png", "1.png", "2.png"]
    assert [(r["height"], r["width"]) for r in body["results"]] == [(200, 300), (240, 320), (300, 200)]
    assert set(body["results"][0]["timing_ms"]) == {"decode", "queue", "inference", "postprocess"}
    assert set(body["timing_ms"]) == {"total"}


async def test_one_bad_image_fails_the_batch_with_its_index(served: Served) -> None:
    files = [
        ("images", ("good.png", encode(IMAGE), "image/png")),
        ("images", ("bad.png", b"garbage", "image/png")),
        ("images", ("gif.gif", encode(IMAGE, "GIF"), "image/gif")),
    ]
    response = await served.client.post("/segment/batch", files=files)
    assert response.status_code == 400
    assert response.json()["error"] | {"message": None} == {
        "code": "invalid_image",
        "message": None,
        "index": 1,
        "file": "bad.png",
    }


async def test_too_many_images_in_one_batch(served: Served) -> None:
    tiny = encode(random_image(13, 8, 8))
    files = [("images", (f"{i}.png", tiny, "image/png")) for i in range(33)]
    response = await served.client.post("/segment/batch", files=files)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_images"


async def test_concurrent_requests_form_batches(served: Served) -> None:
    def batches_over_one() -> float:
        return metric_value(served.app, "centermask_batch_size_count") - metric_value(
            served.app, "centermask_batch_size_bucket", {"le": "1.0"}
        )

    before = batches_over_one()
    responses = await asyncio.gather(*(served.client.post("/segment", **png_body(IMAGE)) for _ in range(9)))
    assert {r.status_code for r in responses} == {200}
    assert batches_over_one() > before


def assert_same_detections(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Equal up to float rounding: the network's kernels differ slightly between batch sizes."""
    assert [i["class_id"] for i in a] == [i["class_id"] for i in b]
    np.testing.assert_allclose([i["box"] for i in a], [i["box"] for i in b], atol=1e-3)
    np.testing.assert_allclose([i["score"] for i in a], [i["score"] for i in b], atol=1e-5)
    masks_a = mask_utils.decode([i["mask"] for i in a]).astype(bool)
    masks_b = mask_utils.decode([i["mask"] for i in b]).astype(bool)
    assert (masks_a != masks_b).mean() < 1e-4


async def test_results_do_not_depend_on_batch_companions(served: Served) -> None:
    alone = (await served.client.post("/segment", **png_body(IMAGE))).json()["instances"]
    other_sizes = [random_image(20, 300, 200), random_image(21, 480, 360)]
    same_size = [random_image(22, 240, 320), random_image(23, 240, 320)]

    async def batched(companions: list[np.ndarray]) -> list[dict[str, Any]]:
        files = [
            ("images", (f"{i}.png", encode(image), "image/png"))
            for i, image in enumerate([*companions, IMAGE])
        ]
        response = await served.client.post("/segment/batch", files=files)
        return response.json()["results"][-1]["instances"]

    # Other sizes run in their own forward passes: the image runs alone, so the result is identical.
    assert await batched(other_sizes) == alone
    assert_same_detections(await batched(same_size), alone)
    assert_same_detections(await batched([*other_sizes, *same_size]), alone)


async def test_class_agnostic_nms_keeps_one_label_per_object(served: Served) -> None:
    everything = (await served.client.post("/segment?score_threshold=0", **png_body(IMAGE))).json()[
        "instances"
    ]
    response = await served.client.post(
        "/segment?score_threshold=0&class_agnostic_nms=true&max_detections=5", **png_body(IMAGE)
    )
    kept = response.json()["instances"]
    # The model's output, class-agnostic NMS over it, then the request's count.
    boxes = torch.tensor([i["box"] for i in everything])
    scores = torch.tensor([i["score"] for i in everything])
    expected = sorted(nms(boxes, scores, 0.7).tolist())[:5]
    assert [i["box"] for i in kept] == [everything[j]["box"] for j in expected]
    assert len({i["class_id"] for i in kept}) >= 1 and len(kept) == 5
