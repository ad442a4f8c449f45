"""The OpenAPI document: valid, complete (every route, status, header) and with real examples."""

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate
from starlette.routing import BaseRoute, Mount, Route

from centermask_client.rle import area, decode
from centermask_client.schemas import BatchResponse, ErrorBody, ModelInfo, SegmentResponse, VideoFrameResult
from service.app import create_app
from tests.service.helpers import tiny_settings

# Served, but not API operations: the documentation itself.
DOCS_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
STATIC_MOUNTS = {"/static", "/static-offline-docs"}


@pytest.fixture(scope="module")
def app(tiny_weights: Path) -> FastAPI:
    return create_app(tiny_settings(tiny_weights))


@pytest.fixture(scope="module")
def spec(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]


def test_the_document_validates(spec: dict[str, Any]) -> None:
    validate(spec)


def served_routes(app: FastAPI) -> list[BaseRoute]:
    """Every route of the app, those of included routers too (which recent FastAPI nests)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before 0.120 keeps included routes flat in app.routes
        return list(app.routes)
    return [context.original_route for context in iter_route_contexts(app.routes)]


def test_every_route_the_app_serves_is_described(app: FastAPI, spec: dict[str, Any]) -> None:
    routes = served_routes(app)
    served = {
        (route.path, method.lower())
        for route in routes
        if isinstance(route, Route) and route.path not in DOCS_ROUTES
        for method in route.methods - {"HEAD"}
    }
    described = {(path, method) for path, method, _ in operations(spec)}
    assert served == described
    assert {route.path for route in routes if isinstance(route, Mount)} == STATIC_MOUNTS
    assert set(spec["paths"]) == {
        "/",
        "/segment",
        "/segment/batch",
        "/segment/video",
        "/v1/model",
        "/v1/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/versions/{model_version}",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/versions/{model_version}/ready",
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
        "/v2/repository/index",
        "/v2/repository/models/{model_name}/load",
        "/v2/repository/models/{model_name}/unload",
    }


def test_every_operation_is_explained(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        assert op.get("summary") and op.get("description"), f"{method} {path}"


def test_every_answer_carries_the_request_id_and_503s_retry_after(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        assert any(p["name"] == "X-Request-ID" and p["in"] == "header" for p in op["parameters"])
        for status, response in op["responses"].items():
            headers = response["headers"]
            assert headers["X-Request-ID"] == {"$ref": "#/components/headers/X-Request-ID"}, (path, status)
            if status == "503":
                assert "Retry-After" in headers, f"{method} {path}"
    assert {"X-Request-ID", "Retry-After", "WWW-Authenticate"} <= set(spec["components"]["headers"])


def test_every_error_status_has_the_error_schema(spec: dict[str, Any]) -> None:
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for path in ("/segment", "/segment/batch"):
        responses = spec["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "401", "404", "413", "415", "422", "500", "503", "504"}
        for status, response in responses.items():
            if status != "200":
                content = response["content"]["application/json"]
                assert content["schema"] == error_body
                assert all(example["value"]["error"]["code"] for example in content["examples"].values())
    for path in ("/readyz", "/healthz", "/v1/model"):
        assert (
            spec["paths"][path]["get"]["responses"]["503"]["content"]["application/json"]["schema"]
            == error_body
        )
    examples_413 = spec["paths"]["/segment"]["post"]["responses"]["413"]["content"]["application/json"][
        "examples"
    ]
    assert set(examples_413) == {"image_too_large", "too_many_pixels", "too_many_images"}


def test_segment_documents_its_parameters_bodies_and_formats(spec: dict[str, Any]) -> None:
    op = spec["paths"]["/segment"]["post"]
    parameters = {p["name"] for p in op["parameters"]}
    assert {"score_threshold", "max_detections", "classes", "mask_format", "format"} <= parameters
    assert {"multipart/form-data", "image/jpeg", "image/png"} <= set(op["requestBody"]["content"])
    assert {"application/json", "image/png", "image/jpeg"} == set(op["responses"]["200"]["content"])
    assert spec["paths"]["/readyz"]["get"]["responses"]["503"]["headers"]["Retry-After"]


def test_the_examples_are_real_answers(spec: dict[str, Any]) -> None:
    segment = spec["paths"]["/segment"]["post"]["responses"]["200"]["content"]["application/json"]["example"]
    result = SegmentResponse.model_validate(segment)
    assert len(result.instances) >= 3
    for instance in result.instances:
        assert instance.mask is not None and instance.mask.size == (result.height, result.width)
        rle = {"size": list(instance.mask.size), "counts": instance.mask.counts}
        assert area(rle) == instance.mask_array().sum() > 50
        x1, y1, x2, y2 = instance.box
        ys, xs = decode(rle).nonzero()
        assert x1 - 1 <= xs.min() and xs.max() <= x2 and y1 - 1 <= ys.min() and ys.max() <= y2
    batch = spec["paths"]["/segment/batch"]["post"]["responses"]["200"]["content"]["application/json"][
        "example"
    ]
    assert BatchResponse.model_validate(batch).results[0].instances == result.instances
    ModelInfo.model_validate(
        spec["paths"]["/v1/model"]["get"]["responses"]["200"]["content"]["application/json"]["example"]
    )


def test_the_inference_protocol_documents_its_bodies_and_error_shape(spec: dict[str, Any]) -> None:
    infer = spec["paths"]["/v2/models/{model_name}/infer"]["post"]
    body = infer["requestBody"]["content"]
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/InferenceRequest"}
    assert {"InferenceRequest", "RequestInput", "RequestOutput"} <= set(spec["components"]["schemas"])
    assert "application/octet-stream" in body
    protocol_error = {"$ref": "#/components/schemas/InferenceErrorBody"}
    for status in ("400", "404", "413", "503"):
        assert infer["responses"][status]["content"]["application/json"]["schema"] == protocol_error


def test_the_video_endpoint_documents_its_lines_statuses_and_the_streams_messages(
    spec: dict[str, Any],
) -> None:
    op = spec["paths"]["/segment/video"]["post"]
    parameters = {p["name"] for p in op["parameters"]}
    assert {"score_threshold", "max_detections", "classes", "mask_format", "fps", "max_frames"} <= parameters
    assert {"multipart/form-data", "video/mp4", "video/webm"} <= set(op["requestBody"]["content"])
    ok = op["responses"]["200"]
    assert set(ok["content"]) == {"application/x-ndjson"}
    assert "X-Video-Frames" in ok["headers"]
    for line in ok["content"]["application/x-ndjson"]["example"].splitlines():
        body = json.loads(line)
        (ErrorBody if "error" in body else VideoFrameResult).model_validate(body)
    assert set(op["responses"]) == {"200", "400", "401", "404", "413", "415", "422", "500", "501", "503"}
    examples_413 = op["responses"]["413"]["content"]["application/json"]["examples"]
    assert set(examples_413) == {"video_too_large", "too_many_pixels", "video_too_long"}
    # The stream is a WebSocket (no OpenAPI operation): its messages are component schemas.
    assert {"VideoFrameResult", "StreamFrameResult", "StreamControl"} <= set(spec["components"]["schemas"])
