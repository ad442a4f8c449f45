"""The clients against the real service: a uvicorn subprocess on 127.0.0.1 with the tiny checkpoint."""

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from centermask_client import (
    AsyncClient,
    Client,
    InvalidParameter,
    InvalidRequest,
    Unauthorized,
)
from model.weights.coco_classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from tests.helpers import TINY_SERVER_KEY, LiveServer


def blocky_image(seed: int, height: int, width: int) -> np.ndarray:
    """Blocky noise: the rule-weight model finds plenty of instances in it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))[:height, :width].copy()


IMAGE = blocky_image(0, 120, 160)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(tiny_server: LiveServer) -> Client:
    with Client(tiny_server.url, api_key=TINY_SERVER_KEY) as client:
        yield client


def test_every_kind_of_input_gives_the_same_answer(client: Client, tmp_path: Path) -> None:
    path = tmp_path / "blocks.png"
    path.write_bytes(png(IMAGE))
    by_path = client.segment(path)
    assert by_path.file == "blocks.png" and (by_path.height, by_path.width) == (120, 160)
    assert len(by_path.instances) > 0
    with path.open("rb") as stream:
        by_file = client.segment(stream)
    others = [client.segment(png(IMAGE)), client.segment(Image.fromarray(IMAGE)), client.segment(IMAGE)]
    assert by_file.file == "blocks.png"
    assert [other.file for other in others] == [None, None, None]
    for other in [by_file, *others]:
        assert other.instances == by_path.instances


def test_results_are_typed_and_masks_decode_without_pycocotools(client: Client) -> None:
    result = client.segment(IMAGE, score_threshold=0.4, max_detections=5)
    assert 0 < len(result.instances) <= 5
    assert result.model == "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x"
    assert result.timing_ms.total >= result.timing_ms.inference > 0
    for instance in result.instances:
        assert instance.score >= 0.4
        assert instance.class_name == COCO_CLASS_NAMES[instance.class_id]
        assert instance.category_id == COCO_CATEGORY_IDS[instance.class_id]
        mask = instance.mask_array()
        assert mask.shape == (120, 160) and mask.dtype == bool
        expected = mask_utils.decode(instance.mask.model_dump(exclude_none=True)).astype(bool)
        np.testing.assert_array_equal(mask, expected)


def test_classes_and_polygons(client: Client) -> None:
    everything = client.segment(IMAGE, score_threshold=0)
    wanted = everything.instances[0]
    chosen = client.segment(IMAGE, score_threshold=0, classes=[f"category_id:{wanted.category_id}"])
    assert {i.class_id for i in chosen.instances} == {wanted.class_id}
    outlines = client.segment(IMAGE, mask_format="polygon")
    assert all(i.mask.polygons is not None and i.mask.counts is None for i in outlines.instances)
    assert any(part.outer for i in outlines.instances for part in i.mask.polygons)


def test_batch_in_upload_order(client: Client) -> None:
    images = [IMAGE, blocky_image(1, 100, 90), png(blocky_image(2, 64, 64))]
    batch = client.segment_batch(images)
    assert [r.file for r in batch.results] == ["image-0.png", "image-1.png", "image-2.png"]
    assert [(r.height, r.width) for r in batch.results] == [(120, 160), (100, 90), (64, 64)]
    assert batch.results[0].instances == client.segment(IMAGE).instances


def test_the_service_draws_the_overlay(client: Client) -> None:
    for image_format, signature in (("png", b"\x89PNG"), ("jpeg", b"\xff\xd8\xff")):
        data = client.render(IMAGE, image_format=image_format)
        assert data.startswith(signature)
        assert Image.open(io.BytesIO(data)).size == (160, 120)


def test_model_info_and_readiness(client: Client) -> None:
    info = client.model_info()
    assert info.class_names == list(COCO_CLASS_NAMES)
    assert info.category_ids == list(COCO_CATEGORY_IDS)
    assert client.is_ready()


def test_the_servers_errors_arrive_typed(client: Client, tiny_server: LiveServer) -> None:
    # Bytes of no known format go up as a raw body: the service reads them for what they are, like curl's.
    with pytest.raises(InvalidRequest) as raised:
        client.segment(b"hello, not an image")
    assert raised.value.code == "invalid_image" and raised.value.request_id
    with pytest.raises(InvalidParameter, match="unknown class 'unicorn'"):
        client.segment(IMAGE, classes=["unicorn"])
    with pytest.raises(InvalidRequest) as raised:
        client.segment_batch([IMAGE, png(IMAGE)[:200]])
    assert (raised.value.code, raised.value.index) == ("invalid_image", 1) and raised.value.file is not None
    assert f"(image 1 {raised.value.file!r})" in str(raised.value)
    with Client(tiny_server.url) as keyless, pytest.raises(Unauthorized) as raised:
        keyless.segment(IMAGE)
    assert raised.value.code == "unauthorized"


@pytest.mark.anyio
async def test_the_async_client_in_parallel(tiny_server: LiveServer) -> None:
    # Of different padded shapes, so that no two share a forward pass: then batching cannot change a
    # result even by float rounding, and the answers compare exactly.
    sizes = [(96, 128), (64, 200), (150, 90), (120, 120)]
    images = [blocky_image(seed, *size) for seed, size in enumerate(sizes)]
    async with AsyncClient(tiny_server.url, api_key=TINY_SERVER_KEY) as client:
        results = await asyncio.gather(*(client.segment(image) for image in images))
        batch = await client.segment_batch(images)
        info = await client.model_info()
    assert [r.instances for r in results] == [r.instances for r in batch.results]
    assert info.config_name == results[0].model
