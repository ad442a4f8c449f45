"""What happens to an image before the network, as in the official pipeline (CENTERMASK_SPEC.md §1).

On the CPU, per image: the shortest-edge resize with Pillow's antialiased bilinear, RGB → BGR, CHW
(`prepare_image`). Per batch: the images on one uint8 canvas (`DenseInput`, copied to the device at once), then
on the device normalisation with the padding left at zero (`normalize_canvas`, part of the dense program, so a
CUDA graph's static input is uint8). `normalize_and_pad` does the same from float images. Training, evaluation, prediction and export all go through these functions; what
happens after the network is `model.inference.postprocess`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image


def resized_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge: the short side to `short`, the long side capped at `max_size`.

    Unlike detectron2, a side is never rounded down to 0 (a 1×2000 image): it keeps at least 1 pixel.
    """
    scale = short / min(height, width)
    new_h: float
    new_w: float
    if height < width:
        new_h, new_w = short, scale * width
    else:
        new_h, new_w = scale * height, short
    if max(new_h, new_w) > max_size:
        rescale = max_size / max(new_h, new_w)
        new_h, new_w = new_h * rescale, new_w * rescale
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def padded_shape(height: int, width: int, divisibility: int = 32) -> tuple[int, int]:
    return math.ceil(height / divisibility) * divisibility, math.ceil(width / divisibility) * divisibility


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 → (h, w, C) uint8 of `size` with Pillow's antialiased bilinear, as the official model."""
    new_h, new_w = size
    if (new_h, new_w) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))


@dataclass(frozen=True)
class PreparedImage:
    """An image resized for the network: (3, h, w) uint8 BGR, plus the sizes postprocessing needs."""

    pixels: torch.Tensor
    original_size: tuple[int, int]
    padded_shape: tuple[int, int]

    @property
    def resized_size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])


def prepare_image(
    image: np.ndarray,
    min_size: int,
    max_size: int,
    size_divisibility: int = 32,
    *,
    original_size: tuple[int, int] | None = None,
) -> PreparedImage:
    """(h, w, 3) uint8 RGB → PreparedImage, resized to the test size.

    `original_size` is the (H, W) of the image these pixels were decoded from when that was reduced (a JPEG
    draft, `model.inference.images.load_image`); default: the pixels' own. The resize target follows from it, so the
    padded shape, and boxes scaled back to `original_size`, are those of the full image.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"empty image of shape {image.shape}")
    height, width = original_size or (int(image.shape[0]), int(image.shape[1]))
    resized = resize_image(image, resized_shape(height, width, min_size, max_size))
    # The official models take BGR; flipping after the resize is exact because channels resize independently.
    bgr = torch.from_numpy(np.ascontiguousarray(resized[:, :, ::-1].transpose(2, 0, 1)))
    return PreparedImage(
        bgr, (height, width), padded_shape(resized.shape[0], resized.shape[1], size_divisibility)
    )


def normalize_and_pad(
    images: list[torch.Tensor],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    size_divisibility: int,
    shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Per image (3, h, w) float BGR 0-255 → one zero-padded (N, 3, Hp, Wp) batch, on the images' device.

    pixel_mean, pixel_std: (3, 1, 1) BGR. (Hp, Wp) is `shape`, or the largest image rounded up to multiples of
    `size_divisibility` (the official batching). Normalisation comes before padding, so the padding equals
    the mean colour.
    """
    normalized = [(image - pixel_mean) / pixel_std for image in images]
    height = max(image.shape[1] for image in normalized)
    width = max(image.shape[2] for image in normalized)
    padded_h, padded_w = shape or padded_shape(height, width, size_divisibility)
    if padded_h < height or padded_w < width or padded_h % size_divisibility or padded_w % size_divisibility:
        raise ValueError(f"cannot pad images of up to {height}x{width} to {padded_h}x{padded_w}")
    batch = normalized[0].new_zeros((len(normalized), 3, padded_h, padded_w))
    for slot, image in zip(batch, normalized, strict=True):
        slot[:, : image.shape[1], : image.shape[2]].copy_(image)
    return batch


class DenseInput(NamedTuple):
    """A batch as the dense program takes it. pixels: (N, 3, Hp, Wp) uint8 BGR, each image at the top left of
    a zero canvas; sizes: (N, 2) int64, each image's (h, w). Both on the inference device."""

    pixels: torch.Tensor
    sizes: torch.Tensor

    @classmethod
    def of(cls, images: Sequence[torch.Tensor], shape: tuple[int, int], device: torch.device) -> DenseInput:
        """(3, h, w) uint8 images on the CPU → one canvas of `shape`, moved to `device` in one copy (from
        pinned memory on CUDA, so the copy does not hold up the host)."""
        pinned = device.type == "cuda"
        pixels = torch.zeros((len(images), 3, *shape), dtype=torch.uint8, pin_memory=pinned)
        for slot, image in zip(pixels, images, strict=True):
            if image.shape[1] > shape[0] or image.shape[2] > shape[1]:
                raise ValueError(f"cannot pad an image of {tuple(image.shape[1:])} to {shape}")
            slot[:, : image.shape[1], : image.shape[2]].copy_(image)
        sizes = torch.tensor(
            [tuple(image.shape[1:]) for image in images], dtype=torch.int64, pin_memory=pinned
        )
        return cls(pixels.to(device, non_blocking=True), sizes.to(device, non_blocking=True))


def normalize_canvas(
    pixels: torch.Tensor, sizes: torch.Tensor, pixel_mean: torch.Tensor, pixel_std: torch.Tensor
) -> torch.Tensor:
    """A `DenseInput` → the network's (N, 3, Hp, Wp) float32 input: each image normalised, the padding zero,
    exactly as `normalize_and_pad` makes it. Shapes follow the input's alone (no host synchronisation)."""
    normalized = (pixels.float() - pixel_mean) / pixel_std
    rows = torch.arange(pixels.shape[2], device=pixels.device)[None, :, None] < sizes[:, 0, None, None]
    cols = torch.arange(pixels.shape[3], device=pixels.device)[None, None, :] < sizes[:, 1, None, None]
    return torch.where((rows & cols)[:, None], normalized, 0.0)
