"""Faults in the forward pass, injected through a forward pre-hook on the served predictor's backbone.

Exceptions and out-of-memory errors are retried in halves and reported per request, after the failed
batch's tensors are gone; errors that break the device, a hung forward pass and a dead inference
thread stop the worker: liveness fails and every request gets 503.
"""

import asyncio
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service import faults
from service.faults import Fault, classify
from tests.service.helpers import (
    TIMEOUT_S,
    Faults,
    Served,
    encode,
    metric_value,
    png_body,
    serve,
    tiny_settings,
    wait_until,
)

pytestmark = pytest.mark.anyio


def noise(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# A solid image: recognisable in the padded batch by its constant top-left corner.
POISON = np.full((48, 64, 3), 17, dtype=np.uint8)


def holds_poison(batch: torch.Tensor) -> bool:
    return any(float(slot[:, :4, :4].flatten(1).std(dim=1).max()) == 0 for slot in batch)


def cuda_oom() -> Exception:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total)")


OUT_OF_MEMORY = {
    "cuda": cuda_oom,
    "cpu": lambda: RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
        "you tried to allocate 9663676416 bytes."
    ),
    "cudnn": lambda: RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    "cublas": lambda: RuntimeError(
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
    ),
    "cuda error": lambda: torch.AcceleratorError("CUDA error: out of memory"),
}
FATAL = {
    "illegal address": lambda: torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
    "device-side assert": lambda: RuntimeError("CUDA error: device-side assert triggered"),
    "launch failure": lambda: RuntimeError("CUDA error: unspecified launch failure"),
    "cublas execution": lambda: RuntimeError(
        "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k, ...)`"
    ),
}


@pytest.mark.parametrize("make", OUT_OF_MEMORY.values(), ids=OUT_OF_MEMORY)
def test_allocation_failures_are_out_of_memory(make: Callable[[], Exception]) -> None:
    assert classify(make()) is Fault.OUT_OF_MEMORY


@pytest.mark.parametrize("make", FATAL.values(), ids=FATAL)
def test_broken_device_errors_are_fatal(make: Callable[[], Exception]) -> None:
    assert classify(make()) is Fault.FATAL


@pytest.mark.parametrize("error", [RuntimeError("shape mismatch"), ValueError("bad"), KeyError("x")])
def test_other_errors_are_plain_errors(error: Exception) -> None:
    assert classify(error) is Fault.ERROR


@pytest.fixture(scope="module")
async def faulty(small_weights: Path) -> AsyncIterator[tuple[Served, Faults]]:
    """A shared app whose forward passes the tests can make fail; it must stay healthy throughout."""
    async with serve(tiny_settings(small_weights, max_batch_size=4, max_batch_delay_ms=50)) as served:
        injected = Faults(served.runtime.predictor)
        try:
            yield served, injected
        finally:
            injected.remove()


@pytest.fixture
def faults_cleared(faulty: tuple[Served, Faults]) -> Iterator[tuple[Served, Faults]]:
    injected = faulty[1]
    injected.plan = None
    yield faulty
    injected.plan = None


def batch_files(images: list[np.ndarray]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"{i}.png", encode(image), "image/png")) for i, image in enumerate(images)]


def instance_boxes(record: dict[str, Any]) -> list[list[float]]:
    return [instance["box"] for instance in record["instances"]]


@pytest.mark.parametrize("kind", ["cuda", "cpu"])
async def test_out_of_memory_is_retried_in_halves_after_the_batch_is_released(
    faults_cleared: tuple[Served, Faults], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, injected = faults_cleared
    images = [noise(seed) for seed in range(4)]
    expected = (await served.client.post("/segment/batch", files=batch_files(images))).json()["results"]

    sizes: list[int] = []
    previous_batch: list[weakref.ref] = []
    released_before_retry: list[bool] = []
    releases: list[torch.device] = []
    real_release = faults.release_memory

    def release(device: torch.device) -> None:
        releases.append(device)
        real_release(device)

    def plan(batch: torch.Tensor) -> None:
        sizes.append(batch.shape[0])
        if previous_batch:
            released_before_retry.append(previous_batch.pop()() is None)
        if batch.shape[0] > 1:
            previous_batch.append(weakref.ref(batch))
            raise OUT_OF_MEMORY[kind]()

    monkeypatch.setattr(faults, "release_memory", release)
    injected.plan = plan
    response = await served.client.post("/segment/batch", files=batch_files(images))
    assert response.status_code == 200, response.text
    assert sizes == [4, 2, 1, 1, 2, 1, 1]
    # The input of every failed pass was freed before the next pass began.
    assert released_before_retry == [True, True, True]
    assert len(releases) == 3
    # Alone, each image gives what it gave in the batch of 4, up to the kernels' float rounding.
    for result, reference in zip(response.json()["results"], expected, strict=True):
        np.testing.assert_allclose(instance_boxes(result), instance_boxes(reference), atol=1e-3)
    assert metric_value(served.app, "centermask_inference_failures_total", {"kind": "out_of_memory"}) >= 3
    assert (await served.client.get("/healthz")).status_code == 200


async def test_an_image_that_never_fits_gets_503_and_the_service_carries_on(
    faults_cleared: tuple[Served, Faults],
) -> None:
    served, injected = faults_cleared

    def plan(batch: torch.Tensor) -> None:
        if holds_poison(batch):
            raise cuda_oom()

    injected.plan = plan
    response = await served.client.post("/segment", **png_body(POISON))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "out_of_memory"
    assert int(response.headers["Retry-After"]) >= 1
    assert (await served.client.get("/healthz")).status_code == 200
    assert (await served.client.get("/readyz")).status_code == 200
    assert (await served.client.post("/segment", **png_body(noise(9)))).status_code == 200


async def test_an_exception_fails_only_its_own_request_and_says_nothing_of_it(
    faults_cleared: tuple[Served, Faults],
) -> None:
    served, injected = faults_cleared

    def plan(batch: torch.Tensor) -> None:
        if holds_poison(batch):
            raise RuntimeError("secret detail at /srv/app/model/fcos.py line 12")

    injected.plan = plan
    files = batch_files([noise(1), POISON, noise(2)])
    together = await asyncio.gather(
        served.client.post("/segment", **png_body(noise(3))),
        served.client.post("/segment/batch", files=files),
        served.client.post("/segment", **png_body(POISON)),
        served.client.post("/segment", **png_body(noise(4))),
    )
    assert [r.status_code for r in together] == [200, 500, 500, 200]
    batch_error = together[1].json()["error"]
    assert batch_error["code"] == "inference_failed" and batch_error["index"] == 1
    single = together[2]
    message = single.json()["error"]["message"]
    assert message == f"internal error while running the model; request id {single.headers['X-Request-ID']}"
    for response in together[1:3]:
        assert "secret" not in response.text and "/srv/" not in response.text
        assert "RuntimeError" not in response.text
    assert (await served.client.get("/healthz")).status_code == 200


async def test_the_default_watchdog_is_derived_from_warm_up(faulty: tuple[Served, Faults]) -> None:
    served, _ = faulty
    assert served.app.state.settings.inference_watchdog_s is None
    assert served.runtime.watchdog_s is not None and served.runtime.watchdog_s >= 30


class ThreadKilled(BaseException):
    """Not an Exception: it ends the thread it is raised in, as SystemExit would."""


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    opened = threading.Event()
    yield opened
    opened.set()


@pytest.mark.parametrize(
    "fault",
    ["illegal address", "device-side assert", "hang", "dead thread"],
)
async def test_a_broken_worker_turns_unhealthy_and_answers_503(
    small_weights: Path, fault: str, gate: threading.Event
) -> None:
    # Only the hang should meet the watchdog; the others wait at the gate for a moment first.
    watchdog_s = 1 if fault == "hang" else TIMEOUT_S
    settings = tiny_settings(small_weights, max_batch_size=1, inference_watchdog_s=watchdog_s)
    async with serve(settings) as served:
        injected = Faults(served.runtime.predictor)
        entered = threading.Event()

        def plan(batch: torch.Tensor) -> None:
            entered.set()
            if fault == "hang":
                gate.wait(TIMEOUT_S)  # a kernel that never returns, until the test ends
                return
            assert gate.wait(TIMEOUT_S)
            if fault == "dead thread":
                raise ThreadKilled()
            raise FATAL[fault]()

        injected.plan = plan
        failing = asyncio.ensure_future(served.client.post("/segment", **png_body(noise(1))))
        await wait_until(entered.is_set)
        queued = asyncio.ensure_future(served.client.post("/segment", **png_body(noise(2))))
        await wait_until(lambda: metric_value(served.app, "centermask_queue_depth") == 1)
        if fault != "hang":
            gate.set()

        for response in (await failing, await queued):
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "worker_failed"
            assert "Retry-After" in response.headers
        healthz = await served.client.get("/healthz")
        assert healthz.status_code == 503 and healthz.json()["error"]["code"] == "not_alive"
        assert (await served.client.get("/readyz")).status_code == 503
        later = await served.client.post("/segment", **png_body(noise(3)))
        assert later.status_code == 503 and later.json()["error"]["code"] == "worker_failed"
        kind = {"hang": "hung"}.get(fault, "fatal")
        assert metric_value(served.app, "centermask_inference_failures_total", {"kind": kind}) == 1
        assert metric_value(served.app, "centermask_model_ready") == 0
        gate.set()
