"""Reading images the way the official evaluation path does: Pillow, EXIF orientation applied, RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """A Pillow image, upright per its EXIF orientation, as (H, W, 3) uint8 RGB."""
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def load_rgb(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return to_rgb_array(image)
