"""CENTERMASK_API_KEY: segmentation and model info need the key; probes and metrics stay open."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.service.helpers import Served, png_body, random_image, serve, tiny_settings

pytestmark = pytest.mark.anyio

KEY = "s3cret-key"
IMAGE = png_body(random_image(0, 120, 160))


@pytest.fixture(scope="module")
async def keyed(tiny_weights: Path) -> AsyncIterator[Served]:
    async with serve(tiny_settings(tiny_weights, max_batch_size=1, api_key=KEY)) as served:
        yield served


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}],
)
async def test_requests_without_the_key_get_401(keyed: Served, headers: dict[str, str]) -> None:
    for method, path in (("POST", "/segment"), ("POST", "/segment/batch"), ("GET", "/v1/model")):
        response = await keyed.client.request(method, path, headers=headers)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("headers", [{"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"}])
async def test_either_header_carries_the_key(keyed: Served, headers: dict[str, str]) -> None:
    response = await keyed.client.post(
        "/segment", content=IMAGE["content"], headers=IMAGE["headers"] | headers
    )
    assert response.status_code == 200
    assert (await keyed.client.get("/v1/model", headers=headers)).status_code == 200


async def test_probes_and_metrics_need_no_key(keyed: Served) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await keyed.client.get(path)).status_code == 200, path


async def test_without_a_configured_key_nothing_is_asked(served: Served) -> None:
    assert (await served.client.post("/segment", **IMAGE)).status_code == 200
