"""Model throughput over a grid of settings: the network alone, and end to end (uint8 RGB in → COCO RLE out).

    python -m bench.model_bench --config centermask_lite_V_19_slim_eSE_FPN_ms_4x --size 480x640 \
        --batch-size 1 --precision fp32 bf16 --backend torch onnxruntime --threads 2 --device cpu --runs 10

Every combination of --config, --backend, --precision, --compile, --cuda-graphs, --size and --batch-size is
timed (the onnxruntime backend in fp32 only, and without CUDA graphs; CUDA graphs on CUDA only: other
combinations are skipped); the combinations of one config and device are measured round-robin (one run of
each in turn), so that drift of the machine affects them alike and their ratios are meaningful. Each
accelerated combination is warmed up as the service does (`Predictor.warm_up`: compiled and captured there)
before its untimed runs; the table says whether compile and CUDA graphs were in force (a failure falls back to eager).
Both backends run the same pre- and postprocessing; ONNX Runtime gets as many threads as torch (--threads). Weights are the deterministic rule weights (about 50 detections per image,
like the official CPU timings in shared/reference/TIMINGS.md) unless --weights is given.

Two figures per combination: `infer` is `Predictor.infer` on batches prepared beforehand (the device's work
and the batch's postprocessing up to `Detections`), timed on CUDA with CUDA events around it, so what the
GPU does is not hidden by the host; `e2e` adds, on this one thread, resizing each image and encoding its
masks as RLE records — the per-image host work a service spreads over its CPU workers. Prints a table and
writes bench/results/model-*.json (or --out, after each configuration).
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from bench.results import Results
from model.inference.backends import Backend
from model.inference.device import resolve_device
from model.inference.load import load_predictor
from model.inference.precision import Precision
from model.inference.predictor import Predictor
from model.wire.records import instances_to_json
from tests.rule_weights import write_rule_checkpoint


class Variant(NamedTuple):
    """How one predictor of a config runs."""

    backend: str
    precision: str
    compile: bool
    cuda_graphs: bool


# (variant, size, batch size): one timed combination.
_Key = tuple[Variant, tuple[int, int], int]
SWITCH = {"off": False, "on": True}


def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Blocky random colours: gives the random-weight model plenty of candidates, like a natural photo."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width].copy()


def rule_test_size(args: argparse.Namespace) -> dict[str, int]:
    """`write_rule_checkpoint`'s test resize from --rule-test-size, when given."""
    if not args.rule_test_size:
        return {}
    return {"min_size_test": args.rule_test_size[0], "max_size_test": args.rule_test_size[1]}


def parse_size(text: str) -> tuple[int, int]:
    height, _, width = text.partition("x")
    return int(height), int(width)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", nargs="+", default=["centermask_lite_V_19_slim_eSE_FPN_ms_4x"])
    parser.add_argument("--weights", type=Path, help="checkpoint (then one --config or none); default: rule")
    parser.add_argument("--size", nargs="+", type=parse_size, default=[(480, 640)], help="HxW of the input")
    parser.add_argument("--batch-size", nargs="+", type=int, default=[1])
    parser.add_argument("--precision", nargs="+", choices=[p.value for p in Precision], default=["fp32"])
    parser.add_argument("--backend", nargs="+", choices=[b.value for b in Backend], default=["torch"])
    parser.add_argument("--compile", nargs="+", choices=list(SWITCH), default=["off"], help="torch.compile")
    parser.add_argument("--cuda-graphs", nargs="+", choices=list(SWITCH), default=["off"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, help="write the results here, after each configuration")
    parser.add_argument(
        "--rule-test-size",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="the rule weights' test resize instead of the config's (small images for a rehearsal)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    on_cuda = resolve_device(args.device).type == "cuda"
    results = Results(
        "model",
        {"threads": args.threads, "runs": args.runs, "weights": str(args.weights or "rule")},
        args.out,
    )
    print(
        f"{'config':<44} {'backend':<11} {'device':<6} {'prec':<5} {'compile':<7} {'graphs':<6} {'size':>9} "
        f"{'batch':>5} {'infer ms/img':>12} {'img/s':>8} {'e2e ms/img':>10} {'img/s':>7}"
    )
    for config in args.config:
        with tempfile.TemporaryDirectory() as scratch:
            weights = args.weights or write_rule_checkpoint(
                Path(scratch) / "rule.pth", config, **rule_test_size(args)
            )
            variants = [
                Variant(backend, precision, SWITCH[compile], SWITCH[graphs])
                for backend, precision, compile, graphs in itertools.product(
                    args.backend, args.precision, args.compile, args.cuda_graphs
                )
                if (backend == Backend.TORCH or precision == Precision.FP32)
                and (graphs == "off" or (backend == Backend.TORCH and on_cuda))
            ]
            predictors: dict[Variant, Predictor] = {
                variant: load_predictor(
                    weights,
                    config if args.weights else None,
                    args.device,
                    variant.precision,
                    backend=variant.backend,
                    compile=variant.compile,
                    cuda_graphs=variant.cuda_graphs,
                )
                for variant in variants
            }
        programs: dict[_Key, tuple[Callable[[], float], Callable[[], int]]] = {}
        for variant, size, batch_size in itertools.product(variants, args.size, args.batch_size):
            programs[(variant, size, batch_size)] = _programs(predictors[variant], size, batch_size)
        for network, end_to_end in programs.values():
            for _ in range(args.warmup):
                network()
                end_to_end()
        # Round-robin: one run of each program in turn, so drift affects them alike.
        infer_ms: dict[_Key, list[float]] = {key: [] for key in programs}
        e2e_ms: dict[_Key, list[float]] = {key: [] for key in programs}
        detections: dict[_Key, int] = {}
        for _ in range(args.runs):
            for key, (network, end_to_end) in programs.items():
                infer_ms[key].append(network() * 1000 / key[2])
                started = time.perf_counter()
                detections[key] = end_to_end()
                e2e_ms[key].append((time.perf_counter() - started) * 1000 / key[2])
        for (variant, size, batch_size), values in infer_ms.items():
            infer, e2e = statistics.median(values), statistics.median(e2e_ms[(variant, size, batch_size)])
            predictor = predictors[variant]
            row = {
                "config": predictor.config_name,
                "backend": variant.backend,
                "device": str(predictor.device),
                "precision": variant.precision,
                # In force, after warm-up: false where it was asked for and fell back to eager.
                "compile": predictor.compiled,
                "cuda_graphs": predictor.cuda_graphs,
                "size": f"{size[0]}x{size[1]}",
                "batch_size": batch_size,
                "infer_ms_per_image": round(infer, 3),
                "infer_images_per_s": round(1000 / infer, 1),
                "e2e_ms_per_image": round(e2e, 3),
                "e2e_images_per_s": round(1000 / e2e, 2),
                "min_e2e_ms_per_image": round(min(e2e_ms[(variant, size, batch_size)]), 3),
                "detections_per_image": detections[(variant, size, batch_size)] / batch_size,
            }
            print(
                f"{row['config']:<44} {row['backend']:<11} {row['device']:<6} {row['precision']:<5} "
                f"{_switch(row['compile']):<7} {_switch(row['cuda_graphs']):<6} {row['size']:>9} "
                f"{row['batch_size']:>5} {infer:>12.2f} {1000 / infer:>8.1f} {e2e:>10.1f} {1000 / e2e:>7.2f}",
                flush=True,
            )
            results.add(row)
        del predictors, programs
        if on_cuda:
            torch.cuda.empty_cache()
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"threads={args.threads} runs={args.runs} peak RSS {peak_rss_mib:.0f} MiB")
    results.finish(peak_rss_mib=round(peak_rss_mib))
    return 0


def _switch(value: bool) -> str:
    return "on" if value else "off"


def _programs(
    predictor: Predictor, size: tuple[int, int], batch_size: int
) -> tuple[Callable[[], float], Callable[[], int]]:
    """Two timed calls on a batch of images of one size: `infer` alone on prepared images (returns its
    seconds: CUDA events on CUDA), and the whole way from pixels to JSON records (returns the detections)."""
    images = [synthetic_image(*size, seed) for seed in range(batch_size)]
    prepared = [predictor.prepare(image) for image in images]
    if (
        predictor.compiled or predictor.cuda_graphs
    ):  # compiled and captured at warm-up only, as in the service
        predictor.warm_up(prepared[0].padded_shape, batch_size)
    on_cuda = predictor.device.type == "cuda"

    def network() -> float:
        if on_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            predictor.infer(prepared)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1000
        started = time.perf_counter()
        predictor.infer(prepared)
        return time.perf_counter() - started

    def end_to_end() -> int:
        results = predictor.infer([predictor.prepare(image) for image in images])
        for detections in results:
            instances_to_json(detections, predictor.class_names, predictor.category_ids)
        if on_cuda:
            torch.cuda.synchronize()
        return sum(len(d) for d in results)

    return network, end_to_end


if __name__ == "__main__":
    sys.exit(main())
