"""Drawing results over their image: translucent masks, boxes and `class score` labels.

One drawing for everything that shows results: `/segment?format=png|jpeg` on the server, the
`centermask segment --format png` command, and the demo page, which gets `PALETTE` from here and
blends with the same `MASK_ALPHA` (`service/static/app.js`). Numpy and Pillow only.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from centermask_client.rle import decode_columns
from centermask_client.schemas import ImageFormat, Instance

# Distinct, saturated colours (RGB) that stay readable under white label text; class k takes PALETTE[k % 20],
# and a tracked instance its track's colour instead (`colour`).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 140, 60),
    (0, 110, 200),
    (245, 130, 48),
    (145, 30, 180),
    (0, 150, 150),
    (200, 50, 200),
    (128, 128, 0),
    (170, 90, 40),
    (0, 0, 160),
    (128, 0, 0),
    (70, 120, 160),
    (190, 100, 120),
    (20, 100, 40),
    (110, 80, 210),
    (200, 120, 0),
    (0, 90, 110),
    (140, 60, 90),
    (80, 80, 80),
    (160, 20, 20),
)
MASK_ALPHA = 0.45
BOX_WIDTH = 2


def class_colour(class_id: int) -> tuple[int, int, int]:
    return PALETTE[class_id % len(PALETTE)]


def colour(instance: Instance) -> tuple[int, int, int]:
    """A tracked instance's track colour (the same on every frame of the track), else its class colour."""
    if instance.track_id is not None:
        # Consecutive ids step through the palette 7 at a time (coprime with 20): neighbours differ.
        return PALETTE[instance.track_id * 7 % len(PALETTE)]
    return class_colour(instance.class_id)


def label_text(instance: Instance) -> str:
    track = f"#{instance.track_id} " if instance.track_id is not None else ""
    return f"{track}{instance.class_name} {instance.score:.2f}"


MIN_FONT = 11
# A downscaled overview labels only instances at least this many display pixels across (a large scene's
# small objects would be buried under their labels).
OVERVIEW_LABEL_MIN = 40


def font_size(height: int, width: int) -> int:
    """Label text height in pixels: readable on thumbnails and on large photos alike."""
    return int(min(32, max(MIN_FONT, round(max(height, width) / 50))))


def draw_overlay(
    image: Image.Image | np.ndarray, instances: Sequence[Instance], max_side: int | None = None
) -> Image.Image:
    """The image (RGB) with each instance's mask blended in its colour (its track's when it has a
    `track_id`, else its class's), its box and its label (`#track_id class score`).

    Instances are drawn worst first, so the best-scoring one ends on top. Masks must be RLE
    (mask_format=rle); instances without a mask get a box and label only. Each mask is decoded over its
    own columns only (`decode_columns`), so a large image with many small instances stays cheap.

    max_side: an image with a longer side is drawn downscaled to it (a tiled image's overview): the image
    resized, each mask sampled at the display pixels' centres (as the demo page does), boxes scaled, labels
    in the smallest font and only on instances at least OVERVIEW_LABEL_MIN display pixels across.
    """
    pixels = np.array(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    display = _display_size(height, width, max_side)
    if display != (height, width):
        pixels = np.asarray(Image.fromarray(pixels).resize((display[1], display[0]), Image.Resampling.BOX))
        pixels = pixels.copy()
    scale_y, scale_x = display[0] / height, display[1] / width
    ordered = sorted(instances, key=lambda instance: instance.score)
    for instance in ordered:
        if instance.mask is None:
            continue
        if tuple(instance.mask.size) != (height, width):
            raise ValueError(f"a mask of size {instance.mask.size} does not fit a {height}x{width} image")
        if instance.mask.counts is None:
            raise ValueError("only RLE masks are drawn; request mask_format=rle")
        x0, columns = decode_columns({"size": list(instance.mask.size), "counts": instance.mask.counts})
        if display != (height, width):
            x0, columns = _sampled(x0, columns, scale_x, scale_y, display)
        region = pixels[:, x0 : x0 + columns.shape[1]]
        tint = np.array(colour(instance), dtype=np.float64)
        blended = region[columns].astype(np.float64) * (1 - MASK_ALPHA) + tint * MASK_ALPHA
        # Round half up, as the page does (Math.round), so both draw the same pixels.
        region[columns] = np.floor(blended + 0.5).astype(np.uint8)
    canvas = Image.fromarray(pixels)
    draw = ImageDraw.Draw(canvas)
    display_height, display_width = display
    downscaled = display != (height, width)
    size = MIN_FONT if downscaled else font_size(display_height, display_width)
    font = ImageFont.load_default(size=size)
    for instance in ordered:
        drawn = colour(instance)
        x1, y1, x2, y2 = instance.box
        x1, x2, y1, y2 = x1 * scale_x, x2 * scale_x, y1 * scale_y, y2 * scale_y
        if x2 > x1 and y2 > y1:
            draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=drawn, width=BOX_WIDTH)
        if downscaled and max(x2 - x1, y2 - y1) < OVERVIEW_LABEL_MIN:
            continue
        text = label_text(instance)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        text_w, text_h = right - left, bottom - top
        pad = 2
        # Above the box when there is room, else just inside its top edge.
        label_y = y1 - text_h - 2 * pad if y1 - text_h - 2 * pad >= 0 else y1
        label_x = min(max(0.0, x1), max(0.0, display_width - text_w - 2 * pad))
        draw.rectangle((label_x, label_y, label_x + text_w + 2 * pad, label_y + text_h + 2 * pad), fill=drawn)
        draw.text((label_x + pad - left, label_y + pad - top), text, fill=(255, 255, 255), font=font)
    return canvas


def _display_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    if max_side is None or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _sampled(
    x0: int, columns: np.ndarray, scale_x: float, scale_y: float, display: tuple[int, int]
) -> tuple[int, np.ndarray]:
    """A mask's columns at display size: display pixel (dx, dy) takes the image pixel at its centre,
    (floor((dx + 0.5) / scale_x), floor((dy + 0.5) / scale_y))."""
    display_height, display_width = display
    first = max(0, int(np.ceil(x0 * scale_x - 0.5)))
    last = min(display_width, int(np.ceil((x0 + columns.shape[1]) * scale_x - 0.5)))
    if last <= first:
        return 0, np.zeros((display_height, 0), dtype=bool)
    source_x = np.floor((np.arange(first, last) + 0.5) / scale_x).astype(np.int64) - x0
    source_y = np.floor((np.arange(display_height) + 0.5) / scale_y).astype(np.int64)
    source_y = source_y.clip(0, columns.shape[0] - 1)
    return first, columns[source_y[:, None], source_x.clip(0, columns.shape[1] - 1)[None, :]]


def encode_image(image: Image.Image, image_format: ImageFormat) -> bytes:
    """PNG (fast compression) or JPEG (quality 90) bytes."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, "PNG", compress_level=3)
    else:
        image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
