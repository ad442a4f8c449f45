"""Inference API (what the service calls) and the `python -m model.predict` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from model.centermask import CenterMask, padded_shape, postprocess, resize_image
from model.checkpoint import file_sha256, load_model
from model.detections import Detections
from model.images import ImageError, load_rgb
from model.polygons import crop_to_polygons
from model.rle import encode_crop

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "centermask_lite_V_19_slim_shapes.pth"
MaskFormat = Literal["rle", "polygon", "none"]


@dataclass(frozen=True)
class PreparedImage:
    """An image resized for the network: (3, h, w) uint8 BGR, plus the sizes postprocessing needs."""

    pixels: torch.Tensor
    original_size: tuple[int, int]
    padded_shape: tuple[int, int]

    @property
    def resized_size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])


class Predictor:
    """A loaded CenterMask model with its preprocessing and postprocessing. Build once, reuse."""

    def __init__(
        self,
        model: CenterMask,
        class_names: list[str],
        weights_path: Path,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.config = model.config
        self.class_names = class_names
        self.weights_path = weights_path
        self.weights_sha256 = file_sha256(weights_path)

    @property
    def config_name(self) -> str:
        return self.config.name

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def prepare(self, image: np.ndarray) -> PreparedImage:
        """(H, W, 3) uint8 RGB → PreparedImage. CPU only and thread-safe, so it can run beside inference."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        if min(image.shape[:2]) < 1:
            raise ValueError(f"empty image of shape {image.shape}")
        resized = resize_image(image, self.config.min_size_test, self.config.max_size_test)
        # The official models take BGR; flipping after the resize is exact because channels resize independently.
        bgr = torch.from_numpy(np.ascontiguousarray(resized[:, :, ::-1].transpose(2, 0, 1)))
        return PreparedImage(
            bgr,
            (int(image.shape[0]), int(image.shape[1])),
            padded_shape(resized.shape[0], resized.shape[1], self.config.size_divisibility),
        )

    @torch.inference_mode()
    def infer(self, images: Sequence[PreparedImage]) -> list[Detections]:
        """Run the network. Images with the same padded shape share a forward pass; mixed shapes are split,
        so every result equals what the image gives alone."""
        results: list[Detections | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(image.padded_shape, []).append(index)
        for indices in groups.values():
            group = [images[i] for i in indices]
            batch = self.model.normalize_and_pad([image.pixels.to(self.device).float() for image in group])
            sizes = [image.resized_size for image in group]
            for index, image, raw in zip(indices, group, self.model(batch, sizes), strict=True):
                results[index] = postprocess(raw, image.resized_size, image.original_size)
        return results  # type: ignore[return-value]

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        return self.infer([self.prepare(image) for image in images])


def resolve_device(device: str) -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA without it is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available")
    return torch.device(device)


def load_predictor(
    weights: str | Path | None = None, config: str | None = None, device: str | torch.device = "cpu"
) -> Predictor:
    """Load weights (default: the bundled model) into a Predictor on `device` ("cpu", "cuda", "auto")."""
    target = resolve_device(str(device))  # before the (slow) load, so a wrong device fails at once
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if weights is None and not path.is_file():
        raise FileNotFoundError(f"the bundled default weights are missing ({path}); pass a weights file")
    model, class_names, _ = load_model(path, config)
    return Predictor(model, class_names, path, target)


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
    parser.add_argument(
        "images",
        nargs="+",
        type=Path,
        help="image files (unreadable ones are skipped and reported; exit status 1)",
    )
    parser.add_argument("--weights", type=Path, help="checkpoint (.pth/.pkl); default: the bundled model")
    parser.add_argument("--config", help="config name, needed for official checkpoints")
    parser.add_argument(
        "--score-threshold",
        type=float,
        help="keep detections scoring at least this (default: everything the config's 0.05 candidate "
        "threshold produces, i.e. the full official output)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--mask-format", choices=("rle", "polygon", "none"), default="rle")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    predictor = load_predictor(args.weights, args.config, args.device)
    records, unreadable = [], 0
    for path in args.images:
        try:
            image = load_rgb(path)
        except (ImageError, OSError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            print(f"{path}: skipped: {reason}", file=sys.stderr)
            unreadable += 1
            continue
        (detections,) = predictor.predict([image])
        detections = detections.filter(score_threshold=args.score_threshold)
        records.append(image_record(path.name, detections, predictor.class_names, args.mask_format))
    args.output.write_text(json.dumps(records))
    total = sum(len(r["instances"]) for r in records)
    print(f"{len(records)} images, {total} instances → {args.output}", file=sys.stderr)
    # Like cp or grep: the readable files are done, and the status says that some were not.
    return 1 if unreadable else 0


if __name__ == "__main__":
    raise SystemExit(main())
