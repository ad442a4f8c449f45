"""What a newcomer trips on first, each checked: a failed start's exit status, HEAD wherever GET works, log
lines that stay JSON (int8 and onnxruntime start-ups included, error codes in request lines), the backend and
the effective batch size said, metric labels for every route served, raw uploads of any declared type."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import CENTERMASK_SERVE, REPO, TIMEOUT_S, clean_environment, free_port, live_server
from tests.service.helpers import Served, encode, png_body, random_image

pytestmark = pytest.mark.anyio

IMAGE = random_image(3, 120, 160)


def start(*flags: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """`centermask-serve` with these flags, to its end (it is expected to fail)."""
    return subprocess.run(
        [*CENTERMASK_SERVE, "--host", "127.0.0.1", "--port", str(free_port()), *flags],
        cwd=REPO, env=clean_environment(), capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--device", "cpu", "--precision", "fp16"), "fp16 runs on CUDA devices only"),
        (("--device", "cuda"), "CUDA was requested but no CUDA device is available"),
        (("--weights", "/no/such/weights.pth"), "no weights file at /no/such/weights.pth"),
    ],
)
def test_settings_that_cannot_work_stop_the_start_with_a_failure_status(
    flags: tuple[str, ...], says: str
) -> None:
    process = start(*flags)
    assert process.returncode == 1
    assert f"centermask-serve: cannot serve: {says}" in process.stderr


def test_a_model_that_fails_to_load_ends_the_process_with_a_failure_status(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    process = start("--device", "cpu", "--weights", str(broken), "--drain-timeout-s", "1")
    assert process.returncode == 1
    lines = [json.loads(line) for line in process.stderr.splitlines() if line.startswith("{")]
    assert any(line["message"].startswith("cannot load the model") for line in lines)


GET_ROUTES = [
    "/", "/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json", "/v1/model", "/v2",
    "/v2/health/live", "/v2/health/ready", "/v2/models/centermask", "/v2/models/centermask/ready",
    "/static/app.js", "/static/examples/shapes-1.png",
]  # fmt: skip


@pytest.mark.parametrize("path", GET_ROUTES)
async def test_head_answers_wherever_get_does(served: Served, path: str) -> None:
    get, head = await served.client.get(path), await served.client.head(path)
    assert get.status_code == head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # the counters move between the two requests
        assert head.headers.get("content-length") == get.headers.get("content-length")


async def test_head_is_refused_where_only_post_works(served: Served) -> None:
    assert (await served.client.head("/segment")).status_code == 405


async def test_every_served_route_has_its_own_metric_label(served: Served) -> None:
    for path in ("/docs", "/openapi.json", "/static/app.js", "/redoc", "/no/such/path"):
        await served.client.get(path)
    text = (await served.client.get("/metrics")).text
    for label in ("/docs", "/openapi.json", "/static", "/redoc"):
        assert f'endpoint="{label}",status_code="200"' in text, label
    assert 'endpoint="unmatched",status_code="404"' in text
    assert 'endpoint="unmatched",status_code="200"' not in text


async def test_the_model_info_names_the_backend(served: Served) -> None:
    info = (await served.client.get("/v1/model")).json()
    assert info["backend"] == "torch"


async def test_the_model_info_says_what_the_model_knows(served: Served) -> None:
    info = (await served.client.get("/v1/model")).json()
    assert info["bundled"] is False  # the tests' small checkpoint has COCO's classes
    assert info["description"].startswith("The 80 COCO object classes")
    (summary,) = (await served.client.get("/v1/models")).json()["models"]
    assert (summary["description"], summary["bundled"]) == (info["description"], False)


async def test_a_raw_upload_of_any_declared_type_is_read_for_what_it_is(served: Served) -> None:
    raw = {"content": encode(IMAGE), "headers": {"Content-Type": "application/octet-stream"}}
    assert (await served.client.post("/segment", **raw)).status_code == 200
    garbage = {"content": b"not an image at all", "headers": {"Content-Type": "application/octet-stream"}}
    answer = await served.client.post("/segment", **garbage)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_image"
    assert (await served.client.post("/segment", **png_body(IMAGE))).status_code == 200


async def test_a_batch_error_names_the_images_file(served: Served) -> None:
    files = [
        ("images", ("good.png", encode(IMAGE), "image/png")),
        ("images", ("bad.png", b"nope", "image/png")),
    ]
    answer = await served.client.post("/segment/batch", files=files)
    assert answer.status_code == 400
    assert answer.json()["error"] | {"message": ""} == {
        "code": "invalid_image", "message": "", "index": 1, "file": "bad.png"
    }  # fmt: skip


def json_lines(log: Path) -> list[dict[str, object]]:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a log line that is not JSON: {line[:300]}")
    return parsed


@pytest.mark.parametrize(
    ("flags", "backend"),
    [(("--precision", "int8"), "torch"), (("--backend", "onnxruntime"), "onnxruntime")],
    ids=["int8", "onnxruntime"],
)
def test_start_ups_log_json_only_and_say_what_runs(
    small_weights: Path, tmp_path: Path, flags: tuple[str, ...], backend: str
) -> None:
    if flags[0] == "--precision":
        from model.inference.precision import Precision, PrecisionUnavailable, check_supported

        try:
            check_supported(Precision.INT8, __import__("torch").device("cpu"))
        except PrecisionUnavailable as unavailable:
            pytest.skip(str(unavailable))
    log = tmp_path / "server.log"
    # The 64/128-resize weights: calibration and export take seconds even on a busy machine.
    flags = ("--weights", str(small_weights), "--max-batch-size", "2", *flags)
    with live_server(log, *flags) as server:
        answer = httpx.post(f"{server.url}/segment", content=b"nope", headers={"Content-Type": "image/png"})
        assert answer.status_code == 400
        server.wait_for(lambda: '"status":400' in log.read_text(), "the request's log line", TIMEOUT_S)
    lines = json_lines(log)
    loaded = next(line for line in lines if line["message"] == "model loaded")
    assert loaded["backend"] == backend
    ready = next(line for line in lines if line["message"] == "ready")
    assert ready["settings"]["max_batch_size"] == 2  # type: ignore[index]
    # The exporter's progress stays out of the log.
    assert not [line for line in lines if str(line["logger"]).startswith(("onnx_ir", "onnxscript"))]
    request = next(line for line in lines if line["message"] == "request" and line["status"] == 400)
    assert request["error"] == "invalid_image"
