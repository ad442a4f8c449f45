"""Video clips of moving shapes: the generator's shapes (`training.data.shapes`) gliding and bouncing over
a plain background, for the video and stream tests and benchmarks (`bench/video.py`).

    python -m training.data.clips clip.mp4 --frames 150 --size 480 640 --fps 30

Each frame is drawn from the shapes' exact geometry (no compression before the encoder), so the bundled
model finds them as it finds still scenes. Deterministic for a seed. Needs PyAV (`centermask-serve[video]`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np

from centermask_client.video import write_video
from training.data.shapes import CLASSIC, Shape, rasterize, sample_shape

# Flat, saturated colours far from the grey background, one per object in turn.
_COLOURS = ((220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 180, 30), (170, 60, 200), (30, 180, 200))
_BACKGROUND = (128, 128, 128)


def moving_frames(
    frames: int, height: int = 480, width: int = 640, *, objects: int = 4, seed: int = 0
) -> Iterator[np.ndarray]:
    """`frames` (height, width, 3) uint8 RGB frames of `objects` shapes moving at constant speeds (a few
    pixels per frame), bouncing off the edges."""
    for image, _ in moving_scenes(frames, height, width, objects=objects, seed=seed):
        yield image


def moving_scenes(
    frames: int, height: int = 480, width: int = 640, *, objects: int = 4, seed: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`moving_frames` with their ground truth: each frame and the (objects, 4) float32 boxes
    [x1, y1, x2, y2] of its shapes (each shape's whole extent, parts hidden by a later shape included),
    object k in row k on every frame (tracking tests)."""
    rng = np.random.default_rng([seed, 24])
    settings = dataclasses.replace(CLASSIC, diameter=(min(height, width) / 6, min(height, width) / 3))
    shapes = [sample_shape(rng, height, width, settings) for _ in range(objects)]
    speeds = [rng.uniform(-1, 1, size=2) * min(height, width) / 80 for _ in shapes]
    for _ in range(frames):
        image = np.empty((height, width, 3), np.uint8)
        image[:] = _BACKGROUND
        boxes = np.zeros((len(shapes), 4), np.float32)
        for number, shape in enumerate(shapes):
            (rows, columns), mask = rasterize(shape, height, width)
            # Basic slicing gives a view: painting it paints the frame.
            image[rows, columns][mask] = _COLOURS[number % len(_COLOURS)]
            ys, xs = np.nonzero(mask)
            if len(xs):
                boxes[number] = (
                    columns.start + xs.min(),
                    rows.start + ys.min(),
                    columns.start + xs.max() + 1,
                    rows.start + ys.max() + 1,
                )
        yield image, boxes
        for index, (shape, speed) in enumerate(zip(shapes, speeds, strict=True)):
            shapes[index], speeds[index] = _moved(shape, speed, height, width)


def _moved(shape: Shape, speed: np.ndarray, height: int, width: int) -> tuple[Shape, np.ndarray]:
    x, y = shape.center[0] + speed[0], shape.center[1] + speed[1]
    speed = speed.copy()
    if not shape.radius <= x <= width - shape.radius:
        speed[0] = -speed[0]
        x = min(max(x, shape.radius), width - shape.radius)
    if not shape.radius <= y <= height - shape.radius:
        speed[1] = -speed[1]
        y = min(max(y, shape.radius), height - shape.radius)
    return dataclasses.replace(shape, center=(x, y)), speed


def write_clip(
    path: str | os.PathLike,
    frames: int,
    height: int = 480,
    width: int = 640,
    *,
    fps: float = 30,
    objects: int = 4,
    seed: int = 0,
) -> None:
    """A clip of `moving_frames`, in the container its suffix names (`write_video`: .mp4, .mov, .mkv, .webm)."""
    clip = moving_frames(frames, height, width, objects=objects, seed=seed)
    write_video(path, ((index / fps, frame) for index, frame in enumerate(clip)), rate=fps)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.data.clips", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out", help="the file to write: .mp4, .mov, .mkv or .webm")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--fps", type=float, default=30)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_clip(args.out, args.frames, *args.size, fps=args.fps, objects=args.objects, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
