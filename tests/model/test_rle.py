"""centermask_client.rle must produce exactly pycocotools' compressed RLE strings, from crops or full masks."""

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from centermask_client.rle import (
    _string_to_counts,
    area,
    counts_to_string,
    decode,
    decode_columns,
    encode,
    encode_crop,
)

IMAGE_HEIGHT, IMAGE_WIDTH = 720, 1280


def reference_counts(mask: np.ndarray) -> str:
    """pycocotools' counts string for an (H, W) mask."""
    return mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))["counts"].decode("ascii")


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the nonzero pixels of a non-empty (H, W) mask."""
    ys, xs = np.nonzero(mask)
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def assert_matches_reference(mask: np.ndarray) -> None:
    """encode, encode_crop on the tight box and on the whole image all give pycocotools' string."""
    height, width = mask.shape
    expected = reference_counts(mask)
    rle = encode(mask)
    assert rle == {"size": [height, width], "counts": expected}
    assert encode_crop(mask, 0, 0, height, width)["counts"] == expected
    if mask.any():
        y0, y1, x0, x1 = tight_box(mask)
        assert encode_crop(mask[y0:y1, x0:x1], x0, y0, height, width)["counts"] == expected
    np.testing.assert_array_equal(decode(rle), mask.astype(bool))
    assert area(rle) == int(np.count_nonzero(mask))


def frame(height: int, width: int) -> np.ndarray:
    """(H, W) bool mask set on the one-pixel border only."""
    mask = np.ones((height, width), dtype=bool)
    mask[1:-1, 1:-1] = False
    return mask


def single_pixel(height: int, width: int, y: int, x: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y, x] = True
    return mask


def column_stripes(height: int, width: int) -> np.ndarray:
    """Full-height crop whose one-runs continue from the bottom of a column into the next column."""
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 2 :, 0::2] = True
    mask[: height // 2, 1::2] = True
    return mask


EDGE_CASES = {
    "1x1 zero": np.zeros((1, 1), dtype=bool),
    "1x1 one": np.ones((1, 1), dtype=bool),
    "all zero": np.zeros((7, 5), dtype=bool),
    "all one": np.ones((7, 5), dtype=bool),
    "all one uint8": np.ones((4, 9), dtype=np.uint8),
    "frame": frame(6, 8),
    "first pixel": single_pixel(5, 6, 0, 0),
    "last pixel": single_pixel(5, 6, 4, 5),
    "bottom of first column": single_pixel(5, 6, 4, 0),
    "top of last column": single_pixel(5, 6, 0, 5),
    "full column": np.pad(np.ones((5, 1), dtype=bool), ((0, 0), (2, 3))),
    "full row": np.pad(np.ones((1, 6), dtype=bool), ((3, 1), (0, 0))),
    "column stripes": column_stripes(6, 7),
    "checkerboard": (np.indices((9, 11)).sum(axis=0) % 2).astype(bool),
    "single row image": np.array([[0, 1, 1, 0, 1]], dtype=bool),
    "single column image": np.array([[1], [1], [0], [1]], dtype=bool),
    "full image 720p": np.ones((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=bool),
}


@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_cases_match_pycocotools(name: str) -> None:
    assert_matches_reference(EDGE_CASES[name])


@pytest.mark.parametrize(("height", "width"), [(0, 0), (0, 5), (5, 0)])
def test_image_without_pixels(height: int, width: int) -> None:
    mask = np.zeros((height, width), dtype=bool)
    rle = encode(mask)
    assert rle == {"size": [height, width], "counts": reference_counts(mask)}
    assert decode(rle).shape == (height, width)


@pytest.mark.parametrize(("h", "w"), [(0, 0), (0, 3), (3, 0)])
def test_empty_crop_is_all_zero_image(h: int, w: int) -> None:
    rle = encode_crop(np.zeros((h, w), dtype=bool), 2, 1, 8, 10)
    assert rle == {"size": [8, 10], "counts": reference_counts(np.zeros((8, 10), dtype=bool))}


def test_all_zero_crop_anywhere() -> None:
    expected = reference_counts(np.zeros((8, 10), dtype=bool))
    assert encode_crop(np.zeros((3, 4), dtype=np.uint8), 6, 5, 8, 10)["counts"] == expected


def test_nonzero_uint8_values_are_foreground() -> None:
    crop = np.array([[0, 7], [255, 1]], dtype=np.uint8)
    expected = reference_counts(np.pad(crop != 0, ((1, 2), (3, 0))))
    assert encode_crop(crop, 3, 1, 5, 5)["counts"] == expected


@pytest.mark.parametrize(
    ("shape", "x0", "y0"),
    [((2, 2), -1, 0), ((2, 2), 0, -1), ((2, 2), 9, 0), ((2, 2), 0, 5), ((7, 2), 0, 0), ((2, 11), 0, 0)],
)
def test_crop_outside_image_is_rejected(shape: tuple[int, int], x0: int, y0: int) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_crop(np.ones(shape, dtype=bool), x0, y0, 6, 10)


def test_non_2d_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="2-D"):
        encode_crop(np.ones((2, 2, 1), dtype=bool), 0, 0, 4, 4)
    with pytest.raises(ValueError, match="2-D"):
        encode(np.ones(4, dtype=bool))


# pycocotools' string buffer holds 6 chars per count including the terminator, so larger deltas
# (6+ chars, from 2^24) overflow its heap buffer; compare with it only below that.
PYCOCOTOOLS_SAFE_COUNTS = st.lists(st.integers(min_value=0, max_value=2**24 - 1), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(counts=PYCOCOTOOLS_SAFE_COUNTS)
def test_string_coding_matches_pycocotools_for_any_counts(counts: list[int]) -> None:
    # Arbitrary counts exercise large values and negative deltas that real masks rarely reach.
    expected = mask_utils.frPyObjects({"size": [1, 1], "counts": counts}, 1, 1)["counts"].decode("ascii")
    assert counts_to_string(np.array(counts, dtype=np.int64)) == expected


@settings(max_examples=300, deadline=None)
@given(counts=PYCOCOTOOLS_SAFE_COUNTS)
def test_string_decoding_inverts_pycocotools(counts: list[int]) -> None:
    text = mask_utils.frPyObjects({"size": [1, 1], "counts": counts}, 1, 1)["counts"]
    np.testing.assert_array_equal(_string_to_counts(text), counts)


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=40))
def test_string_coding_round_trips_large_counts(counts: list[int]) -> None:
    encoded = counts_to_string(np.array(counts, dtype=np.int64)).encode("ascii")
    np.testing.assert_array_equal(_string_to_counts(encoded), counts)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_decode_agrees_with_pycocotools_on_bytes_counts() -> None:
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[3:20, 5:9] = 1
    mask[25:, 30:] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    np.testing.assert_array_equal(decode(rle), mask_utils.decode(rle).astype(bool))
    assert area(rle) == int(mask_utils.area(rle))


@pytest.mark.parametrize("counts", ["", "1P", "0~", "0/", "12"])
def test_malformed_counts_are_rejected(counts: str) -> None:
    # Truncated group, chars outside '0'..'o', and counts not summing to H * W.
    with pytest.raises(ValueError, match="RLE counts"):
        decode({"size": [2, 2], "counts": counts})


@st.composite
def random_masks(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A random (H, W) mask with sizes 1..64 and a box (y0, y1, x0, x1) containing all its pixels.

    The foreground is noise of random density or a union of random discs, confined to a random
    sub-rectangle; the box is that sub-rectangle, so it is generally not tight.
    """
    height = draw(st.integers(1, 64))
    width = draw(st.integers(1, 64))
    y0 = draw(st.integers(0, height))
    y1 = draw(st.integers(y0, height))
    x0 = draw(st.integers(0, width))
    x1 = draw(st.integers(x0, width))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    h, w = y1 - y0, x1 - x0
    if draw(st.booleans()):
        crop = rng.random((h, w)) < draw(st.floats(0.0, 1.0))
    else:
        ys, xs = np.indices((h, w))
        crop = np.zeros((h, w), dtype=bool)
        for _ in range(draw(st.integers(1, 4))):
            cy, cx = rng.uniform(0, max(h, 1)), rng.uniform(0, max(w, 1))
            radius = rng.uniform(0.5, max(h, w, 1))
            crop |= (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = crop
    return mask, (y0, y1, x0, x1)


@settings(max_examples=400, deadline=None)
@given(sample=random_masks())
def test_random_masks_match_pycocotools(sample: tuple[np.ndarray, tuple[int, int, int, int]]) -> None:
    mask, (y0, y1, x0, x1) = sample
    height, width = mask.shape
    expected = reference_counts(mask)
    assert encode_crop(mask[y0:y1, x0:x1], x0, y0, height, width)["counts"] == expected
    assert_matches_reference(mask)


def ellipse(cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    """Filled, rotated ellipse as a 720p (H, W) bool mask, clipped to the image."""
    ys, xs = np.ogrid[:IMAGE_HEIGHT, :IMAGE_WIDTH]
    dy, dx = ys - cy, xs - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def polygon(vertices: np.ndarray) -> np.ndarray:
    """Filled (even-odd rule) polygon with (n, 2) (x, y) vertices as a 720p (H, W) bool mask."""
    ys, xs = np.mgrid[:IMAGE_HEIGHT, :IMAGE_WIDTH] + 0.5
    inside = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=bool)
    for (xa, ya), (xb, yb) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        if ya == yb:
            continue
        spans = (ya <= ys) != (yb <= ys)
        crossing_x = xa + (ys - ya) * (xb - xa) / (yb - ya)
        inside ^= spans & (xs < crossing_x)
    return inside


def star(cx: float, cy: float, outer: float, inner: float, points: int) -> np.ndarray:
    """(2 * points, 2) (x, y) vertices of a star polygon."""
    angles = np.linspace(0.0, 2 * np.pi, 2 * points, endpoint=False)
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


REALISTIC_MASKS = {
    "small ellipse": lambda: ellipse(100.0, 200.0, 15.0, 25.0, 0.3),
    "large ellipse": lambda: ellipse(360.0, 640.0, 200.0, 350.0, -0.7),
    "ellipse cut by corner": lambda: ellipse(700.0, 1270.0, 80.0, 120.0, 0.0),
    "ellipse over full height": lambda: ellipse(360.0, 50.0, 500.0, 40.0, 0.1),
    "star": lambda: polygon(star(900.0, 300.0, 250.0, 90.0, 7)),
    "triangle at origin": lambda: polygon(np.array([[0.0, 0.0], [300.0, 0.0], [0.0, 200.0]])),
    "two blobs": lambda: ellipse(100.0, 100.0, 40.0, 40.0, 0.0) | ellipse(600.0, 1100.0, 60.0, 90.0, 1.0),
}


@pytest.mark.parametrize("name", REALISTIC_MASKS)
def test_realistic_720p_masks_match_pycocotools(name: str) -> None:
    assert_matches_reference(REALISTIC_MASKS[name]())


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    density=st.floats(0.0, 1.0),
)
def test_decode_columns_is_decode_without_the_empty_columns(
    height: int, width: int, seed: int, density: float
) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((height, width)) < density
    mask[:, : rng.integers(0, width + 1)] = False
    rle = encode(mask)
    x0, columns = decode_columns(rle)
    expected = np.zeros_like(mask)
    expected[:, x0 : x0 + columns.shape[1]] = columns
    np.testing.assert_array_equal(expected, mask)
    if mask.any():
        assert columns[:, 0].any() and columns[:, -1].any()
    else:
        assert columns.shape == (height, 0)
