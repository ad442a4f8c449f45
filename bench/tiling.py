"""Tiled inference on large generated scenes: recall, mask AP, objects split at seams and time, for tiling off,
tiling auto and SAHI's sliced prediction around the same model with the same tiles.

    python -m bench.tiling compare --scenes 3            # off / auto / SAHI (needs the `bench` extra: sahi)
    python -m bench.tiling sweep --scenes 2              # tile sizes and overlaps (tiled at any size)
    python -m bench.tiling factor                        # off vs tiled by how much the resize shrinks a scene
    python -m bench.tiling example --out docs/images/tiling-example.jpg   # the overlay in docs/api.md
    python -m bench.tiling cost --height 1200 --width 1800 --rounds 2   # a tiled image vs its passes alone

Scenes come from `training.data.large` (6000 × 4000 by default: ~150 shapes of 20-60 px and a few of
700-1600 px spanning several tiles), rendered in memory from --seed. The model is the bundled one (or
--weights), fp32 on the CPU, one image at a time, through the Python API (`Predictor.predict`, with
`tiling=` for auto), the path `python -m model.predict` takes; the service sends the same passes through its
batcher.

What is measured, per scene and method (the model's own output: per-class NMS, candidates from 0.05):

- recall: the share of ground-truth objects matched by a prediction scoring ≥ 0.3 (the service's default
  threshold) at mask IoU ≥ 0.5, greedily by score (each prediction matches one object); `recall` ignores
  the class, `recall_class` requires it;
- split objects: matched objects that two or more predictions (≥ 0.3) each cover in part (a prediction lying
  at least half inside the object and covering at least a tenth of it): an object cut by a seam and not
  stitched, or reported twice; as a count and as a share of matched objects;
- mask AP (COCO AP@[.5:.95], and AP50) by pycocotools with up to 10000 detections per image, masks ranked by
  mask_score (ours; SAHI's merged predictions carry one score, which ranks them);
- seconds per scene, and for auto the seconds per forward pass against a plain `predict` of the scene's
  top-left tile measured in the same run (a rough yardstick: tiles differ in content; `cost` compares a
  tiled image with plain requests of the very same passes, the tile cost target: within 1.2×).

SAHI runs with its defaults (GREEDYNMM, IOS 0.5, a standard prediction of the whole image) at the same slice
size and overlap ratio, confidence 0.05 as ours, its automatic switch to NMS at low confidence turned off; a
second row gives its NMS/IOU postprocess, run from cached slice outputs (postprocess time only).

Writes bench/results/tiling-<mode>-*.json. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from bench.results import Results
from centermask_client.rle import encode_crop
from model.inference.detections import Detections, Selection
from model.inference.load import load_predictor
from model.inference.masks import MaskCrop
from model.inference.predictor import Predictor
from model.inference.tiling import DEFAULT_OVERLAP, Tiling, segment_tiled
from training.data.large import LargeScene, render_large_scene

CANDIDATES = 0.05
SERVICE_THRESHOLD = 0.3
MATCH_IOU = 0.5


@dataclass
class Found:
    """A method's predictions on one scene, masks as crops in the scene's pixels."""

    scores: np.ndarray
    mask_scores: np.ndarray
    class_ids: np.ndarray
    crops: list[MaskCrop]

    @classmethod
    def of(cls, detections: Detections) -> Found:
        return cls(detections.scores, detections.mask_scores, detections.class_ids, detections.mask_crops())


def rect(crop: MaskCrop) -> tuple[int, int, int, int]:
    return crop.x0, crop.y0, crop.x0 + crop.crop.shape[1], crop.y0 + crop.crop.shape[0]


def overlap(a: MaskCrop, b: MaskCrop) -> int:
    ax0, ay0, ax1, ay1 = rect(a)
    bx0, by0, bx1, by1 = rect(b)
    x0, y0, x1, y1 = max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1)
    if x0 >= x1 or y0 >= y1:
        return 0
    return int(
        np.count_nonzero(
            a.crop[y0 - ay0 : y1 - ay0, x0 - ax0 : x1 - ax0]
            & b.crop[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0]
        )
    )


def score_scene(scene: LargeScene, found: Found) -> dict[str, Any]:
    """Recall (with and without the class) and split objects at the service's threshold."""
    truth = [MaskCrop(o.x0, o.y0, o.mask) for o in scene.objects]
    truth_area = [int(np.count_nonzero(t.crop)) for t in truth]
    keep = [i for i in np.argsort(-found.scores, kind="stable") if found.scores[i] >= SERVICE_THRESHOLD]
    truth_rects = np.array([rect(t) for t in truth])
    pairs: dict[int, list[tuple[int, int]]] = {}  # prediction → [(object, pixels in common)]
    for i in keep:
        x0, y0, x1, y1 = rect(found.crops[i])
        near = np.flatnonzero(
            (truth_rects[:, 0] < x1)
            & (truth_rects[:, 2] > x0)
            & (truth_rects[:, 1] < y1)
            & (truth_rects[:, 3] > y0)
        )
        pairs[i] = [(int(g), overlap(found.crops[i], truth[g])) for g in near]
    result: dict[str, Any] = {"objects": len(truth), "predictions": len(keep)}
    for name, same_class in (("recall", False), ("recall_class", True)):
        matched: set[int] = set()
        for i in keep:
            area = int(np.count_nonzero(found.crops[i].crop))
            best, best_iou = -1, MATCH_IOU
            for g, common in pairs[i]:
                if g in matched or (same_class and scene.objects[g].class_id != found.class_ids[i]):
                    continue
                iou = common / max(1, area + truth_area[g] - common)
                if iou >= best_iou:
                    best, best_iou = g, iou
            if best >= 0:
                matched.add(best)
        result[name] = len(matched) / max(1, len(truth))
        if not same_class:
            result["matched"] = len(matched)
            covering: dict[int, int] = {}
            for i in keep:
                area = int(np.count_nonzero(found.crops[i].crop))
                for g, common in pairs[i]:
                    if common >= 0.5 * max(1, area) and common >= 0.1 * truth_area[g]:
                        covering[g] = covering.get(g, 0) + 1
            split = sum(1 for g in matched if covering.get(g, 0) >= 2)
            result["split"] = split
            result["split_share"] = split / max(1, len(matched))
    small = [g for g, o in enumerate(scene.objects) if o.diameter <= 64]
    result["small_objects"] = len(small)
    return result


def coco_ap(
    scenes: Sequence[LargeScene], founds: Sequence[Found], rank_by_mask_score: bool
) -> dict[str, float]:
    """Mask AP@[.5:.95] and AP50 over the scenes (pycocotools, up to 10000 detections per image)."""
    images, annotations, results = [], [], []
    for image_id, (scene, found) in enumerate(zip(scenes, founds, strict=True), start=1):
        height, width = scene.image.shape[:2]
        images.append({"id": image_id, "height": height, "width": width})
        for annotation in scene.coco_annotations(image_id):
            annotations.append({"id": len(annotations) + 1, **annotation})
        ranking = found.mask_scores if rank_by_mask_score else found.scores
        for crop, score, class_id in zip(
            found.crops, ranking.tolist(), found.class_ids.tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(class_id) + 1,
                    "segmentation": encode_crop(crop.crop, crop.x0, crop.y0, height, width),
                    "score": float(score),
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k + 1, "name": str(k)} for k in range(5)],
        }
        gt.createIndex()
        if not results:
            return {"AP": 0.0, "AP50": 0.0}
        evaluation = COCOeval(gt, gt.loadRes(results), "segm")
        evaluation.params.maxDets = [1, 100, 10000]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"AP": round(100 * evaluation.stats[0], 2), "AP50": round(100 * evaluation.stats[1], 2)}


def sahi_found(prediction_list: Sequence[Any], height: int, width: int) -> Found:
    """SAHI's merged predictions → crops, rasterising its polygons as SAHI itself does (cv2.fillPoly)."""
    scores, classes, crops = [], [], []
    for prediction in prediction_list:
        polygons = [np.array(p).reshape(-1, 2).round().astype(np.int64) for p in prediction.mask.segmentation]
        points = np.concatenate(polygons)
        x0, y0 = max(0, int(points[:, 0].min())), max(0, int(points[:, 1].min()))
        x1, y1 = min(width, int(points[:, 0].max()) + 1), min(height, int(points[:, 1].max()) + 1)
        canvas = np.zeros((max(0, y1 - y0), max(0, x1 - x0)), dtype=np.uint8)
        cv2.fillPoly(canvas, [p - np.array([x0, y0]) for p in polygons], (1,))
        scores.append(prediction.score.value)
        classes.append(prediction.category.id)
        crops.append(MaskCrop(x0, y0, canvas.astype(bool)))
    score_array = np.array(scores, dtype=np.float32)
    return Found(score_array, score_array, np.array(classes, dtype=np.int64), crops)


def plain_tile_s(predictor: Predictor, scene: LargeScene, tile_size: int, repeats: int = 3) -> float:
    """Median seconds of `predict` on one tile-sized image (a tile of the scene), the tile cost's baseline."""
    tile = np.ascontiguousarray(scene.image[:tile_size, :tile_size])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict([tile], Selection(score_threshold=CANDIDATES))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def timed(call: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started


def compare(args: argparse.Namespace, predictor: Predictor) -> None:
    tiling = Tiling(tile_size=args.tile_size, tile_overlap=args.tile_overlap)
    tile_size = args.tile_size or predictor.resize[0]
    results = Results(
        "tiling-compare",
        {
            "scenes": args.scenes,
            "seed": args.seed,
            "tile_size": tile_size,
            "tile_overlap": args.tile_overlap,
            "size": [args.height, args.width],
            "small": args.small,
            "large": args.large,
        },
        args.out,
    )
    selection = Selection(score_threshold=CANDIDATES)
    scenes: list[LargeScene] = []
    founds: dict[str, list[Found]] = {}
    sahi_model = None
    if "sahi" in args.methods:
        from bench.sahi_model import PredictorModel

        sahi_file = None
        if args.cache is not None:
            sahi_file = (
                args.cache
                / f"sahi-seed{args.seed}-{args.height}x{args.width}-{tile_size}-{args.tile_overlap}.pt"
            )
        sahi_model = PredictorModel(predictor, CANDIDATES, cache=True, cache_file=sahi_file)
    for index in range(args.scenes):
        scene = render_large_scene(args.seed, index, args.height, args.width, args.small, args.large)
        scenes.append(scene)
        height, width = scene.image.shape[:2]
        plan = tiling.plan((height, width), predictor.resize)
        for method in args.methods:
            row: dict[str, Any] = {"scene": index, "method": method}
            if method == "off":
                (detections,), seconds = timed(
                    lambda scene=scene: predictor.predict([scene.image], selection)
                )
                found = Found.of(detections)
            elif method == "auto" and args.cache is not None and cache_path(args, index).exists():
                # The passes of an earlier run, merged again by the code of this one (no time measured).
                assert plan is not None
                passes_run = torch.load(cache_path(args, index), weights_only=False)
                replay = iter(passes_run)
                detections, merge_s = timed(
                    lambda scene=scene, plan=plan, replay=replay: segment_tiled(
                        scene.image, plan, lambda images, _: [next(replay) for _ in images], selection
                    )
                )
                found = Found.of(detections)
                seconds = float("nan")
                row |= {
                    "passes": plan.passes,
                    "merge_s": merge_s,
                    "note": "passes from the cache: the merge alone is timed (merge_s)",
                }
            elif method == "auto":
                before = plain_tile_s(predictor, scene, tile_size)
                recorded: list[Detections] = []

                def recording(
                    images: list[np.ndarray], chosen: Selection, recorded: list[Detections] = recorded
                ) -> list[Detections]:
                    # What Predictor.predict runs for each pass, kept for --cache.
                    results = predictor.infer([predictor.prepare(i) for i in images], [chosen] * len(images))
                    recorded.extend(results)
                    return results

                assert plan is not None
                detections, seconds = timed(
                    lambda scene=scene, plan=plan: segment_tiled(scene.image, plan, recording, selection)
                )
                after = plain_tile_s(predictor, scene, tile_size)
                if args.cache is not None:
                    args.cache.mkdir(parents=True, exist_ok=True)
                    torch.save(recorded, cache_path(args, index))
                found = Found.of(detections)
                passes = plan.passes if plan is not None else 1
                row |= {
                    "passes": passes,
                    "seconds_per_pass": seconds / passes,
                    "plain_tile_s": (before + after) / 2,
                    "pass_vs_plain": seconds / passes / ((before + after) / 2),
                }
            else:
                from sahi.predict import get_sliced_prediction

                assert sahi_model is not None
                variants = (("sahi", "GREEDYNMM", "IOS"), ("sahi-nms", "NMS", "IOU"))
                for name, kind, metric in variants:
                    sahi_model.hits = 0
                    result, seconds = timed(
                        lambda kind=kind, metric=metric, scene=scene: get_sliced_prediction(
                            scene.image,
                            sahi_model,
                            slice_height=tile_size,
                            slice_width=tile_size,
                            overlap_height_ratio=args.tile_overlap / tile_size,
                            overlap_width_ratio=args.tile_overlap / tile_size,
                            perform_standard_pred=True,
                            postprocess_type=kind,
                            postprocess_match_metric=metric,
                            postprocess_match_threshold=0.5,
                            force_postprocess_type=True,
                            verbose=0,
                        )
                    )
                    found = sahi_found(result.object_prediction_list, height, width)
                    variant_row = {
                        "scene": index,
                        "method": name,
                        "seconds": seconds,
                        **score_scene(scene, found),
                    }
                    if name == "sahi-nms" or sahi_model.hits:
                        variant_row["note"] = "slice outputs from the cache: postprocess time only"
                    founds.setdefault(name, []).append(found)
                    print(variant_row, file=sys.stderr)
                    results.add(variant_row)
                sahi_model.save()
                continue
            row |= {"seconds": seconds, **score_scene(scene, found)}
            founds.setdefault(method, []).append(found)
            print(row, file=sys.stderr)
            results.add(row)
    summary: dict[str, Any] = {}
    for method, method_founds in founds.items():
        rows = [r for r in results.rows if r["method"] == method]
        matched = sum(r["matched"] for r in rows)
        summary[method] = {
            "recall": sum(r["matched"] for r in rows) / sum(r["objects"] for r in rows),
            "recall_class": statistics.fmean(r["recall_class"] for r in rows),
            "split": sum(r["split"] for r in rows),
            "split_share": sum(r["split"] for r in rows) / max(1, matched),
            "seconds_per_scene": statistics.fmean(r["seconds"] for r in rows),
            **coco_ap(scenes, method_founds, rank_by_mask_score=not method.startswith("sahi")),
        }
        if method == "auto":
            for key in ("pass_vs_plain", "seconds_per_pass", "plain_tile_s", "merge_s"):
                values = [r[key] for r in rows if key in r]
                if values:
                    summary[method][key] = statistics.fmean(values)
            summary[method]["AP_by_score"] = coco_ap(scenes, method_founds, rank_by_mask_score=False)["AP"]
    for method, numbers in summary.items():
        print(method, {k: round(v, 4) if isinstance(v, float) else v for k, v in numbers.items()})
    results.finish(summary=summary)


def cache_path(args: argparse.Namespace, index: int) -> Path:
    """Where --cache keeps the passes of a scene's tiled run."""
    tile = args.tile_size or "model"
    return args.cache / f"seed{args.seed}-{args.height}x{args.width}-{index}-{tile}-{args.tile_overlap}.pt"


def sweep(args: argparse.Namespace, predictor: Predictor) -> None:
    results = Results(
        "tiling-sweep", {"scenes": args.scenes, "seed": args.seed, "configs": args.configs}, args.out
    )
    selection = Selection(score_threshold=CANDIDATES)
    for index in range(args.scenes):
        scene = render_large_scene(args.seed, index, args.height, args.width, args.small, args.large)
        for config in args.configs:
            tile_size, overlap = (int(v) for v in config.split("/"))
            # Tiled whatever the scene's size, so that smaller scenes measure the tile settings cheaply.
            tiling = Tiling(tile_size=tile_size, tile_overlap=overlap, factor=1.0)
            plan = tiling.plan(scene.image.shape[:2], predictor.resize)
            (detections,), seconds = timed(
                lambda tiling=tiling, scene=scene: predictor.predict([scene.image], selection, tiling)
            )
            row = {
                "scene": index,
                "tile_size": tile_size,
                "tile_overlap": overlap,
                "passes": plan.passes if plan else 1,
                "seconds": seconds,
                **score_scene(scene, Found.of(detections)),
            }
            print(row, file=sys.stderr)
            results.add(row)
    results.finish()


def factor(args: argparse.Namespace, predictor: Predictor) -> None:
    """Scenes of growing size (small objects only, as many per pixel as the default scene): off vs tiled."""
    results = Results("tiling-factor", {"seed": args.seed, "shrinks": args.shrinks}, args.out)
    selection = Selection(score_threshold=CANDIDATES)
    _, longest = predictor.resize
    tiling = Tiling(tile_overlap=args.tile_overlap, factor=1.0)
    for shrink in args.shrinks:
        width = round(longest * shrink)
        height = round(width * 2 / 3)
        small = max(10, round(150 * height * width / (4000 * 6000)))
        scene = render_large_scene(args.seed, int(shrink * 100), height, width, small, 0)
        for method in ("off", "tiled"):
            chosen = tiling if method == "tiled" else None
            (detections,), seconds = timed(
                lambda chosen=chosen, scene=scene: predictor.predict([scene.image], selection, chosen)
            )
            plan = tiling.plan((height, width), predictor.resize)
            row = {
                "shrink": shrink,
                "size": [height, width],
                "method": method,
                "passes": (plan.passes if plan else 1) if method == "tiled" else 1,
                "seconds": seconds,
                **score_scene(scene, Found.of(detections)),
            }
            print(row, file=sys.stderr)
            results.add(row)
    results.finish()


def cost(args: argparse.Namespace, predictor: Predictor) -> None:
    """What tiling adds to the passes themselves: a tiled `predict` of a scene against plain `predict`s of
    the same pixels one by one (the whole image and each tile, as plain requests of their size), in
    alternating rounds so that the machine's drift hits both alike."""
    scene = render_large_scene(args.seed, 0, args.height, args.width, args.small, args.large)
    tiling = Tiling(tile_size=args.tile_size, tile_overlap=args.tile_overlap, factor=1.0)
    plan = tiling.plan(scene.image.shape[:2], predictor.resize)
    assert plan is not None
    selection = Selection(score_threshold=SERVICE_THRESHOLD)
    images = [scene.image] + [np.ascontiguousarray(plan.cut(scene.image, i)) for i in range(len(plan.tiles))]
    results = Results(
        "tiling-cost",
        {"size": [args.height, args.width], "passes": plan.passes, "rounds": args.rounds},
        args.out,
    )
    tiled_s, plain_s = [], []
    for round_index in range(args.rounds):
        _, seconds = timed(lambda: predictor.predict([scene.image], selection, tiling))
        tiled_s.append(seconds)
        _, seconds = timed(lambda: [predictor.predict([image], selection) for image in images])
        plain_s.append(seconds)
        row = {"round": round_index, "tiled_s": tiled_s[-1], "plain_s": plain_s[-1]}
        print(row, file=sys.stderr)
        results.add(row)
    ratio = sum(tiled_s) / sum(plain_s)
    summary = {
        "passes": plan.passes,
        "tiled_s_per_pass": sum(tiled_s) / len(tiled_s) / plan.passes,
        "plain_s_per_pass": sum(plain_s) / len(plain_s) / plan.passes,
        "tiled_vs_plain": ratio,
    }
    print(summary)
    results.finish(summary=summary)


def example(args: argparse.Namespace, predictor: Predictor) -> None:
    """One scene segmented with tiling (the service's threshold), drawn by the client's overlay at 1600 px
    over the long side, with a full-resolution inset of one tile's corner: the docs' example."""
    from PIL import Image

    from centermask_client.overlay import draw_overlay
    from centermask_client.schemas import ImageResult
    from model.wire.records import image_record

    scene = render_large_scene(args.seed, 0, args.height, args.width, args.small, args.large)
    tiling = Tiling(tile_size=args.tile_size, tile_overlap=args.tile_overlap)
    plan = tiling.plan(scene.image.shape[:2], predictor.resize)
    selection = Selection(score_threshold=SERVICE_THRESHOLD)
    if args.cache is not None and plan is not None and cache_path(args, 0).exists():
        # compare's passes of this scene (candidates from 0.05), kept by --cache: merged, then thresholded.
        replay = iter(torch.load(cache_path(args, 0), weights_only=False))
        merged = segment_tiled(
            scene.image, plan, lambda images, _: [next(replay) for _ in images], Selection()
        )
        detections = merged.filter(score_threshold=SERVICE_THRESHOLD)
    else:
        (detections,) = predictor.predict([scene.image], selection, tiling)
    record = image_record("scene.png", detections, predictor.class_names, predictor.category_ids, "rle", plan)
    instances = ImageResult.model_validate(record).instances
    overview = draw_overlay(scene.image, instances, max_side=1600)
    # The inset: 600 × 400 px at full resolution around a small object that a tile edge cuts, drawn from the
    # same answer.
    edges = sorted({tile.x1 for tile in plan.tiles[:-1]}) if plan else []
    crossing = [
        instance
        for instance in instances
        if instance.box[2] - instance.box[0] < 100
        and any(instance.box[0] < edge < instance.box[2] for edge in edges)
    ]
    x1, y1, x2, y2 = (crossing[0] if crossing else instances[0]).box
    cx, cy = (
        int(min(max((x1 + x2) / 2, 300), args.width - 300)),
        int(min(max((y1 + y2) / 2, 200), args.height - 200)),
    )
    crop = draw_overlay(scene.image, instances).crop((cx - 300, cy - 200, cx + 300, cy + 200))
    canvas = Image.new("RGB", (overview.width, overview.height + crop.height + 8), (255, 255, 255))
    canvas.paste(overview, (0, 0))
    canvas.paste(crop, (0, overview.height + 8))
    out = args.out or Path("tiling-example.jpg")
    canvas.save(out, quality=85)
    tiles = len(plan.tiles) if plan else 0
    print(f"{len(instances)} instances, {tiles} tiles → {out}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("compare", "sweep", "factor", "example", "cost"))
    parser.add_argument("--rounds", type=int, default=2, help="cost: alternating rounds")
    parser.add_argument("--weights", type=Path, help="default: the bundled model")
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument("--width", type=int, default=6000)
    parser.add_argument("--small", type=int, default=150)
    parser.add_argument("--large", type=int, default=6)
    parser.add_argument("--tile-size", type=int, help="default: the model's test short side")
    parser.add_argument("--tile-overlap", type=int, default=DEFAULT_OVERLAP)
    parser.add_argument(
        "--methods", nargs="+", default=["off", "auto", "sahi"], choices=("off", "auto", "sahi")
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["600/64", "600/128", "600/192", "800/128", "1000/128"],
        help="sweep: TILE_SIZE/OVERLAP pairs",
    )
    parser.add_argument("--shrinks", nargs="+", type=float, default=[1.5, 2, 3, 4, 6])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--cache",
        type=Path,
        help="compare: keep each scene's tiled passes here, and on a later run merge them again instead of "
        "running the model (to measure a change of the merge; no time is measured then)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = load_predictor(weights=args.weights, device="cpu")
    modes = {"compare": compare, "sweep": sweep, "factor": factor, "example": example, "cost": cost}
    modes[args.mode](args, predictor)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
