"""Ours against the official centermask2 code, alternating call by call in one process.

Both programs get the same image, the same deterministic rule weights (shared/reference/README.md) and the
same threads, and both go from an RGB uint8 image to COCO RLE records:

* official: detectron2 `DefaultPredictor` (BGR input) → `Instances` with pasted masks →
  `pycocotools.mask.encode` of every mask;
* ours: `Predictor.predict` → `instances_to_json` (the documented Python API).

The official code is not part of this project. Build it beside the repository (see bench/RESULTS.md) and run

    PYTHONPATH=/path/to/detectron2:/path/to/centermask2:. /path/to/official-venv/bin/python \
        -m bench.official --config centermask_lite_V_19_slim_eSE_FPN_ms_4x --precision fp32 bf16

Every round runs the official call, then each of our precisions, in that order, so drift of the machine hits
all of them alike; the ratio of medians is the figure to quote. Results go to bench/results/official-*.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.results import write_result
from model.inference.images import load_rgb
from model.inference.load import load_predictor
from model.wire.records import instances_to_json
from tests.rule_weights import match_instances, official_rule_checkpoint

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = (
    REPO.parent / "shared/reference/fixtures/centermask_lite_V_19_slim_eSE_FPN_ms_4x/img480x640.png"
)


def official_predictor(config_name: str, weights: Path, centermask2: Path) -> Any:
    """detectron2's DefaultPredictor for a centermask2 config, on the CPU, with these weights."""
    from centermask.config import get_cfg
    from detectron2.engine import DefaultPredictor

    cfg = get_cfg()
    cfg.merge_from_file(str(centermask2 / "configs" / "centermask" / f"{config_name}.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.freeze()
    return DefaultPredictor(cfg)


def official_records(predictor: Any, rgb: np.ndarray) -> list[dict[str, Any]]:
    import pycocotools.mask as mask_utils

    instances = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))["instances"]
    masks = instances.pred_masks.numpy()
    boxes = instances.pred_boxes.tensor.numpy()
    records = []
    for i in range(len(instances)):
        rle = mask_utils.encode(np.asfortranarray(masks[i].astype(np.uint8)))
        records.append(
            {
                "box": [float(v) for v in boxes[i]],
                "score": float(instances.scores[i]),
                "class_id": int(instances.pred_classes[i]),
                "mask_score": float(instances.mask_scores[i]),
                "mask": {"size": rle["size"], "counts": rle["counts"].decode()},
            }
        )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="centermask_lite_V_19_slim_eSE_FPN_ms_4x")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--precision", nargs="+", default=["fp32"], help="our precisions to time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--centermask2", type=Path, help="centermask2 checkout (default: found through PYTHONPATH)"
    )
    args = parser.parse_args(argv)

    import centermask

    centermask2 = args.centermask2 or Path(centermask.__file__).resolve().parents[1]
    torch.set_num_threads(args.threads)
    rgb = load_rgb(args.image)

    with tempfile.TemporaryDirectory() as scratch:
        weights = official_rule_checkpoint(REPO.parent / "shared" / "reference", args.config, Path(scratch))
        official = official_predictor(args.config, weights, centermask2)
        ours = {
            precision: load_predictor(weights, args.config, "cpu", precision=precision)
            for precision in args.precision
        }

    programs = {"official": lambda: official_records(official, rgb)}
    for precision, predictor in ours.items():
        programs[precision] = lambda p=predictor: instances_to_json(
            p.predict([rgb])[0], p.class_names, p.category_ids
        )

    outputs = {name: program() for name, program in programs.items()}
    for _ in range(args.warmup - 1):
        for program in programs.values():
            program()
    timings: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(args.rounds):
        for name, program in programs.items():
            started = time.perf_counter()
            program()
            timings[name].append(1000 * (time.perf_counter() - started))

    reference = outputs["official"]
    official_ms = statistics.median(timings["official"])
    rows = []
    print(f"{args.config}  {rgb.shape[0]}x{rgb.shape[1]}  threads={args.threads}  rounds={args.rounds}")
    print(f"{'program':<10} {'median ms':>10} {'min ms':>8} {'speed-up':>9} {'instances':>10}  parity")
    for name, values in timings.items():
        median = statistics.median(values)
        if name == "official":
            parity = "-"
        else:
            report = match_instances(reference, outputs[name])
            parity = f"{report.matched}/{report.reference_count} matched, passes={report.passes}"
            if name != "fp32":
                # The criteria are fp32's (scores within 1e-3): reduced precisions are judged by AP instead.
                parity += " (fp32 criteria; AP per precision: model/weights/README.md)"
        rows.append(
            {
                "program": name,
                "median_ms": median,
                "min_ms": min(values),
                "speedup": official_ms / median,
                "instances": len(outputs[name]),
                "parity": parity,
                "timings_ms": values,
            }
        )
        print(
            f"{name:<10} {median:>10.1f} {min(values):>8.1f} {official_ms / median:>8.2f}x "
            f"{len(outputs[name]):>10}  {parity}"
        )
    write_result("official", {"config": args.config, "image": str(args.image), "threads": args.threads}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
