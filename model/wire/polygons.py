"""Instance mask crops to polygons with holes (``mask_format=polygon``).

Outlines run along pixel edges, not through pixel centres: pixel (x, y) covers [x, x + 1) x [y, y + 1),
and a polygon encloses exactly the squares of its foreground pixels. Rasterising the polygons by
pixel centres (pycocotools, OpenCV's ``fillPoly`` at sub-pixel precision, a canvas) gives the mask back,
holes included.

The edges come from OpenCV's contour tracing run on the mask upscaled 2x: there, every foreground
pixel is a 2x2 block, so a traced boundary pixel at upscaled column j lies on the left edge of
original pixel j / 2 when j is even and on the right edge of pixel (j - 1) / 2 when j is odd. Both
are original x coordinate ``(j + 1) // 2``; rows alike. Outer boundaries trace the object's own
pixels and hole boundaries the object's pixels around the hole, and the rule holds for both.
"""

import cv2
import numpy as np


def crop_to_polygons(crop: np.ndarray, x0: int, y0: int) -> list[dict[str, list]]:
    """The foreground of a mask crop as polygon parts in full-image coordinates.

    Args:
        crop: (h, w) bool or uint8 mask; nonzero is foreground.
        x0, y0: column and row of the crop's top-left pixel in the full image.

    Returns:
        One ``{"outer": ring, "holes": [ring, ...]}`` per connected foreground region
        (8-connectivity), where a ring is ``[x1, y1, x2, y2, ...]`` (floats, integral values: pixel
        corners). A region is its outer ring minus its holes; a region lying inside another's hole is
        a part of its own. Straight runs keep only their end points; ring orientation carries no
        meaning. Every region, a single pixel included, has an area. An empty crop gives ``[]``.
    """
    if crop.ndim != 2:
        raise ValueError(f"crop must be 2-D, got shape {crop.shape}")
    if crop.size == 0:
        return []
    # findContours only takes 8-bit single-channel images; it treats every nonzero value as foreground.
    upscaled = np.repeat(np.repeat(np.asarray(crop != 0, dtype=np.uint8), 2, axis=0), 2, axis=1)
    contours, hierarchy = cv2.findContours(upscaled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    # RETR_CCOMP: a two-level tree; hierarchy[0][i][3] is the parent of contour i (-1 for outer ones).
    parents = hierarchy[0][:, 3]
    offset = np.array([x0, y0], dtype=np.int64)
    rings = [_ring(contour, offset) for contour in contours]
    return [
        {"outer": rings[i], "holes": [rings[j] for j in np.flatnonzero(parents == i)]}
        for i in np.flatnonzero(parents == -1)
    ]


def _ring(contour: np.ndarray, offset: np.ndarray) -> list[float]:
    """An upscaled contour (k, 1, 2) as a flat list of original pixel corners, simplified."""
    points = (contour.reshape(-1, 2).astype(np.int64) + 1) // 2 + offset
    return _simplify(points).reshape(-1).astype(np.float64).tolist()


def _simplify(points: np.ndarray) -> np.ndarray:
    """Drop repeated points and points in the middle of straight runs from a closed ring (k, 2).

    Mapping back from the upscaled grid merges neighbouring points, and a pinch (two pixels touching
    at a corner) turns into a point visited twice with a zero-area spike between; removing one kind
    can expose the other, hence the loop.
    """
    while len(points) > 3:
        points = points[np.any(points != np.roll(points, 1, axis=0), axis=1)]
        before, after = np.roll(points, 1, axis=0) - points, np.roll(points, -1, axis=0) - points
        straight = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] == 0
        if not straight.any() or straight.all():
            break
        points = points[~straight]
    return points
