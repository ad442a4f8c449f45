"""A model repository: several models in one server, each answering by name with its own classes and
version; config.json validated; the repository extension (index, load, unload) behind the admin key;
reloads under load that fail no request; SIGHUP on a live server."""

import asyncio
import base64
import hashlib
import itertools
import json
import os
import shutil
import signal
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from centermask_client import AsyncClient, Client, NotFound
from centermask_client.schemas import SegmentParameters
from model.inference.options import PredictorOptions
from service.metrics import Protocol
from service.options import SegmentOptions, resolve_options
from service.repository import RepositoryError, read_source
from service.served import ServedModel
from service.settings import Settings
from service.uploads import Upload
from tests.conftest import TINY_CONFIG
from tests.helpers import TIMEOUT_S, LiveServer, free_port, live_server
from tests.rule_weights import write_rule_checkpoint
from tests.service.helpers import HttpServed, Served, png_body, random_image, serve, serve_http
from training.data.clips import write_clip

pytestmark = pytest.mark.anyio

ADMIN = {"X-API-Key": "admin-key"}
IMAGE = png_body(random_image(0, 96, 128))


def version_of(weights: Path) -> str:
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:12]


def repository_settings(directory: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_repository": directory,
        "device": "cpu",
        "max_batch_size": 2,
        "max_batch_delay_ms": 2,
        "cpu_workers": 2,
        "admin_key": ADMIN["X-API-Key"],
        "grpc_port": 0,  # in-process apps: no gRPC server on the shared default port
    }
    return Settings(**(values | overrides))


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints at a test resize of 64/128: COCO's 80 classes; 3 classes; and the 80 again, other bytes."""
    directory = tmp_path_factory.mktemp("checkpoints")
    return {
        "coco": write_rule_checkpoint(directory / "coco.pth", TINY_CONFIG, 80, 64, 128),
        "three": write_rule_checkpoint(directory / "three.pth", TINY_CONFIG, 3, 64, 128),
        "coco-next": write_rule_checkpoint(directory / "coco-next.pth", TINY_CONFIG, 80, 64, 112),
    }


def put_weights(folder: Path, weights: Path) -> None:
    """Replace a model's weights as a deployment should: a new file renamed over the old one."""
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / ".model.pth.new"
    shutil.copyfile(weights, staged)
    os.replace(staged, folder / "model.pth")


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, weights: dict[str, Path]) -> Path:
    directory = tmp_path_factory.mktemp("repository")
    put_weights(directory / "people", weights["coco"])
    put_weights(directory / "shapes", weights["three"])
    (directory / "shapes" / "config.json").write_text(json.dumps({"precision": "fp32", "jpeg_draft": True}))
    return directory


@pytest.fixture(scope="module")
async def served(repository: Path) -> AsyncIterator[Served]:
    async with serve(repository_settings(repository)) as served:
        yield served


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, weights: dict[str, Path]) -> Iterator[HttpServed]:
    """The two models behind real uvicorn (WebSockets, answers streamed line by line), from a folder of
    their own: its tests reload them."""
    directory = tmp_path_factory.mktemp("live-repository")
    put_weights(directory / "people", weights["coco"])
    put_weights(directory / "shapes", weights["three"])
    with serve_http(repository_settings(directory, grpc_port=free_port())) as served:
        yield served


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_clip(path, 2, 96, 128, fps=10)
    return path


# --------------------------------------------------------------------------------------------------
# Several models by name


async def test_two_models_answer_by_name_with_their_own_classes_and_versions(
    served: Served, weights: dict[str, Path]
) -> None:
    client = served.client
    listing = (await client.get("/v1/models")).json()
    assert listing["default"] == "people"
    models = {model["name"]: model for model in listing["models"]}
    assert set(models) == {"people", "shapes"}
    assert models["people"]["model_version"] == version_of(weights["coco"])
    assert models["shapes"]["model_version"] == version_of(weights["three"])
    assert len(models["people"]["class_names"]) == 80 and len(models["shapes"]["class_names"]) == 3
    assert all(model["state"] == "READY" for model in models.values())
    for name, classes in (("people", 80), ("shapes", 3)):
        answer = (await client.post("/segment", params={"model": name, "score_threshold": 0}, **IMAGE)).json()
        assert (answer["model"], answer["model_version"]) == (name, models[name]["model_version"])
        assert {instance["class_id"] for instance in answer["instances"]} <= set(range(classes))
        info = (await client.get("/v1/model", params={"model": name})).json()
        assert (info["name"], len(info["class_names"])) == (name, classes)
    default = (await client.post("/segment", **IMAGE)).json()
    assert default["model"] == "people"
    drawn = await client.post("/segment", params={"model": "shapes", "format": "png"}, **IMAGE)
    assert (drawn.headers["X-Model"], drawn.headers["X-Model-Version"]) == (
        "shapes",
        models["shapes"]["model_version"],
    )
    batch = await client.post(
        "/segment/batch", params={"model": "shapes"}, files=[("images", ("a.png", IMAGE["content"]))]
    )
    assert (batch.json()["model"], batch.json()["model_version"]) == (
        "shapes",
        models["shapes"]["model_version"],
    )


async def test_the_inference_protocol_reaches_each_model_by_name(served: Served) -> None:
    client = served.client
    for name in ("people", "shapes"):
        assert (await client.get(f"/v2/models/{name}/ready")).json() == {"name": name, "ready": True}
        metadata = (await client.get(f"/v2/models/{name}")).json()
        [version] = metadata["versions"]
        assert metadata["name"] == name
        assert (await client.get(f"/v2/models/{name}/versions/{version}/ready")).status_code == 200
        request = {
            "inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "data": [_base64(IMAGE["content"])]}
            ],
            "outputs": [{"name": "scores"}],
        }
        answer = (await client.post(f"/v2/models/{name}/infer", json=request)).json()
        assert (answer["model_name"], answer["model_version"]) == (name, version)
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}


async def test_an_unknown_model_is_a_404_json_error(served: Served) -> None:
    response = await served.client.post("/segment", params={"model": "yolo"}, **IMAGE)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_model" and "'people', 'shapes'" in error["message"]
    protocol = await served.client.get("/v2/models/yolo/ready")
    assert protocol.status_code == 404 and protocol.json()["code"] == "unknown_model"
    assert (await served.client.get("/v2/models/people/versions/0123/ready")).status_code == 404
    assert (await served.client.get("/v1/model", params={"model": "yolo"})).status_code == 404


# --------------------------------------------------------------------------------------------------
# config.json


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ('{"precision": "fp64"}', "precision"),
        ('{"precison": "bf16"}', "unknown option 'precison'"),
        ('{"weights": "other.pth"}', "may not name weights"),
        ("[1, 2]", "JSON object of predictor options"),
        ("{not json", "is not JSON"),
        ('{"onnx_model": "graphs.onnx"}', "onnxruntime"),
    ],
)
def test_config_json_is_validated_by_the_one_declaration(
    tmp_path: Path, weights: dict[str, Path], config: str, says: str
) -> None:
    put_weights(tmp_path / "model", weights["three"])
    (tmp_path / "model" / "config.json").write_text(config)
    with pytest.raises(RepositoryError, match=says) as raised:
        read_source(tmp_path, "model", PredictorOptions())
    assert "'model'" in str(raised.value) and "config.json" in str(raised.value)


def test_a_folder_takes_the_servers_options_and_its_own(tmp_path: Path, weights: dict[str, Path]) -> None:
    put_weights(tmp_path / "m", weights["three"])
    base = PredictorOptions(device="cpu", jpeg_draft=True, weights=Path("/elsewhere.pth"), config="x")
    source = read_source(tmp_path, "m", base)
    assert source.options.weights == tmp_path / "m" / "model.pth" and source.options.config is None
    assert source.options.device == "cpu" and source.options.jpeg_draft
    (tmp_path / "m" / "config.json").write_text(
        '{"jpeg_draft": false, "backend": "onnxruntime", "onnx_model": "g.onnx"}'
    )
    changed = read_source(tmp_path, "m", base)
    assert not changed.options.jpeg_draft and changed.options.onnx_model == tmp_path / "m" / "g.onnx"
    assert changed.fingerprint != source.fingerprint
    with pytest.raises(RepositoryError, match="no weights file"):
        (tmp_path / "empty").mkdir()
        read_source(tmp_path, "empty", base)
    with pytest.raises(RepositoryError, match="not a model name"):
        read_source(tmp_path, "-bad", base)


def test_settings_refuse_a_repository_with_weights_and_an_admin_key_equal_to_the_api_key(
    repository: Path, weights: dict[str, Path]
) -> None:
    with pytest.raises(ValidationError, match="unset CENTERMASK_WEIGHTS"):
        Settings(model_repository=repository, weights=weights["coco"])
    with pytest.raises(ValidationError, match="must differ"):
        Settings(api_key="same", admin_key="same")
    with pytest.raises(ValidationError, match="not a folder"):
        Settings(model_repository=repository / "nothing-here")
    assert Settings(admin_key="admin").effective()["admin_key"] == "set"


async def test_a_bad_folder_is_refused_saying_why_and_the_served_version_stays(
    served: Served, repository: Path, weights: dict[str, Path]
) -> None:
    folder = repository / "broken"
    put_weights(folder, weights["three"])
    (folder / "config.json").write_text('{"precision": "fp32", "batch": 4}')
    try:
        response = await served.client.post("/v2/repository/models/broken/load", headers=ADMIN)
        assert response.status_code == 400
        assert (
            response.json()["code"] == "invalid_model"
            and "unknown option 'batch'" in response.json()["error"]
        )
        index = {
            entry["name"]: entry
            for entry in (await served.client.post("/v2/repository/index", headers=ADMIN)).json()
        }
        assert index["broken"]["state"] == "UNAVAILABLE" and "batch" in index["broken"]["reason"]
        (folder / "model.pth").write_bytes(b"not a checkpoint")
        (folder / "config.json").unlink()
        failed = await served.client.post("/v2/repository/models/broken/load", headers=ADMIN)
        assert failed.status_code == 400 and failed.json()["code"] == "load_failed"
        assert (await served.client.get("/readyz")).status_code == 200, "a failed load changes nothing served"
    finally:
        shutil.rmtree(folder)


async def test_a_model_that_would_not_fit_is_refused(served: Served) -> None:
    registry = served.runtime.models
    probe = registry.available_memory
    registry.available_memory = lambda device: 64 * 1024 * 1024
    try:
        response = await served.client.post("/v2/repository/models/shapes/load", headers=ADMIN)
    finally:
        registry.available_memory = probe
    assert response.status_code == 507 and response.json()["code"] == "insufficient_memory"
    assert "would not fit" in response.json()["error"] and "MiB is free" in response.json()["error"]
    assert (await served.client.get("/v2/models/shapes/ready")).status_code == 200


# --------------------------------------------------------------------------------------------------
# The repository extension and the admin key


async def test_repository_changes_need_the_admin_key(served: Served) -> None:
    client = served.client
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        response = await client.post("/v2/repository/index", headers=headers)
        assert response.status_code == 401 and response.json()["code"] == "unauthorized"
    assert (
        await client.post("/v2/repository/index", headers={"Authorization": "Bearer admin-key"})
    ).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert "security" in spec["paths"]["/v2/repository/models/{model_name}/load"]["post"]
    assert "security" not in spec["paths"]["/segment"]["post"], "no API key is configured"


async def test_without_an_admin_key_the_repository_endpoints_say_how_to_enable_them(
    repository: Path,
) -> None:
    async with serve(repository_settings(repository, admin_key=None, api_key="inference-key")) as served:
        for path in (
            "/v2/repository/index",
            "/v2/repository/models/people/load",
            "/v2/repository/models/people/unload",
        ):
            response = await served.client.post(path, headers={"X-API-Key": "inference-key"})
            assert response.status_code == 403, path
            assert (
                response.json()["code"] == "admin_disabled"
                and "CENTERMASK_ADMIN_KEY" in response.json()["error"]
            )
        assert (await served.client.get("/v2/models/people/ready")).status_code == 200


async def test_index_unload_and_load(served: Served, repository: Path, weights: dict[str, Path]) -> None:
    client = served.client
    index = (await client.post("/v2/repository/index", headers=ADMIN)).json()
    assert [(entry["name"], entry["state"]) for entry in index] == [("people", "READY"), ("shapes", "READY")]
    assert all(len(entry["version"]) == 12 for entry in index)
    unloaded = await client.post(
        "/v2/repository/models/shapes/unload", headers=ADMIN, json={"parameters": {"unload_dependents": True}}
    )
    assert unloaded.status_code == 200 and unloaded.json()["state"] == "UNAVAILABLE"
    gone = await client.post("/segment", params={"model": "shapes"}, **IMAGE)
    assert gone.status_code == 404 and "/v2/repository/models/shapes/load" in gone.json()["error"]["message"]
    assert (await client.get("/readyz")).status_code == 200, "an unloaded model is not waited for"
    assert "shapes" not in await served.runtime.reload_changed(), "SIGHUP leaves an unloaded model unloaded"
    ready_only = (await client.post("/v2/repository/index", headers=ADMIN, json={"ready": True})).json()
    assert [entry["name"] for entry in ready_only] == ["people"]
    put_weights(repository / "extra", weights["three"])
    try:
        index = {
            entry["name"]: entry
            for entry in (await client.post("/v2/repository/index", headers=ADMIN)).json()
        }
        assert (index["extra"]["state"], index["extra"]["reason"]) == ("UNAVAILABLE", "not loaded")
        assert index["shapes"]["reason"] == "unloaded"
        for name in ("shapes", "extra"):
            loaded = await client.post(f"/v2/repository/models/{name}/load", headers=ADMIN)
            assert loaded.status_code == 200 and loaded.json()["state"] == "READY"
            assert (await client.post("/segment", params={"model": name}, **IMAGE)).status_code == 200
        refused = await client.post(
            "/v2/repository/models/extra/unload", headers=ADMIN, json={"parameters": {"config": "{}"}}
        )
        assert (
            refused.status_code == 400 and "unsupported unload parameter 'config'" in refused.json()["error"]
        )
        await client.post("/v2/repository/models/extra/unload", headers=ADMIN)
        assert (await client.post("/v2/repository/models/nothing/unload", headers=ADMIN)).status_code == 404
        assert (await client.post("/v2/repository/models/nothing/load", headers=ADMIN)).status_code == 400
    finally:
        shutil.rmtree(repository / "extra")
    assert [model["name"] for model in (await client.get("/v1/models")).json()["models"]] == [
        "people",
        "shapes",
    ]


async def test_a_load_may_bring_its_own_config_json(served: Served) -> None:
    client, registry = served.client, served.runtime.models

    async def load(parameters: dict[str, Any] | None = None) -> httpx.Response:
        body = {"parameters": parameters} if parameters is not None else None
        return await client.post("/v2/repository/models/shapes/load", headers=ADMIN, json=body)

    assert registry.get("shapes").predictor.jpeg_draft, "the folder's config.json says so"
    loaded = await load({"config": json.dumps({"precision": "fp32"})})
    assert loaded.status_code == 200 and loaded.json()["state"] == "READY"
    # In place of the folder's config.json, not on top of it: what it leaves unset is the server's.
    assert not registry.get("shapes").predictor.jpeg_draft
    assert "shapes" not in await served.runtime.reload_changed(), "SIGHUP keeps it while the folder is as was"
    for config, says in [
        ("{not json", "is not JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"precison": "bf16", "batch": 4}', "unknown options 'batch', 'precison'"),
        ('{"precision": "fp64"}', "precision: "),
        ('{"weights": "other.pth"}', "may not name weights"),
    ]:
        refused = await load({"config": config})
        assert refused.status_code == 400, config
        assert refused.json()["code"] == "invalid_request"
        assert "model 'shapes': the load's config parameter" in refused.json()["error"]
        assert says in refused.json()["error"], refused.json()["error"]
    uploads = await load({"config": "{}", "file:1/model.pth": base64.b64encode(b"weights").decode()})
    assert uploads.status_code == 400 and uploads.json()["code"] == "invalid_request"
    assert "must be in its repository folder" in uploads.json()["error"]
    typed = await load({"config": {"precision": "fp32"}})
    assert typed.status_code == 400 and "must be a string" in typed.json()["error"]
    other = await load({"priority": 1})
    assert other.status_code == 400 and "unsupported load parameter 'priority'" in other.json()["error"]
    # Refused requests leave the model as it was, and its index entry without a reason.
    index = {
        entry["name"]: entry for entry in (await client.post("/v2/repository/index", headers=ADMIN)).json()
    }
    assert (index["shapes"]["state"], index["shapes"]["reason"]) == ("READY", "")
    assert not registry.get("shapes").predictor.jpeg_draft
    # A load without one reads the folder's again.
    assert (await load()).status_code == 200 and registry.get("shapes").predictor.jpeg_draft


def test_tritonclient_grpc_loads_with_a_config(live: HttpServed) -> None:
    grpc_client = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    registry = live.runtime.models
    headers = {"x-api-key": ADMIN["X-API-Key"]}
    client = grpc_client.InferenceServerClient(f"127.0.0.1:{live.app.state.grpc_server.port}")
    try:
        assert not registry.get("people").predictor.jpeg_draft
        client.load_model("people", config=json.dumps({"jpeg_draft": True}), headers=headers)
        assert registry.get("people").predictor.jpeg_draft and client.is_model_ready("people")
        with pytest.raises(InferenceServerException) as unknown:
            client.load_model("people", config='{"jpeg_drafts": true}', headers=headers)
        assert unknown.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert unknown.value.message().startswith(
            "invalid_request: model 'people': the load's config parameter"
        )
        assert "unknown option 'jpeg_drafts'" in unknown.value.message()
        with pytest.raises(InferenceServerException) as files:
            client.load_model("people", config="{}", files={"file:1/model.pth": b"weights"}, headers=headers)
        assert files.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "must be in its repository folder" in files.value.message()
        assert registry.get("people").predictor.jpeg_draft, "a refused load changes nothing"
        client.load_model("people", headers=headers)
        assert not registry.get("people").predictor.jpeg_draft
    finally:
        client.close()


# --------------------------------------------------------------------------------------------------
# Zero-downtime reloads


async def test_a_reload_under_load_fails_no_request_and_switches_version_once(
    served: Served, repository: Path, weights: dict[str, Path]
) -> None:
    client = served.client
    registry = served.runtime.models
    old = registry.get("people").version
    put_weights(repository / "people", weights["coco-next"])
    new = version_of(weights["coco-next"])
    assert new != old
    seen: list[list[tuple[int, str]]] = [[] for _ in range(4)]
    reloaded = asyncio.Event()
    answered = [asyncio.Event() for _ in seen]
    after_reload: list[int] = [0] * len(seen)

    async def worker(slot: int) -> None:
        # Until the reload has returned and this worker has had two answers of the new version after it.
        while not (reloaded.is_set() and after_reload[slot] >= 2):
            response = await client.post("/segment", params={"model": "people"}, **IMAGE)
            seen[slot].append((response.status_code, response.json().get("model_version", "")))
            answered[slot].set()
            if reloaded.is_set():
                after_reload[slot] += 1

    workers = [asyncio.ensure_future(worker(slot)) for slot in range(len(seen))]
    # Reload once every worker has had an answer of the old version.
    await asyncio.gather(*(event.wait() for event in answered))
    started = time.perf_counter()
    response = await client.post("/v2/repository/models/people/load", headers=ADMIN)
    switch_s = time.perf_counter() - started
    reloaded.set()
    await asyncio.gather(*workers)
    assert response.status_code == 200 and response.json()["version"] == new
    answers = [answer for sequence in seen for answer in sequence]
    assert {status for status, _ in answers} == {200}, "no request fails across the reload"
    for sequence in seen:
        versions = [version for _, version in sequence]
        switches = sum(1 for a, b in itertools.pairwise(versions) if a != b)
        assert versions[0] == old and versions[-1] == new and switches == 1, versions
    print(f"reload under load: {len(answers)} requests, 0 failed, load + warm-up + switch {switch_s:.2f} s")
    await registry.until_retired()
    metrics = (await client.get("/metrics")).text
    assert f'centermask_model_info{{model="people",model_version="{new}"}} 1.0' in metrics
    assert f'model_version="{old}"}} 1.0' not in metrics.split("centermask_model_info")[-1]


async def test_requests_holding_the_former_version_finish_on_it(
    served: Served, repository: Path, weights: dict[str, Path]
) -> None:
    registry = served.runtime.models
    before = registry.get("shapes")
    weights_before = weakref.ref(before.predictor)
    with registry.lease("shapes") as held:
        put_weights(repository / "shapes", weights["coco"])
        response = await served.client.post("/v2/repository/models/shapes/load", headers=ADMIN)
        assert response.status_code == 200 and registry.get("shapes") is not held
        # The held version still serves whoever holds it: its batcher is not closed under it.
        [result] = await held.segment([_upload()], _options(served, held), protocol=Protocol.HTTP)
        assert result.record["instances"] is not None and held.leases == 1
    await registry.until_retired()
    assert before.leases == 0 and not before.is_running
    # Retired, its weights are let go of: nothing holds its predictor any more (its tiler neither).
    assert weights_before() is None
    put_weights(repository / "shapes", weights["three"])
    assert (await served.client.post("/v2/repository/models/shapes/load", headers=ADMIN)).status_code == 200


# --------------------------------------------------------------------------------------------------
# SIGHUP on a live server


def test_sighup_reloads_the_changed_folders_of_a_live_server(
    tmp_path: Path, weights: dict[str, Path]
) -> None:
    directory = tmp_path / "models"
    put_weights(directory / "people", weights["coco"])
    put_weights(directory / "shapes", weights["three"])
    flags = ("--model-repository", str(directory), "--max-batch-size", "1", "--cpu-workers", "1")
    with live_server(tmp_path / "server.log", *flags, CENTERMASK_ADMIN_KEY=ADMIN["X-API-Key"]) as server:
        before = _versions(server)
        assert before == {"people": version_of(weights["coco"]), "shapes": version_of(weights["three"])}
        put_weights(directory / "people", weights["coco-next"])
        server.process.send_signal(signal.SIGHUP)
        server.wait_for(lambda: _versions(server)["people"] != before["people"], "the reloaded version")
        assert _versions(server) == {"people": version_of(weights["coco-next"]), "shapes": before["shapes"]}
        answer = httpx.post(f"{server.url}/segment?model=people", timeout=TIMEOUT_S, **IMAGE).json()
        assert answer["model_version"] == version_of(weights["coco-next"])
        assert "reloaded what changed" in server.log.read_text()
        # The repository extension as Triton's own client speaks it.
        httpclient = pytest.importorskip("tritonclient.http")
        from tritonclient.utils import InferenceServerException

        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        index = client.get_model_repository_index(headers=ADMIN)
        assert [(entry["name"], entry["state"]) for entry in index] == [
            ("people", "READY"),
            ("shapes", "READY"),
        ]
        client.unload_model("shapes", headers=ADMIN)
        assert not client.is_model_ready("shapes") and client.is_server_ready()
        client.load_model("shapes", headers=ADMIN, config=json.dumps({"jpeg_draft": True}))
        assert client.is_model_ready("shapes")
        with pytest.raises(InferenceServerException, match="unknown option 'jpeg_drafts'"):
            client.load_model("shapes", headers=ADMIN, config='{"jpeg_drafts": true}')
        assert server.process.poll() is None


def _versions(server: LiveServer) -> dict[str, str]:
    listing = httpx.get(f"{server.url}/v1/models", timeout=TIMEOUT_S).json()
    return {model["name"]: model["model_version"] for model in listing["models"]}


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _upload() -> Upload:
    return Upload(None, IMAGE["content"])


def _options(served: Served, model: ServedModel) -> SegmentOptions:
    return resolve_options(served.app.state.settings, model.predictor, SegmentParameters())


def test_videos_and_streams_run_the_model_named_and_say_which_version_ran_each_frame(
    live: HttpServed, weights: dict[str, Path], clip: Path
) -> None:
    three, coco = version_of(weights["three"]), version_of(weights["coco"])
    frame = IMAGE["content"]
    with Client(live.url) as client:
        with client.segment_video(clip, model="shapes", score_threshold=0) as frames:
            lines = list(frames)
        assert [(line.frame, line.model, line.model_version) for line in lines] == [
            (0, "shapes", three),
            (1, "shapes", three),
        ]
        assert {i.class_id for line in lines for i in line.instances} <= {0, 1, 2}
        with client.segment_video(clip, max_frames=1) as frames:
            assert [(line.model, line.model_version) for line in frames] == [("people", coco)]
        with pytest.raises(NotFound) as unknown:
            client.segment_video(clip, model="yolo")
        assert (unknown.value.status, unknown.value.code) == (404, "unknown_model")
        assert "'people', 'shapes'" in unknown.value.message
        with client.stream(model="shapes", mask_format="none") as stream:
            stream.send(frame)
            first = stream.receive(timeout_s=TIMEOUT_S)
            # A reload between two frames: the next frame runs on, and names, the new version.
            put_weights(live.app.state.settings.model_repository / "shapes", weights["coco"])
            loaded = httpx.post(
                f"{live.url}/v2/repository/models/shapes/load", headers=ADMIN, timeout=TIMEOUT_S
            )
            assert loaded.status_code == 200 and loaded.json()["version"] == coco
            stream.send(frame)
            second = stream.receive(timeout_s=TIMEOUT_S)
        assert [(a.frame, a.model, a.model_version) for a in (first, second)] == [
            (0, "shapes", three),
            (1, "shapes", coco),
        ]
        with client.stream() as stream:
            stream.send(frame)
            assert stream.receive(timeout_s=TIMEOUT_S).model == "people", "the default model"
        with client.stream(model="yolo") as stream, pytest.raises(NotFound) as refused:
            stream.receive(timeout_s=TIMEOUT_S)
        assert refused.value.code == "unknown_model" and "'people', 'shapes'" in refused.value.message


async def test_without_a_repository_the_one_weights_file_reloads_when_it_changed(
    tmp_path: Path, weights: dict[str, Path]
) -> None:
    served_weights = tmp_path / "served.pth"
    shutil.copyfile(weights["coco"], served_weights)
    settings = Settings(weights=served_weights, device="cpu", max_batch_size=1, cpu_workers=1, grpc_port=0)
    async with serve(settings) as served:
        assert await served.runtime.reload_changed() == {}, "nothing changed"
        put_weights(tmp_path, weights["coco-next"])
        os.replace(tmp_path / "model.pth", served_weights)
        assert await served.runtime.reload_changed() == {TINY_CONFIG: version_of(weights["coco-next"])}
        answer = (await served.client.post("/segment", **IMAGE)).json()
        assert (answer["model"], answer["model_version"]) == (TINY_CONFIG, version_of(weights["coco-next"]))


async def test_without_a_repository_the_one_model_keeps_its_name(
    small_served: Served, small_weights: Path
) -> None:
    client = small_served.client
    listing = (await client.get("/v1/models")).json()
    [model] = listing["models"]
    assert listing["default"] == model["name"] == TINY_CONFIG and model["state"] == "READY"
    answer = (await client.post("/segment", **IMAGE)).json()
    assert (answer["model"], answer["model_version"]) == (TINY_CONFIG, version_of(small_weights))
    assert (await client.get("/v2/models/centermask/ready")).status_code == 200
    assert (await client.get(f"/v2/models/{TINY_CONFIG}/versions/1/ready")).status_code == 200
    assert (await client.post("/v2/repository/index")).status_code == 403


async def test_the_python_client_names_the_model(served: Served, clip: Path) -> None:
    transport = httpx.ASGITransport(app=served.app)
    async with AsyncClient("http://service", transport=transport) as client:
        listing = await client.models()
        assert listing.default == "people" and [model.name for model in listing.models] == [
            "people",
            "shapes",
        ]
        result = await client.segment(IMAGE["content"], model="shapes", score_threshold=0)
        assert (result.model, result.model_version) == ("shapes", listing.models[1].model_version)
        batch = await client.segment_batch([IMAGE["content"]], model="shapes")
        assert batch.model == "shapes"
        frames = await client.segment_video(clip.read_bytes(), model="shapes", max_frames=1)
        assert [(frame.model, frame.model_version) async for frame in frames] == [
            ("shapes", listing.models[1].model_version)
        ]
        info = await client.model_info("shapes")
        assert (info.name, len(info.class_names)) == ("shapes", 3)
        assert (await client.model_info()).name == "people"
        with pytest.raises(NotFound, match="unknown model"):
            await client.segment(IMAGE["content"], model="yolo")
