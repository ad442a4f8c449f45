"""Host CPU per image outside the forward pass: what caps one server process's throughput on a fast GPU.

    python -m bench.cpu_cost --runs 20

Each stage of a /segment request that runs on the host is timed in CPU time (`time.thread_time`, one
thread, torch at one thread), on the CPU: decoding the upload, resizing it for the network (`prepare`),
pasting one image's masks, encoding them (COCO RLE) into its record, and serialising the answer (orjson). The rest of a request (HTTP parsing, multipart, middleware, the event loop,
the error or answer JSON) is measured on a real server process: its CPU time over sequential uploads that
are no image, which it refuses at the decoder's first bytes.

Which stages hold the GIL decides how far one process goes: Pillow's decoding and resizing, and torch's
pasting, release it (they run in parallel on the CPU workers); encoding (a numpy call and some Python per
instance), orjson and the HTTP side hold it. One process can serve at most 1000 / (GIL-held ms per image) images/s,
whatever the GPU does; bench/RESULTS.md and docs/service.md give the arithmetic. Writes
bench/results/cpu-cost-*.json.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import torch
from PIL import Image

from bench.model_bench import synthetic_image
from bench.results import Results
from bench.server import spawned_server
from model.inference.images import load_image
from model.inference.load import load_predictor
from model.inference.predictor import Predictor
from model.wire.records import image_record, segment_response, timing_ms
from tests.rule_weights import write_rule_checkpoint

# The stages that release the GIL while they work (C code without Python objects).
GIL_FREE = {"decode", "prepare", "paste"}
STAGES = ("decode", "prepare", "paste", "encode", "json", "http")


def cpu_ms(function: Callable[[], object], runs: int) -> float:
    """Median CPU time of one call, in this thread, in milliseconds."""
    function()
    samples = []
    for _ in range(runs):
        started = time.thread_time()
        function()
        samples.append((time.thread_time() - started) * 1000)
    return statistics.median(samples)


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def stages(predictor: Predictor, data: bytes, score_threshold: float, runs: int) -> dict[str, Any]:
    """CPU ms of each host stage for one encoded image, and how many instances its answer has."""
    decoded = load_image(data)
    prepared = predictor.prepare(decoded)
    (detections,) = predictor.infer([prepared])
    kept = detections.class_agnostic_nms().filter(score_threshold=score_threshold, max_detections=100)

    def postprocess() -> dict[str, Any]:
        # Detections cache their pasted masks: a fresh copy each time, as each request gets.
        fresh = kept.select(np.arange(len(kept)))
        return image_record("x.jpg", fresh, predictor.class_names, predictor.category_ids)

    record = postprocess()
    response = segment_response(
        record, model=predictor.config_name, request_id="r" * 32, timing=timing_ms(0, 0, 0, 0), total_ms=0
    )
    paste = cpu_ms(lambda: kept.select(np.arange(len(kept))).pasted_masks, runs)
    return {
        "instances": len(record["instances"]),
        "decode": cpu_ms(lambda: load_image(data), runs),
        "prepare": cpu_ms(lambda: predictor.prepare(decoded), runs),
        "paste": paste,
        "encode": cpu_ms(postprocess, runs) - paste,
        "json": cpu_ms(lambda: orjson.dumps(response), runs),
        "answer_bytes": len(orjson.dumps(response)),
    }


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_overhead_ms(requests: int) -> dict[str, float]:
    """The server's CPU for one /segment request beyond the image's own stages: receiving and parsing a
    100 kB multipart upload, the middleware, logs and metrics, and a JSON answer. Measured with an upload
    that is no image (answered 400 once the decoder refuses its first bytes), so that no forward pass, whose
    CPU time would swamp it, takes part."""
    body = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    with tempfile.TemporaryDirectory() as scratch:
        weights = write_rule_checkpoint(
            Path(scratch) / "tiny.pth", "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x", 80, 32, 64
        )
        options = ["--device", "cpu", "--torch-threads", "1", "--cpu-workers", "1", "--max-batch-size", "1"]
        with (
            spawned_server(weights, options, Path(scratch) / "server.log") as server,
            httpx.Client() as client,
        ):
            assert server.process is not None

            def send() -> None:
                answer = client.post(f"{server.url}/segment", files={"image": ("a.png", body, "image/png")})
                assert answer.status_code == 400, answer.text

            for _ in range(10):  # warm the connection and the path
                send()
            before = process_cpu_s(server.process.pid)
            for _ in range(requests):
                send()
            per_request_ms = (process_cpu_s(server.process.pid) - before) * 1000 / requests
    return {"http_ms": per_request_ms}


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="centermask_lite_V_39_eSE_FPN_ms_4x")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--requests", type=int, default=100, help="sequential requests for the HTTP overhead")
    parser.add_argument("--out", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = Results("cpu-cost", {"config": args.config, "runs": args.runs}, args.out)
    with tempfile.TemporaryDirectory() as scratch:
        rule = load_predictor(write_rule_checkpoint(Path(scratch) / "rule.pth", args.config), device="cpu")
    bundled = load_predictor(device="cpu")
    cases = [
        ("rule weights, 480x640 JPEG, every detection", rule, jpeg(synthetic_image(480, 640)), 0.0),
        ("rule weights, 1080x1920 JPEG, every detection", rule, jpeg(synthetic_image(1080, 1920)), 0.0),
        (
            "bundled model, shapes example (PNG)",
            bundled,
            (Path(__file__).resolve().parents[1] / "service/static/examples/shapes-1.png").read_bytes(),
            0.3,
        ),
    ]
    overhead = http_overhead_ms(args.requests)
    print(f"HTTP and service overhead per request: {overhead['http_ms']:.2f} ms CPU")
    print(f"{'case':<48} {'inst':>4} {'decode':>7} {'prepare':>7} {'paste':>6} {'encode':>6} {'json':>6} "
          f"{'http':>6} {'GIL ms':>7} {'all ms':>7} {'max img/s':>9}")  # fmt: skip
    for name, predictor, data, threshold in cases:
        row = {"case": name, **stages(predictor, data, threshold, args.runs), "http": overhead["http_ms"]}
        held = sum(row[stage] for stage in STAGES if stage not in GIL_FREE)
        total = sum(row[stage] for stage in STAGES)
        row.update(gil_held_ms=held, cpu_ms=total, max_images_per_s_per_process=1000 / held)
        print(f"{name:<48} {row['instances']:>4} {row['decode']:>7.2f} {row['prepare']:>7.2f} "
              f"{row['paste']:>6.2f} {row['encode']:>6.2f} {row['json']:>6.2f} {row['http']:>6.2f} {held:>7.2f} "
              f"{total:>7.2f} {1000 / held:>9.0f}")  # fmt: skip
        results.add(
            {key: round(value, 3) if isinstance(value, float) else value for key, value in row.items()}
        )
    results.finish(**{key: round(value, 3) for key, value in overhead.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
