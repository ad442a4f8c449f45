"""CENTERMASK_API_KEY: segmentation and model info need the key; probes and metrics stay open unless
CENTERMASK_PROTECT_PROBES. CORS headers only for CENTERMASK_CORS_ORIGINS."""

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


@pytest.mark.parametrize("offered", ["s3cret-ke", "s3cret-key-and-more", "é" * 40, "", " " + KEY])
async def test_wrong_keys_of_any_length_or_alphabet_get_401(keyed: Served, offered: str) -> None:
    response = await keyed.client.get("/v1/model", headers={"X-API-Key": offered.encode("latin-1")})
    assert response.status_code == 401


async def test_probes_and_metrics_can_require_the_key_too(tiny_weights: Path) -> None:
    settings = tiny_settings(tiny_weights, max_batch_size=1, api_key=KEY, protect_probes=True)
    async with serve(settings, ready=False) as served:
        for path in ("/healthz", "/readyz", "/metrics"):
            refused = await served.client.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["code"] == "unauthorized"
            assert (await served.client.get(path, headers={"X-API-Key": KEY})).status_code != 401, path


async def test_cors_is_off_unless_origins_are_configured(keyed: Served, tiny_weights: Path) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    plain = await keyed.client.options("/segment", headers=preflight)
    assert "access-control-allow-origin" not in plain.headers
    settings = tiny_settings(tiny_weights, max_batch_size=1, cors_origins=["https://app.example"])
    async with serve(settings, ready=False) as served:
        allowed = await served.client.options("/segment", headers=preflight)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "X-API-Key" in allowed.headers["access-control-allow-headers"]
        other = await served.client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        simple = await served.client.get("/healthz", headers={"Origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        assert "X-Request-ID" in simple.headers["access-control-expose-headers"]
