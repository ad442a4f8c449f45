"""COCO compressed RLE for instance masks: encoding byte-identical to ``pycocotools.mask.encode``.

A detected instance is nonzero only inside a small crop of the image, so the encoder works on the
crop alone: the zeros around it are accounted for arithmetically, never materialised. The cost of
one instance is proportional to the crop area, not to the image area.

Format facts this module relies on (from pycocotools' ``rleEncode``, ``rleToString``, ``rleFrString``):

* the mask is scanned in column-major order, flat index ``x * H + y``;
* counts alternate zero-run, one-run, ... and always start with a zero-run (possibly of length 0);
  the last run always reaches the end of the image, so there are no trailing empty runs, and an
  image with no pixels at all is encoded as the single count ``0``;
* in the string form every count after the third is replaced by its difference to the count two
  places earlier, and each value is written as little-endian 5-bit groups of its two's complement,
  a continuation flag ``0x20`` on all but the last group, each group offset by 48 (``'0'``).

Foreground is "nonzero". pycocotools instead starts a new run at every change of byte value, so
the two only agree on 0/1 masks, which is what the model produces.
"""

from typing import Any

import numpy as np

_GROUP_BITS = 5
_GROUP_MASK = 0x1F
_CONTINUE = 0x20
_SIGN = 0x10
_CHAR_OFFSET = 48
# pycocotools stops writing groups once the rest is pure sign extension, i.e. after the fewest n
# groups for which the value fits in a signed 5n-bit integer. ``v ^ (v >> 63)`` maps a negative v to
# -v - 1, which needs n groups exactly when v does, so v needs 1 + (number of limits <= that) groups.
_GROUP_LIMITS = np.array([1 << (_GROUP_BITS * n - 1) for n in range(1, 13)], dtype=np.int64)


def encode_crop(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> dict[str, Any]:
    """Encode a mask that is zero outside ``crop`` as COCO compressed RLE.

    Args:
        crop: (h, w) bool or uint8 array; nonzero is foreground. h or w may be 0.
        x0, y0: column and row of the crop's top-left pixel in the full image.
        height, width: full image size (H, W).

    Returns:
        ``{"size": [H, W], "counts": str}``, equal to what pycocotools gives for the full mask.

    Raises:
        ValueError: crop is not 2-D or does not lie inside the image.
    """
    if crop.ndim != 2:
        raise ValueError(f"crop must be 2-D, got shape {crop.shape}")
    h, w = crop.shape
    x0, y0, height, width = int(x0), int(y0), int(height), int(width)
    if height < 0 or width < 0:
        raise ValueError(f"image size must be non-negative, got {height}x{width}")
    if not (0 <= x0 <= width - w and 0 <= y0 <= height - h):
        raise ValueError(f"crop {h}x{w} at (x0={x0}, y0={y0}) does not fit in a {height}x{width} image")
    counts = run_lengths(crop, x0, y0, height, width)
    return {"size": [height, width], "counts": counts_to_string(counts)}


def encode(mask: np.ndarray) -> dict[str, Any]:
    """Encode a full (H, W) bool or uint8 mask as COCO compressed RLE (nonzero is foreground)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    height, width = mask.shape
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return encode_crop(mask[:0, :0], 0, 0, height, width)
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    # Only the occupied columns can hold foreground rows, so the second scan is already narrowed.
    rows = np.flatnonzero(mask[:, x0:x1].any(axis=1))
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    return encode_crop(mask[y0:y1, x0:x1], x0, y0, height, width)


def decode(rle: dict[str, Any]) -> np.ndarray:
    """Decode COCO compressed RLE (counts as str or bytes) to an (H, W) bool mask.

    Implemented here rather than with pycocotools, whose decode goes through a numpy code path
    deprecated in numpy 2 and warns on every call.

    Raises:
        ValueError: the counts are malformed or do not cover exactly H * W pixels.
    """
    height, width = (int(n) for n in rle["size"])
    counts = _counts_from_rle(rle)
    foreground = np.arange(counts.size) % 2 == 1
    # Runs are laid out column-major, so the flat mask is the transpose of a (W, H) array.
    return np.repeat(foreground, counts).reshape(width, height).T


def decode_columns(rle: dict[str, Any]) -> tuple[int, np.ndarray]:
    """The columns of a mask that hold its foreground: (x0, (H, n) bool), columns x0 .. x0 + n - 1 of the
    mask, (0, (H, 0)) when it is empty. What `decode` gives, without the columns around an object: an
    instance of a large image costs its own columns, not the image.

    Raises:
        ValueError: the counts are malformed or do not cover exactly H * W pixels.
    """
    height, width = (int(n) for n in rle["size"])
    counts = _counts_from_rle(rle)
    ends = np.cumsum(counts)
    if counts.size == 0 or ends[-1] != height * width:
        raise ValueError(f"the RLE counts do not cover the {height}x{width} pixels of its size")
    starts = ends - counts
    ones = (np.arange(counts.size) % 2 == 1) & (counts > 0)
    if not ones.any():
        return 0, np.zeros((height, 0), dtype=bool)
    run_starts, run_ends = starts[ones], ends[ones]
    x0 = int(run_starts[0]) // height
    x1 = (int(run_ends[-1]) - 1) // height + 1
    # Runs are disjoint: +1 where one starts, -1 where it ends, summed along the column-major order.
    edges = np.zeros((x1 - x0) * height + 1, dtype=np.int8)
    edges[run_starts - x0 * height] += 1
    edges[run_ends - x0 * height] -= 1
    flat = np.cumsum(edges[:-1], dtype=np.int8) > 0
    return x0, flat.reshape(x1 - x0, height).T


def area(rle: dict[str, Any]) -> int:
    """Number of foreground pixels of a COCO compressed RLE, without building the mask."""
    return int(_counts_from_rle(rle)[1::2].sum())


def run_lengths(crop: np.ndarray, x0: int, y0: int, height: int, width: int) -> np.ndarray:
    """Uncompressed COCO counts of the full mask, as an int64 (m,) array with m >= 1.

    Run boundaries are found column by column: each crop column, padded with one zero above and
    below (the image around the crop is zero), starts a run wherever it changes value. The scan is
    done on the crop in its own row-major layout, which is much cheaper than a transposed copy; the
    boundaries are then put into column-major order by sorting their flat image positions.
    """
    total = height * width
    h, w = crop.shape
    if h == 0 or w == 0:
        return np.array([total], dtype=np.int64)
    padded = np.zeros((h + 2, w), dtype=bool)
    padded[1:-1] = crop
    # changes[r, c]: the value changes between crop rows r - 1 and r of column c (r == h: after the end).
    changes = padded[1:] != padded[:-1]
    row, col = np.divmod(np.flatnonzero(changes), w)
    boundaries = (x0 + col) * height + (y0 + row)
    boundaries.sort()
    return counts_from_boundaries(boundaries, h == height, total)


def counts_from_boundaries(boundaries: np.ndarray, full_height: bool, total: int) -> np.ndarray:
    """Counts from the sorted (k,) flat positions where the column-major mask changes value."""
    if full_height:
        boundaries = _merge_column_seams(boundaries)
    # A one-run ending at the image's last pixel closes at `total`; pycocotools emits no empty run there.
    if boundaries.size and boundaries[-1] == total:
        boundaries = boundaries[:-1]
    return np.diff(boundaries, prepend=0, append=total)


def _merge_column_seams(boundaries: np.ndarray) -> np.ndarray:
    """Drop boundary pairs that coincide, given sorted (k,) int64 positions; returns (k',).

    A full-height crop has no zero between its columns: a one-run that ends at the bottom of one
    column and a one-run that starts at the top of the next both report a boundary at the same
    position, yet in column-major order they are one run, so neither boundary exists.
    """
    same = boundaries[1:] == boundaries[:-1]
    keep = np.ones(boundaries.shape, dtype=bool)
    keep[1:] &= ~same
    keep[:-1] &= ~same
    return boundaries[keep]


def counts_to_string(counts: np.ndarray) -> str:
    """pycocotools' compressed string for the (m,) int64 counts, built without a per-value loop.

    Every value is expanded into its 5-bit groups at once: ``np.repeat`` gives each output char
    its value, and the char's index within its value gives the shift. A per-value Python loop is
    faster only below about 60 counts (a solid instance has two per column, so ~30 px wide) and
    about 6x slower at 800 counts, hence no loop fallback.
    """
    values = counts.copy()
    values[3:] -= counts[1:-2]
    n_groups = np.searchsorted(_GROUP_LIMITS, values ^ (values >> 63), side="right") + 1
    ends = np.cumsum(n_groups)
    group_index = np.arange(ends[-1]) - np.repeat(ends - n_groups, n_groups)
    chars = (np.repeat(values, n_groups) >> (group_index * _GROUP_BITS)) & _GROUP_MASK
    chars += _CHAR_OFFSET + _CONTINUE
    chars[ends - 1] -= _CONTINUE
    return chars.astype(np.uint8).tobytes().decode("ascii")


def _counts_from_rle(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed (m,) int64 counts of a compressed RLE, checked to cover the whole image."""
    height, width = (int(n) for n in rle["size"])
    text = rle["counts"]
    counts = _string_to_counts(text.encode("ascii") if isinstance(text, str) else bytes(text))
    if counts.sum() != height * width or (counts < 0).any():
        raise ValueError(f"RLE counts do not describe a {height}x{width} mask")
    return counts


def _string_to_counts(text: bytes) -> np.ndarray:
    """Inverse of ``counts_to_string``: the (m,) int64 counts of a compressed counts string."""
    groups = np.frombuffer(text, dtype=np.uint8).astype(np.int64) - _CHAR_OFFSET
    if groups.size == 0 or groups[-1] & _CONTINUE or (groups < 0).any() or (groups > 0x3F).any():
        raise ValueError("malformed RLE counts string")
    ends = np.flatnonzero((groups & _CONTINUE) == 0) + 1
    n_groups = np.diff(ends, prepend=0)
    starts = ends - n_groups
    group_index = np.arange(groups.size) - np.repeat(starts, n_groups)
    values = np.add.reduceat((groups & _GROUP_MASK) << (group_index * _GROUP_BITS), starts)
    # The top bit of a value's last group is its sign; extend it above the bits that were written.
    negative = (groups[ends - 1] & _SIGN) != 0
    values[negative] -= np.left_shift(1, n_groups[negative] * _GROUP_BITS)
    # Undo the delta coding: from the fourth value on, each is relative to the one two places back,
    # so odd positions (from 1) and even positions (from 2) are two independent running sums.
    counts = values.copy()
    counts[1::2] = np.cumsum(values[1::2])
    counts[2::2] = np.cumsum(values[2::2])
    return counts
