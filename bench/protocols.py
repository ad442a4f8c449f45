"""The three ways to ask the service for masks, side by side: `/segment` (HTTP, JSON), `/v2` infer with binary
tensors (HTTP, the Open Inference Protocol) and `ModelInfer` (gRPC, the same protocol), in one run, on one
server, with the same model and image.

    python -m bench.protocols --concurrency 1 4 16 --rounds 4 --requests 6

Starts `centermask-serve` (rule weights of --rule-config at --rule-test-size, on the CPU unless --device says
otherwise; its gRPC port too) and measures:

1. latency and throughput per protocol at each --concurrency: --rounds rounds, each sending --requests
   requests per client with each protocol in turn (the order rotating every round), so that the machine's
   drift falls on all three alike. Clients are asyncio: httpx for HTTP, grpc.aio with the service's own
   stubs for gRPC (what tritonclient sends: the image in raw_input_contents), so the numbers are the
   protocols', not a client library's;
2. the cost of the masks' encoding per protocol, in this process, on one real answer (the same instances
   for all three): the server's encoding (records → body bytes), the body's size, and the client's decoding
   (body → instances' fields; and → every mask as a boolean array, RLE decoding included).

Writes bench/results/protocols-*.json and prints the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson

from bench.load import synthetic_jpeg
from bench.results import Results
from bench.server import free_port, spawned_server
from centermask_client.rle import decode as rle_decode
from service.grpc import grpc_predict_v2_pb2 as pb
from service.grpc.codec import infer_response
from service.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from service.v2.codec import encode_response, tensors
from service.v2.dataplane import InferAnswer
from service.v2.models import OUTPUTS
from tests.rule_weights import write_rule_checkpoint

PROTOCOLS = ("http-json", "http-v2-binary", "grpc")
_NUMPY = {"FP32": "<f4", "INT64": "<i8"}

Call = Callable[[], Awaitable[int]]


# --------------------------------------------------------------------------------------------------
# One request per protocol; each returns the number of instances answered (a sanity check).


def v2_binary_body(image: bytes) -> tuple[bytes, str]:
    """An infer request with the image as a binary BYTES tensor and every output asked for in binary."""
    blob = struct.pack("<I", len(image)) + image
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + blob, str(len(header))


def split_v2_binary(body: bytes, header_length: int) -> dict[str, np.ndarray | list[bytes]]:
    """A binary infer answer → its outputs (BYTES as lists of bytes)."""
    header = orjson.loads(body[:header_length])
    offset, outputs = header_length, {}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        outputs[output["name"]] = _tensor(output["datatype"], body[offset : offset + size])
        offset += size
    return outputs


def split_grpc(response: pb.ModelInferResponse) -> dict[str, np.ndarray | list[bytes]]:
    return {
        output.name: _tensor(output.datatype, raw)
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


def _tensor(datatype: str, raw: bytes) -> np.ndarray | list[bytes]:
    if datatype != "BYTES":
        return np.frombuffer(raw, _NUMPY[datatype])
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items


def callers(http: httpx.AsyncClient, stub: GRPCInferenceServiceStub, image: bytes) -> dict[str, Call]:
    v2_body, v2_length = v2_binary_body(image)
    grpc_request = pb.ModelInferRequest(model_name="centermask")
    grpc_request.inputs.add(name="image", datatype="BYTES", shape=[1])
    grpc_request.raw_input_contents.append(struct.pack("<I", len(image)) + image)

    async def http_json() -> int:
        response = await http.post("/segment", content=image, headers={"Content-Type": "image/jpeg"})
        response.raise_for_status()
        return len(orjson.loads(response.content)["instances"])

    async def http_v2() -> int:
        response = await http.post(
            "/v2/models/centermask/infer",
            content=v2_body,
            headers={
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": v2_length,
            },
        )
        response.raise_for_status()
        outputs = split_v2_binary(response.content, int(response.headers["inference-header-content-length"]))
        return len(outputs["scores"])

    async def grpc_call() -> int:
        return len(split_grpc(await stub.ModelInfer(grpc_request, timeout=300))["scores"])

    return {"http-json": http_json, "http-v2-binary": http_v2, "grpc": grpc_call}


# --------------------------------------------------------------------------------------------------
# Latency and throughput


async def measure(
    url: str, grpc_address: str, image: bytes, concurrencies: Sequence[int], rounds: int, requests: int
) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=max(concurrencies), max_keepalive_connections=max(concurrencies))
    async with (
        httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as http,
        grpc.aio.insecure_channel(grpc_address) as channel,
    ):
        calls = callers(http, GRPCInferenceServiceStub(channel), image)
        counts = {name: await call() for name, call in calls.items()}  # warm-up, and the same answer
        assert len(set(counts.values())) == 1, f"the protocols answered different instance counts: {counts}"
        rows = []
        for concurrency in concurrencies:
            latencies: dict[str, list[float]] = {name: [] for name in PROTOCOLS}
            busy_s = dict.fromkeys(PROTOCOLS, 0.0)
            for round_index in range(rounds):
                shift = round_index % len(PROTOCOLS)
                for name in PROTOCOLS[shift:] + PROTOCOLS[:shift]:
                    started = time.perf_counter()
                    latencies[name] += await _clients(calls[name], concurrency, requests)
                    busy_s[name] += time.perf_counter() - started
            for name in PROTOCOLS:
                values = sorted(latencies[name])
                rows.append(
                    {
                        "concurrency": concurrency,
                        "protocol": name,
                        "requests": len(values),
                        "throughput_per_s": round(len(values) / busy_s[name], 3),
                        "p50_ms": round(1000 * values[len(values) // 2], 1),
                        "p95_ms": round(1000 * values[min(len(values) - 1, int(0.95 * len(values)))], 1),
                        "mean_ms": round(1000 * statistics.fmean(values), 1),
                    }
                )
                print(_row(rows[-1]), file=sys.stderr)
        return rows


async def _clients(call: Call, concurrency: int, requests: int) -> list[float]:
    async def client() -> list[float]:
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            await call()
            times.append(time.perf_counter() - started)
        return times

    per_client = await asyncio.gather(*(client() for _ in range(concurrency)))
    return [latency for times in per_client for latency in times]


def _row(row: dict[str, Any]) -> str:
    return (
        f"c={row['concurrency']:<3} {row['protocol']:<15} {row['throughput_per_s']:6.2f}/s  "
        f"p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms"
    )


# --------------------------------------------------------------------------------------------------
# The masks' encoding and decoding, in this process


def codec_costs(record: dict[str, Any], repeat: int) -> list[dict[str, Any]]:
    """Per protocol: the server's encoding of one image's answer (record → body), the body's size, and the
    client's decoding (→ the instances' fields; → also every mask as a boolean array)."""
    envelope = {"file": None, **record, "model": "bench", "request_id": "0" * 32}
    wanted = list(OUTPUTS)
    binary = dict.fromkeys(wanted, True)

    def json_encode() -> bytes:
        return orjson.dumps(envelope)

    def v2_response() -> Any:
        header = {"model_name": "centermask", "model_version": "1"}
        return encode_response(header, tensors([record], wanted), binary)

    def v2_encode() -> bytes:
        return bytes(v2_response().body)

    def grpc_encode() -> bytes:
        answer = InferAnswer(
            {"model_name": "centermask", "model_version": "1"}, tensors([record], wanted), binary, []
        )
        return infer_response(answer).SerializeToString()

    json_body, v2_body, grpc_body = json_encode(), v2_encode(), grpc_encode()
    v2_length = int(v2_response().headers["inference-header-content-length"])

    def json_fields() -> list[Any]:
        return [(i["box"], i["score"], i["mask"]) for i in orjson.loads(json_body)["instances"]]

    def json_masks() -> list[np.ndarray]:
        return [rle_decode(i["mask"]) for i in orjson.loads(json_body)["instances"]]

    def v2_fields() -> Any:
        return split_v2_binary(v2_body, v2_length)

    def v2_masks() -> list[np.ndarray]:
        return [rle_decode(orjson.loads(mask)) for mask in split_v2_binary(v2_body, v2_length)["masks"]]

    def grpc_fields() -> Any:
        return split_grpc(pb.ModelInferResponse.FromString(grpc_body))

    def grpc_masks() -> list[np.ndarray]:
        outputs = split_grpc(pb.ModelInferResponse.FromString(grpc_body))
        return [rle_decode(orjson.loads(mask)) for mask in outputs["masks"]]

    cases = {
        "http-json": (json_encode, json_body, json_fields, json_masks),
        "http-v2-binary": (v2_encode, v2_body, v2_fields, v2_masks),
        "grpc": (grpc_encode, grpc_body, grpc_fields, grpc_masks),
    }
    rows = []
    for name, (encode, body, fields, masks) in cases.items():
        rows.append(
            {
                "protocol": name,
                "instances": len(record["instances"]),
                "body_bytes": len(body),
                "server_encode_ms": _best_ms(encode, repeat),
                "client_decode_fields_ms": _best_ms(fields, repeat),
                "client_decode_masks_ms": _best_ms(masks, repeat),
            }
        )
        print(rows[-1], file=sys.stderr)
    return rows


def _best_ms(function: Callable[[], Any], repeat: int) -> float:
    """The median of `repeat` timed calls, in ms (after one untimed call)."""
    function()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 3)


# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rule-config", default="centermask_lite_V_19_slim_eSE_FPN_ms_4x")
    parser.add_argument("--rule-test-size", type=int, nargs=2, default=[320, 512], metavar=("MIN", "MAX"))
    parser.add_argument("--image-size", type=int, nargs=2, default=[320, 480], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=4, help="rounds of all three protocols per concurrency")
    parser.add_argument("--requests", type=int, default=6, help="requests per client per protocol and round")
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per encoding/decoding case")
    parser.add_argument("--out", type=Path, help="the result file (default: bench/results/protocols-*.json)")
    args = parser.parse_args(argv)
    image = synthetic_jpeg(*args.image_size)
    results = Results("protocols", {k: str(v) for k, v in vars(args).items()}, args.out)
    with tempfile.TemporaryDirectory() as scratch:
        min_size, max_size = args.rule_test_size
        weights = write_rule_checkpoint(
            Path(scratch) / "rule.pth", args.rule_config, min_size_test=min_size, max_size_test=max_size
        )
        grpc_port = free_port()
        options = ["--log-level", "warning", "--device", args.device, "--torch-threads", str(args.threads)]
        options += ["--grpc-port", str(grpc_port), "--max-queue", str(max(64, *args.concurrency))]
        with spawned_server(weights, options, Path(scratch) / "server.log") as server:
            rows = asyncio.run(
                measure(
                    server.url, f"127.0.0.1:{grpc_port}", image, args.concurrency, args.rounds, args.requests
                )
            )
            record = httpx.post(
                f"{server.url}/segment", content=image, headers={"Content-Type": "image/jpeg"}, timeout=300
            ).json()
    for row in rows:
        results.add({"phase": "load", **row})
    record = {key: record[key] for key in ("height", "width", "instances")}
    for row in codec_costs(record, args.repeat):
        results.add({"phase": "codec", **row})
    results.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
