"""Tiled requests in the service (`service/tiling.py`): parameters, the answer's tiling, limits, batch-mates,
cancellation and deadlines, on the 64/128 checkpoint (tiles of 128 px; an image is tiled from a 512 px side).

The merge itself is tested weight-free in tests/model/test_tiling.py; here the service's scheduling."""

import asyncio
import base64
import io
from pathlib import Path

import grpc
import httpx
import pytest
from PIL import Image

from centermask_client.client import AsyncClient
from service.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from tests.helpers import free_port
from tests.service.helpers import (
    TIMEOUT_S,
    Served,
    encode,
    infer_request,
    metric_value,
    png_body,
    post_then_disconnect,
    random_image,
    serve,
    tiny_settings,
    wait_until,
)

pytestmark = pytest.mark.anyio

# 384 × 576 = 221 184 pixels: over the ordinary limit below, within the tiled one; 4 × 6 tiles of 128 px
# overlapping by 32 (the default overlap, shrunk to a quarter of the tile).
TILED = random_image(5, 384, 576)
TILED_PNG = encode(TILED)
PLAN = {"tiles": 24, "tile_size": 128, "tile_overlap": 32, "passes": 25}
LIMITS = {"tile_size": 128, "max_image_pixels": 200_000, "max_tiled_pixels": 250_000}


@pytest.fixture(scope="module")
async def tiled(small_weights: Path):
    settings = tiny_settings(
        small_weights, max_batch_size=4, max_batch_delay_ms=5, grpc_port=free_port(), **LIMITS
    )
    async with serve(settings) as served:
        yield served


def tiles_counted(served: Served, protocol: str = "http") -> float:
    """centermask_tiles_total of the served model (labelled by its name and version), over `protocol`."""
    model = served.runtime.models.get()
    labels = {"model": model.name, "model_version": model.version, "protocol": protocol}
    return metric_value(served.app, "centermask_tiles_total", labels)


async def test_a_large_image_is_tiled_and_the_answer_says_how(tiled: Served) -> None:
    before = tiles_counted(tiled)
    response = await tiled.client.post("/segment", **png_body(TILED))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tiling"] == PLAN
    assert (body["height"], body["width"]) == (384, 576)
    assert all(instance["mask"]["size"] == [384, 576] for instance in body["instances"])
    assert tiles_counted(tiled) == before + 24
    # Unset, max_detections of a tiled image is CENTERMASK_MAX_TILED_DETECTIONS, not the model's 50 a pass.
    capped = await tiled.client.post("/segment", params={"max_detections": 3}, **png_body(TILED))
    assert len(capped.json()["instances"]) == min(3, len(body["instances"]))


async def test_a_small_image_or_tiling_off_is_one_pass(tiled: Served) -> None:
    small = await tiled.client.post("/segment", **png_body(random_image(6, 200, 300)))
    assert small.status_code == 200 and "tiling" not in small.json()
    # Off, the large image is an ordinary one, over the ordinary limit.
    off = await tiled.client.post("/segment", params={"tiling": "off"}, **png_body(TILED))
    assert off.status_code == 413 and off.json()["error"]["code"] == "too_many_pixels"


async def test_an_image_over_the_tiled_limit_is_a_413_json_error(tiled: Served) -> None:
    response = await tiled.client.post("/segment", **png_body(random_image(7, 480, 640)))
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "too_many_pixels" and "250000" in error["message"].replace(" ", "").replace(
        "_", ""
    )


async def test_a_batch_answers_tiled_and_plain_images_in_order(tiled: Served) -> None:
    files = [
        ("images", ("large.png", TILED_PNG, "image/png")),
        ("images", ("small.png", encode(random_image(8, 200, 300)), "image/png")),
    ]
    response = await tiled.client.post("/segment/batch", files=files)
    assert response.status_code == 200, response.text
    large, small = response.json()["results"]
    assert large["tiling"] == PLAN and "tiling" not in small
    assert (small["height"], small["width"]) == (200, 300)


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"tiling": "sideways"}, "tiling"),
        ({"tile_size": 10}, "tile_size"),
        ({"tile_size": 100_000}, "tile_size"),
        ({"tile_overlap": -1}, "tile_overlap"),
        ({"tile_size": 128, "tile_overlap": 100}, "at most half"),
        # The overlap asked for is checked against the service's tile size (128) too.
        ({"tile_overlap": 100}, "at most half"),
    ],
)
async def test_bad_tiling_parameters_are_json_errors(tiled: Served, params: dict, says: str) -> None:
    response = await tiled.client.post("/segment", params=params, **png_body(random_image(6, 200, 300)))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_parameter"
    assert says in response.json()["error"]["message"]


async def test_the_inference_protocol_takes_the_tiling_parameters(tiled: Served) -> None:
    data = base64.b64encode(TILED_PNG).decode()
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [data]}]}
    answer = await tiled.client.post(
        "/v2/models/centermask/infer", json={**body, "parameters": {"tiling": "auto"}}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["parameters"] == {"tiles": "24"}
    off = await tiled.client.post(
        "/v2/models/centermask/infer", json={**body, "parameters": {"tiling": "off"}}
    )
    assert off.status_code == 413
    bad = await tiled.client.post(
        "/v2/models/centermask/infer", json={**body, "parameters": {"tile_size": 10}}
    )
    assert bad.status_code == 400 and "tile_size" in bad.text


async def test_grpc_takes_the_tiling_parameters_and_answers_the_tiles(tiled: Served) -> None:
    address = f"127.0.0.1:{tiled.app.state.grpc_server.port}"
    async with grpc.aio.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        small = encode(random_image(6, 200, 300))
        before = tiles_counted(tiled, "grpc"), tiles_counted(tiled, "http")
        answer = await stub.ModelInfer(infer_request([TILED_PNG, small], tiling="auto"), timeout=TIMEOUT_S)
        assert answer.parameters["tiles"].string_param == "24,0"
        assert (tiles_counted(tiled, "grpc"), tiles_counted(tiled, "http")) == (before[0] + 24, before[1])
        plain = await stub.ModelInfer(infer_request([small]), timeout=TIMEOUT_S)
        assert "tiles" not in plain.parameters
        with pytest.raises(grpc.aio.AioRpcError) as off:
            await stub.ModelInfer(infer_request([TILED_PNG], tiling="off"), timeout=TIMEOUT_S)
        # Over the ordinary pixel limit untiled: HTTP's 413, gRPC's INVALID_ARGUMENT.
        assert off.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert off.value.details().startswith("too_many_pixels: ")
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.ModelInfer(infer_request([small], tile_size=10), timeout=TIMEOUT_S)
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "tile_size" in bad.value.details()


async def test_the_python_client_asks_for_tiling(tiled: Served) -> None:
    client = AsyncClient("http://service", transport=httpx.ASGITransport(app=tiled.app))
    try:
        result = await client.segment(TILED_PNG, tiling="auto", tile_size=192, tile_overlap=64)
        assert result.tiling is not None
        assert (result.tiling.tile_size, result.tiling.tile_overlap) == (192, 64)
        assert result.tiling.tiles == 3 * 4
    finally:
        await client.aclose()


async def test_tiles_batch_together_and_with_other_requests(small_weights: Path, controlled) -> None:
    load, predictor = controlled
    settings = tiny_settings(small_weights, max_batch_size=4, tiles_in_flight=2, **LIMITS)
    async with serve(settings, load) as served:
        predictor().hold()
        # A request of another shape holds the network, so that what follows queues up behind it.
        blocker = asyncio.ensure_future(served.client.post("/segment", **png_body(random_image(1, 64, 200))))
        await wait_until(predictor().entered.is_set)
        plain = asyncio.ensure_future(served.client.post("/segment", **png_body(random_image(2, 100, 100))))
        await wait_until(lambda: served.runtime.models.depth == 1)
        large = asyncio.ensure_future(served.client.post("/segment", **png_body(TILED)))
        # The whole image's pass and a window of two tiles.
        await wait_until(lambda: served.runtime.models.depth == 4)
        predictor().release()
        assert (await large).json()["tiling"] == PLAN
        assert (await plain).status_code == 200 and (await blocker).status_code == 200
        # 100 × 100 and a 128 px tile share a padded shape: the plain image and the first two tiles run as
        # one forward pass; the whole image (another shape) runs apart.
        batches = predictor().batches
        assert batches[0] == [(64, 200)]
        assert sorted(batches[1]) == [(100, 100), (128, 128), (128, 128)]
        assert [(384, 576)] in batches
        assert sum(len(batch) for batch in batches) == 1 + 1 + 25


async def test_a_client_that_leaves_stops_the_remaining_tiles(small_weights: Path, controlled) -> None:
    load, predictor = controlled
    settings = tiny_settings(small_weights, max_batch_size=1, tiles_in_flight=2, **LIMITS)
    async with serve(settings, load) as served:
        predictor().hold()
        disconnect = asyncio.Event()
        gone = asyncio.ensure_future(post_then_disconnect(served.app, "/segment", TILED_PNG, disconnect))
        # The whole image's pass is running; two tiles wait in the queue.
        await wait_until(predictor().entered.is_set)
        await wait_until(lambda: served.runtime.models.depth == 2)
        disconnect.set()
        assert (await gone)[0]["status"] == 499
        predictor().release()
        await wait_until(lambda: metric_value(served.app, "centermask_batch_inference_seconds_count") >= 1)
        after = await served.client.post("/segment", **png_body(random_image(3, 100, 100)))
        assert after.status_code == 200
        # Only the pass already running ran: the queued tiles were withdrawn and no other tile was cut.
        assert predictor().batches == [[(384, 576)], [(100, 100)]]
        assert tiles_counted(served) == 0


async def test_a_tiled_request_past_its_deadline_says_so(small_weights: Path, controlled) -> None:
    load, predictor = controlled
    settings = tiny_settings(small_weights, max_batch_size=4, request_timeout_s=0.5, **LIMITS)
    async with serve(settings, load) as served:
        predictor().hold()
        response = await served.client.post("/segment", **png_body(TILED))
        predictor().release()
        assert response.status_code == 504
        error = response.json()["error"]
        assert error["code"] == "deadline_exceeded"
        assert "25 passes" in error["message"] and "CENTERMASK_REQUEST_TIMEOUT_S" in error["message"]


async def test_the_overlay_of_a_tiled_image_is_drawn_at_its_size(tiled: Served) -> None:
    response = await tiled.client.post("/segment", params={"format": "png"}, **png_body(TILED))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (576, 384)
