"""centermask_client.overlay: masks blended in their class colour, boxes and labels, nothing else."""

import io

import numpy as np
import pytest
from PIL import Image

from centermask_client.overlay import MASK_ALPHA, PALETTE, colour, draw_overlay, encode_image, label_text
from centermask_client.rle import encode
from centermask_client.schemas import Instance

HEIGHT, WIDTH = 120, 160


def instance(mask: np.ndarray, class_id: int, score: float, with_mask: bool = True) -> Instance:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
    return Instance(
        box=box,
        score=score,
        class_id=class_id,
        category_id=class_id + 1,
        class_name=f"class{class_id}",
        mask_score=score,
        mask=encode(mask) if with_mask else None,
    )


def block(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def background() -> np.ndarray:
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([xs % 256, ys * 2 % 256, (xs + ys) % 256], axis=2).astype(np.uint8)


def blend(pixels: np.ndarray, class_id: int) -> np.ndarray:
    colour = np.array(PALETTE[class_id], dtype=np.float64)
    return np.floor(pixels * (1 - MASK_ALPHA) + colour * MASK_ALPHA + 0.5).astype(np.uint8)


def test_masks_are_blended_and_the_rest_is_untouched() -> None:
    image = background()
    low, high = block(40, 90, 20, 70), block(60, 110, 50, 120)
    drawn = np.asarray(draw_overlay(image, [instance(high, 3, 0.9), instance(low, 1, 0.5)]))
    assert drawn.shape == image.shape
    # Inside, away from box lines and labels: the colour blended once; where both overlap, the better
    # one on top.
    only_low = low & ~high
    only_low[:44], only_low[86:], only_low[:, :24], only_low[:, 48:] = False, False, False, False
    np.testing.assert_array_equal(drawn[only_low], blend(image[only_low], 1))
    both = low & high
    both[:64], both[86:], both[:, :54], both[:, 66:] = False, False, False, False
    np.testing.assert_array_equal(drawn[both], blend(blend(image[both], 1), 3))
    # Far from every box and label: the image itself.
    far = np.ones((HEIGHT, WIDTH), dtype=bool)
    far[10:115, 15:125] = False
    np.testing.assert_array_equal(drawn[far], image[far])


def test_boxes_and_labels_in_the_class_colour() -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    drawn = np.asarray(draw_overlay(image, [instance(block(50, 100, 40, 120), 2, 0.75, with_mask=False)]))
    assert tuple(drawn[75, 40]) == PALETTE[2]  # left edge of the box
    assert tuple(drawn[75, 119]) == PALETTE[2]  # right edge, inside the box's last column
    assert tuple(drawn[75, 80]) == (0, 0, 0)  # no mask: the inside is untouched
    label = drawn[30:50, 40:120]
    # White (anti-aliased) text on the class colour.
    assert (label == PALETTE[2]).all(axis=2).any() and (label.min(axis=2) > 200).any()


def test_a_tracked_instance_is_drawn_in_its_tracks_colour_with_its_id() -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    # One track, two frames, the class changing: the same colour; neighbouring ids differ.
    frames = [instance(block(50, 100, 40, 120), class_id, 0.75) for class_id in (2, 4)]
    tracked = [one.model_copy(update={"track_id": 6}) for one in frames]
    assert colour(tracked[0]) == colour(tracked[1]) != colour(tracked[0].model_copy(update={"track_id": 7}))
    assert label_text(tracked[0]) == "#6 class2 0.75"
    assert label_text(frames[0]) == "class2 0.75"  # untracked (or unconfirmed): the class colour, no id
    assert colour(frames[0]) == PALETTE[2]
    for one in tracked:
        drawn = np.asarray(draw_overlay(image, [one]))
        assert tuple(drawn[75, 40]) == colour(tracked[0])  # the box's left edge


def test_a_mask_of_another_size_is_refused() -> None:
    other = instance(np.ones((10, 10), dtype=bool), 0, 0.5)
    with pytest.raises(ValueError, match="does not fit"):
        draw_overlay(background(), [other])


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_encoding(image_format: str) -> None:
    drawn = draw_overlay(Image.fromarray(background()), [])
    decoded = Image.open(io.BytesIO(encode_image(drawn, image_format)))
    assert decoded.format == image_format.upper() and decoded.size == (WIDTH, HEIGHT)


def test_a_large_image_is_drawn_downscaled_with_its_masks_sampled_at_display_size() -> None:
    height, width = 3000, 4500
    image = np.full((height, width, 3), 200, dtype=np.uint8)
    small = np.zeros((height, width), dtype=bool)
    small[1000:1040, 3000:3060] = True  # 40 × 60 px: 8 × 12 at a fifth
    drawn = np.asarray(draw_overlay(image, [instance(small, 2, 0.8)], max_side=900))
    assert drawn.shape == (600, 900, 3)
    # Display pixels whose centres fall in the object are blended, inside its box lines; far away, not.
    inside = drawn[202:206, 602:610]
    np.testing.assert_array_equal(inside, np.broadcast_to(blend(np.full(3, 200, np.uint8), 2), inside.shape))
    np.testing.assert_array_equal(drawn[400:, :300], np.full((200, 300, 3), 200, np.uint8))
    # An image within max_side is drawn exactly as without it.
    low = block(40, 90, 20, 70)
    same = draw_overlay(background(), [instance(low, 1, 0.5)], max_side=WIDTH)
    np.testing.assert_array_equal(
        np.asarray(same), np.asarray(draw_overlay(background(), [instance(low, 1, 0.5)]))
    )
