"""COCO-format instance segmentation dataset with training augmentation.

The resize follows detectron2's ``ResizeShortestEdge`` (multi-scale "choice" sampling, same rounding); with
the default ``BASIC`` augmentation (horizontal flips) a model trained here sees the same inputs as under
centermask2. ``training.data.augment`` adds flips, quarter turns and photometric steps for stronger recipes.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from model.inference.images import load_rgb
from model.inference.preprocess import resized_shape
from training.data.augment import BASIC, Augmentation, augment_geometry, augment_pixels

DEFAULT_MIN_SIZES = (640, 672, 704, 736, 768, 800)
DEFAULT_MAX_SIZE = 1333
# pycocotools reads a list whose first polygon has 4 numbers as a box, and fewer than 3 points is no area.
MIN_POLYGON_COORDS = 6

Segmentation = list[list[float]] | dict[str, Any]


def _valid_polygons(segmentation: list[list[float]]) -> list[list[float]]:
    return [p for p in segmentation if len(p) >= MIN_POLYGON_COORDS and len(p) % 2 == 0]


def decode_segmentation(segmentation: Segmentation, height: int, width: int) -> np.ndarray:
    """Rasterise a COCO polygon list or RLE (compressed or uncompressed) into a bool mask (H, W)."""
    if isinstance(segmentation, list):
        rle = mask_util.merge(mask_util.frPyObjects(_valid_polygons(segmentation), height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_util.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_util.decode(rle).astype(bool)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes (n, 4) float32 x1, y1, x2, y2 (x2, y2 exclusive, as detectron2) of bool masks (n, H, W).

    An empty mask gets the box (0, 0, 0, 0).
    """
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if len(rows):
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def _has_segmentation(annotation: dict[str, Any]) -> bool:
    return bool(annotation.get("segmentation"))


def _usable(annotation: dict[str, Any]) -> bool:
    """Whether an annotation is a non-crowd instance with a non-empty box and, if any, a usable outline."""
    if annotation.get("iscrowd", 0):
        return False
    _, _, box_width, box_height = annotation["bbox"]
    if box_width <= 0 or box_height <= 0:
        return False
    segmentation = annotation.get("segmentation")
    # A polygon list whose polygons are all too short would otherwise turn into a box-only instance.
    return not (isinstance(segmentation, list) and segmentation and not _valid_polygons(segmentation))


def _resize_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of bool masks (n, H, W) to (n, height, width)."""
    resized = np.zeros((len(masks), height, width), dtype=bool)
    for i, mask in enumerate(masks):
        image = Image.fromarray(mask.view(np.uint8)).resize((width, height), Image.Resampling.NEAREST)
        resized[i] = np.asarray(image) > 0
    return resized


class CocoInstances(Dataset[dict[str, Any]]):
    """Instances of a COCO JSON file over an image directory, optionally augmented for training.

    Category ids map to contiguous class ids 0..K-1 in ascending category id order (as detectron2 does).
    In training mode the short side is drawn uniformly from ``min_sizes``, then the resized sample goes
    through ``augmentation`` (geometric steps on image, masks and boxes together, then photometric ones on
    the image); images without usable annotations are skipped unless ``keep_empty`` (negatives: images that
    should yield no detection, which teach the detector what is background). In eval mode the short side is
    ``max(min_sizes)`` and nothing is augmented; ``min_sizes=(0,)`` keeps the original size. Randomness comes
    from torch's global generator, which DataLoader seeds per worker.
    """

    def __init__(
        self,
        json_path: str | Path,
        image_dir: str | Path,
        min_sizes: Sequence[int] = DEFAULT_MIN_SIZES,
        max_size: int = DEFAULT_MAX_SIZE,
        augmentation: Augmentation = BASIC,
        training: bool = True,
        keep_empty: bool = False,
    ) -> None:
        if not min_sizes:
            raise ValueError("min_sizes must name at least one short-side length")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            self._coco = COCO(str(json_path))
        self._image_dir = Path(image_dir)
        self.min_sizes = tuple(min_sizes)
        self.max_size = max_size
        self.augmentation = augmentation
        self.training = training
        self.category_ids: list[int] = sorted(self._coco.cats)
        self.class_names: list[str] = [self._coco.cats[c]["name"] for c in self.category_ids]
        self._contiguous = {category_id: i for i, category_id in enumerate(self.category_ids)}
        self._annotations = {
            image_id: [a for a in self._coco.imgToAnns.get(image_id, []) if _usable(a)]
            for image_id in sorted(self._coco.imgs)
        }
        self.image_ids: list[int] = [
            image_id
            for image_id, annotations in self._annotations.items()
            if annotations or keep_empty or not training
        ]

    def __len__(self) -> int:
        return len(self.image_ids)

    def _short_edge(self) -> int:
        if not self.training:
            return max(self.min_sizes)
        return self.min_sizes[int(torch.randint(len(self.min_sizes), ()))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One sample.

        Returns ``image`` uint8 (3, h, w) RGB, ``boxes`` float32 (n, 4) x1 y1 x2 y2, ``classes`` int64 (n,),
        ``masks`` bool (n, h, w) (None when the annotations carry no segmentation), ``image_id`` and
        ``orig_size`` (H, W), all but the last two in the augmented image's coordinates.
        """
        image_id = self.image_ids[index]
        info = self._coco.imgs[image_id]
        image = load_rgb(self._image_dir / info["file_name"])
        height, width = image.shape[:2]
        if (height, width) != (info["height"], info["width"]):
            raise ValueError(
                f"{info['file_name']}: image is {height}x{width} but the annotations say "
                f"{info['height']}x{info['width']}"
            )
        annotations = self._annotations[image_id]
        classes = np.array([self._contiguous[a["category_id"]] for a in annotations], dtype=np.int64)
        short_edge = self._short_edge()
        new_height, new_width = (
            resized_shape(height, width, short_edge, self.max_size) if short_edge else (height, width)
        )
        if (new_height, new_width) != (height, width):
            resized = Image.fromarray(image).resize((new_width, new_height), Image.Resampling.BILINEAR)
            image = np.asarray(resized)

        masks: np.ndarray | None = None
        if all(_has_segmentation(a) for a in annotations):
            masks = np.zeros((len(annotations), height, width), dtype=bool)
            for i, annotation in enumerate(annotations):
                masks[i] = decode_segmentation(annotation["segmentation"], height, width)
            if (new_height, new_width) != (height, width):
                masks = _resize_masks(masks, new_height, new_width)
            # The visible mask, not the annotated box, defines the instance once it has been resampled.
            boxes = masks_to_boxes(masks)
        else:
            xywh = np.array([a["bbox"] for a in annotations], dtype=np.float32).reshape(-1, 4)
            scale = np.array([new_width / width, new_height / height] * 2, dtype=np.float32)
            boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1) * scale

        # Instances whose mask vanished in decoding or resizing cannot be learned from.
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, classes = boxes[keep], classes[keep]
        if masks is not None:
            masks = masks[keep]

        if self.training:
            image, masks, boxes = augment_geometry(image, masks, boxes, self.augmentation)
            image = augment_pixels(image, self.augmentation)

        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32)),
            "classes": torch.from_numpy(classes),
            "masks": None if masks is None else torch.from_numpy(np.ascontiguousarray(masks)),
            "image_id": image_id,
            "orig_size": (height, width),
        }


def collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a batch as a list of samples; the model pads images itself."""
    return batch
