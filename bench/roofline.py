"""How close the model runs to what the hardware does: achieved GFLOP/s against measured peaks, in one run.

    python -m bench.roofline --config centermask_lite_V_19_slim_eSE_FPN_ms_4x --precision fp32 bf16 --threads 2

The network's work is counted with `torch.utils.flop_counter` (2 FLOPs per multiply-add) on the official
test size of a 480×640 image, with rule weights (about 50 detections). The peaks are a large matmul and a
128→128 3×3 convolution (channels-last, 160×160), each in the same precision and with the same numerics as
the model (on CUDA: TF32 only in reduced precisions), timed in the same process right before the model; on
CUDA each is launched many times between two synchronisations, so that launch gaps do not count. Prints a
table and writes bench/results/roofline-*.json (or --out, after each row).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.model_bench import parse_size, rule_test_size, synthetic_image
from bench.results import Results
from model.inference.device import cuda_numerics
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


# Kernel launches per timed run of a peak on CUDA (each takes tens of microseconds).
PEAK_REPEATS_CUDA = 50


def peaks(precision: Precision, device: torch.device, runs: int) -> dict[str, float]:
    """GFLOP/s of a 2048² matmul and of a 128→128 3×3 convolution on 160×160 in `precision`'s dtype."""
    dtype = precision.dtype
    repeats = PEAK_REPEATS_CUDA if device.type == "cuda" else 1
    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    b = torch.randn(2048, 2048, device=device, dtype=dtype)
    x = torch.randn(1, 128, 160, 160, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last
    )
    w = torch.randn(128, 128, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    numerics = cuda_numerics(precision) if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), numerics:
        matmul_s = median_seconds(lambda: [a @ b for _ in range(repeats)], runs, device) / repeats
        conv_s = (
            median_seconds(lambda: [F.conv2d(x, w, padding=1) for _ in range(repeats)], runs, device)
            / repeats
        )
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
    parser.add_argument("--size", type=parse_size, default=(480, 640), help="HxW of the image")
    parser.add_argument("--out", type=Path, help="write the results here, after each row")
    parser.add_argument(
        "--rule-test-size",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="the rule weights' test resize instead of the config's (small images for a rehearsal)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    image = synthetic_image(*args.size)
    results = Results(
        "roofline",
        {"threads": args.threads, "runs": args.runs, "image": f"{args.size[0]}x{args.size[1]}"},
        args.out,
    )
    for precision in args.precision:
        peak = peaks(Precision(precision), device, args.runs)
        for config in args.config:
            with tempfile.TemporaryDirectory() as scratch:
                weights = write_rule_checkpoint(Path(scratch) / "rule.pth", config, **rule_test_size(args))
                predictor = load_predictor(weights, device=args.device, precision=precision)
            prepared = predictor.prepare(image)
            with FlopCounterMode(display=False) as counter:
                predictor.infer([prepared])
            flops = counter.get_total_flops()
            seconds = median_seconds(lambda p=predictor, i=prepared: p.infer([i]), args.runs, device)
            achieved = flops / seconds / 1e9
            results.add(
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
    for row in results.rows:
        print(
            f"{row['config']:<44} {row['precision']:<5} {row['gflop']:>7.1f} {row['ms']:>8.1f} "
            f"{row['achieved_gflops']:>8.1f} {row['conv3x3_gflops']:>9.1f} {row['matmul_gflops']:>8.1f} "
            f"{row['of_conv_peak']:>7.0%}"
        )
    results.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
