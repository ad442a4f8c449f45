"""Batched mask pasting and RLE: the same masks as detectron2's one-mask-at-a-time paste, the same strings as
pycocotools."""

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from centermask_client.rle import counts_to_string
from model.inference.masks import paste_masks
from model.wire.rle import encode_pasted, stack_run_lengths


def paste_over_image(probabilities: torch.Tensor, box: torch.Tensor, height: int, width: int) -> np.ndarray:
    """detectron2's paste of one (28, 28) mask over the whole (H, W) image, the straightforward way."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5 - box[1]) / (box[3] - box[1]) * 2 - 1
    xs = (torch.arange(width, dtype=torch.float32) + 0.5 - box[0]) / (box[2] - box[0]) * 2 - 1
    grid = torch.stack((xs[None, :].expand(height, width), ys[:, None].expand(height, width)), dim=2)
    sampled = F.grid_sample(probabilities[None, None], grid[None], align_corners=False)
    return (sampled[0, 0] >= 0.5).numpy()


def random_instances(seed: int, count: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 28, 28) probabilities and (N, 4) non-empty boxes clipped to the image, some touching its edges."""
    generator = torch.Generator().manual_seed(seed)
    probabilities = torch.rand((count, 28, 28), generator=generator)
    corners = torch.rand((count, 2, 2), generator=generator) * torch.tensor([width, height]) * 1.2 - 10
    low, high = corners.min(dim=1).values, corners.max(dim=1).values + 2
    boxes = torch.cat((low, high), dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    boxes[:, 2] = torch.maximum(boxes[:, 2], boxes[:, 0] + 0.5).clamp(max=width)
    boxes[:, 0] = torch.minimum(boxes[:, 0], boxes[:, 2] - 0.5)
    boxes[:, 3] = torch.maximum(boxes[:, 3], boxes[:, 1] + 0.5).clamp(max=height)
    boxes[:, 1] = torch.minimum(boxes[:, 1], boxes[:, 3] - 0.5)
    return probabilities, boxes


def dense(crops, height: int, width: int) -> np.ndarray:
    masks = np.zeros((len(crops), height, width), dtype=bool)
    for mask, (x0, y0, crop) in zip(masks, crops, strict=True):
        mask[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
    return masks


@pytest.mark.parametrize("chunk_pixels", [1, 5_000, 4 * 1024 * 1024])
def test_batched_paste_equals_the_full_image_paste(chunk_pixels: int) -> None:
    height, width = 97, 131
    probabilities, boxes = random_instances(0, 24, height, width)
    pasted = paste_masks(probabilities, boxes, (height, width), chunk_pixels=chunk_pixels)
    if chunk_pixels == 1:
        assert len(pasted.chunks) == 24
    masks = dense(pasted.crops(), height, width)
    for mask, probs, box in zip(masks, probabilities, boxes, strict=True):
        np.testing.assert_array_equal(mask, paste_over_image(probs, box, height, width))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    count=st.integers(1, 12),
    height=st.integers(1, 60),
    width=st.integers(1, 60),
    chunk_pixels=st.sampled_from([1, 300, 1 << 22]),
)
def test_batched_rle_equals_pycocotools(
    seed: int, count: int, height: int, width: int, chunk_pixels: int
) -> None:
    probabilities, boxes = random_instances(seed, count, height, width)
    # Some masks all on or all off, which makes full-height windows and empty masks.
    probabilities[::3] = 1.0
    probabilities[1::5] = 0.0
    pasted = paste_masks(probabilities, boxes, (height, width), chunk_pixels=chunk_pixels)
    masks = dense(pasted.crops(), height, width)
    for rle, mask in zip(encode_pasted(pasted), masks, strict=True):
        expected = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
        assert rle == {"size": [height, width], "counts": expected["counts"].decode("ascii")}


def test_one_scan_of_a_stack_gives_the_same_counts_as_each_crop() -> None:
    """The GPU path's batched scan, run here on CPU tensors."""
    height, width = 61, 47
    probabilities, boxes = random_instances(3, 16, height, width)
    probabilities[::4] = 1.0
    pasted = paste_masks(probabilities, boxes, (height, width))
    for index, stack in pasted.chunks:
        windows = pasted.windows[index.numpy()]
        counts = stack_run_lengths(stack, windows, height, width)
        masks = dense(pasted.crops(), height, width)[index.numpy()]
        for mask, instance_counts in zip(masks, counts, strict=True):
            expected = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))["counts"].decode("ascii")
            assert counts_to_string(instance_counts) == expected


def test_no_instances() -> None:
    pasted = paste_masks(torch.zeros((0, 28, 28)), torch.zeros((0, 4)), (10, 20))
    assert len(pasted) == 0 and pasted.crops() == [] and encode_pasted(pasted) == []
