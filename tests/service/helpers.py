"""Helpers for the service tests: apps driven in-process, images, and a controllable predictor."""

import asyncio
import contextlib
import io
import json
import signal
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI
from PIL import Image

from model.inference.detections import Detections, Selection
from model.inference.load import load_predictor
from model.inference.predictor import Predictor
from model.inference.preprocess import PreparedImage
from service.app import create_app
from service.runtime import Phase, PredictorLoader, Runtime
from service.server import DrainingServer, server_config
from service.settings import Settings
from tests.helpers import TIMEOUT_S, free_port


def random_image(seed: int, height: int, width: int) -> np.ndarray:
    """Blocky noise: the rule-weight model finds plenty of instances in it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))[:height, :width].copy()


def encode(image: np.ndarray | Image.Image, image_format: str = "PNG", **options: Any) -> bytes:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    pil.save(buffer, image_format, **options)
    return buffer.getvalue()


def png_body(image: np.ndarray) -> dict[str, Any]:
    """Keyword arguments for httpx: the image as a raw PNG body."""
    return {"content": encode(image), "headers": {"Content-Type": "image/png"}}


async def wait_until(condition: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    """Wait for a condition that another task or thread makes true."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


def wait_for(condition: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    """Wait, in a test's own thread, for a condition that the server's thread makes true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.005)


def metric_value(app: FastAPI, name: str, labels: dict[str, str] | None = None) -> float:
    value = app.state.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


@dataclass
class Served:
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def runtime(self) -> Runtime:
        return self.app.state.runtime


@contextlib.asynccontextmanager
async def serve(
    settings: Settings, load: PredictorLoader = load_predictor, *, ready: bool = True, **app_options: Any
) -> AsyncIterator[Served]:
    """Run the app's lifespan around an in-process client; wait for readiness unless told not to.
    `app_options` go to create_app (a tracer_provider)."""
    app = create_app(settings, load=load, **app_options)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://service", timeout=TIMEOUT_S
        ) as client:
            served = Served(app, client)
            if ready:
                await wait_until(lambda: served.runtime.phase is Phase.READY)
            yield served


class ControlledPredictor:
    """The real predictor, with an `infer` the test can hold at a gate or make fail.

    `entered` is set when a batch reaches `infer`; the batch then waits until `gate` is open.
    Images whose original size is in `poison_sizes` make their whole batch raise.
    """

    def __init__(self, predictor: Predictor) -> None:
        self._predictor = predictor
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.poison_sizes: set[tuple[int, int]] = set()
        self.batches: list[list[tuple[int, int]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)

    def infer(
        self, images: Sequence[PreparedImage], selections: Sequence[Selection] | None = None
    ) -> list[Detections]:
        self.entered.set()
        if not self.gate.wait(TIMEOUT_S):
            raise TimeoutError("the test never opened the gate")
        self.batches.append([image.original_size for image in images])
        if any(image.original_size in self.poison_sizes for image in images):
            raise RuntimeError("poisoned batch")
        return self._predictor.infer(images, selections)

    def hold(self) -> None:
        """Close the gate, and forget the batches seen so far (warm-up)."""
        self.gate.clear()
        self.entered.clear()
        self.batches.clear()

    def release(self) -> None:
        self.gate.set()


def tiny_settings(weights: Path, **overrides: Any) -> Settings:
    """Settings for in-process apps: small batches keep warm-up short on a 2-core machine; no gRPC server
    unless a test asks for one (`grpc_port=free_port()`)."""
    defaults: dict[str, Any] = {
        "weights": weights,
        "device": "cpu",
        "max_batch_size": 2,
        "cpu_workers": 2,
        "grpc_port": 0,
    }
    return Settings(**(defaults | overrides))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size; decoding it would need gigabytes."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))


class Faults:
    """Faults injected into a predictor's forward pass, through a torch forward pre-hook on its backbone.

    `plan(batch)` is called with the padded input batch (N, 3, H, W) of every forward pass; it may
    raise (an injected exception, a simulated out-of-memory or device error) or block (a hang).
    The predictor itself has no test code: the hook is torch's own seam.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.plan: Callable[[Any], None] | None = None
        self.calls = 0
        self._handle = predictor.engine.model.backbone.register_forward_pre_hook(self._hook)

    def _hook(self, _module: Any, args: tuple[Any, ...]) -> None:
        self.calls += 1
        if self.plan is not None:
            self.plan(args[0])

    def remove(self) -> None:
        self._handle.remove()


def wait_for_exit(process: subprocess.Popen, timeout_s: float = TIMEOUT_S) -> int:
    try:
        return process.wait(timeout_s)
    finally:
        if process.poll() is None:
            process.kill()


@dataclass
class HttpServed:
    """An app behind real uvicorn (as `centermask-serve` runs it) in a thread of the test process: real
    connections, WebSockets and disconnections, with the app itself (runtime, metrics) at hand."""

    app: FastAPI
    server: DrainingServer
    port: int
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def runtime(self) -> Runtime:
        return self.app.state.runtime

    def sigterm(self) -> None:
        """What SIGTERM does to `centermask-serve` (the handler only sets attributes: any thread may call it)."""
        self.server.handle_exit(signal.SIGTERM, None)


@contextlib.contextmanager
def serve_http(
    settings: Settings, load: PredictorLoader = load_predictor, *, ready: bool = True
) -> Iterator[HttpServed]:
    """Run the app under uvicorn on a free loopback port in a daemon thread until the block ends."""
    app = create_app(settings, load=load)
    port = free_port()
    server = DrainingServer(
        server_config(app, settings, host="127.0.0.1", port=port),
        app.state.runtime,
        drain_timeout_s=settings.drain_timeout_s,
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    served = HttpServed(app, server, port, thread)
    deadline = time.monotonic() + TIMEOUT_S
    while not (server.started and (not ready or served.runtime.phase is Phase.READY)):
        assert thread.is_alive(), "the server stopped while starting"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield served
    finally:
        server.should_exit = True
        thread.join(TIMEOUT_S)


def infer_request(images: list[bytes], model: str = "centermask", **parameters: object) -> Any:
    """A gRPC ModelInferRequest as tritonclient builds it: the images length-prefixed in raw_input_contents,
    the parameters typed by their Python type."""
    from service.grpc import grpc_predict_v2_pb2 as pb

    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="image", datatype="BYTES", shape=[len(images)])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(image)) + image for image in images))
    for name, value in parameters.items():
        field = {bool: "bool_param", int: "int64_param", float: "double_param", str: "string_param"}[
            type(value)
        ]
        setattr(request.parameters[name], field, value)
    return request


async def post_then_disconnect(
    app: FastAPI,
    path: str,
    body: bytes,
    disconnect: asyncio.Event,
    query: bytes = b"",
    *,
    partial: bool = False,
) -> list[Any]:
    """POST a PNG body to the app straight over ASGI; once `disconnect` is set, the client is gone (what an
    HTTP client cannot do in-process). With `partial` it hangs up in the middle of sending the body. Returns
    the messages the app sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"service"), (b"content-type", b"image/png")],
        "client": ("127.0.0.1", 50000),
        "server": ("service", 80),
    }
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": partial}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


# Open Inference Protocol answers (tritonclient's InferResult, over HTTP or gRPC) against /segment's.


def per_image(result: Any, count: int) -> list[list[dict]]:
    """The protocol's concatenated outputs, split back into each image's instances."""
    index = result.as_numpy("image_index")
    boxes, scores = result.as_numpy("boxes"), result.as_numpy("scores")
    class_ids, names = result.as_numpy("class_ids"), result.as_numpy("class_names")
    mask_scores, masks = result.as_numpy("mask_scores"), result.as_numpy("masks")
    assert boxes.dtype == np.float32 and boxes.shape == (len(index), 4) and class_ids.dtype == np.int64
    assert (np.diff(index) >= 0).all(), "images come in input order"
    return [
        [
            {
                "box": boxes[i].tolist(),
                "score": float(scores[i]),
                "class_id": int(class_ids[i]),
                "class_name": names[i].decode(),
                "mask_score": float(mask_scores[i]),
                "mask": json.loads(masks[i]),
            }
            for i in np.flatnonzero(index == image)
        ]
        for image in range(count)
    ]


def comparable(instances: list[dict]) -> list[dict]:
    """/segment's instances with the fields the protocol carries, its floats as float32 (as tensors hold them)."""
    keys = ("box", "score", "class_id", "class_name", "mask_score", "mask")
    out = []
    for instance in instances:
        record = {key: instance[key] for key in keys}
        record["box"] = np.float32(record["box"]).tolist()
        record["score"], record["mask_score"] = (
            float(np.float32(instance[k])) for k in ("score", "mask_score")
        )
        out.append(record)
    return out
