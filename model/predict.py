"""Inference API (what the service calls) and the `python -m model.predict` command line.

The JSON it writes is the service's (`model.wire`, documented in `centermask_client.schemas`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.centermask import CenterMask, padded_shape, postprocess, resize_image
from model.checkpoint import file_sha256, load_model, resolve_category_ids
from model.coco_classes import default_category_ids
from model.detections import Detections
from model.images import load_rgb
from model.wire import image_record

DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "centermask_lite_V_19_slim_shapes.pth"


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
        category_ids: list[int] | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.config = model.config
        self.class_names = class_names
        # The dataset's id of each class, which the JSON reports as category_id beside class_id.
        self.category_ids = (
            category_ids if category_ids is not None else default_category_ids(len(class_names))
        )
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
    model, class_names, checkpoint = load_model(path, config)
    category_ids = resolve_category_ids(checkpoint, len(class_names), str(path))
    return Predictor(model, class_names, path, target, category_ids)


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
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--mask-format", choices=("rle", "polygon", "none"), default="rle")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)

    predictor = load_predictor(args.weights, args.config, args.device)
    records = []
    for path in args.images:
        (detections,) = predictor.predict([load_rgb(path)])
        detections = detections.filter(score_threshold=args.score_threshold)
        records.append(
            image_record(
                path.name, detections, predictor.class_names, predictor.category_ids, args.mask_format
            )
        )
    args.output.write_text(json.dumps(records))
    total = sum(len(r["instances"]) for r in records)
    print(f"{len(records)} images, {total} instances → {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
