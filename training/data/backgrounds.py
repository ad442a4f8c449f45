"""Photo-like images made by code, with none of the five shape classes in them: negatives for the shapes model.

A model trained only on flat shapes over simple backgrounds finds shapes everywhere in a photograph (a
"rectangle" on a brick, a "ring" on an eye). These images teach it what is not a shape, without training on
anyone's photographs (whose licences would bind the weights). Everything is drawn here from noise and
geometry, in three steps:

1. A scene: one full-frame texture (fractal clouds, wood, marble, cloth, pebbles, masonry, grass, a sky
   gradient, a plain wall), a horizon (sky or texture over ground, split along a noisy line), organic
   regions of several textures (a thresholded, warped noise field), or a studio backdrop (smooth gradient
   with a vignette).
2. Clutter on top: irregular shaded blobs, soft-edged irregular polygons, shaded ellipsoids with highlights
   and cast shadows, eyes (sclera, striated iris, pupil, lids and lashes), faces (shaded skin oval, hair,
   eyes, nose shadow, mouth), embossed coins, leaves, strokes (branches, cables), out-of-focus bokeh and soft
   shadows.
3. Camera effects (`camera_effects`): defocus, resampling softness, vignette, colour cast, gamma, sensor noise
   and, in a fifth of the images, greyscale; JPEG artefacts come from the writer saving most images as
   JPEG.

Nothing drawn is a crisp, flat-coloured circle, ring, rectangle, triangle or star: every object has an
irregular outline, a soft edge, 3-D shading or texture, or all of these. Round things (coins, eyes, bokeh,
spheres) are shaded, embossed, striated or blurred, which is what round things in photographs look like and
the drawn classes do not. Image ``i`` of a seed draws everything from its own generator, so output is
deterministic per (seed, index). `photo_like` returns uint8 (H, W, 3) RGB; the shapes generator's ``photo``
background kind is ``photo_like(..., camera=False)``, with the camera applied after the shapes are drawn.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable

import cv2
import numpy as np

Range = tuple[float, float]
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Scene layouts and clutter kinds, drawn uniformly (repeats make an entry likelier).
LAYOUTS = ("texture", "texture", "horizon", "horizon", "regions", "regions", "studio", "leaves", "leaves")
CLUTTER = (
    "blob",
    "blob",
    "polygon",
    "ellipsoid",
    "ellipsoid",
    "eye",
    "eye",
    "face",
    "face",
    "coin",
    "leaf",
    "strokes",
    "bokeh",
    "shadow",
    "cuboid",
    "cylinder",
    "lines",
    "lines",
    "coins",
    "glints",
)
# Hard negatives: what real photographs get mistaken for shapes most (round, shiny or man-made things, faces),
# on plain or studio backgrounds where they stand out as shapes do.
HARD_LAYOUTS = ("studio", "studio", "texture", "regions", "leaves")
HARD_CLUTTER = (
    "coin",
    "coins",
    "cylinder",
    "cylinder",
    "ellipsoid",
    "eye",
    "face",
    "glints",
    "cuboid",
    "lines",
    "blob",
)
TEXTURES = ("clouds", "clouds", "wood", "marble", "cloth", "pebbles", "masonry", "grass", "sky", "wall")
# Colour families of natural scenes: (hue range in degrees, saturation range, value range).
FAMILIES = {
    "earth": ((15.0, 45.0), (0.15, 0.6), (0.1, 0.85)),
    "foliage": ((60.0, 140.0), (0.2, 0.7), (0.08, 0.75)),
    "sky": ((190.0, 230.0), (0.05, 0.55), (0.45, 1.0)),
    "skin": ((8.0, 32.0), (0.18, 0.55), (0.3, 0.95)),
    "grey": ((0.0, 360.0), (0.0, 0.06), (0.05, 0.95)),
    "any": ((0.0, 360.0), (0.05, 0.8), (0.05, 1.0)),
    "metal": ((25.0, 50.0), (0.0, 0.45), (0.35, 0.95)),
}


# --- Noise and colour -------------------------------------------------------------------------------------


def _normalise(field: np.ndarray) -> np.ndarray:
    low, high = float(field.min()), float(field.max())
    return ((field - low) / (high - low)).astype(np.float32) if high > low else np.zeros_like(field)


def _grid_noise(rng: np.random.Generator, height: int, width: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Random values on a (cells_y, cells_x) grid, bicubically enlarged to (height, width) float32."""
    grid = rng.random((max(2, cells_y), max(2, cells_x))).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def fbm(
    rng: np.random.Generator,
    height: int,
    width: int,
    cells: float,
    octaves: int = 5,
    persistence: float = 0.5,
) -> np.ndarray:
    """Fractal value noise (height, width) float32 in [0, 1]: octaves of smooth noise, ``cells`` per long side
    at the coarsest, doubling in frequency and scaled by ``persistence`` each octave."""
    longest = max(height, width)
    total = np.zeros((height, width), dtype=np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        per_side = cells * 2**octave
        cells_y = round(per_side * height / longest) + 2
        cells_x = round(per_side * width / longest) + 2
        if cells_y > height or cells_x > width:
            break
        total += amplitude * (_grid_noise(rng, height, width, cells_y, cells_x) - 0.5)
        amplitude *= persistence
    return _normalise(total)


def _warp(
    rng: np.random.Generator, image: np.ndarray, amount: float, cells: float, nearest: bool = False
) -> np.ndarray:
    """Displace every pixel by up to ``amount`` pixels along a smooth noise field (organic distortion)."""
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    dx = (fbm(rng, height, width, cells, 3) - 0.5) * 2 * amount
    dy = (fbm(rng, height, width, cells, 3) - 0.5) * 2 * amount
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.remap(image, xs + dx, ys + dy, interpolation, borderMode=cv2.BORDER_REFLECT)


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(*bounds))


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def palette(rng: np.random.Generator, count: int, family: str | None = None) -> np.ndarray:
    """``count`` related colours (count, 3) float32 0-255, from dark to light, of one natural colour family."""
    family = family or _pick(rng, tuple(FAMILIES))
    hues, saturations, values = FAMILIES[family]
    hue = _uniform(rng, hues)
    saturation = _uniform(rng, saturations)
    low, high = sorted(rng.uniform(*values, size=2))
    if high - low < 0.15:
        low, high = max(values[0], low - 0.1), min(values[1], high + 0.1)
    colours = []
    for value in np.linspace(low, high, count):
        h = ((hue + rng.uniform(-12.0, 12.0)) % 360.0) / 360.0
        s = float(np.clip(saturation + rng.uniform(-0.1, 0.1), 0.0, 1.0))
        colours.append(colorsys.hsv_to_rgb(h, s, float(value)))
    return np.array(colours, dtype=np.float32) * 255.0


def gradient_map(t: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Map values (H, W) in [0, 1] through evenly spaced colour stops (n, 3): (H, W, 3) float32."""
    position = np.clip(t, 0.0, 1.0) * (len(stops) - 1)
    index = np.minimum(position.astype(np.int32), len(stops) - 2)
    fraction = (position - index)[..., None]
    return stops[index] * (1.0 - fraction) + stops[index + 1] * fraction


# --- Textures: full-frame (H, W, 3) float32 -------------------------------------------------------------


def _clouds(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    t = fbm(rng, height, width, _uniform(rng, (1.5, 7.0)), 6, _uniform(rng, (0.4, 0.65)))
    if rng.random() < 0.5:
        t = _warp(rng, t, _uniform(rng, (5.0, 40.0)), _uniform(rng, (1.5, 4.0)))
    return gradient_map(t, palette(rng, int(rng.integers(2, 5))))


def _wood(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    turned = rng.random() < 0.5
    h, w = (width, height) if turned else (height, width)
    period = _uniform(rng, (6.0, 60.0))
    xs = np.arange(w, dtype=np.float32)[None, :]
    rings = xs / period + _uniform(rng, (1.0, 5.0)) * fbm(rng, h, w, _uniform(rng, (1.0, 3.0)), 3)
    profile = (rings % 1.0) ** _uniform(rng, (1.0, 3.0))
    grain = _grid_noise(rng, h, w, max(2, round(h / _uniform(rng, (40.0, 200.0)))), max(2, w // 2))
    t = 0.7 * profile + 0.3 * grain
    texture = gradient_map(t, palette(rng, 3, "earth" if rng.random() < 0.7 else None))
    return np.ascontiguousarray(texture.transpose(1, 0, 2)) if turned else texture


def _marble(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    angle = rng.uniform(0.0, math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    turbulence = fbm(rng, height, width, _uniform(rng, (2.0, 5.0)), 6)
    wave = np.sin(
        2 * math.pi * along / _uniform(rng, (60.0, 300.0)) + _uniform(rng, (4.0, 12.0)) * turbulence
    )
    veins = 1.0 - np.abs(wave) ** _uniform(rng, (0.15, 0.5))
    base = gradient_map(
        fbm(rng, height, width, 3.0, 5), palette(rng, 2, _pick(rng, ("grey", "earth", "any")))
    )
    vein_colour = palette(rng, 1)[0]
    strength = _uniform(rng, (0.3, 0.9))
    return base + (strength * veins)[..., None] * (vein_colour - base)


def _cloth(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    period = _uniform(rng, (2.5, 8.0))
    folds = fbm(rng, height, width, _uniform(rng, (1.0, 4.0)), 3)
    warped = _warp(rng, np.mgrid[0:height, 0:width].astype(np.float32).transpose(1, 2, 0), 6.0, 2.0)
    ys, xs = warped[..., 0], warped[..., 1]
    weave = 0.5 + 0.25 * (np.sin(2 * math.pi * xs / period) + np.sin(2 * math.pi * ys / period))
    colour = palette(rng, 1)[0]
    shade = 0.45 + 0.75 * folds
    return colour * ((0.8 + 0.3 * weave) * shade)[..., None]


def _pebbles(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    size = _log_uniform(rng, 6.0, 60.0)
    count = int(min(6000, max(8, height * width / size**2)))
    seeds = np.ones((height, width), dtype=np.uint8)
    seeds[rng.integers(0, height, count), rng.integers(0, width, count)] = 0
    distance, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    labels = _warp(rng, labels.astype(np.float32), size * 0.25, 6.0, nearest=True).astype(np.int64)
    distance = _warp(rng, distance, size * 0.25, 6.0)
    stops = palette(rng, 4, _pick(rng, ("grey", "earth", "earth", "any")))
    tone = rng.random(labels.max() + 1).astype(np.float32)
    colours = gradient_map(tone[labels], stops)
    shade = np.clip(1.0 - _uniform(rng, (0.3, 0.9)) * (distance / size) ** 2, 0.2, 1.0)
    gaps = np.zeros((height, width), dtype=bool)
    gaps[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    gaps[1:, :] |= labels[1:, :] != labels[:-1, :]
    gap_shade = np.where(gaps, _uniform(rng, (0.3, 0.8)), 1.0).astype(np.float32)
    grain = 0.85 + 0.3 * fbm(rng, height, width, max(4.0, max(height, width) / 8.0), 2)
    image = colours * (shade * gap_shade * grain)[..., None]
    return cv2.GaussianBlur(image, (0, 0), _uniform(rng, (0.5, 1.5)))


def _masonry(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Bricks or tiles in offset rows: uneven, textured and shaded, with mortar between them."""
    brick_h = _uniform(rng, (10.0, 50.0))
    brick_w = brick_h * _uniform(rng, (1.3, 4.0))
    mortar = _uniform(rng, (1.0, 4.0))
    coords = np.mgrid[0:height, 0:width].astype(np.float32).transpose(1, 2, 0)
    coords = _warp(rng, coords, _uniform(rng, (1.0, 4.0)), _uniform(rng, (4.0, 16.0)))
    ys, xs = coords[..., 0], coords[..., 1]
    row = np.floor(ys / brick_h).astype(np.int64)
    shifted = xs + (row % 2) * brick_w * _uniform(rng, (0.3, 0.7)) + rng.uniform(-3, 3, size=1)[0] * row
    col = np.floor(shifted / brick_w).astype(np.int64)
    rows, cols = int(row.max() - row.min() + 1), int(col.max() - col.min() + 1)
    tone = rng.random((rows, cols)).astype(np.float32)
    colours = gradient_map(
        tone[row - row.min(), col - col.min()],
        palette(rng, 3, _pick(rng, ("earth", "earth", "grey", "any"))),
    )
    in_mortar = ((ys % brick_h) < mortar) | ((shifted % brick_w) < mortar)
    mortar_colour = palette(rng, 1, "grey")[0]
    texture = 0.75 + 0.5 * fbm(rng, height, width, max(4.0, max(height, width) / 10.0), 3)
    image = colours * texture[..., None]
    image[in_mortar] = mortar_colour * texture[in_mortar][:, None]
    return cv2.GaussianBlur(image, (0, 0), _uniform(rng, (0.6, 1.4)))


def _grass(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    stops = palette(rng, 4, "foliage" if rng.random() < 0.7 else "earth")
    image = gradient_map(fbm(rng, height, width, 4.0, 4) * 0.4, stops)
    blades = int(min(4000, height * width / _uniform(rng, (30.0, 200.0))))
    lean = rng.uniform(-0.5, 0.5)
    for _ in range(blades):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        length = _uniform(rng, (6.0, 60.0))
        angle = -math.pi / 2 + lean + rng.normal(0.0, 0.35)
        bend = rng.normal(0.0, 0.4)
        points = []
        for step in range(5):
            a = angle + bend * step / 4
            points.append((x, y))
            x += math.cos(a) * length / 4
            y += math.sin(a) * length / 4
        colour = gradient_map(np.array([[rng.random()]], dtype=np.float32), stops)[0, 0]
        cv2.polylines(
            image,
            [np.array(points, dtype=np.int32)],
            False,
            colour.tolist(),
            int(rng.integers(1, 3)),
            cv2.LINE_AA,
        )
    return cv2.GaussianBlur(image, (0, 0), _uniform(rng, (0.4, 1.2)))


def _sky(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    stops = palette(rng, 3, "sky" if rng.random() < 0.7 else _pick(rng, ("earth", "any", "grey")))
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None] ** _uniform(rng, (0.5, 2.0))
    clouds = fbm(rng, height, width, _uniform(rng, (1.5, 4.0)), 6)
    t = np.clip(ramp + _uniform(rng, (0.0, 0.5)) * (clouds - 0.5), 0.0, 1.0)
    return gradient_map(np.broadcast_to(t, (height, width)), stops[::-1] if rng.random() < 0.5 else stops)


def _wall(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    colour = palette(rng, 1)[0]
    variation = 1.0 + _uniform(rng, (0.03, 0.15)) * (
        fbm(rng, height, width, _uniform(rng, (2.0, 12.0)), 6) - 0.5
    )
    return colour * variation[..., None]


TEXTURE_MAKERS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "clouds": _clouds,
    "wood": _wood,
    "marble": _marble,
    "cloth": _cloth,
    "pebbles": _pebbles,
    "masonry": _masonry,
    "grass": _grass,
    "sky": _sky,
    "wall": _wall,
}


def texture(rng: np.random.Generator, height: int, width: int, kind: str | None = None) -> np.ndarray:
    """A full-frame texture (height, width, 3) float32 0-255 of one of ``TEXTURES`` (random when None)."""
    return TEXTURE_MAKERS[kind or _pick(rng, TEXTURES)](rng, height, width).astype(np.float32)


# --- Layouts ----------------------------------------------------------------------------------------------


def _soft_step(signed: np.ndarray, softness: float) -> np.ndarray:
    """Alpha from a signed distance (positive inside): a smooth edge ``softness`` pixels wide."""
    return np.clip(0.5 + signed / max(softness, 1e-3), 0.0, 1.0).astype(np.float32)


def _horizon(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    top = texture(rng, height, width, "sky" if rng.random() < 0.6 else None)
    bottom = texture(rng, height, width, _pick(rng, ("grass", "pebbles", "clouds", "wood", "clouds", "wall")))
    level = height * _uniform(rng, (0.2, 0.8))
    line = (fbm(rng, 1, width, _uniform(rng, (1.0, 8.0)), 5)[0] - 0.5) * height * _uniform(rng, (0.02, 0.4))
    ys = np.arange(height, dtype=np.float32)[:, None]
    alpha = _soft_step(ys - (level + line[None, :]), _uniform(rng, (1.0, 12.0)))
    image = top + alpha[..., None] * (bottom - top)
    if rng.random() < 0.4:  # a middle band: hills, a tree line, a far shore
        band = texture(rng, height, width, _pick(rng, ("clouds", "grass", "pebbles")))
        upper = (
            level - height * _uniform(rng, (0.05, 0.3)) + (fbm(rng, 1, width, 6.0, 5)[0] - 0.5) * height * 0.2
        )
        inside = _soft_step(ys - upper[None, :], 2.0) * (1.0 - alpha)
        image = image + inside[..., None] * (band - image)
    return image


def _regions(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    count = int(rng.integers(2, 5))
    field = _warp(rng, fbm(rng, height, width, _uniform(rng, (1.0, 3.0)), 4), 20.0, 2.0)
    levels = np.quantile(field, np.sort(rng.uniform(0.15, 0.85, count - 1)))
    image = texture(rng, height, width)
    softness = _uniform(rng, (0.005, 0.05))
    for level in levels:
        alpha = np.clip(0.5 + (field - level) / softness, 0.0, 1.0)
        image = image + alpha[..., None] * (texture(rng, height, width) - image)
    return image


def _studio(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    stops = palette(rng, 2)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.0, 0.7) * height
    distance = np.hypot(xs - cx, ys - cy) / math.hypot(height, width)
    t = np.clip(distance * _uniform(rng, (0.8, 2.0)), 0.0, 1.0)
    image = gradient_map(t, stops)
    if rng.random() < 0.5:  # a table or floor edge, softened
        level = height * _uniform(rng, (0.5, 0.9))
        alpha = _soft_step(ys - level - (xs - width / 2) * rng.uniform(-0.1, 0.1), _uniform(rng, (2.0, 20.0)))
        image = image + alpha[..., None] * (
            texture(rng, height, width, _pick(rng, ("wood", "cloth", "wall", "marble"))) - image
        )
    return image


def _irregular_outline(rng: np.random.Generator, radius: float) -> np.ndarray:
    """Vertices (k, 2) around the origin of a crisp outline that is none of the classes: a wobbly blob (64
    points, the second or third harmonic at least 12% of the radius) or a polygon of 6-11 vertices at
    uneven angles and radii (few of which look like a triangle or a quadrilateral), stretched up to 1.6x."""
    if rng.random() < 0.5:
        theta = np.linspace(0.0, 2 * math.pi, 64, endpoint=False)
        wobble = _wobbly_radius(rng, np.cos(theta), np.sin(theta), (0.12, 0.3))
        radii = radius * wobble / 0.9
    else:
        vertices = int(rng.integers(6, 12))
        theta = np.sort(rng.uniform(0, 2 * math.pi, vertices))
        radii = radius * rng.uniform(0.55, 1.0, vertices)
    stretch = _uniform(rng, (1.0, 1.6))
    points = np.stack([radii * np.cos(theta) * stretch, radii * np.sin(theta) / stretch], axis=1)
    angle = rng.uniform(0, 2 * math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]])


def _dead_leaves(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Crisp irregular shapes of a scene's colours piled on each other, many small and few large (the
    "dead leaves" model of natural images): the sharp edges, corners and occlusions of real clutter."""
    canvas = np.clip(texture(rng, height, width), 0, 255).astype(np.uint8)
    stops = np.concatenate([palette(rng, 4), palette(rng, 3)])
    largest = _uniform(rng, (0.1, 0.4)) * min(height, width)
    for _ in range(int(rng.integers(150, 700))):
        radius = largest * (3.0 / largest) ** (rng.random() ** 0.6) if largest > 3.0 else 3.0
        centre = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        points = np.rint((centre + _irregular_outline(rng, radius)) * 16).astype(np.int32)
        colour = np.clip(stops[int(rng.integers(len(stops)))] + rng.normal(0.0, 12.0, 3), 0, 255)
        cv2.fillPoly(canvas, [points], colour.tolist(), cv2.LINE_AA, shift=4)
    image = canvas.astype(np.float32)
    if rng.random() < 0.5:  # some texture and light across the pile
        image *= (0.8 + 0.4 * fbm(rng, height, width, _uniform(rng, (2.0, 16.0)), 4))[..., None]
    return image


LAYOUT_MAKERS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "texture": lambda rng, h, w: texture(rng, h, w),
    "horizon": _horizon,
    "regions": _regions,
    "studio": _studio,
    "leaves": _dead_leaves,
}
CLUTTER_COUNTS = {"texture": (0, 4), "horizon": (0, 8), "regions": (0, 8), "studio": (1, 8), "leaves": (0, 4)}


# --- Clutter: objects drawn into the canvas in place -------------------------------------------------------


def _composite(canvas: np.ndarray, x0: int, y0: int, colour: np.ndarray, alpha: np.ndarray) -> None:
    """Blend a patch (h, w, 3) with alpha (h, w) into canvas at (x0, y0), clipped to the canvas."""
    height, width = canvas.shape[:2]
    h, w = alpha.shape
    ax0, ay0 = max(0, -x0), max(0, -y0)
    ax1, ay1 = min(w, width - x0), min(h, height - y0)
    if ax1 <= ax0 or ay1 <= ay0:
        return
    region = canvas[y0 + ay0 : y0 + ay1, x0 + ax0 : x0 + ax1]
    a = alpha[ay0:ay1, ax0:ax1, None]
    region += a * (colour[ay0:ay1, ax0:ax1] - region)


def _local_grid(size: int, angle: float, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u, v) in a square patch of ``size`` px, centred, rotated by ``angle`` and stretched so that
    an ellipse of half-axes (1, 1 / aspect) of the patch's half size is the unit circle."""
    half = size / 2.0
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5 - half
    cos, sin = math.cos(angle), math.sin(angle)
    u = (xs * cos + ys * sin) / half
    v = (-xs * sin + ys * cos) / half * aspect
    return u, v


def _shading(
    rng: np.random.Generator,
    u: np.ndarray,
    v: np.ndarray,
    radius: np.ndarray,
    ambient: float,
    specular: float,
) -> np.ndarray:
    """Lambertian shading (h, w) of a dome over the region ``hypot(u, v) < radius``, lit from a random side,
    with a specular highlight: what makes a round thing look solid."""
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.8, 0.3), 1.0])
    light /= np.linalg.norm(light)
    nu, nv = u / np.maximum(radius, 1e-3), v / np.maximum(radius, 1e-3)
    nz = np.sqrt(np.clip(1.0 - nu * nu - nv * nv, 0.0, 1.0))
    lambert = np.clip(nu * light[0] + nv * light[1] + nz * light[2], 0.0, 1.0)
    shade = ambient + (1.0 - ambient) * lambert
    if specular > 0:
        reflect_z = 2 * lambert * nz - light[2]
        shade = shade + specular * np.clip(reflect_z, 0.0, 1.0) ** _uniform(rng, (8.0, 40.0))
    return shade.astype(np.float32)


def _object_size(
    rng: np.random.Generator, height: int, width: int, low: float = 0.06, high: float = 0.7
) -> int:
    return max(8, int(_log_uniform(rng, low, high) * min(height, width)))


def _place(rng: np.random.Generator, height: int, width: int, size: int) -> tuple[int, int]:
    """Top-left corner of a patch of ``size`` whose centre lies in the image."""
    return int(rng.uniform(0, width) - size / 2), int(rng.uniform(0, height) - size / 2)


def _wobbly_radius(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, strength: Range) -> np.ndarray:
    """An irregular outline: radius ∝ 1 + Σ a_k cos(kθ + φ_k) over k = 2..7, at most 0.9 (inside the patch),
    with a clear departure from a circle (the second or third harmonic at least ``strength[0]``)."""
    theta = np.arctan2(v, u)
    radius = np.ones_like(u)
    total = 1.0
    strong = int(rng.integers(2, 4))
    for k in range(2, 8):
        amplitude = _uniform(rng, strength) / math.sqrt(k - 1)
        if k == strong:
            amplitude = max(amplitude, strength[0])
        radius += amplitude * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
        total += amplitude
    return 0.9 * radius / total


def _blob(rng: np.random.Generator, canvas: np.ndarray, ellipsoid: bool = False) -> None:
    height, width = canvas.shape[:2]
    size = _object_size(rng, height, width)
    u, v = _local_grid(size, rng.uniform(0, math.pi), _uniform(rng, (1.15, 2.2) if ellipsoid else (1.0, 2.0)))
    radius = np.full_like(u, 0.85) if ellipsoid else _wobbly_radius(rng, u, v, (0.08, 0.3))
    distance = np.hypot(u, v)
    softness = _log_uniform(rng, 0.7, 6.0) / (size / 2.0)
    alpha = _soft_step(radius - distance, softness)
    colour = palette(rng, 1)[0]
    shade = _shading(rng, u, v, radius, _uniform(rng, (0.1, 0.5)), _uniform(rng, (0.0, 0.8)))
    grain = 0.85 + 0.3 * fbm(rng, size, size, _uniform(rng, (2.0, 10.0)), 4)
    patch = np.clip(colour * (shade * grain)[..., None], 0, 255)
    x0, y0 = _place(rng, height, width, size)
    if rng.random() < 0.6:  # a cast shadow, offset and blurred
        shadow = cv2.GaussianBlur(alpha, (0, 0), max(1.0, size * 0.05)) * _uniform(rng, (0.2, 0.6))
        dx, dy = int(size * rng.uniform(-0.15, 0.15)), int(size * rng.uniform(0.03, 0.15))
        _composite(canvas, x0 + dx, y0 + dy, np.zeros_like(patch), shadow)
    _composite(canvas, x0, y0, patch, alpha)


def _polygon(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """An irregular polygon of 5-12 vertices at uneven angles and radii, textured, shaded, soft-edged."""
    height, width = canvas.shape[:2]
    size = _object_size(rng, height, width)
    vertices = int(rng.integers(5, 13))
    angles = np.sort(rng.uniform(0, 2 * math.pi, vertices))
    radii = rng.uniform(0.4, 0.85, vertices) * size / 2.0
    points = np.stack([size / 2 + radii * np.cos(angles), size / 2 + radii * np.sin(angles)], axis=1)
    mask = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(mask, [np.rint(points * 4).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), _uniform(rng, (1.2, 4.0)))
    stops = palette(rng, 3)
    t = fbm(rng, size, size, _uniform(rng, (2.0, 8.0)), 5)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :] * _uniform(rng, (0.2, 0.6))
    patch = gradient_map(np.clip(0.7 * t + ramp, 0.0, 1.0), stops)
    _composite(canvas, *_place(rng, height, width, size), patch, alpha * _uniform(rng, (0.6, 1.0)))


def _eye_patch(rng: np.random.Generator, width: int, skin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An eye in a patch (h, w): almond sclera, striated iris cut by the lids, pupil, catch-light, lashes,
    over a shaded skin surround. Returns the colours (h, w, 3) and the surround's alpha (h, w)."""
    eye_h = max(6, int(width * _uniform(rng, (0.32, 0.55))))
    pad = int(width * 0.35)
    ph, pw = eye_h + 2 * pad, width + 2 * pad
    ys, xs = np.mgrid[0:ph, 0:pw].astype(np.float32)
    x = (xs - pw / 2) / (width / 2)
    y = (ys - ph / 2) / (eye_h / 2)
    lid = np.clip(1.0 - x * x, 0.0, 1.0) ** _uniform(rng, (0.6, 1.0))
    upper, lower = -lid * _uniform(rng, (0.9, 1.1)), lid * _uniform(rng, (0.7, 1.0))
    pixel = 2.0 / eye_h
    sclera_alpha = _soft_step(np.minimum(y - upper, lower - y), pixel * 1.5)
    surround_u = (xs - pw / 2) / (pw / 2)
    surround_v = (ys - ph / 2) / (ph / 2)
    surround = _soft_step(0.8 - np.hypot(surround_u, surround_v), 0.3)  # zero well inside the patch
    shade = _shading(rng, surround_u, surround_v, np.ones_like(surround_u), 0.5, 0.0)
    image = skin * shade[..., None]
    sclera = palette(rng, 1, "grey")[0] * 0.3 + np.array([225, 220, 212], np.float32) * 0.7
    sclera_shade = 0.75 + 0.25 * np.clip(1.0 - np.abs(x), 0.0, 1.0)
    image += sclera_alpha[..., None] * (sclera * sclera_shade[..., None] - image)
    # The iris: a radial fibre texture, darker rim, pupil and catch-light; the lids hide its top and bottom.
    ix = rng.uniform(-0.3, 0.3)
    iris_r = _uniform(rng, (0.55, 0.8))  # in half-heights
    ix_pixels = (xs - (pw / 2 + ix * width / 2)) / (eye_h / 2)
    iy_pixels = y
    r = np.hypot(ix_pixels, iy_pixels)
    theta = np.arctan2(iy_pixels, ix_pixels)
    fibres = _grid_noise(rng, 1, 256, 1, int(rng.integers(30, 90)))[0]
    striation = fibres[((theta + math.pi) / (2 * math.pi) * 255).astype(np.int32)]
    stops = palette(rng, 3, _pick(rng, ("earth", "earth", "sky", "foliage", "grey")))
    iris = gradient_map(np.clip(0.6 * striation + 0.4 * (r / iris_r), 0.0, 1.0), stops)
    iris *= (1.0 - 0.5 * np.clip((r / iris_r - 0.8) / 0.2, 0.0, 1.0))[..., None]
    pupil_r = iris_r * _uniform(rng, (0.25, 0.5))
    iris *= (1.0 - 0.9 * _soft_step(pupil_r - r, pixel * 2.0))[..., None]
    iris_alpha = _soft_step(iris_r - r, pixel * 2.0) * sclera_alpha
    image += iris_alpha[..., None] * (iris - image)
    glint = _soft_step(
        iris_r * 0.18 - np.hypot(ix_pixels + iris_r * 0.3, iy_pixels + iris_r * 0.35), pixel * 1.5
    )
    image += glint[..., None] * (np.float32(250.0) - image)
    # Lashes and the lid crease: dark soft lines along the upper lid.
    line = np.exp(-(((y - upper) / (pixel * _uniform(rng, (1.0, 3.0)))) ** 2)) * (np.abs(x) < 1.05)
    crease = np.exp(-(((y - upper * 1.6) / (pixel * 2.5)) ** 2)) * (np.abs(x) < 0.9) * 0.4
    image *= (1.0 - 0.8 * np.clip(line + crease, 0.0, 1.0))[..., None]
    return image, surround


def _eye(rng: np.random.Generator, canvas: np.ndarray) -> None:
    height, width = canvas.shape[:2]
    eye_w = _object_size(rng, height, width, 0.08, 0.6)
    skin = palette(rng, 1, "skin" if rng.random() < 0.8 else None)[0]
    patch, surround = _eye_patch(rng, eye_w, skin)
    size = max(patch.shape[:2])
    _composite(canvas, *_place(rng, height, width, size), patch, surround)


def _face(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A face: shaded skin oval, hair, two eyes, a nose shadow and a mouth; sometimes a neck and shoulders."""
    height, width = canvas.shape[:2]
    size = _object_size(rng, height, width, 0.2, 0.9)
    u, v = _local_grid(size, rng.normal(0.0, 0.15), 1.0)
    face_w = _uniform(rng, (0.62, 0.78))
    fu, fv = u / face_w, v / 0.95
    outline = _wobbly_radius(rng, u, v, (0.02, 0.05)) * (0.95 / 0.9)
    distance = np.hypot(fu, fv)
    alpha = _soft_step(outline - distance, 3.0 / size)
    skin = palette(rng, 1, "skin")[0]
    shade = _shading(rng, fu, fv, outline, _uniform(rng, (0.3, 0.6)), _uniform(rng, (0.0, 0.3)))
    patch = np.clip(skin * shade[..., None] * (0.92 + 0.16 * fbm(rng, size, size, 6.0, 4))[..., None], 0, 255)
    # Hair: a dark textured cap with a ragged edge over the top of the head.
    if rng.random() < 0.85:
        hair_line = -_uniform(rng, (0.2, 0.55)) + 0.15 * (fbm(rng, size, size, 4.0, 4) - 0.5)
        hair_alpha = _soft_step(hair_line - fv, 2.5 / size) * _soft_step(0.98 - distance, 3.0 / size)
        hair = gradient_map(
            fbm(rng, size, size, _uniform(rng, (8.0, 30.0)), 3), palette(rng, 2, "earth") * 0.6
        )
        patch += hair_alpha[..., None] * (hair - patch)
        alpha = np.maximum(alpha, hair_alpha)
    for side in (-1, 1):
        eye_w = max(6, int(size * face_w * _uniform(rng, (0.26, 0.34))))
        eye, surround = _eye_patch(rng, eye_w, skin * 0.95)
        eh, ew = surround.shape
        cx = int(size / 2 + side * size * face_w * 0.2 - ew / 2)
        cy = int(size / 2 - size * 0.08 - eh / 2)
        _composite(patch, cx, cy, eye, surround * 0.9)
    nose = np.exp(-(((u - 0.05) / 0.05) ** 2) - ((v - 0.12) / 0.12) ** 2) * 0.35
    mouth_curve = v - (0.48 + _uniform(rng, (-0.05, 0.05)) * u * u * 8)
    mouth = np.exp(-((mouth_curve / 0.03) ** 2)) * (np.abs(u) < face_w * 0.35)
    lip = palette(rng, 1, "skin")[0] * np.array([1.0, 0.7, 0.7], np.float32)
    patch *= (1.0 - nose)[..., None]
    patch += (mouth * 0.8)[..., None] * (lip - patch)
    x0, y0 = _place(rng, height, width, size)
    _composite(canvas, x0, y0, patch, alpha)


def _coin(
    rng: np.random.Generator, canvas: np.ndarray, size: int | None = None, at: tuple[int, int] | None = None
) -> None:
    """A metal disc with an embossed relief and a raised rim, lit from one side, on a soft shadow; a random
    size and place unless given (``at``: the patch's top-left corner)."""
    height, width = canvas.shape[:2]
    size = size or _object_size(rng, height, width, 0.06, 0.4)
    u, v = _local_grid(size, rng.uniform(0, math.pi), _uniform(rng, (1.0, 1.3)))
    distance = np.hypot(u, v)
    alpha = _soft_step(0.9 - distance, _uniform(rng, (0.6, 2.5)) / (size / 2.0))
    relief = fbm(rng, size, size, _uniform(rng, (3.0, 10.0)), 4) * (distance < 0.72)
    relief = cv2.GaussianBlur(relief.astype(np.float32), (0, 0), 0.7)
    rim = np.clip(1.0 - np.abs(distance - 0.81) / 0.06, 0.0, 1.0)
    height_field = relief * _uniform(rng, (0.5, 1.5)) + rim
    angle = rng.uniform(0, 2 * math.pi)
    gx = cv2.Sobel(height_field, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(height_field, cv2.CV_32F, 0, 1, ksize=3)
    emboss = gx * math.cos(angle) + gy * math.sin(angle)
    metal = palette(rng, 2, "metal")
    base = gradient_map(np.clip(0.5 + 0.4 * (u * math.cos(angle) + v * math.sin(angle)), 0, 1), metal)
    emboss *= _uniform(rng, (0.25, 0.6)) / max(float(np.abs(emboss).max()), 1e-6)
    patch = np.clip(base * (1.0 + emboss)[..., None], 0, 255)
    x0, y0 = at or _place(rng, height, width, size)
    shadow = cv2.GaussianBlur(alpha, (0, 0), max(1.0, size * 0.04)) * _uniform(rng, (0.2, 0.5))
    _composite(canvas, x0 + int(size * 0.04), y0 + int(size * 0.06), np.zeros_like(patch), shadow)
    _composite(canvas, x0, y0, patch, alpha)


def _leaf(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A pointed leaf (two arcs) with a midrib and veins, shaded."""
    height, width = canvas.shape[:2]
    size = _object_size(rng, height, width, 0.05, 0.5)
    u, v = _local_grid(size, rng.uniform(0, 2 * math.pi), 1.0)
    half_width = (
        _uniform(rng, (0.2, 0.45))
        * np.clip(1.0 - u * u, 0.0, 1.0) ** _uniform(rng, (0.7, 1.2))
        * (np.abs(u) < 0.95)
    )
    bend = rng.uniform(-0.2, 0.2) * (u * u - 0.5)
    across = v - bend
    alpha = _soft_step(half_width - np.abs(across), 2.0 / (size / 2.0))
    stops = palette(rng, 3, "foliage" if rng.random() < 0.7 else "earth")
    shade = 0.6 + 0.4 * fbm(rng, size, size, 4.0, 3) + 0.3 * across
    veins = np.exp(-((across / 0.015) ** 2)) + 0.5 * (np.abs(np.sin((u - np.abs(across)) * 18.0)) < 0.12)
    patch = gradient_map(np.clip(shade * 0.7, 0, 1), stops) * (1.0 + 0.25 * np.clip(veins, 0, 1))[..., None]
    _composite(canvas, *_place(rng, height, width, size), np.clip(patch, 0, 255), alpha)


def _strokes(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A few smooth random curves of varying width: branches, cables, hair, cracks."""
    height, width = canvas.shape[:2]
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 7))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        angle, step = rng.uniform(0, 2 * math.pi), _uniform(rng, (5.0, 30.0))
        points = []
        for _ in range(int(rng.integers(4, 20))):
            points.append((x, y))
            angle += rng.normal(0.0, 0.3)
            x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        cv2.polylines(mask, [np.array(points, np.int32)], False, 255, int(rng.integers(1, 9)), cv2.LINE_AA)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), _uniform(rng, (0.5, 1.8)))
    colour = palette(rng, 1)[0]
    shade = 0.7 + 0.6 * fbm(rng, height, width, 8.0, 3)
    canvas += alpha[..., None] * (colour * shade[..., None] - canvas)


def _bokeh(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """Out-of-focus highlights: translucent, very soft discs that brighten what is under them."""
    height, width = canvas.shape[:2]
    light: np.ndarray = np.zeros((height, width), dtype=np.float32)
    top = max(4.0, 0.08 * min(height, width))
    for _ in range(int(rng.integers(5, 40))):
        radius = _uniform(rng, (3.0, top))
        cx, cy = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        cv2.circle(light, (cx, cy), int(radius), float(rng.uniform(0.2, 0.6)), -1, cv2.LINE_AA)
    light = cv2.GaussianBlur(light, (0, 0), max(2.5, top * _uniform(rng, (0.15, 0.4))))
    colour = palette(rng, 1, _pick(rng, ("sky", "earth", "any")))[0] * 0.3 + 180.0
    canvas += np.clip(light, 0, 0.8)[..., None] * (colour - canvas)


def _shadow(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A large soft shadow or patch of light, multiplicative."""
    height, width = canvas.shape[:2]
    field = fbm(rng, height, width, _uniform(rng, (1.0, 3.0)), 3)
    alpha = _soft_step(field - _uniform(rng, (0.4, 0.7)), _uniform(rng, (0.02, 0.2)))
    gain = _uniform(rng, (0.4, 0.8)) if rng.random() < 0.7 else _uniform(rng, (1.15, 1.5))
    canvas *= (1.0 + alpha * (gain - 1.0))[..., None]


def _cuboid(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A box seen from above one corner: three faces (a hexagonal outline) each shaded and textured differently,
    edges slightly soft, on a cast shadow: man-made clutter whose single faces are never shown alone."""
    height, width = canvas.shape[:2]
    size = _object_size(rng, height, width, 0.1, 0.6)
    c = np.array([size / 2, size / 2])
    angle = rng.uniform(0, 2 * math.pi)
    axes = [
        np.array(
            [
                math.cos(angle + k * 2 * math.pi / 3 + rng.normal(0, 0.15)),
                math.sin(angle + k * 2 * math.pi / 3 + rng.normal(0, 0.15)),
            ]
        )
        * size
        * _uniform(rng, (0.14, 0.23))
        for k in range(3)
    ]
    colour = palette(rng, 1)[0]
    grain = 0.85 + 0.3 * fbm(rng, size, size, _uniform(rng, (3.0, 12.0)), 4)
    patch = np.zeros((size, size, 3), dtype=np.float32)
    alpha: np.ndarray = np.zeros((size, size), dtype=np.float32)
    for k in range(3):
        a, b = axes[k], axes[(k + 1) % 3]
        face = np.array([c, c + a, c + a + b, c + b])
        mask = np.zeros((size, size), dtype=np.uint8)
        cv2.fillPoly(mask, [np.rint(face * 4).astype(np.int32)], 255, cv2.LINE_AA, shift=2)
        m = mask.astype(np.float32) / 255.0
        shade = _uniform(rng, (0.35, 1.1)) * (1.0 + 0.25 * (_grid_noise(rng, size, size, 2, 2) - 0.5))
        patch += m[..., None] * (colour * (shade * grain)[..., None] - patch)
        alpha = np.maximum(alpha, m)
    alpha = cv2.GaussianBlur(alpha, (0, 0), _uniform(rng, (0.3, 1.6)))
    x0, y0 = _place(rng, height, width, size)
    shadow = cv2.GaussianBlur(alpha, (0, 0), max(1.0, size * 0.05)) * _uniform(rng, (0.2, 0.5))
    _composite(canvas, x0 + int(size * 0.05), y0 + int(size * 0.08), np.zeros_like(patch), shadow)
    _composite(canvas, x0, y0, np.clip(patch, 0, 255), alpha)


def _cylinder(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A cup, can or post: a body shaded round (dark sides, a specular band), an elliptical top showing its
    inside, soft edges; upright or lying at any angle."""
    height, width = canvas.shape[:2]
    size = _object_size(rng, height, width, 0.1, 0.7)
    u, v = _local_grid(size, rng.normal(0, 0.2) + (math.pi / 2 if rng.random() < 0.25 else 0.0), 1.0)
    half_w = _uniform(rng, (0.25, 0.6))
    top, bottom = -_uniform(rng, (0.35, 0.68)), _uniform(rng, (0.35, 0.68))
    ellipse = half_w * _uniform(rng, (0.15, 0.45))
    x = u / half_w
    body = (np.abs(x) < 1) & (v > top) & (v < bottom + ellipse * np.sqrt(np.clip(1 - x * x, 0, 1)))
    cap = ((x * x) + ((v - top) / ellipse) ** 2) < 1
    alpha = cv2.GaussianBlur((body | cap).astype(np.float32), (0, 0), _uniform(rng, (0.3, 2.0)))
    colour = palette(rng, 1)[0]
    light = rng.uniform(-0.6, 0.6)
    round_shade = np.sqrt(np.clip(1 - x * x, 0, 1)) * (
        0.7 + 0.3 * np.cos(np.arcsin(np.clip(x, -1, 1)) - light)
    )
    band = np.exp(-(((x - light) / 0.12) ** 2)) * _uniform(rng, (0.0, 0.8))
    shade = 0.25 + 0.8 * round_shade + band
    inner = ((x * x) + ((v - top) / ellipse) ** 2) < 0.8
    shade = np.where(cap, np.where(inner, 0.35 + 0.3 * (v - top) / ellipse, 1.0), shade)
    grain = 0.9 + 0.2 * fbm(rng, size, size, _uniform(rng, (3.0, 12.0)), 3)
    patch = np.clip(colour * (shade * grain)[..., None], 0, 255)
    _composite(canvas, *_place(rng, height, width, size), patch, alpha)


# What a vessel may hold: a colour family and whether its surface is textured (food) rather than smooth.
CONTENTS = (
    ("earth", False),
    ("earth", False),
    ("grey", False),
    ("sky", False),
    ("any", False),
    ("earth", True),
    ("foliage", True),
)


def _ellipse_alpha(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, radius: float, soft: float
) -> np.ndarray:
    """Alpha (h, w) of a disc of ``radius`` centred at (cu, cv) in `_local_grid` coordinates, edge ``soft``."""
    return _soft_step(radius - np.hypot(u - cu, v - cv), soft)


def _vessel(
    rng: np.random.Generator,
    canvas: np.ndarray,
    size: int | None = None,
    corner: tuple[int, int] | None = None,
) -> None:
    """A cup, bowl or plate seen from above at an angle, a cup often on a saucer: nested ellipses whose insides
    differ from what surrounds them (a glazed inner wall, a drink, food), a glossy lip, a shaded body below the
    rim and a handle on cups. Tables in photographs are full of such round rims; the ring class must not
    claim them. What tells a rim from a drawn ring is perspective: the surface of a drink lies below the rim
    and towards the viewer, so the inner wall shows as a crescent, broad on the far side and next to nothing
    on the near one, where a ring's band is equally wide all round; food sits off the plate's centre.
    ``size`` (px) and ``corner`` (the patch's top-left x, y) place it; random when None."""
    height, width = canvas.shape[:2]
    size = size or _object_size(rng, height, width, 0.2, 1.0)
    angle = rng.normal(0.0, 0.2) if rng.random() < 0.8 else rng.uniform(0, math.pi)
    u, v = _local_grid(size, angle, _uniform(rng, (1.0, 2.2)))  # aspect: how obliquely it is seen
    soft = _uniform(rng, (0.5, 2.0)) / (size / 2.0)
    light = rng.uniform(-0.8, 0.8)
    along = (u * math.cos(light) + v * math.sin(light)).astype(np.float32)  # lit side positive
    kind = _pick(rng, ("cup", "cup", "bowl", "plate"))
    saucer = kind == "plate" or (kind == "cup" and rng.random() < 0.7)
    rim = _uniform(rng, (0.4, 0.58)) if saucer and kind == "cup" else _uniform(rng, (0.6, 0.85))
    depth = _uniform(rng, (0.05, 0.45)) if kind != "plate" else 0.0
    cv0 = -depth / 2.0  # the rim's centre: the body hangs below it, the whole stays in the patch
    layers: list[tuple[np.ndarray, np.ndarray]] = []  # (colour (h, w, 3), alpha (h, w)), back to front

    if saucer:
        colour = palette(rng, 1, _pick(rng, ("grey", "any", "earth")))[0]
        r = np.hypot(u, v)
        raised = np.clip(1.0 - np.abs(r - 0.86) / 0.08, 0.0, 1.0)  # the saucer's rim catches the light
        shade = 0.75 + 0.2 * along + 0.25 * raised - 0.15 * (r < 0.7)
        layers.append((colour * shade[..., None], _ellipse_alpha(u, v, 0.0, 0.0, 0.95, soft)))
    body_colour = palette(rng, 1)[0]
    if kind != "plate":
        x = u / rim
        taper = 1.0 - (0.35 if kind == "bowl" else 0.1) * np.clip((v - cv0) / (depth + rim), 0.0, 1.0)
        inside = (np.abs(x) < taper) & (v > cv0) & (v < cv0 + depth + rim * np.sqrt(np.clip(1 - x * x, 0, 1)))
        round_shade = np.sqrt(np.clip(1 - (x / taper) ** 2, 0, 1)) * (
            0.7 + 0.3 * np.cos(np.arcsin(np.clip(x / taper, -1, 1)) - light)
        )
        shade = 0.3 + 0.7 * round_shade + np.exp(-(((x - light) / 0.15) ** 2)) * _uniform(rng, (0.0, 0.6))
        if kind == "cup" and rng.random() < 0.8:  # a handle: a thick loop on one side, behind the body's edge
            side = 1.0 if rng.random() < 0.5 else -1.0
            hu, hv = side * rim * _uniform(rng, (0.95, 1.15)), cv0 + depth * 0.5 + rim * 0.2
            outer = rim * _uniform(rng, (0.3, 0.45))
            loop = _ellipse_alpha(u, v, hu, hv, outer, soft) * (
                1.0 - _ellipse_alpha(u, v, hu, hv, outer * _uniform(rng, (0.45, 0.7)), soft)
            )
            handle_shade = 0.55 + 0.35 * along
            layers.append((body_colour * handle_shade[..., None], loop))
        body_alpha = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), max(0.5, soft * size / 2.0))
        layers.append((body_colour * shade[..., None], body_alpha))
        glazed = rng.random() < 0.6  # a white inner wall, else the body's colour
        wall = palette(rng, 1, "grey")[0] * 0.3 + 170.0 if glazed else body_colour * 1.1
        far = np.clip((cv0 - v) / rim, -1.0, 1.0)  # the far wall faces the camera: lighter
        wall_shade = 0.7 + 0.2 * far + 0.15 * along
        layers.append((wall * wall_shade[..., None], _ellipse_alpha(u, v, 0.0, cv0, rim, soft)))
        lip = np.clip(
            1.0 - np.abs(np.hypot(u, v - cv0) - rim * 0.985) / (rim * _uniform(rng, (0.01, 0.04))), 0, 1
        )
        layers.append((np.full((size, size, 3), 235.0, np.float32), lip * _uniform(rng, (0.0, 0.8))))
        contents = rim * _uniform(rng, (0.6, 0.92))
        near = _uniform(rng, (0.65, 1.0))  # the surface sits towards the near side: the far wall shows
        ccu, ccv = 0.0, cv0 + (rim - contents) * near
    else:
        contents = _uniform(rng, (0.3, 0.7))
        ccu, ccv = rng.uniform(-0.25, 0.25, size=2)  # served off-centre: not a disc in a ring
    if kind != "plate" or rng.random() < 0.7:  # what it holds; some plates are empty
        family, textured = CONTENTS[int(rng.integers(len(CONTENTS)))]
        stops = palette(rng, 3, family)
        t = np.clip(0.5 + 0.35 * along + 0.2 * (v - ccv), 0.0, 1.0)
        if textured or rng.random() < 0.5:  # food, or foam on a drink
            t = 0.5 * t + 0.5 * fbm(rng, size, size, _uniform(rng, (3.0, 14.0)), 4)
        colour = gradient_map(t, stops)
        if rng.random() < 0.6:  # a reflection of the light on the surface
            glint = np.hypot(u - ccu - contents * 0.4 * math.cos(light), v - ccv + contents * 0.3) / (
                contents * 0.15
            )
            colour = colour + np.exp(-(glint**2))[..., None] * (245.0 - colour)
        if kind == "plate":
            outline = _ellipse_alpha(u * _uniform(rng, (0.8, 1.2)), v, ccu, ccv, contents, soft)
            ragged = np.clip((fbm(rng, size, size, 6.0, 3) - 0.25) * 4.0, 0.0, 1.0)  # food is not a disc
            layers.append((colour, outline * ragged))
        else:
            layers.append((colour, _ellipse_alpha(u, v, ccu, ccv, contents, soft)))
    x0, y0 = corner or _place(rng, height, width, size)
    footprint = np.maximum.reduce([alpha for _, alpha in layers])
    shadow = cv2.GaussianBlur(footprint, (0, 0), max(1.0, size * 0.04)) * _uniform(rng, (0.2, 0.5))
    _composite(
        canvas,
        x0 + int(size * rng.uniform(-0.05, 0.05)),
        y0 + int(size * 0.05),
        np.zeros((size, size, 3), np.float32),
        shadow,
    )
    for colour, alpha in layers:
        _composite(canvas, x0, y0, np.clip(colour, 0, 255).astype(np.float32), alpha)


def _lines(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """Crisp straight structure: one or two families of lines converging on vanishing points (beams, frames,
    cables, a gantry), each line its own width, running across the frame or ending at random."""
    height, width = canvas.shape[:2]
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        vanish = np.array([rng.uniform(-2, 3) * width, rng.uniform(-2, 3) * height])
        for _ in range(int(rng.integers(2, 12))):
            start = np.array([rng.uniform(0, width), rng.uniform(0, height)])
            direction = start - vanish
            direction /= max(float(np.linalg.norm(direction)), 1e-6)
            length = _uniform(rng, (0.1, 1.5)) * max(height, width)
            end = start + direction * length * (1 if rng.random() < 0.5 else -1)
            points = np.rint(np.stack([start, end]) * 16).astype(np.int32)
            cv2.polylines(mask, [points], False, 255, int(rng.integers(1, 7)), cv2.LINE_AA, shift=4)
    alpha = mask.astype(np.float32) / 255.0
    colour = palette(rng, 1)[0]
    shade = 0.7 + 0.6 * fbm(rng, height, width, 4.0, 2)
    canvas += alpha[..., None] * (colour * shade[..., None] - canvas)


def _coins(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """A handful of coins, buttons or caps of similar sizes scattered over a part of the image."""
    height, width = canvas.shape[:2]
    typical = _object_size(rng, height, width, 0.06, 0.25)
    for _ in range(int(rng.integers(3, 16))):
        size = max(8, int(typical * _uniform(rng, (0.7, 1.3))))
        _coin(rng, canvas, size, _place(rng, height, width, size))


def _glints(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """Specular glints and lamps: a glowing core with thin diffraction spikes fading outwards, added light."""
    height, width = canvas.shape[:2]
    light: np.ndarray = np.zeros((height, width), dtype=np.float32)
    for _ in range(int(rng.integers(1, 8))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        reach = _uniform(rng, (4.0, 0.15 * min(height, width) + 5.0))
        spikes = int(rng.integers(2, 5))  # lines through the core: 4-8 rays
        start = rng.uniform(0, math.pi)
        for k in range(spikes):
            angle = start + k * math.pi / spikes + rng.normal(0.0, 0.05)
            for fraction, value in ((1.0, 0.25), (0.5, 0.5), (0.2, 0.9)):  # brighter towards the core
                dx, dy = math.cos(angle) * reach * fraction, math.sin(angle) * reach * fraction
                points = np.rint(np.array([[cx - dx, cy - dy], [cx + dx, cy + dy]]) * 16).astype(np.int32)
                cv2.polylines(light, [points], False, value, 1, cv2.LINE_AA, shift=4)
        cv2.circle(light, (int(cx), int(cy)), max(1, int(reach * 0.08)), 1.0, -1, cv2.LINE_AA)
    light = cv2.GaussianBlur(light, (0, 0), _uniform(rng, (0.6, 1.5)))
    glow = cv2.GaussianBlur(light, (0, 0), _uniform(rng, (3.0, 8.0))) * _uniform(rng, (1.0, 4.0))
    colour = palette(rng, 1, _pick(rng, ("sky", "earth", "grey")))[0] * 0.3 + 180.0
    canvas += np.clip(light + glow, 0, 1)[..., None] * (colour - canvas)


CLUTTER_MAKERS: dict[str, Callable[[np.random.Generator, np.ndarray], None]] = {
    "blob": _blob,
    "polygon": _polygon,
    "ellipsoid": lambda rng, canvas: _blob(rng, canvas, ellipsoid=True),
    "eye": _eye,
    "face": _face,
    "coin": _coin,
    "leaf": _leaf,
    "strokes": _strokes,
    "bokeh": _bokeh,
    "shadow": _shadow,
    "cuboid": _cuboid,
    "cylinder": _cylinder,
    "lines": _lines,
    "coins": _coins,
    "glints": _glints,
    "vessel": _vessel,
}


# --- Camera ----------------------------------------------------------------------------------------------


def camera_effects(
    rng: np.random.Generator, image: np.ndarray, grey_prob: float = 0.2, defocus: Range = (0.6, 2.5)
) -> np.ndarray:
    """What a camera adds: defocus (a Gaussian blur of sigma in ``defocus``), resampling softness, vignette,
    colour cast, gamma, sensor noise and, at ``grey_prob``, greyscale. uint8 or float (H, W, 3) in, uint8
    (H, W, 3) out. The random draws do not depend on the arguments, only their outcomes."""
    height, width = image.shape[:2]
    out: np.ndarray = image.astype(np.float32)
    if rng.random() < 0.25:
        out = cv2.GaussianBlur(out, (0, 0), _uniform(rng, defocus))
    if rng.random() < 0.2:
        factor = _uniform(rng, (1.5, 2.0 if defocus[1] < 2.0 else 3.0))
        small = cv2.resize(
            out, (max(8, int(width / factor)), max(8, int(height / factor))), interpolation=cv2.INTER_AREA
        )
        out = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        cx, cy = width * rng.uniform(0.3, 0.7), height * rng.uniform(0.3, 0.7)
        distance = np.hypot(xs - cx, ys - cy) / math.hypot(width / 2, height / 2)
        out *= (1.0 - _uniform(rng, (0.1, 0.5)) * distance**2)[..., None]
    if rng.random() < 0.3:
        out *= (1.0 + rng.uniform(-0.12, 0.12, size=3)).astype(np.float32)
    if rng.random() < 0.3:
        out = 255.0 * (np.clip(out, 0, 255) / 255.0) ** _uniform(rng, (0.7, 1.4))
    if rng.random() < grey_prob:
        out = np.repeat((out @ LUMA)[..., None], 3, axis=2)
    if rng.random() < 0.7:
        sigma = _uniform(rng, (1.0, 8.0))
        noise = rng.normal(0.0, sigma, size=(height, width, 1)).astype(np.float32)
        chroma = rng.normal(0.0, sigma * _uniform(rng, (0.0, 0.6)), size=(height, width, 3)).astype(
            np.float32
        )
        out += noise + chroma
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# Table tops a close-up of a cup stands on: mostly wood, whose brown is that of coffee and tea.
TABLES = ("wood", "wood", "wood", "cloth", "marble", "wall")


def _table_top(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """`photo_like`'s close-up (height, width, 3) float32: a table texture, up to two pieces of clutter, one
    vessel of 0.6-1.1 times the short side centred in the middle half of the frame, at most one more."""
    canvas = texture(rng, height, width, _pick(rng, TABLES))
    for _ in range(int(rng.integers(0, 3))):
        CLUTTER_MAKERS[_pick(rng, HARD_CLUTTER)](rng, canvas)
    size = max(8, int(_uniform(rng, (0.6, 1.1)) * min(height, width)))
    centre = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
    _vessel(rng, canvas, size, (int(centre[0] - size / 2), int(centre[1] - size / 2)))
    if rng.random() < 0.4:
        _vessel(rng, canvas)
    return canvas


def photo_like(
    rng: np.random.Generator,
    height: int,
    width: int,
    camera: bool = True,
    hard: bool = False,
    vessels: bool = False,
) -> np.ndarray:
    """A photo-like image (height, width, 3) uint8 RGB with no shape of the five classes in it.

    ``camera=False`` leaves out `camera_effects` (for a background that shapes are drawn on before the
    camera is applied to the whole image). ``hard``: a studio or plain scene with more clutter, of the kinds
    that look most like the classes (`HARD_CLUTTER`). ``vessels``: one to three cups, bowls or plates seen from
    above (`_vessel`) drawn over the rest; in half of these images, a table top instead (`TABLES`, little
    clutter) with one vessel filling most of the frame near its centre, as a photograph of a cup is taken."""
    if vessels and rng.random() < 0.5:
        canvas = _table_top(rng, height, width)
    else:
        layout = _pick(rng, HARD_LAYOUTS if hard else LAYOUTS)
        canvas = LAYOUT_MAKERS[layout](rng, height, width).astype(np.float32)
        low, high = CLUTTER_COUNTS[layout]
        if hard:
            low, high = low + 2, high + 4
        for _ in range(int(rng.integers(low, high + 1))):
            CLUTTER_MAKERS[_pick(rng, HARD_CLUTTER if hard else CLUTTER)](rng, canvas)
        if vessels:  # drawn last, so that nothing hides them; one to three
            for _ in range(int(rng.integers(1, 4))):
                _vessel(rng, canvas)
    if camera:
        return camera_effects(rng, canvas)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
