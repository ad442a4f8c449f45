"""Pasting 28×28 mask probabilities into their boxes, all instances of an image at once, on any device.

Each mask is computed only inside its window: the box widened by one pixel on every side (outside the box,
a pixel centre's bilinear weight on the mask is < 0.5, so the pasted mask is zero there: CENTERMASK_SPEC.md
§6). Windows of different sizes share one padded stack, `grid_sample` runs once per chunk of instances, and
everything beyond an instance's own window is zero. Per output pixel the computation is that of detectron2's
`paste_masks_in_image` (pixel centres + 0.5, `grid_sample(align_corners=False)`, zero padding, ≥ 0.5), so the
masks are bit-identical to the official ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

# Pixels of one grid_sample call (instances × padded window): bounds the temporaries (~12 bytes per pixel).
CHUNK_PIXELS = 4 * 1024 * 1024


class MaskCrop(NamedTuple):
    """A pasted instance mask: `crop` (h, w) bool placed at column x0, row y0; zero everywhere else."""

    x0: int
    y0: int
    crop: np.ndarray


@dataclass(frozen=True)
class PastedMasks:
    """The binary masks of N instances in an image of `image_size`, each known only inside its window.

    windows: (N, 4) int64 on the CPU, x0, y0, w, h of each window in image pixels.
    chunks: (index (n,) int64, stack (n, h_max, w_max) bool) pairs on the pasting device, covering every
    instance once; row j of a stack is instance index[j], zero outside its own w × h.
    """

    image_size: tuple[int, int]
    windows: np.ndarray
    chunks: list[tuple[torch.Tensor, torch.Tensor]]

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    @classmethod
    def from_crops(cls, image_size: tuple[int, int], crops: list[MaskCrop]) -> PastedMasks:
        """Masks already pasted, as crops in the image (tiled inference stitches them so): each crop its own
        chunk, on the CPU. No full-size mask is made."""
        windows = np.array(
            [(crop.x0, crop.y0, crop.crop.shape[1], crop.crop.shape[0]) for crop in crops], dtype=np.int64
        ).reshape(-1, 4)
        chunks = [
            (torch.tensor([index]), torch.from_numpy(np.ascontiguousarray(crop.crop, dtype=bool))[None])
            for index, crop in enumerate(crops)
        ]
        return cls(image_size, windows, chunks)

    def select(self, index: np.ndarray) -> PastedMasks:
        """The masks at `index` (integer indices or a boolean mask), in that order, sharing these stacks."""
        positions = np.arange(len(self))[index]
        new_position = np.full(len(self), -1, dtype=np.int64)
        new_position[positions] = np.arange(len(positions))
        chunks = []
        for chunk_index, stack in self.chunks:
            rows = new_position[chunk_index.numpy()]
            kept = np.flatnonzero(rows >= 0)
            if kept.size:
                keep = torch.from_numpy(kept).to(stack.device)
                chunks.append((torch.from_numpy(rows[kept]), stack[keep]))
        return PastedMasks(self.image_size, self.windows[positions], chunks)

    def crops(self) -> list[MaskCrop]:
        """Each instance's window as a numpy crop, in instance order."""
        crops: list[MaskCrop | None] = [None] * len(self)
        for index, stack in self.chunks:
            host = stack.cpu().numpy()
            for row, instance in enumerate(index.tolist()):
                x0, y0, w, h = (int(v) for v in self.windows[instance])
                crops[instance] = MaskCrop(x0, y0, host[row, :h, :w])
        return crops  # type: ignore[return-value]


def mask_windows(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 4) float32 boxes clipped to the image → (N, 4) int64 windows x0, y0, w, h (w, h ≥ 0)."""
    x0 = (torch.floor(boxes[:, 0]) - 1).clamp(min=0)
    y0 = (torch.floor(boxes[:, 1]) - 1).clamp(min=0)
    x1 = (torch.ceil(boxes[:, 2]) + 1).clamp(max=width)
    y1 = (torch.ceil(boxes[:, 3]) + 1).clamp(max=height)
    return torch.stack((x0, y0, (x1 - x0).clamp(min=0), (y1 - y0).clamp(min=0)), dim=1).long()


def paste_masks(
    probabilities: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    chunk_pixels: int = CHUNK_PIXELS,
) -> PastedMasks:
    """Paste (N, 28, 28) float32 probabilities into their (N, 4) float32 boxes (clipped, original image
    pixels), on the probabilities' device."""
    height, width = image_size
    device = probabilities.device
    boxes = boxes.to(device=device, dtype=torch.float32)
    windows = mask_windows(boxes, height, width).cpu()
    areas = (windows[:, 2] * windows[:, 3]).tolist()
    chunks = []
    for index in chunk_indices(areas, windows, chunk_pixels):
        chunks.append((index, _paste_chunk(probabilities, boxes, windows, index.to(device))))
    return PastedMasks(image_size, windows.numpy(), [(index, stack) for index, stack in chunks])


def chunk_indices(areas: list[int], windows: torch.Tensor, chunk_pixels: int) -> list[torch.Tensor]:
    """Instance indices grouped so that each group's padded stack stays within `chunk_pixels`.

    Instances are taken by increasing window area, so windows of similar size share a stack.
    """
    order = sorted(range(len(areas)), key=areas.__getitem__)
    groups: list[list[int]] = []
    height = width = 0
    for instance in order:
        w, h = int(windows[instance, 2]), int(windows[instance, 3])
        new_height, new_width = max(height, h), max(width, w)
        if groups and (len(groups[-1]) + 1) * new_height * new_width <= chunk_pixels:
            groups[-1].append(instance)
            height, width = new_height, new_width
        else:
            groups.append([instance])
            height, width = h, w
    return [torch.tensor(group, dtype=torch.int64) for group in groups]


def _paste_chunk(
    probabilities: torch.Tensor, boxes: torch.Tensor, windows: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    device = probabilities.device
    chunk_windows = windows.to(device)[index]
    h_max, w_max = int(windows[index.cpu(), 3].max()), int(windows[index.cpu(), 2].max())
    box = boxes[index]
    x0, y0 = chunk_windows[:, 0:1].float(), chunk_windows[:, 1:2].float()
    # The same float32 operations, in the same order, as pasting one mask over its own window.
    rows = torch.arange(h_max, dtype=torch.float32, device=device)[None, :] + y0
    cols = torch.arange(w_max, dtype=torch.float32, device=device)[None, :] + x0
    ys = (rows + 0.5 - box[:, 1:2]) / (box[:, 3:4] - box[:, 1:2]) * 2 - 1
    xs = (cols + 0.5 - box[:, 0:1]) / (box[:, 2:3] - box[:, 0:1]) * 2 - 1
    count = index.numel()
    grid = torch.stack(
        (xs[:, None, :].expand(count, h_max, w_max), ys[:, :, None].expand(count, h_max, w_max)), dim=3
    )
    sampled = F.grid_sample(probabilities[index][:, None], grid, align_corners=False)[:, 0]
    inside = (torch.arange(h_max, device=device)[None, :, None] < chunk_windows[:, 3, None, None]) & (
        torch.arange(w_max, device=device)[None, None, :] < chunk_windows[:, 2, None, None]
    )
    return (sampled >= 0.5) & inside
