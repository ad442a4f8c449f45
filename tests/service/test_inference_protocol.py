"""The Open Inference Protocol (KServe v2), spoken to the real server by Triton's own client (tritonclient)
and by hand: metadata, health, readiness, inference equal to /segment's, errors in the protocol's shape."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.helpers import TINY_SERVER_KEY, LiveServer, metric_families
from tests.service.helpers import TIMEOUT_S, comparable, encode, per_image, random_image

tritonclient_http = pytest.importorskip(
    "tritonclient.http", reason="tritonclient[http] is not installed (pip install -e .[test])"
)
from tritonclient.utils import InferenceServerException  # noqa: E402

CONFIG = "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x"
KEY = {"X-API-Key": TINY_SERVER_KEY}
IMAGES = [encode(random_image(seed, 120 + 40 * seed, 160)) for seed in range(2)]


@pytest.fixture(scope="module")
def client(tiny_server: LiveServer):
    client = tritonclient_http.InferenceServerClient(
        tiny_server.url.removeprefix("http://"), network_timeout=TIMEOUT_S
    )
    yield client
    client.close()


def segment(server: LiveServer, image: bytes, **params: str) -> list[dict]:
    response = httpx.post(
        f"{server.url}/segment",
        content=image,
        headers={**KEY, "Content-Type": "image/png"},
        params=params,
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    return response.json()["instances"]


def triton_infer(client, images: list[bytes], parameters: dict | None = None, **options):
    image = tritonclient_http.InferInput("image", [len(images)], "BYTES")
    image.set_data_from_numpy(np.array(images, dtype=object))
    # A copy: tritonclient adds its own headers to the dict it is given.
    return client.infer("centermask", [image], headers=dict(KEY), parameters=parameters, **options)


def test_server_metadata_health_and_readiness(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "centermask-serve" and "binary_tensor_data" in metadata["extensions"]
    assert client.is_model_ready("centermask") and client.is_model_ready(CONFIG)
    assert client.is_model_ready(CONFIG, model_version="1")
    assert not client.is_model_ready("resnet50") and not client.is_model_ready(CONFIG, model_version="2")


def test_model_metadata_needs_the_api_key_and_describes_the_tensors(client) -> None:
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata("centermask")
    assert refused.value.status() == "401" and "API key" in refused.value.message()
    metadata = client.get_model_metadata("centermask", headers=KEY)
    [version] = metadata["versions"]
    assert metadata["name"] == CONFIG and metadata["platform"] == "pytorch"
    assert re.fullmatch("[0-9a-f]{12}", version), "the weights' SHA-256 prefix"
    assert client.get_model_metadata(CONFIG, model_version=version, headers=KEY)["versions"] == [version]
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    outputs = {output["name"]: (output["datatype"], output["shape"]) for output in metadata["outputs"]}
    assert outputs["boxes"] == ("FP32", [-1, 4]) and outputs["masks"] == ("BYTES", [-1])
    assert {"scores", "class_ids", "mask_scores", "image_index"} <= set(outputs)
    assert client.get_model_metadata(CONFIG, model_version="1", headers=KEY)["name"] == CONFIG
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("yolo", headers=KEY)
    assert unknown.value.status() == "404" and CONFIG in unknown.value.message()


def test_a_batch_infers_what_segment_answers_for_each_image(client, tiny_server: LiveServer) -> None:
    result = triton_infer(client, IMAGES)
    assert result.get_response()["model_name"] == "centermask"
    answers = per_image(result, len(IMAGES))
    for image, answer in zip(IMAGES, answers, strict=True):
        expected = comparable(segment(tiny_server, image))
        assert expected, "the rule weights find instances in blocky noise"
        assert answer == expected


def test_parameters_mean_what_the_query_parameters_of_segment_mean(client, tiny_server: LiveServer) -> None:
    top_class = segment(tiny_server, IMAGES[0], score_threshold="0")[0]["class_name"]
    parameters = {"score_threshold": 0.0, "max_detections": 2, "mask_format": "polygon", "classes": top_class}
    [answer] = per_image(triton_infer(client, IMAGES[:1], parameters), 1)
    assert 1 <= len(answer) <= 2 and {instance["class_name"] for instance in answer} == {top_class}
    query = {key: str(value) for key, value in parameters.items()}
    assert answer == comparable(segment(tiny_server, IMAGES[0], **query))
    for agnostic in (False, True):
        parameters = {"score_threshold": 0.0, "class_agnostic_nms": agnostic}
        [answer] = per_image(triton_infer(client, IMAGES[:1], parameters), 1)
        query = {"score_threshold": "0", "class_agnostic_nms": str(agnostic).lower()}
        assert answer == comparable(segment(tiny_server, IMAGES[0], **query))
    without_masks = triton_infer(client, IMAGES[:1], {"mask_format": "none"})
    assert without_masks.as_numpy("masks") is None and without_masks.as_numpy("boxes") is not None


def test_the_json_encoding_with_base64_images(client, tiny_server: LiveServer, tiny_weights: Path) -> None:
    request = {
        "id": "json-1",
        "inputs": [
            {
                "name": "image",
                "shape": [2, 1],
                "datatype": "BYTES",
                "data": [base64.b64encode(image).decode() for image in IMAGES],
            }
        ],
        "outputs": [{"name": "scores"}, {"name": "image_index"}, {"name": "masks"}],
    }
    response = httpx.post(
        f"{tiny_server.url}/v2/models/{CONFIG}/versions/1/infer", json=request, headers=KEY, timeout=TIMEOUT_S
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    answer = response.json()
    version = hashlib.sha256(tiny_weights.read_bytes()).hexdigest()[:12]
    assert (answer["model_name"], answer["model_version"], answer["id"]) == (CONFIG, version, "json-1")
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert set(outputs) == {"scores", "image_index", "masks"}
    binary = triton_infer(client, IMAGES)
    np.testing.assert_array_equal(np.float32(outputs["scores"]["data"]), binary.as_numpy("scores"))
    assert outputs["image_index"]["data"] == binary.as_numpy("image_index").tolist()
    assert outputs["masks"]["data"] == [mask.decode() for mask in binary.as_numpy("masks")]
    assert outputs["scores"]["shape"] == [len(outputs["scores"]["data"])]


def post_infer(server: LiveServer, body: bytes | dict, headers: dict | None = None) -> httpx.Response:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    return httpx.post(
        f"{server.url}/v2/models/centermask/infer",
        content=body,
        headers={**KEY, **(headers or {})},
        timeout=TIMEOUT_S,
    )


def image_input(data: list[str], shape: list[int] | None = None, **fields) -> dict:
    return {
        "inputs": [
            {"name": "image", "shape": shape or [len(data)], "datatype": "BYTES", "data": data, **fields}
        ]
    }


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"not json", 400, "not JSON"),
        ({"inputs": []}, 400, "one input"),
        ({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [0]}]}, 400, "BYTES"),
        (image_input(["!!!"]), 400, "base64"),
        (image_input(["aGVsbG8="], shape=[2]), 400, "2 base64 strings"),
        (image_input(["aGVsbG8="], shape=[1, 3]), 400, "[n, 1]"),
        (image_input([base64.b64encode(IMAGES[0]).decode(), "aGVsbG8="]), 400, "image 1:"),
        (image_input(["aGVsbG8="] * 33), 413, "at most 32"),
        ({**image_input(["aGVsbG8="]), "outputs": [{"name": "logits"}]}, 400, "unknown output"),
        ({**image_input(["aGVsbG8="]), "parameters": {"score_threshold": 2}}, 400, "score_threshold"),
        ({**image_input(["aGVsbG8="]), "parameters": {"mask_format": "png"}}, 400, "mask_format"),
        (
            {**image_input(["aGVsbG8="]), "parameters": {"class_agnostic_nms": "yes"}},
            400,
            "class_agnostic_nms",
        ),
        ({**image_input(["aGVsbG8="]), "parameters": {"classes": "unicorn"}}, 422, "unicorn"),
        (
            {
                **image_input(["aGVsbG8="]),
                "parameters": {"mask_format": "none"},
                "outputs": [{"name": "masks"}],
            },
            400,
            "mask_format none",
        ),
    ],
)
def test_bad_requests_get_the_protocols_error_shape(
    tiny_server: LiveServer, body, status: int, says: str
) -> None:
    response = post_infer(tiny_server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and says in error, error


def test_binary_tensors_are_checked_against_their_declared_sizes(tiny_server: LiveServer) -> None:
    element = IMAGES[0]
    blob = struct.pack("<I", len(element)) + element
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    ).encode()
    ok = post_infer(tiny_server, header + blob, {"Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200 and ok.json()["outputs"]
    for body, length, says in (
        (header + blob[:-1], len(header), "exceeds"),
        (header + blob + b"x", len(header), "follow the tensors"),
        (header + blob, len(header) + len(blob) + 1, "not a length within"),
    ):
        response = post_infer(tiny_server, body, {"Inference-Header-Content-Length": str(length)})
        assert response.status_code == 400 and says in response.json()["error"], response.text
    compressed = post_infer(tiny_server, header + blob, {"Content-Encoding": "gzip"})
    assert compressed.status_code == 415 and isinstance(compressed.json()["error"], str)


def test_requests_are_counted_under_their_route(client, tiny_server: LiveServer) -> None:
    def count() -> float:
        families = metric_families(httpx.get(f"{tiny_server.url}/metrics", timeout=TIMEOUT_S).text)
        return sum(
            sample.value
            for sample in families["centermask_requests"].samples
            if sample.name == "centermask_requests_total"
            and sample.labels == {"endpoint": "/v2/models/{model_name}/infer", "status_code": "200"}
        )

    before = count()
    triton_infer(client, IMAGES[:1])
    assert count() == before + 1
