"""Training-time augmentation of an image with its instance masks and boxes.

Geometric steps keep every class (a flipped or quarter-turned star is still a star): horizontal and vertical
flips and rotations by 90°, 180° or 270°, applied to the image, the masks and the boxes alike. Photometric
steps change pixels only: colour jitter (brightness, contrast, saturation, a hue rotation about the grey
axis, gamma), a random channel permutation, Gaussian blur, Gaussian noise and JPEG re-encoding, in the order a
camera and an encoder would apply them. Each step has its probability; all randomness comes from torch's
global generator (which DataLoader seeds per worker), so a torch seed fixes every sample. Everything works
on uint8 numpy arrays of the already resized image and costs a few milliseconds per sample.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
Range = tuple[float, float]


@dataclass(frozen=True)
class Augmentation:
    """What training samples go through. ``*_prob`` fields are probabilities per sample; ranges are uniform.

    Colour jitter multiplies brightness, contrast and saturation by factors in ``1 ± brightness`` etc.,
    rotates hues by up to ``± hue`` degrees and applies a gamma drawn log-uniformly from ``gamma``.
    """

    hflip_prob: float = 0.5
    vflip_prob: float = 0.0
    rot90_prob: float = 0.0
    color_prob: float = 0.0
    brightness: float = 0.35
    contrast: float = 0.4
    saturation: float = 0.6
    hue: float = 180.0
    gamma: Range = (0.6, 1.6)
    channel_shuffle_prob: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: Range = (0.3, 1.6)
    noise_prob: float = 0.0
    noise_sigma: Range = (2.0, 14.0)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        for name in PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability, got {getattr(self, name)}")
        for name in ("gamma", "blur_sigma", "noise_sigma", "jpeg_quality"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be 0 < low ≤ high, got {(low, high)}")


PROBABILITIES = (
    "hflip_prob",
    "vflip_prob",
    "rot90_prob",
    "color_prob",
    "channel_shuffle_prob",
    "blur_prob",
    "noise_prob",
    "jpeg_prob",
)
# detectron2's default: horizontal flips only (the multi-scale resize is the dataset's).
BASIC = Augmentation()
# For models that must work on drawings other than their training data's.
STRONG = Augmentation(
    hflip_prob=0.5,
    vflip_prob=0.5,
    rot90_prob=0.5,
    color_prob=0.8,
    channel_shuffle_prob=0.3,
    blur_prob=0.2,
    noise_prob=0.3,
    jpeg_prob=0.3,
)
PRESETS = {"basic": BASIC, "strong": STRONG}


def _happens(probability: float) -> bool:
    # Nothing is drawn for a step that is off, so BASIC consumes the random stream detectron2-style
    # flipping always did (a run's samples and initialisation do not change when steps are added unused).
    if probability <= 0.0:
        return False
    return float(torch.rand(())) < probability


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def flip_boxes(boxes: np.ndarray, height: int, width: int, horizontal: bool) -> np.ndarray:
    """Boxes (n, 4) x1 y1 x2 y2 of an image (height, width) after a horizontal or vertical flip."""
    x1, y1, x2, y2 = boxes.T
    if horizontal:
        return np.stack([width - x2, y1, width - x1, y2], axis=1)
    return np.stack([x1, height - y2, x2, height - y1], axis=1)


def rotate_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Boxes (n, 4) x1 y1 x2 y2 after a counter-clockwise quarter turn (``np.rot90``) of an image ``width``
    pixels wide: x becomes y' = width - x, y becomes x' = y."""
    x1, y1, x2, y2 = boxes.T
    return np.stack([y1, width - x2, y2, width - x1], axis=1)


def augment_geometry(
    image: np.ndarray, masks: np.ndarray | None, boxes: np.ndarray, augmentation: Augmentation
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Flip and quarter-turn an image (H, W, 3), its masks (n, H, W) (or None) and boxes (n, 4) together."""
    height, width = image.shape[:2]
    if _happens(augmentation.hflip_prob):
        image, boxes = image[:, ::-1], flip_boxes(boxes, height, width, horizontal=True)
        masks = None if masks is None else masks[:, :, ::-1]
    if _happens(augmentation.vflip_prob):
        image, boxes = image[::-1], flip_boxes(boxes, height, width, horizontal=False)
        masks = None if masks is None else masks[:, ::-1]
    if _happens(augmentation.rot90_prob):
        turns = int(torch.randint(1, 4, ()))
        for _ in range(turns):
            boxes = rotate_boxes(boxes, image.shape[1])
            image = np.rot90(image)
            masks = None if masks is None else np.rot90(masks, axes=(1, 2))
    return image, masks, boxes


def _hue_rotation(degrees: float) -> np.ndarray:
    """The 3×3 matrix rotating RGB colours by ``degrees`` about the grey axis (Rodrigues' formula)."""
    axis = np.full(3, 1.0 / math.sqrt(3.0))
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = math.radians(degrees)
    rotation = (
        math.cos(angle) * np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * np.outer(axis, axis)
    )
    return rotation.astype(np.float32)


def _jitter_colour(image: np.ndarray, augmentation: Augmentation) -> np.ndarray:
    pixels: np.ndarray = image.astype(np.float32)
    a = augmentation
    brightness = _uniform(1 - a.brightness, 1 + a.brightness)
    contrast = _uniform(1 - a.contrast, 1 + a.contrast)
    saturation = _uniform(1 - a.saturation, 1 + a.saturation)
    hue = _uniform(-a.hue, a.hue)
    gamma = math.exp(_uniform(math.log(a.gamma[0]), math.log(a.gamma[1])))
    pixels *= brightness
    mean = float((pixels @ LUMA).mean())
    pixels = (pixels - mean) * contrast + mean
    gray = (pixels @ LUMA)[..., None]
    pixels = gray + (pixels - gray) * saturation
    pixels = np.clip(pixels @ _hue_rotation(hue).T, 0.0, 255.0)
    return np.rint(255.0 * (pixels / 255.0) ** gamma).astype(np.uint8)


def augment_pixels(image: np.ndarray, augmentation: Augmentation) -> np.ndarray:
    """Colour jitter, channel permutation, blur, noise and JPEG re-encoding of an image (H, W, 3) uint8."""
    a = augmentation
    if _happens(a.color_prob):
        image = _jitter_colour(image, a)
    if _happens(a.channel_shuffle_prob):
        image = image[..., torch.randperm(3).numpy()]
    if _happens(a.blur_prob):
        radius = _uniform(*a.blur_sigma)
        image = np.asarray(
            Image.fromarray(np.ascontiguousarray(image)).filter(ImageFilter.GaussianBlur(radius))
        )
    if _happens(a.noise_prob):
        sigma = _uniform(*a.noise_sigma)
        noise = torch.randn(image.shape).numpy() * sigma
        image = np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)
    if _happens(a.jpeg_prob):
        quality = int(torch.randint(a.jpeg_quality[0], a.jpeg_quality[1] + 1, ()))
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=quality)
        with Image.open(buffer) as decoded:
            image = np.asarray(decoded.convert("RGB"))
    return image
