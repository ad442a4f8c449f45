"""How close the model runs to what the hardware does: achieved GFLOP/s against measured peaks, in one run.

    python -m bench.roofline --config centermask_lite_V_19_slim_eSE_FPN_ms_4x --precision fp32 bf16 --threads 2

The network's work is counted with `torch.utils.flop_counter` (2 FLOPs per multiply-add) on the official
test size of a 480×640 image, with rule weights (about 50 detections). The peaks are a large matmul and a
128→128 3×3 convolution (channels-last, 160×160), each in the same precision, timed in the same process
right before the model. Prints a table and writes bench/results/roofline-*.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.model_bench import synthetic_image
from bench.results import write_result
from model.inference.load import load_predictor
from model.inference.precision import Precision
from tests.rule_weights import write_rule_checkpoint


def median_seconds(function: Callable[[], object], runs: int, device: torch.device) -> float:
    function()
    timings = []
    for _ in range(runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def peaks(dtype: torch.dtype, device: torch.device, runs: int) -> dict[str, float]:
    """GFLOP/s of a 2048² matmul and of a 128→128 3×3 convolution on 160×160 in `dtype`."""
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    b = torch.randn(2048, 2048, device=device, dtype=dtype)
    x = torch.randn(1, 128, 160, 160, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last
    )
    w = torch.randn(128, 128, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        matmul_s = median_seconds(lambda: a @ b, runs, device)
        conv_s = median_seconds(lambda: F.conv2d(x, w, padding=1), runs, device)
    return {
        "matmul_gflops": 2 * 2048**3 / matmul_s / 1e9,
        "conv3x3_gflops": 2 * 160 * 160 * 128 * 128 * 9 / conv_s / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", nargs="+", default=["centermask_lite_V_19_slim_eSE_FPN_ms_4x"])
    parser.add_argument("--precision", nargs="+", choices=[p.value for p in Precision], default=["fp32"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    image = synthetic_image(480, 640)
    rows = []
    for precision in args.precision:
        peak = peaks(Precision(precision).dtype, device, args.runs)
        for config in args.config:
            with tempfile.TemporaryDirectory() as scratch:
                weights = write_rule_checkpoint(Path(scratch) / "rule.pth", config)
                predictor = load_predictor(weights, device=args.device, precision=precision)
            prepared = predictor.prepare(image)
            with FlopCounterMode(display=False) as counter:
                predictor.infer([prepared])
            flops = counter.get_total_flops()
            seconds = median_seconds(lambda p=predictor, i=prepared: p.infer([i]), args.runs, device)
            achieved = flops / seconds / 1e9
            rows.append(
                {
                    "config": config,
                    "precision": precision,
                    "device": str(device),
                    "gflop": round(flops / 1e9, 2),
                    "ms": round(seconds * 1000, 1),
                    "achieved_gflops": round(achieved, 1),
                    **{k: round(v, 1) for k, v in peak.items()},
                    "of_conv_peak": round(achieved / peak["conv3x3_gflops"], 3),
                }
            )
    print(
        f"{'config':<44} {'prec':<5} {'GFLOP':>7} {'ms':>8} {'GFLOP/s':>8} {'conv peak':>9} {'matmul':>8} {'of peak':>7}"
    )
    for row in rows:
        print(
            f"{row['config']:<44} {row['precision']:<5} {row['gflop']:>7.1f} {row['ms']:>8.1f} "
            f"{row['achieved_gflops']:>8.1f} {row['conv3x3_gflops']:>9.1f} {row['matmul_gflops']:>8.1f} "
            f"{row['of_conv_peak']:>7.0%}"
        )
    write_result("roofline", {"threads": args.threads, "runs": args.runs, "image": "480x640"}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
