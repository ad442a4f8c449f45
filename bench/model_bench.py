"""End-to-end model throughput: uint8 RGB image in → Detections with pasted masks out.

    python -m bench.model_bench --config centermask_lite_V_19_slim_eSE_FPN_ms_4x --height 480 --width 640 \
        --batch-size 1 --threads 2 --device cpu --runs 10

Weights are the deterministic rule weights (about 50 detections per image, like the official CPU timings in
shared/reference/TIMINGS.md) unless --weights is given. Prints the median and min ms/image, images/s and
the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.predict import load_predictor
from model.testing import write_rule_checkpoint


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Blocky random colours: gives the random-weight model plenty of candidates, like a natural photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width].copy()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="centermask_lite_V_19_slim_eSE_FPN_ms_4x")
    parser.add_argument("--weights", type=Path, help="checkpoint; default: rule weights for --config")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights or write_rule_checkpoint(Path(scratch) / "rule.pth", args.config)
        predictor = load_predictor(weights, args.config if args.weights else None, args.device)
    images = [synthetic_image(args.height, args.width, seed) for seed in range(args.batch_size)]

    def run() -> int:
        results = predictor.predict(images)
        for detections in results:
            detections.mask_crops()
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        return sum(len(d) for d in results)

    for _ in range(args.warmup):
        run()
    timings, detections = [], 0
    for _ in range(args.runs):
        started = time.perf_counter()
        detections = run()
        timings.append(time.perf_counter() - started)
    per_image_ms = [1000 * t / args.batch_size for t in timings]
    median = statistics.median(per_image_ms)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{predictor.config_name} {args.height}x{args.width} batch={args.batch_size} device={predictor.device} "
        f"threads={args.threads} dtype={predictor.dtype}\n"
        f"  {median:.1f} ms/image median (min {min(per_image_ms):.1f}) over {args.runs} runs, "
        f"{1000 / median:.2f} images/s, {detections / args.batch_size:.0f} detections/image, "
        f"peak RSS {peak_rss_mib:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
