"""The Open Inference Protocol over gRPC, spoken to the real server by Triton's own client
(`tritonclient.grpc`, sync and asyncio) and by raw grpcio stubs of our proto: the same instances as
/segment, metadata, health, errors as gRPC statuses with our codes, limits, queue and deadlines."""

from __future__ import annotations

import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from service.grpc.server import max_message_bytes
from service.runtime import Phase
from tests.helpers import TINY_SERVER_KEY, LiveServer, free_port, live_server
from tests.service.helpers import (
    TIMEOUT_S,
    ControlledPredictor,
    Served,
    comparable,
    encode,
    infer_request,
    metric_value,
    per_image,
    random_image,
    serve,
    tiny_settings,
    wait_until,
)

tritonclient_grpc = pytest.importorskip(
    "tritonclient.grpc", reason="tritonclient[grpc] is not installed (pip install -e .[test])"
)
import tritonclient.grpc.aio as tritonclient_aio  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

CONFIG = "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x"
KEY = {"x-api-key": TINY_SERVER_KEY}
IMAGES = [encode(random_image(seed, 120 + 40 * seed, 160)) for seed in range(2)]


# --------------------------------------------------------------------------------------------------
# Helpers


@pytest.fixture(scope="module")
def client(tiny_server: LiveServer) -> Iterator:
    assert tiny_server.grpc_port, "live_server gives every server a gRPC port"
    client = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{tiny_server.grpc_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def channel(tiny_server: LiveServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{tiny_server.grpc_port}") as channel:
        yield channel


def segment(server: LiveServer, image: bytes, **params: str) -> list[dict]:
    response = httpx.post(
        f"{server.url}/segment",
        content=image,
        headers={"X-API-Key": TINY_SERVER_KEY, "Content-Type": "image/png"},
        params=params,
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    return response.json()["instances"]


def image_input(images: list[bytes]):
    tensor = tritonclient_grpc.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


# --------------------------------------------------------------------------------------------------
# tritonclient.grpc against the live server


def test_tritonclient_gets_the_instances_segment_answers(client, tiny_server: LiveServer) -> None:
    result = client.infer("centermask", [image_input(IMAGES)], headers=KEY, request_id="req-7")
    response = result.get_response()
    assert response.model_name == "centermask" and response.id == "req-7"
    # The version that ran: the weights' SHA-256 prefix, as the model's metadata lists it.
    [version] = client.get_model_metadata("centermask", headers=KEY).versions
    assert response.model_version == version and len(version) == 12
    answered = per_image(result, len(IMAGES))
    for image, instances in zip(IMAGES, answered, strict=True):
        expected = comparable(segment(tiny_server, image))
        assert expected, "the test image must give instances"
        assert instances == expected


def test_parameters_and_requested_outputs(client, tiny_server: LiveServer) -> None:
    outputs = [
        tritonclient_grpc.InferRequestedOutput(name) for name in ("scores", "class_ids", "image_index")
    ]
    result = client.infer(
        CONFIG,
        [image_input(IMAGES[:1])],
        model_version="1",
        outputs=outputs,
        headers=KEY,
        parameters={"score_threshold": 0.5, "max_detections": 3, "mask_format": "none"},
    )
    expected = segment(tiny_server, IMAGES[0], score_threshold="0.5", max_detections="3", mask_format="none")
    assert [output.name for output in result.get_response().outputs] == ["scores", "class_ids", "image_index"]
    assert result.as_numpy("scores").tolist() == [float(np.float32(i["score"])) for i in expected]
    assert result.as_numpy("masks") is None


def test_metadata_config_health_and_readiness(client) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("centermask") and client.is_model_ready(CONFIG, model_version="1")
    server = client.get_server_metadata()
    assert server.name == "centermask-serve" and "binary_tensor_data" in server.extensions
    metadata = client.get_model_metadata("centermask", headers=KEY)
    [version] = metadata.versions
    assert metadata.name == CONFIG and int(version, 16) >= 0 and metadata.platform == "pytorch"
    assert client.is_model_ready(CONFIG, model_version=version)
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("image", "BYTES", [-1])]
    outputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.outputs}
    assert outputs["boxes"] == ("FP32", [-1, 4]) and outputs["masks"] == ("BYTES", [-1])
    config = client.get_model_config("centermask", headers=KEY).config
    assert config.name == CONFIG and config.backend == "torch" and config.max_batch_size == 0
    assert list(config.dynamic_batching.preferred_batch_size) == [2]
    assert [i.name for i in config.input] == ["image"]
    # The repository's RPCs need the admin key, which this server has not: refused, saying how to enable them.
    with pytest.raises(InferenceServerException) as index:
        client.get_model_repository_index(headers=KEY)
    assert (
        index.value.status() == "StatusCode.PERMISSION_DENIED"
        and "CENTERMASK_ADMIN_KEY" in index.value.message()
    )


def test_errors_are_grpc_statuses_with_our_codes(client) -> None:
    def refused(call, *args, **kwargs) -> InferenceServerException:
        with pytest.raises(InferenceServerException) as error:
            call(*args, **kwargs)
        return error.value

    missing_key = refused(client.infer, "centermask", [image_input(IMAGES[:1])])
    assert missing_key.status() == "StatusCode.UNAUTHENTICATED" and "unauthorized:" in missing_key.message()
    wrong_key = refused(client.get_model_metadata, "centermask", headers={"authorization": "Bearer nope"})
    assert wrong_key.status() == "StatusCode.UNAUTHENTICATED"
    assert client.get_model_metadata("centermask", headers={"authorization": f"Bearer {TINY_SERVER_KEY}"})
    unknown = refused(client.infer, "yolo", [image_input(IMAGES[:1])], headers=KEY)
    assert unknown.status() == "StatusCode.NOT_FOUND" and CONFIG in unknown.message()
    assert refused(client.is_model_ready, "yolo").status() == "StatusCode.NOT_FOUND"
    bad_image = refused(client.infer, "centermask", [image_input([IMAGES[0], b"not an image"])], headers=KEY)
    assert bad_image.status() == "StatusCode.INVALID_ARGUMENT"
    assert bad_image.message().startswith("invalid_image: image 1: ")
    wrong_type = tritonclient_grpc.InferInput("image", [1], "FP32")
    wrong_type.set_data_from_numpy(np.zeros(1, np.float32))
    typed = refused(client.infer, "centermask", [wrong_type], headers=KEY)
    assert typed.status() == "StatusCode.INVALID_ARGUMENT" and "BYTES" in typed.message()
    bad_parameter = refused(
        client.infer, "centermask", [image_input(IMAGES[:1])], headers=KEY, parameters={"classes": "unicorn"}
    )
    assert bad_parameter.status() == "StatusCode.INVALID_ARGUMENT"
    assert bad_parameter.message().startswith("invalid_parameter: ")
    load = refused(client.load_model, CONFIG, headers=KEY)
    assert load.status() == "StatusCode.PERMISSION_DENIED" and load.message().startswith("admin_disabled: ")


@pytest.mark.anyio
async def test_the_asyncio_client_gets_the_same_instances(tiny_server: LiveServer) -> None:
    async with tritonclient_aio.InferenceServerClient(f"127.0.0.1:{tiny_server.grpc_port}") as client:
        assert await client.is_server_ready()
        result = await client.infer("centermask", [image_input(IMAGES)], headers=KEY)
    assert per_image(result, len(IMAGES))[1] == comparable(segment(tiny_server, IMAGES[1]))


# --------------------------------------------------------------------------------------------------
# Raw stubs of our proto against the live server


def test_raw_stubs_bytes_contents_and_raw_contents_agree(channel: grpc.Channel) -> None:
    stub = GRPCInferenceServiceStub(channel)
    metadata = tuple(KEY.items())
    raw = stub.ModelInfer(infer_request(IMAGES[:1]), metadata=metadata, timeout=TIMEOUT_S)
    inline = pb.ModelInferRequest(model_name="centermask")
    inline.inputs.add(name="image", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(IMAGES[0])
    answer, call = stub.ModelInfer.with_call(
        inline, metadata=(*metadata, ("x-request-id", "abc-1")), timeout=TIMEOUT_S
    )
    assert answer == raw and len(answer.outputs) == 7 and answer.outputs[0].name == "boxes"
    assert ("x-request-id", "abc-1") in call.trailing_metadata()
    count = answer.outputs[0].shape[0]
    assert np.frombuffer(answer.raw_output_contents[0], "<f4").shape == (count * 4,)
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ModelReady(pb.ModelReadyRequest(name=CONFIG, version="1")).ready


def test_malformed_messages_are_invalid_arguments(channel: grpc.Channel) -> None:
    stub = GRPCInferenceServiceStub(channel)
    metadata = tuple(KEY.items())

    def details(request: pb.ModelInferRequest) -> str:
        with pytest.raises(grpc.RpcError) as error:
            stub.ModelInfer(request, metadata=metadata, timeout=TIMEOUT_S)
        assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
        return error.value.details()

    no_input = pb.ModelInferRequest(model_name="centermask")
    assert "one input" in details(no_input)
    short = infer_request(IMAGES[:1])
    short.raw_input_contents[0] = short.raw_input_contents[0][:-5]
    assert "ends inside an element" in details(short)
    miscounted = infer_request(IMAGES[:1])
    miscounted.inputs[0].shape[0] = 2
    assert "elements" in details(miscounted)
    both = infer_request(IMAGES[:1])
    both.inputs[0].contents.bytes_contents.append(IMAGES[0])
    assert "both" in details(both)
    unknown_output = infer_request(IMAGES[:1])
    unknown_output.outputs.add(name="logits")
    assert "unknown output" in details(unknown_output)
    assert details(infer_request(IMAGES[:1], score_threshold="high")).startswith(
        "invalid_request: score_threshold"
    )


def test_the_health_service_reflects_readiness(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="grpc.reflection"), timeout=TIMEOUT_S)
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND


def test_calls_are_counted_by_method_and_code(client, tiny_server: LiveServer) -> None:
    before = tiny_server.metric(
        "centermask_grpc_requests_total", {"method": "ModelInfer", "code": "NOT_FOUND"}
    )
    with pytest.raises(InferenceServerException):
        client.infer("yolo", [image_input(IMAGES[:1])], headers=KEY)
    after = tiny_server.metric(
        "centermask_grpc_requests_total", {"method": "ModelInfer", "code": "NOT_FOUND"}
    )
    assert after == before + 1
    assert (
        tiny_server.metric(
            "centermask_grpc_request_duration_seconds_count", {"method": "ModelInfer", "code": "OK"}
        )
        >= 1
    )


# --------------------------------------------------------------------------------------------------
# In-process apps: limits, a held queue, deadlines, draining, and no gRPC server


@pytest.fixture(scope="module")
async def gated(small_weights: Path) -> AsyncIterator[tuple[Served, ControlledPredictor, str]]:
    """An app whose forward passes wait at a gate: one image in the network, one queued fills it."""
    from model.inference.load import load_predictor

    built: list[ControlledPredictor] = []

    def load(options):
        built.append(ControlledPredictor(load_predictor(options)))
        return built[-1]

    settings = tiny_settings(
        small_weights, grpc_port=free_port(), max_batch_size=1, max_queue=1, max_image_bytes=50_000
    )
    async with serve(settings, load) as served:
        yield served, built[0], f"127.0.0.1:{served.app.state.grpc_server.port}"
    for predictor in built:
        predictor.release()


@pytest.mark.anyio
async def test_a_full_queue_is_resource_exhausted_with_retry_after(gated) -> None:
    served, predictor, address = gated
    async with grpc.aio.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        predictor.gate.clear()
        predictor.entered.clear()
        try:
            running = stub.ModelInfer(infer_request(IMAGES[:1]), timeout=TIMEOUT_S)
            await wait_until(predictor.entered.is_set)
            queued = stub.ModelInfer(infer_request(IMAGES[1:]), timeout=TIMEOUT_S)
            await wait_until(lambda: served.runtime.models.depth == 1)
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await stub.ModelInfer(infer_request(IMAGES[:1]), timeout=TIMEOUT_S)
        finally:
            predictor.gate.set()
        assert full.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert full.value.details().startswith("overloaded: ")
        trailing = dict(full.value.trailing_metadata() or ())
        assert trailing["retry-after"] == "1" and trailing["centermask-error-code"] == "overloaded"
        rich = status_pb2.Status.FromString(trailing["grpc-status-details-bin"])
        retry = error_details_pb2.RetryInfo()
        assert rich.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and rich.details[0].Unpack(retry)
        assert retry.retry_delay.seconds == 1
        assert len((await running).outputs) == 7 and len((await queued).outputs) == 7
    assert (
        metric_value(served.app, "centermask_rejected_total", {"reason": "queue_full", "protocol": "grpc"})
        >= 1
    )


@pytest.mark.anyio
async def test_images_and_rejections_are_counted_by_protocol(gated) -> None:
    served, _, address = gated
    model = served.runtime.models.get()

    def images(protocol: str) -> float:
        labels = {"model": model.name, "model_version": model.version, "protocol": protocol}
        return metric_value(served.app, "centermask_images_total", labels)

    def rejected(protocol: str) -> float:
        labels = {"reason": "not_ready", "protocol": protocol}
        return metric_value(served.app, "centermask_rejected_total", labels)

    before = images("grpc"), images("http")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(infer_request(IMAGES[1:]), timeout=TIMEOUT_S)
        assert (images("grpc"), images("http")) == (before[0] + 1, before[1])
        answer = await served.client.post(
            "/segment", content=IMAGES[0], headers={"Content-Type": "image/png"}
        )
        assert answer.status_code == 200
        assert (images("grpc"), images("http")) == (before[0] + 1, before[1] + 1)
        refusals = rejected("grpc"), rejected("http")
        served.runtime.phase = Phase.DRAINING  # what SIGTERM does first: new calls are turned away
        try:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ModelInfer(infer_request(IMAGES[:1]), timeout=TIMEOUT_S)
        finally:
            served.runtime.phase = Phase.READY
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert (rejected("grpc"), rejected("http")) == (refusals[0] + 1, refusals[1])


@pytest.mark.anyio
async def test_the_clients_deadline_bounds_the_request(gated) -> None:
    served, predictor, address = gated
    async with grpc.aio.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        predictor.gate.clear()
        predictor.entered.clear()
        batches = len(predictor.batches)
        try:
            running = stub.ModelInfer(infer_request(IMAGES[:1]), timeout=TIMEOUT_S)
            await wait_until(predictor.entered.is_set)
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await stub.ModelInfer(infer_request(IMAGES[1:]), timeout=0.3)
        finally:
            predictor.gate.set()
        assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await running
        await wait_until(lambda: served.runtime.models.depth == 0)
    # The late request's image was dropped before the network: one batch ran, the first request's.
    assert len(predictor.batches) == batches + 1


@pytest.mark.anyio
async def test_message_and_image_limits_match_http(gated) -> None:
    served, _, address = gated
    settings = served.app.state.settings
    big = IMAGES[0] + bytes(60_000)  # the size is checked before decoding
    assert settings.max_image_bytes < len(big) < max_message_bytes(settings)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as too_large:
            await stub.ModelInfer(infer_request([big]), timeout=TIMEOUT_S)
        assert too_large.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert too_large.value.details().startswith("image_too_large: image 0: ")
        too_many = infer_request(IMAGES[:1] * (settings.max_images_per_request + 1))
        with pytest.raises(grpc.aio.AioRpcError) as many:
            await stub.ModelInfer(too_many, timeout=TIMEOUT_S)
        assert (
            many.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            and "too_many_images" in many.value.details()
        )
        oversized = pb.ModelInferRequest(model_name="centermask")
        oversized.raw_input_contents.append(b"\0" * (max_message_bytes(settings) + 1))
        with pytest.raises(grpc.aio.AioRpcError) as message:
            await stub.ModelInfer(oversized, timeout=TIMEOUT_S)
        assert message.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.anyio
async def test_draining_turns_health_and_inference_away(small_weights: Path) -> None:
    settings = tiny_settings(small_weights, grpc_port=free_port())
    async with serve(settings) as served:
        address = f"127.0.0.1:{served.app.state.grpc_server.port}"
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = GRPCInferenceServiceStub(channel)
            serving = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
            assert serving.status == health_pb2.HealthCheckResponse.SERVING
            served.runtime.begin_draining()
            draining = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
            assert draining.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert not (await stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT_S)).ready
            assert not (
                await stub.ModelReady(pb.ModelReadyRequest(name="centermask"), timeout=TIMEOUT_S)
            ).ready
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ModelInfer(infer_request(IMAGES[:1]), timeout=TIMEOUT_S)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert refused.value.details().startswith("not_ready: ")


@pytest.mark.anyio
async def test_grpc_port_0_runs_no_grpc_server(served: Served) -> None:
    assert served.app.state.settings.grpc_port == 0 and served.app.state.grpc_server is None


@pytest.mark.anyio
async def test_a_grpc_port_in_use_stops_startup(small_weights: Path) -> None:
    with socket.socket() as taken:
        # Even a socket that would share its port (as gRPC's own do by default) keeps it.
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        settings = tiny_settings(small_weights, grpc_port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="CENTERMASK_GRPC_PORT"):
            async with serve(settings, ready=False):
                pass


def test_sigterm_drains_admitted_calls_and_turns_new_ones_away(tiny_weights: Path, tmp_path: Path) -> None:
    flags = ("--weights", str(tiny_weights), "--max-batch-size", "1", "--cpu-workers", "1")
    with live_server(tmp_path / "server.log", *flags) as server:
        address = f"127.0.0.1:{server.grpc_port}"
        with grpc.insecure_channel(address) as channel:
            stub = GRPCInferenceServiceStub(channel)
            images = [encode(random_image(seed, 320, 480)) for seed in range(6)]
            call = stub.ModelInfer.future(infer_request(images), timeout=TIMEOUT_S)
            server.wait_for(lambda: server.metric("centermask_requests_in_flight") == 1, "the call admitted")
            server.process.send_signal(signal.SIGTERM)
            server.wait_for(lambda: not server.is_ready(), "draining")
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S
            )
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(infer_request(images[:1]), timeout=TIMEOUT_S)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            answer = call.result()
        assert list(answer.outputs[-1].shape) == [answer.outputs[0].shape[0]]
        assert server.process.wait(TIMEOUT_S) == 0


@pytest.mark.anyio
async def test_protected_probes_need_the_key_but_the_health_service_never(small_weights: Path) -> None:
    settings = tiny_settings(small_weights, grpc_port=free_port(), api_key="probe-key", protect_probes=True)
    async with serve(settings) as served:
        address = f"127.0.0.1:{served.app.state.grpc_server.port}"
        async with grpc.aio.insecure_channel(address) as channel:
            stub = GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ServerReady(pb.ServerReadyRequest(), timeout=TIMEOUT_S)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            keyed = (("authorization", "Bearer probe-key"),)
            assert (await stub.ServerReady(pb.ServerReadyRequest(), metadata=keyed, timeout=TIMEOUT_S)).ready
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT_S)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_bytes_that_are_no_message_never_harm_the_server(channel: grpc.Channel) -> None:
    infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")  # bytes in, bytes out
    garbage = [b"\xff" * 7, b"\x0a\xff\xff\xff\xff\x0f", bytes(range(256)), b"\x3a\x05ab"]
    for payload in garbage:
        with pytest.raises(grpc.RpcError) as refused:
            infer(payload, metadata=tuple(KEY.items()), timeout=TIMEOUT_S)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert (
            refused.value.details()
            == "invalid_request: the message is not a valid inference.ModelInferRequest"
        )
    unknown = channel.unary_unary("/inference.GRPCInferenceService/ModelStreamInfer")
    with pytest.raises(grpc.RpcError) as missing:
        unknown(b"", timeout=TIMEOUT_S)
    assert missing.value.code() is grpc.StatusCode.UNIMPLEMENTED
    answer = GRPCInferenceServiceStub(channel).ModelInfer(
        infer_request(IMAGES[:1]), metadata=tuple(KEY.items()), timeout=TIMEOUT_S
    )
    assert len(answer.outputs) == 7
