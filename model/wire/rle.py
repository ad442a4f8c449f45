"""COCO compressed RLE of the model's pasted masks, a whole chunk of instances at a time.

The format and its per-mask codec belong to the wire format (`centermask_client.rle`, shared with the
client); this adds the encoder of `PastedMasks`, which scans a chunk's run boundaries on its own device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from centermask_client.rle import counts_from_boundaries, counts_to_string, run_lengths
from model.inference.masks import PastedMasks


def encode_pasted(masks: PastedMasks) -> list[dict[str, Any]]:
    """COCO compressed RLE of every pasted instance mask, in instance order; equal to ``encode_crop`` of each.

    On the GPU, the run boundaries of a whole chunk of instances are found at once on the device, so only the
    boundaries (about two per occupied column) travel to the host. On the CPU each crop is scanned on its own:
    a padded stack would scan several times more pixels (measured in bench/rle_bench.py).
    """
    height, width = masks.image_size
    results: list[dict[str, Any] | None] = [None] * len(masks)
    for index, stack in masks.chunks:
        windows = masks.windows[index.numpy()]
        if stack.is_cuda:
            counts = stack_run_lengths(stack, windows, height, width)
        else:
            host = stack.numpy()
            counts = [
                run_lengths(crop[:h, :w], x0, y0, height, width)
                for crop, (x0, y0, w, h) in zip(host, windows.tolist(), strict=True)
            ]
        for instance, instance_counts in zip(index.tolist(), counts, strict=True):
            results[instance] = {"size": [height, width], "counts": counts_to_string(instance_counts)}
    return results  # type: ignore[return-value]


def stack_run_lengths(stack: Any, windows: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    """Counts of each mask of a (n, h, w) bool torch stack, mask j zero outside its window x0, y0, w, h
    (windows (n, 4) int64), with one scan of the stack on its own device."""
    count, h, w = stack.shape
    total = height * width
    padded = stack.new_zeros((count, h + 2, w))
    padded[:, 1:-1] = stack
    # Flat positions in (n, h + 1, w) where a column changes value between rows r - 1 and r.
    positions = (padded[:, 1:] != padded[:, :-1]).flatten().nonzero().flatten().cpu().numpy()
    instance, within = np.divmod(positions, (h + 1) * w)
    row, col = np.divmod(within, w)
    boundaries = (windows[instance, 0] + col) * height + (windows[instance, 1] + row)
    # Sorted by instance, then by position in the column-major image.
    boundaries = np.sort(instance * (total + 1) + boundaries) - instance * (total + 1)
    ends = np.cumsum(np.bincount(instance, minlength=count))
    starts = np.concatenate(([0], ends[:-1]))
    return [
        counts_from_boundaries(boundaries[start:end], int(windows[j, 3]) == height, total)
        for j, (start, end) in enumerate(zip(starts, ends, strict=True))
    ]
