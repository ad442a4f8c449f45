"""Inference API (what the service calls) and the `python -m model.predict` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from model.centermask import CenterMask
from model.checkpoint import file_sha256, load_model
from model.detections import CLASS_AGNOSTIC_IOU, Detections, Selection
from model.images import load_rgb
from model.polygons import crop_to_polygons
from model.precision import Precision, check_supported
from model.processing import PreparedImage, prepare_image, scale_boxes
from model.rle import encode_crop

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "centermask_lite_V_19_slim_shapes.pth"
MaskFormat = Literal["rle", "polygon", "none"]


class Predictor:
    """A loaded CenterMask model with its preprocessing and postprocessing. Build once, reuse.

    The network is rewritten for inference when the predictor is built (batch norms folded, channels-last
    weights, the precision's dtype): pass it a freshly loaded model, which it then owns.
    """

    def __init__(
        self,
        model: CenterMask,
        class_names: list[str],
        weights_path: Path,
        device: str | torch.device = "cpu",
        precision: Precision | str = Precision.FP32,
    ) -> None:
        self.device = torch.device(device)
        self.precision = Precision(precision)
        check_supported(self.precision, self.device)
        self.model = model.eval().to(self.device)
        self.model.optimize_for_inference(self.precision.dtype)
        self.config = model.config
        self.class_names = class_names
        self.weights_path = weights_path
        self.weights_sha256 = file_sha256(weights_path)

    @property
    def config_name(self) -> str:
        return self.config.name

    @property
    def dtype(self) -> torch.dtype:
        return self.precision.dtype

    def prepare(self, image: np.ndarray) -> PreparedImage:
        """(H, W, 3) uint8 RGB → PreparedImage. CPU only and thread-safe, so it can run beside inference."""
        return prepare_image(
            image, self.config.min_size_test, self.config.max_size_test, self.config.size_divisibility
        )

    @torch.inference_mode()
    def infer(
        self, images: Sequence[PreparedImage], selections: Sequence[Selection] | None = None
    ) -> list[Detections]:
        """One forward pass over images of the same padded shape (their batch-mates never change a result).

        `selections` (one per image; default: everything) say which detections each caller wants: the others
        are dropped before the mask head.
        """
        shapes = {image.padded_shape for image in images}
        if len(shapes) > 1:
            raise ValueError(f"one forward pass takes images of one padded shape, got {sorted(shapes)}")
        selections = selections if selections is not None else [Selection()] * len(images)
        batch = self.model.normalize_and_pad([image.pixels.to(self.device).float() for image in images])
        pyramid, proposals = self.model.detect(batch)
        kept_proposals, kept_boxes = [], []
        for image, image_proposals, selection in zip(images, proposals, selections, strict=True):
            boxes, nonempty = scale_boxes(image_proposals.boxes, image.resized_size, image.original_size)
            # The official postprocess drops empty boxes; the selection then applies to what is left.
            nonempty_index = torch.nonzero(nonempty).flatten()
            index = nonempty_index[
                selection.indices(
                    image_proposals.scores[nonempty_index], image_proposals.classes[nonempty_index]
                )
            ]
            kept_proposals.append(image_proposals.take(index))
            kept_boxes.append(boxes[index])
        masks = self.model.segment(pyramid, kept_proposals, [image.resized_size for image in images])
        return [
            Detections(
                image_size=image.original_size,
                boxes=boxes.cpu().numpy(),
                scores=image_proposals.scores.cpu().numpy(),
                class_ids=image_proposals.classes.cpu().numpy(),
                mask_scores=mask_scores.cpu().numpy(),
                mask_probs=mask_probs.cpu().numpy(),
            )
            for image, image_proposals, boxes, (mask_probs, mask_scores) in zip(
                images, kept_proposals, kept_boxes, masks, strict=True
            )
        ]

    def predict(self, images: Sequence[np.ndarray], selection: Selection | None = None) -> list[Detections]:
        """Detections of each (H, W, 3) uint8 RGB image, each computed as if alone; `selection` as in `infer`."""
        selection = selection or Selection()
        return [self.infer([self.prepare(image)], [selection])[0] for image in images]


def resolve_device(device: str) -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA without it is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available")
    return torch.device(device)


def load_predictor(
    weights: str | Path | None = None,
    config: str | None = None,
    device: str | torch.device = "cpu",
    precision: Precision | str = Precision.FP32,
) -> Predictor:
    """Load weights (default: the bundled model) into a Predictor on `device` ("cpu", "cuda", "auto").

    `precision` is "fp32" (exact to the official outputs), "bf16" or "fp16" (CUDA); one the device cannot run
    fails here, before the (slow) load.
    """
    target = resolve_device(str(device))
    check_supported(Precision(precision), target)
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if weights is None and not path.is_file():
        raise FileNotFoundError(f"the bundled default weights are missing ({path}); pass a weights file")
    model, class_names, _ = load_model(path, config)
    return Predictor(model, class_names, path, target, precision)


def instances_to_json(
    detections: Detections, class_names: Sequence[str], mask_format: MaskFormat = "rle"
) -> list[dict[str, Any]]:
    """The `predict` JSON records of one image's detections (the contract the service shares)."""
    height, width = detections.image_size
    crops = detections.mask_crops() if mask_format != "none" else [None] * len(detections)
    records = []
    for i, crop in enumerate(crops):
        class_id = int(detections.class_ids[i])
        record: dict[str, Any] = {
            "box": [float(v) for v in detections.boxes[i]],
            "score": float(detections.scores[i]),
            "class_id": class_id,
            "class_name": class_names[class_id],
            "mask_score": float(detections.mask_scores[i]),
        }
        if mask_format == "rle":
            record["mask"] = encode_crop(crop.crop, crop.x0, crop.y0, height, width)
        elif mask_format == "polygon":
            record["mask"] = {
                "size": [height, width],
                "polygons": crop_to_polygons(crop.crop, crop.x0, crop.y0),
            }
        records.append(record)
    return records


def image_record(
    file: str | None, detections: Detections, class_names: Sequence[str], mask_format: MaskFormat = "rle"
) -> dict[str, Any]:
    height, width = detections.image_size
    return {
        "file": file,
        "height": height,
        "width": width,
        "instances": instances_to_json(detections, class_names, mask_format),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.predict", description=__doc__)
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--weights", type=Path, help="checkpoint (.pth/.pkl); default: the bundled model")
    parser.add_argument("--config", help="config name, needed for official checkpoints")
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
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--mask-format", choices=("rle", "polygon", "none"), default="rle")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    predictor = load_predictor(args.weights, args.config, args.device)
    records = []
    for path in args.images:
        (detections,) = predictor.predict([load_rgb(path)])
        if args.class_agnostic_nms is not None:
            detections = detections.class_agnostic_nms(args.class_agnostic_nms)
        detections = detections.filter(score_threshold=args.score_threshold)
        records.append(image_record(path.name, detections, predictor.class_names, args.mask_format))
    args.output.write_text(json.dumps(records))
    total = sum(len(r["instances"]) for r in records)
    print(f"{len(records)} images, {total} instances → {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
