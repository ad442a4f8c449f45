"""Our Predictor as a SAHI detection model, so that SAHI's sliced prediction runs the very model we tile with.

SAHI (`pip install sahi`, the `bench` extra) slices an image, calls `perform_inference` on each slice (RGB
numpy), and turns each slice's raw output into `ObjectPrediction`s with masks as COCO polygons
(`_create_object_prediction_list_from_original_predictions`), which it shifts into the full image and merges.
This adapter does exactly that with `Predictor.predict`: boxes, scores (the detection score, which SAHI's
confidence threshold applies to) and the pasted masks of each slice, as SAHI's own detectron2 adapter does.

`cache` keeps each slice's raw output by its pixels, so that a second postprocess setting on the same
scenes measures SAHI's merging without running the model again (its time is then not a model time);
`cache_file` keeps them on disk across runs (`save`), as `python -m bench.tiling compare --cache` does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sahi.models.base import DetectionModel
from sahi.prediction import ObjectPrediction
from sahi.utils.compatibility import fix_full_shape_list, fix_shift_amount_list
from sahi.utils.cv import get_coco_segmentation_from_bool_mask

from model.inference.detections import Detections, Selection
from model.inference.predictor import Predictor


class PredictorModel(DetectionModel):  # type: ignore[misc]
    def __init__(
        self,
        predictor: Predictor,
        confidence_threshold: float,
        *,
        cache: bool = False,
        cache_file: Path | None = None,
    ) -> None:
        self._cache: dict[bytes, Detections] | None = {} if cache or cache_file else None
        self._cache_file = cache_file
        if cache_file is not None and cache_file.exists():
            self._cache = torch.load(cache_file, weights_only=False)
        self.hits = 0
        super().__init__(
            model=predictor,
            device="cpu" if predictor.device.type == "cpu" else str(predictor.device),
            confidence_threshold=confidence_threshold,
            category_mapping={str(index): name for index, name in enumerate(predictor.class_names)},
            load_at_init=True,
        )

    def save(self) -> None:
        """Write the slice outputs to `cache_file`."""
        if self._cache_file is not None and self._cache is not None:
            self._cache_file.parent.mkdir(parents=True, exist_ok=True)
            torch.save(self._cache, self._cache_file)

    def set_model(self, model: Any, **kwargs: Any) -> None:
        self.model = model

    def perform_inference(self, image: np.ndarray) -> None:
        key = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest() + bytes(
            str(image.shape), "ascii"
        )
        if self._cache is not None and key in self._cache:
            self.hits += 1
            self._original_predictions = self._cache[key]
            return
        (detections,) = self.model.predict(
            [np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)],
            Selection(score_threshold=self.confidence_threshold),
        )
        if self._cache is not None:
            self._cache[key] = detections
        self._original_predictions = detections

    def _create_object_prediction_list_from_original_predictions(
        self,
        shift_amount_list: list[list[int | float]] | None = None,
        full_shape_list: list[list[int | float]] | None = None,
    ) -> None:
        detections: Detections = self._original_predictions
        # SAHI hands these over nested ([[x, y]]) for slices and flat ([x, y]) for the whole image.
        shifts = fix_shift_amount_list(shift_amount_list) if shift_amount_list else [[0, 0]]
        shapes = fix_full_shape_list(full_shape_list) if full_shape_list else None
        shift_amount = list(shifts[0])
        full_shape = shapes[0] if shapes else None
        height, width = detections.image_size
        predictions = []
        for score, class_id, crop in zip(
            detections.scores.tolist(),
            detections.class_ids.tolist(),
            detections.mask_crops(),
            strict=True,
        ):
            if score < self.confidence_threshold or not crop.crop.any():
                continue
            # A slice-sized mask, as SAHI's own adapters hand it over (its polygons are in slice pixels).
            mask = np.zeros((height, width), dtype=bool)
            mask[crop.y0 : crop.y0 + crop.crop.shape[0], crop.x0 : crop.x0 + crop.crop.shape[1]] = crop.crop
            segmentation = get_coco_segmentation_from_bool_mask(mask)
            if not segmentation:
                continue
            predictions.append(
                ObjectPrediction(
                    bbox=None,
                    segmentation=segmentation,
                    category_id=int(class_id),
                    category_name=self.category_mapping[str(class_id)],
                    score=float(score),
                    shift_amount=list(shift_amount),
                    full_shape=list(full_shape) if full_shape is not None else [height, width],
                )
            )
        self._object_prediction_list_per_image = [predictions]
