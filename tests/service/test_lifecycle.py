"""Readiness, draining, overload, deadlines, disconnects and failing batches, with the real model.

The ControlledPredictor holds inference at a gate, so each situation is set up deterministically.
"""

import asyncio
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn

from model.inference.load import load_predictor
from model.inference.options import PredictorOptions
from model.inference.predictor import Predictor
from service.app import create_app
from service.runtime import Phase
from service.server import DrainingServer
from tests.service.helpers import (
    TIMEOUT_S,
    Served,
    encode,
    metric_value,
    png_body,
    post_then_disconnect,
    random_image,
    serve,
    tiny_settings,
    wait_until,
)

pytestmark = pytest.mark.anyio

IMAGE = random_image(0, 240, 320)


def queue_depth(served) -> float:
    return metric_value(served.app, "centermask_queue_depth")


async def test_ready_only_once_the_model_is_loaded_and_warm(tiny_weights: Path) -> None:
    may_load = threading.Event()

    def slow_load(options: PredictorOptions) -> Predictor:
        assert may_load.wait(TIMEOUT_S)
        return load_predictor(options)

    try:
        async with serve(tiny_settings(tiny_weights), slow_load, ready=False) as served:
            client = served.client
            assert (await client.get("/healthz")).status_code == 200
            not_ready = await client.get("/readyz")
            assert not_ready.status_code == 503 and not_ready.json()["error"]["code"] == "not_ready"
            refused = await client.post("/segment", **png_body(IMAGE))
            assert refused.status_code == 503 and "Retry-After" in refused.headers
            assert (
                metric_value(
                    served.app, "centermask_rejected_total", {"reason": "not_ready", "protocol": "http"}
                )
                == 1
            )
            assert (await client.get("/v1/model")).status_code == 503
            assert metric_value(served.app, "centermask_model_loaded") == 0

            may_load.set()
            await wait_until(lambda: served.runtime.phase is Phase.READY)
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.post("/segment", **png_body(IMAGE))).status_code == 200
            assert metric_value(served.app, "centermask_model_loaded") == 1
            assert metric_value(served.app, "centermask_model_ready") == 1
    finally:
        may_load.set()


async def test_model_info(tiny_weights: Path) -> None:
    async with serve(tiny_settings(tiny_weights, max_batch_size=1)) as served:
        info = (await served.client.get("/v1/model")).json()
    assert info["config_name"] == "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x"
    assert len(info["class_names"]) == 80 and info["class_names"][0] == "person"
    assert (info["device"], info["precision"], info["dtype"]) == ("cpu", "fp32", "float32")
    assert len(info["weights_sha256"]) == 64
    assert info["batching"] == {
        "max_batch_size": 1,
        "max_batch_delay_ms": 5.0,
        "max_queue": 64,
        "bucket_size": 32,
    }
    assert (info["class_agnostic_nms"], info["class_agnostic_iou"]) == (True, 0.7)
    assert (info["score_threshold"], info["max_detections"]) == (0.3, 100)
    assert (info["compiled"], info["cuda_graphs"]) == (False, False)


async def test_model_info_says_whether_compile_is_in_force(
    tiny_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for torch.compile, then one whose compiled code fails on its first run, as inductor's does
    # on a host without a C compiler: warm-up falls back, and the model info says so.
    def broken(function: Any, **options: Any) -> Any:
        def compiled(batch: Any) -> Any:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return compiled

    answers = []
    for compile in (lambda function, **options: function, broken):
        monkeypatch.setattr(torch, "compile", compile)
        async with serve(tiny_settings(tiny_weights, max_batch_size=1, compile=True)) as served:
            answers.append((await served.client.get("/v1/model")).json()["compiled"])
            assert (await served.client.post("/segment", **png_body(IMAGE))).status_code == 200
    assert answers == [True, False]


async def test_shutdown_drains_queued_and_running_requests(tiny_weights: Path, controlled) -> None:
    load, predictor = controlled
    app = create_app(tiny_settings(tiny_weights, max_batch_size=1), load=load)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service", timeout=TIMEOUT_S) as client:
        await wait_until(lambda: app.state.runtime.phase is Phase.READY)
        predictor().hold()
        running = asyncio.ensure_future(client.post("/segment", **png_body(IMAGE)))
        await wait_until(predictor().entered.is_set)
        queued = asyncio.ensure_future(client.post("/segment", **png_body(IMAGE)))
        await wait_until(lambda: metric_value(app, "centermask_queue_depth") == 1)

        stopping = asyncio.ensure_future(lifespan.__aexit__(None, None, None))
        await wait_until(lambda: app.state.runtime.phase is Phase.DRAINING)
        assert (await client.get("/readyz")).status_code == 503
        late = await client.post("/segment", **png_body(IMAGE))
        assert late.status_code == 503 and late.json()["error"]["code"] == "not_ready"

        predictor().release()
        async with asyncio.timeout(TIMEOUT_S):
            await stopping
        assert (await running).status_code == 200
        assert (await queued).status_code == 200


async def test_a_full_queue_answers_503_at_once(tiny_weights: Path, controlled) -> None:
    load, predictor = controlled
    settings = tiny_settings(tiny_weights, max_batch_size=1, max_queue=1, max_images_per_request=1)
    async with serve(settings, load) as served:
        predictor().hold()
        running = asyncio.ensure_future(served.client.post("/segment", **png_body(IMAGE)))
        await wait_until(predictor().entered.is_set)
        queued = asyncio.ensure_future(served.client.post("/segment", **png_body(IMAGE)))
        await wait_until(lambda: queue_depth(served) == 1)

        refused = await served.client.post("/segment", **png_body(IMAGE))
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "overloaded"
        assert int(refused.headers["Retry-After"]) >= 1
        assert (
            metric_value(
                served.app, "centermask_rejected_total", {"reason": "queue_full", "protocol": "http"}
            )
            == 1
        )

        predictor().release()
        assert [(await r).status_code for r in (running, queued)] == [200, 200]


async def test_requests_past_their_deadline_get_504_and_are_not_computed(
    tiny_weights: Path, controlled
) -> None:
    load, predictor = controlled
    async with serve(tiny_settings(tiny_weights, max_batch_size=1, request_timeout_s=2), load) as served:
        predictor().hold()
        running = asyncio.ensure_future(served.client.post("/segment", **png_body(random_image(1, 200, 300))))
        await wait_until(predictor().entered.is_set)
        queued = await served.client.post("/segment", **png_body(random_image(2, 210, 300)))
        assert queued.status_code == 504 and queued.json()["error"]["code"] == "deadline_exceeded"
        # The answer says which setting to raise.
        assert "deadline of 2 s" in queued.json()["error"]["message"]
        assert "raise CENTERMASK_REQUEST_TIMEOUT_S" in queued.json()["error"]["message"]
        assert (await running).status_code == 504

        predictor().release()
        # The running batch still completes (its result is dropped); only then is the worker free.
        await wait_until(lambda: metric_value(served.app, "centermask_batch_inference_seconds_count") == 1)
        after = await served.client.post("/segment", **png_body(random_image(3, 220, 300)))
        assert after.status_code == 200
        # The request that timed out in the queue never reached the network.
        assert predictor().batches == [[(200, 300)], [(220, 300)]]
        assert (
            metric_value(served.app, "centermask_rejected_total", {"reason": "deadline", "protocol": "http"})
            == 2
        )


async def test_a_client_that_hangs_up_is_dropped_before_compute(tiny_weights: Path, controlled) -> None:
    load, predictor = controlled
    async with serve(tiny_settings(tiny_weights, max_batch_size=1), load) as served:
        predictor().hold()
        running = asyncio.ensure_future(served.client.post("/segment", **png_body(random_image(1, 200, 300))))
        await wait_until(predictor().entered.is_set)
        disconnect = asyncio.Event()
        gone = asyncio.ensure_future(
            post_then_disconnect(served.app, "/segment", encode(random_image(2, 210, 300)), disconnect)
        )
        await wait_until(lambda: queue_depth(served) == 1)

        disconnect.set()
        sent = await gone
        assert sent[0]["status"] == 499
        predictor().release()
        assert (await running).status_code == 200
        after = await served.client.post("/segment", **png_body(random_image(3, 220, 300)))
        assert after.status_code == 200
        assert predictor().batches == [[(200, 300)], [(220, 300)]]
        assert (
            metric_value(
                served.app, "centermask_rejected_total", {"reason": "client_gone", "protocol": "http"}
            )
            == 1
        )


async def test_a_failing_batch_fails_only_the_poisoned_request(tiny_weights: Path, controlled) -> None:
    load, predictor = controlled
    async with serve(tiny_settings(tiny_weights, max_batch_size=3), load) as served:
        # 241×320 pads to the same shape as 240×320, so all three share one forward pass.
        good, poison, other = random_image(1, 240, 320), random_image(2, 241, 320), random_image(3, 240, 320)
        predictor().poison_sizes = {(241, 320)}
        predictor().hold()
        blocker = asyncio.ensure_future(served.client.post("/segment", **png_body(random_image(4, 300, 200))))
        await wait_until(predictor().entered.is_set)
        requests = [
            asyncio.ensure_future(served.client.post("/segment", **png_body(i)))
            for i in (good, poison, other)
        ]
        await wait_until(lambda: queue_depth(served) == 3)
        predictor().release()

        responses = [await r for r in (blocker, *requests)]
        assert [r.status_code for r in responses] == [200, 200, 500, 200]
        failed = responses[2].json()["error"]
        assert failed["code"] == "inference_failed" and "Traceback" not in failed["message"]
        assert sorted(predictor().batches[1]) == [(240, 320), (240, 320), (241, 320)]
        # The worker carries on.
        assert (await served.client.post("/segment", **png_body(good))).status_code == 200


async def test_a_client_that_hangs_up_while_uploading(served: Served) -> None:
    def gone() -> float:
        return metric_value(
            served.app, "centermask_rejected_total", {"reason": "client_gone", "protocol": "http"}
        )

    before = gone()
    disconnect = asyncio.Event()
    disconnect.set()
    sent = await post_then_disconnect(served.app, "/segment", encode(IMAGE)[:1000], disconnect, partial=True)
    assert sent[0]["status"] == 499
    assert gone() == before + 1


async def test_requests_still_waiting_when_the_drain_time_is_up_get_503(
    tiny_weights: Path, controlled
) -> None:
    load, predictor = controlled
    async with serve(tiny_settings(tiny_weights, max_batch_size=1), load) as served:
        predictor().hold()
        running = asyncio.ensure_future(served.client.post("/segment", **png_body(IMAGE)))
        await wait_until(predictor().entered.is_set)
        queued = asyncio.ensure_future(served.client.post("/segment", **png_body(IMAGE)))
        await wait_until(lambda: queue_depth(served) == 1)

        server = DrainingServer(uvicorn.Config(served.app), served.runtime, drain_timeout_s=0)
        server.handle_exit(signal.SIGTERM, None)
        # The drain time is up at once: uvicorn may stop, and the waiting requests are answered first.
        assert await server.on_tick(1)
        for response in (await running, await queued):
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "not_ready" and "Retry-After" in response.headers
        predictor().release()
