"""COCO box and mask AP of a model on a COCO-format dataset: `python -m training.evaluate`.

As centermask2's evaluator does, box results are ranked by `score` and mask results by `mask_score`. Beside
the COCO table it reports AP per class and the cross-class duplicate rate: among detections scoring ≥ 0.3 in
the full output, the share whose box has IoU > 0.9 with a higher-scoring detection of another class (one
object shown under several labels). `--class-agnostic-nms` measures both after that optional filter.
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

from model.inference.detections import CLASS_AGNOSTIC_IOU, Detections
from model.inference.images import load_image
from model.inference.load import predictor_from_arguments
from model.inference.options import add_arguments
from model.inference.predictor import Predictor
from model.weights.checkpoint import read_checkpoint, update_metadata
from model.wire.rle import encode_pasted

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# What a person sees at the service's default threshold: detections scoring at least this, and among them
# the ones sitting on a higher-scoring detection of another class (box IoU above DUPLICATE_IOU).
DUPLICATE_SCORE = 0.3
DUPLICATE_IOU = 0.9


def detect_all(
    predictor: Predictor,
    gt: COCO,
    image_dir: Path,
    image_ids: Sequence[int],
    class_agnostic_iou: float | None = None,
    draft_to: tuple[int, int] | None = None,
) -> list[Detections]:
    """The full output for each image, after class-agnostic NMS at ``class_agnostic_iou`` when given; images
    are decoded by `load_image` with ``draft_to``."""
    if len(gt.cats) != len(predictor.class_names):
        raise ValueError(
            f"the dataset has {len(gt.cats)} categories, the model {len(predictor.class_names)} classes"
        )
    results = []
    for image_id in image_ids:
        image = load_image(image_dir / gt.imgs[image_id]["file_name"], draft_to=draft_to)
        (detections,) = predictor.predict([image])
        if class_agnostic_iou is not None:
            detections = detections.class_agnostic_nms(class_agnostic_iou)
        results.append(detections)
    return results


def coco_results(
    detections: Sequence[Detections], image_ids: Sequence[int], category_ids: Sequence[int]
) -> tuple[list, list]:
    """Detections of every image as COCO result lists (bbox, segm); class i is category_ids[i]."""
    boxes, segments = [], []
    for image_id, image_detections in zip(image_ids, detections, strict=True):
        masks = encode_pasted(image_detections.pasted_masks)
        for box, score, class_id, mask_score, mask in zip(
            image_detections.boxes.tolist(),
            image_detections.scores.tolist(),
            image_detections.class_ids.tolist(),
            image_detections.mask_scores.tolist(),
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


def duplicate_rate(detections: Sequence[Detections]) -> dict[str, float]:
    """Among detections scoring ≥ DUPLICATE_SCORE, how many are cross-class duplicates (IoU > DUPLICATE_IOU
    with a higher-scoring detection of another class)."""
    shown = duplicates = 0
    for image_detections in detections:
        confident = image_detections.filter(score_threshold=DUPLICATE_SCORE)
        shown += len(confident)
        duplicates += int(confident.cross_class_duplicates(DUPLICATE_IOU).sum())
    return {
        "rate": duplicates / shown if shown else 0.0,
        "duplicates": duplicates,
        "detections": shown,
        "score_threshold": DUPLICATE_SCORE,
        "iou_threshold": DUPLICATE_IOU,
    }


def _summarise(
    gt: COCO, results: list[dict[str, Any]], kind: str, image_ids: Sequence[int]
) -> tuple[dict[str, float], dict[str, float]]:
    """COCO metrics and per-category AP (by category name; -1 for a category absent from these images)."""
    names = [gt.cats[c]["name"] for c in sorted(gt.cats)]
    if not results:
        return dict.fromkeys(METRIC_NAMES, 0.0), dict.fromkeys(names, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(gt, gt.loadRes(results), kind)
        evaluation.params.imgIds = list(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # precision: (IoU thresholds, recall points, categories, area ranges, max detections); -1 where undefined.
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, category_id in enumerate(evaluation.params.catIds):
        values = precision[:, :, k]
        per_class[gt.cats[category_id]["name"]] = (
            float(values[values > -1].mean()) if (values > -1).any() else -1.0
        )
    metrics = {name: float(value) for name, value in zip(METRIC_NAMES, evaluation.stats[:6], strict=True)}
    return metrics, per_class


def evaluate(
    predictor: Predictor,
    gt_json: str | Path,
    image_dir: str | Path,
    max_images: int | None = None,
    class_agnostic_iou: float | None = None,
    draft_to: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """COCO box and mask AP, per-class AP and the cross-class duplicate rate over the dataset's images (the
    first max_images of them, decoded with ``draft_to`` as `load_image` takes it), optionally after
    class-agnostic NMS at ``class_agnostic_iou``.

    Returns {"bbox": {AP, AP50, ...}, "segm": {...}, "per_class": {"bbox": {name: AP}, "segm": {...}},
    "duplicates": {rate, duplicates, detections, score_threshold, iou_threshold}, "class_agnostic_nms"}.
    """
    gt = _load_gt(gt_json)
    image_ids = sorted(gt.imgs)[:max_images]
    detections = detect_all(predictor, gt, Path(image_dir), image_ids, class_agnostic_iou, draft_to)
    boxes, segments = coco_results(detections, image_ids, sorted(gt.cats))
    box_metrics, box_per_class = _summarise(gt, boxes, "bbox", image_ids)
    mask_metrics, mask_per_class = _summarise(gt, segments, "segm", image_ids)
    return {
        "bbox": box_metrics,
        "segm": mask_metrics,
        "per_class": {"bbox": box_per_class, "segm": mask_per_class},
        "duplicates": duplicate_rate(detections),
        "class_agnostic_nms": class_agnostic_iou,
    }


def _load_gt(gt_json: str | Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        return COCO(str(gt_json))


def format_table(metrics: dict[str, Any]) -> str:
    """The COCO table, per-class AP and the duplicate rate as text."""
    lines = ["task  " + "  ".join(f"{name:>6}" for name in METRIC_NAMES)]
    for task in ("bbox", "segm"):
        lines.append(f"{task:<5} " + "  ".join(f"{100 * metrics[task][name]:6.2f}" for name in METRIC_NAMES))
    names = list(metrics["per_class"]["bbox"])
    width = max(len(name) for name in names)
    lines.append("")
    lines.append("class".ljust(width) + "   box AP  mask AP")
    for name in names:
        box, mask = metrics["per_class"]["bbox"][name], metrics["per_class"]["segm"][name]
        lines.append(f"{name:<{width}}  {100 * box:7.2f}  {100 * mask:7.2f}")
    duplicates = metrics["duplicates"]
    nms = metrics["class_agnostic_nms"]
    lines.append("")
    lines.append(
        f"cross-class duplicates: {duplicates['duplicates']} of {duplicates['detections']} detections scoring "
        f"≥ {duplicates['score_threshold']} ({100 * duplicates['rate']:.1f}%, box IoU > "
        f"{duplicates['iou_threshold']} with a higher-scoring detection of another class)"
        + (f"; after class-agnostic NMS at IoU {nms}" if nms is not None else "")
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__)
    add_arguments(parser)
    parser.add_argument("--gt", type=Path, required=True, help="COCO JSON with the ground truth")
    parser.add_argument("--images", type=Path, required=True, help="image directory")
    parser.add_argument("--max-images", type=int)
    parser.add_argument(
        "--class-agnostic-nms",
        type=float,
        nargs="?",
        const=CLASS_AGNOSTIC_IOU,
        metavar="IOU",
        help=f"apply class-agnostic NMS after the model (IoU threshold, default {CLASS_AGNOSTIC_IOU}) to "
        "measure its effect; without it the model's own output is evaluated",
    )
    parser.add_argument("--json", type=Path, help="also write the metrics here")
    parser.add_argument(
        "--record",
        nargs="?",
        const="",
        metavar="NAME",
        help="store the metrics (and the dataset they were measured on) in the checkpoint's metadata: as its "
        "metrics, or under evaluations[NAME] when NAME is given (e.g. one entry per validation set)",
    )
    args = parser.parse_args(argv)

    predictor = predictor_from_arguments(args)
    started = time.perf_counter()
    metrics = evaluate(
        predictor,
        args.gt,
        args.images,
        args.max_images,
        args.class_agnostic_nms,
        predictor.draft_to,
    )
    print(format_table(metrics))
    print(f"evaluated in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(metrics, indent=2))
    if args.record is not None:
        print(record(predictor.weights_path, metrics, args.gt, args.max_images, args.record), file=sys.stderr)
    return 0


def record(weights: Path, metrics: dict[str, Any], gt: Path, max_images: int | None, name: str) -> str:
    """Store the metrics in the checkpoint's metadata (as its ``metrics``, or under ``evaluations[name]``
    when a name is given) with the dataset they were measured on; return the line saying what went where.
    The checkpoint file is rewritten, so the line names it: it may be the bundled one."""
    evaluated_on = {"gt": str(gt), "max_images": max_images}
    if name:
        evaluations = read_checkpoint(weights).metadata.get("evaluations", {})
        entry = {"metrics": metrics, "evaluated_on": evaluated_on}
        update_metadata(weights, {"evaluations": {**evaluations, name: entry}})
        key = f'metadata["evaluations"]["{name}"]'
    else:
        update_metadata(weights, {"metrics": metrics, "evaluated_on": evaluated_on})
        key = 'metadata["metrics"]'
    images = "every image" if max_images is None else f"its first {max_images} images"
    return (
        f"recorded box AP {100 * metrics['bbox']['AP']:.2f}, mask AP {100 * metrics['segm']['AP']:.2f} "
        f"(and the rest of the table) in {weights} as {key}, measured on {gt}, {images}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
