"""Instance mask crops to COCO polygons (``mask_format=polygon``)."""

import cv2
import numpy as np

_MIN_POINTS = 3


def crop_to_polygons(crop: np.ndarray, x0: int, y0: int) -> list[list[float]]:
    """Outer boundaries of a mask crop as COCO polygons in full-image coordinates.

    Args:
        crop: (h, w) bool or uint8 mask; nonzero is foreground.
        x0, y0: column and row of the crop's top-left pixel in the full image.

    Returns:
        One ``[x1, y1, x2, y2, ...]`` list per connected foreground region (8-connectivity), as
        floats. Points are boundary pixel centres: pixel (x, y) covers [x, x + 1) x [y, y + 1), so
        its centre is (x + 0.5, y + 0.5). Collinear points along straight runs are dropped.

    Only outer boundaries are returned: holes are ignored, so a ring comes back as a filled disc.
    Regions whose boundary has fewer than 3 points (a single pixel, a straight line one pixel
    thick) are dropped, since COCO polygons need an area. An empty crop gives ``[]``.
    """
    if crop.ndim != 2:
        raise ValueError(f"crop must be 2-D, got shape {crop.shape}")
    if crop.size == 0:
        return []
    # findContours only takes 8-bit single-channel images; it treats every nonzero value as foreground.
    image = np.ascontiguousarray(crop, dtype=np.uint8)
    contours, _ = cv2.findContours(
        image, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(int(x0), int(y0))
    )
    return [
        (contour.reshape(-1).astype(np.float64) + 0.5).tolist()
        for contour in contours
        if len(contour) >= _MIN_POINTS
    ]
