"""`python -m model.predict IMAGE... --output results.json`: segment image files, write their JSON records.

The records are the service's (`model.wire.records`, defined in `centermask_client.schemas`). Every
option of the model (`--weights`, `--precision`, `--backend` ...) is a flag, from `PredictorOptions`.

Also the Python API's front door: `from model.predict import Predictor, load_predictor`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from centermask_client.schemas import TILING_MODES, MaskFormat
from model.inference.detections import CLASS_AGNOSTIC_IOU, Detections, Selection
from model.inference.images import ImageError, load_image, read_size
from model.inference.load import load_predictor, predictor_from_arguments
from model.inference.options import PredictorOptions, add_arguments
from model.inference.predictor import Predictor
from model.inference.tiling import AUTO_FACTOR, DEFAULT_OVERLAP, MAX_TILED_PIXELS, TilePlan, Tiling
from model.wire.records import image_record

__all__ = [
    "Detections",
    "Predictor",
    "PredictorOptions",
    "Selection",
    "TilePlan",
    "Tiling",
    "load_predictor",
    "main",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "images",
        nargs="+",
        type=Path,
        help="image files (unreadable ones are skipped and reported; exit status 1)",
    )
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--score-threshold",
        type=float,
        help="keep detections scoring at least this (default: everything the config's 0.05 candidate "
        "threshold produces, i.e. the full official output)",
    )
    parser.add_argument(
        "--class-agnostic-nms",
        type=float,
        nargs="?",
        const=CLASS_AGNOSTIC_IOU,
        metavar="IOU",
        help="after the model, keep only the best-scoring of detections whose boxes overlap with IoU above "
        f"IOU (default {CLASS_AGNOSTIC_IOU}) whatever their classes: one label per object",
    )
    parser.add_argument("--mask-format", choices=get_args(MaskFormat), default="rle")
    parser.add_argument(
        "--tiling",
        choices=TILING_MODES,
        default="auto",
        help="auto: an image the model's resize would shrink by {AUTO_FACTOR:g}× or more is segmented in tiles "
        "at full resolution plus one pass of the whole image, masks stitched across tiles; off: never "
        "(default: auto)".replace("{AUTO_FACTOR:g}", f"{AUTO_FACTOR:g}"),
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        metavar="PX",
        help="side of a square tile (default: the model's test short side: tiles reach it unresized)",
    )
    parser.add_argument(
        "--tile-overlap",
        type=int,
        metavar="PX",
        help=f"pixels neighbouring tiles share, at most half a tile (default: {DEFAULT_OVERLAP}, or a quarter "
        "of a smaller tile)",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)

    try:
        tiling = Tiling(args.tiling, args.tile_size, args.tile_overlap)
    except ValueError as error:
        parser.error(str(error))
    predictor = predictor_from_arguments(args)
    records, unreadable = [], 0
    for path in args.images:
        try:
            plan = tiling.plan(read_size(path), predictor.resize)
            # A tiled image is read at full resolution, within the tiled limit; others as ever.
            image = (
                load_image(path, max_pixels=MAX_TILED_PIXELS)
                if plan is not None
                else load_image(path, draft_to=predictor.draft_to)
            )
        except (ImageError, OSError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            print(f"{path}: skipped: {reason}", file=sys.stderr)
            unreadable += 1
            continue
        # Suppressors outrank what they suppress, so the threshold can go first, into the model.
        (detections,) = predictor.predict([image], Selection(score_threshold=args.score_threshold), tiling)
        if args.class_agnostic_nms is not None:
            detections = detections.class_agnostic_nms(args.class_agnostic_nms)
        records.append(
            image_record(
                path.name,
                detections,
                predictor.class_names,
                predictor.category_ids,
                args.mask_format,
                plan,
            )
        )
    args.output.write_text(json.dumps(records))
    total = sum(len(r["instances"]) for r in records)
    print(f"{len(records)} images, {total} instances → {args.output}", file=sys.stderr)
    # Like cp or grep: the readable files are done, and the status says that some were not.
    return 1 if unreadable else 0


if __name__ == "__main__":
    raise SystemExit(main())
