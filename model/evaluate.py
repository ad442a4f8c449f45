"""COCO box and mask AP of a model on a COCO-format dataset: `python -m model.evaluate`.

As centermask2's evaluator does, box results are ranked by `score` and mask results by `mask_score`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from model.checkpoint import update_metadata
from model.images import load_rgb
from model.predict import Predictor, add_predictor_arguments, predictor_from_arguments
from model.rle import encode_pasted

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_results(
    predictor: Predictor, gt: COCO, image_dir: Path, image_ids: Sequence[int]
) -> tuple[list, list]:
    """Detections of every image as COCO result lists (bbox, segm)."""
    category_ids = sorted(gt.cats)
    if len(category_ids) != len(predictor.class_names):
        raise ValueError(
            f"the dataset has {len(category_ids)} categories, the model {len(predictor.class_names)} classes"
        )
    boxes, segments = [], []
    for image_id in image_ids:
        info = gt.imgs[image_id]
        (detections,) = predictor.predict([load_rgb(image_dir / info["file_name"])])
        masks = encode_pasted(detections.pasted_masks)
        for box, score, class_id, mask_score, mask in zip(
            detections.boxes.tolist(),
            detections.scores.tolist(),
            detections.class_ids.tolist(),
            detections.mask_scores.tolist(),
            masks,
            strict=True,
        ):
            x0, y0, x1, y1 = box
            category = category_ids[class_id]
            boxes.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": score,
                }
            )
            segments.append(
                {"image_id": image_id, "category_id": category, "segmentation": mask, "score": mask_score}
            )
    return boxes, segments


def _summarise(
    gt: COCO, results: list[dict[str, Any]], kind: str, image_ids: Sequence[int]
) -> dict[str, float]:
    if not results:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(gt, gt.loadRes(results), kind)
        evaluation.params.imgIds = list(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(value) for name, value in zip(METRIC_NAMES, evaluation.stats[:6], strict=True)}


def evaluate(
    predictor: Predictor, gt_json: str | Path, image_dir: str | Path, max_images: int | None = None
) -> dict[str, dict[str, float]]:
    """{"bbox": {AP, AP50, ...}, "segm": {...}} over the dataset's images (the first max_images of them)."""
    gt = _load_gt(gt_json)
    image_ids = sorted(gt.imgs)[:max_images]
    boxes, segments = coco_results(predictor, gt, Path(image_dir), image_ids)
    return {
        "bbox": _summarise(gt, boxes, "bbox", image_ids),
        "segm": _summarise(gt, segments, "segm", image_ids),
    }


def _load_gt(gt_json: str | Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        return COCO(str(gt_json))


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    lines = ["task  " + "  ".join(f"{name:>6}" for name in METRIC_NAMES)]
    for task, values in metrics.items():
        lines.append(f"{task:<5} " + "  ".join(f"{100 * values[name]:6.2f}" for name in METRIC_NAMES))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.evaluate", description=__doc__)
    add_predictor_arguments(parser)
    parser.add_argument("--gt", type=Path, required=True, help="COCO JSON with the ground truth")
    parser.add_argument("--images", type=Path, required=True, help="image directory")
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--json", type=Path, help="also write the metrics here")
    parser.add_argument(
        "--record",
        action="store_true",
        help="store the metrics (and the dataset they were measured on) in the checkpoint's metadata",
    )
    args = parser.parse_args(argv)

    predictor = predictor_from_arguments(args)
    started = time.perf_counter()
    metrics = evaluate(predictor, args.gt, args.images, args.max_images)
    print(format_table(metrics))
    print(f"evaluated in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=2))
    if args.record:
        evaluated_on = {"gt": str(args.gt), "max_images": args.max_images}
        update_metadata(predictor.weights_path, {"metrics": metrics, "evaluated_on": evaluated_on})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
