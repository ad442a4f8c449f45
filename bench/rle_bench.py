"""Benchmark COCO RLE encoding of instance masks: pycocotools on full masks vs centermask_client.rle on crops.

Run from the repository root:

    python -m bench.rle_bench --instances 50 --height 720 --width 1280 --repeat 20

Timed variants, each over all instances of one image (median of --repeat runs):

* pycocotools, stacked: the model's (N, H, W) masks must first become one Fortran-ordered (H, W, N)
  uint8 array, which costs a full transposed copy; that conversion is included.
* pycocotools, per mask: each (H, W) mask converted to Fortran order and encoded on its own; and
  the same without the conversion, as if the masks were already Fortran-ordered.
* centermask_client.rle.encode_crop: each instance's crop and its offset; no full-size mask is touched.
* centermask_client.rle.encode: each full (H, W) mask, for callers that only have full masks.
* model.wire.rle.encode_pasted: all instances at once from the padded stack the model's batched paste makes
  (what the predictor's JSON encoder uses).

All variants must give identical strings; the script fails otherwise.
"""

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_utils
import torch

from bench.results import write_result
from centermask_client.rle import encode, encode_crop
from model.inference.masks import CHUNK_PIXELS, PastedMasks, chunk_indices
from model.wire.rle import encode_pasted

MIN_SIZE, MAX_SIZE = 30, 400


@dataclass(frozen=True)
class Instance:
    """One instance mask: an (h, w) bool crop whose top-left pixel is at (x0, y0) in the image."""

    crop: np.ndarray
    x0: int
    y0: int


def filled_ellipse(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) bool mask of a rotated ellipse centred in the box, reaching close to its edges."""
    ys, xs = np.mgrid[:h, :w] + 0.5
    dy, dx = ys - h / 2, xs - w / 2
    angle = rng.uniform(0.0, np.pi)
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    ru, rv = rng.uniform(0.3, 0.5) * w, rng.uniform(0.3, 0.5) * h
    return (u / ru) ** 2 + (v / rv) ** 2 <= 1.0


def filled_polygon(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) bool mask of a random star-shaped polygon (even-odd fill, sampled at pixel centres)."""
    n_vertices = int(rng.integers(5, 16))
    angles = np.sort(rng.uniform(0.0, 2 * np.pi, n_vertices))
    radii = rng.uniform(0.2, 0.5, n_vertices)
    vx = w / 2 + radii * w * np.cos(angles)
    vy = h / 2 + radii * h * np.sin(angles)
    ys, xs = np.mgrid[:h, :w] + 0.5
    inside = np.zeros((h, w), dtype=bool)
    for xa, ya, xb, yb in zip(vx, vy, np.roll(vx, -1), np.roll(vy, -1), strict=True):
        if ya == yb:
            continue
        spans = (ya <= ys) != (yb <= ys)
        inside ^= spans & (xs < xa + (ys - ya) * (xb - xa) / (yb - ya))
    return inside


def make_instances(count: int, height: int, width: int, seed: int) -> list[Instance]:
    """`count` random ellipse / polygon instances with boxes of 30..400 px, inside the image."""
    rng = np.random.default_rng(seed)
    instances = []
    for _ in range(count):
        h = int(rng.integers(MIN_SIZE, min(MAX_SIZE, height) + 1))
        w = int(rng.integers(MIN_SIZE, min(MAX_SIZE, width) + 1))
        shape = filled_ellipse if rng.random() < 0.5 else filled_polygon
        x0 = int(rng.integers(0, width - w + 1))
        y0 = int(rng.integers(0, height - h + 1))
        instances.append(Instance(shape(h, w, rng), x0, y0))
    return instances


def full_masks(instances: list[Instance], height: int, width: int) -> np.ndarray:
    """(N, H, W) uint8 masks, the layout a model's pasted masks come in."""
    masks = np.zeros((len(instances), height, width), dtype=np.uint8)
    for mask, inst in zip(masks, instances, strict=True):
        h, w = inst.crop.shape
        mask[inst.y0 : inst.y0 + h, inst.x0 : inst.x0 + w] = inst.crop
    return masks


def median_ms(
    variants: dict[str, Callable[[], list[str]]], repeat: int
) -> dict[str, tuple[float, list[str]]]:
    """Per variant, the median wall time in ms over `repeat` rounds (one call of each variant per round, so
    drift of the machine affects them alike) and the strings of its last call."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    results: dict[str, list[str]] = {}
    for _ in range(repeat):
        for name, run in variants.items():
            start = time.perf_counter()
            results[name] = run()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: (statistics.median(times[name]), results[name]) for name in variants}


def pasted(instances: list[Instance], height: int, width: int) -> PastedMasks:
    """The instances as the model's batched paste hands them over: stacks of windows of similar size."""
    windows = torch.tensor([[i.x0, i.y0, i.crop.shape[1], i.crop.shape[0]] for i in instances])
    chunks = []
    for index in chunk_indices((windows[:, 2] * windows[:, 3]).tolist(), windows, CHUNK_PIXELS):
        members = [instances[j] for j in index.tolist()]
        stack = np.zeros(
            (len(members), max(m.crop.shape[0] for m in members), max(m.crop.shape[1] for m in members)), bool
        )
        for slot, inst in zip(stack, members, strict=True):
            slot[: inst.crop.shape[0], : inst.crop.shape[1]] = inst.crop
        chunks.append((index, torch.from_numpy(stack)))
    return PastedMasks((height, width), windows.numpy(), chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.repeat < 1 or args.instances < 1:
        parser.error("--repeat and --instances must be positive")
    if min(args.height, args.width) < MIN_SIZE:
        parser.error(f"--height and --width must be at least {MIN_SIZE}")

    instances = make_instances(args.instances, args.height, args.width, args.seed)
    masks = full_masks(instances, args.height, args.width)
    # Masks a model would already hand over in Fortran order: the lower bound for pycocotools.
    fortran_masks = [np.asfortranarray(mask) for mask in masks]

    def pycoco_stacked() -> list[str]:
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        return [rle["counts"].decode("ascii") for rle in rles]

    def pycoco_each() -> list[str]:
        return [mask_utils.encode(np.asfortranarray(mask))["counts"].decode("ascii") for mask in masks]

    def pycoco_each_fortran() -> list[str]:
        return [mask_utils.encode(mask)["counts"].decode("ascii") for mask in fortran_masks]

    def ours_crops() -> list[str]:
        return [encode_crop(i.crop, i.x0, i.y0, args.height, args.width)["counts"] for i in instances]

    def ours_full() -> list[str]:
        return [encode(mask)["counts"] for mask in masks]

    stacked = pasted(instances, args.height, args.width)

    def ours_pasted() -> list[str]:
        return [rle["counts"] for rle in encode_pasted(stacked)]

    variants = {
        "pycocotools stacked (incl. asfortranarray)": pycoco_stacked,
        "pycocotools per mask (incl. asfortranarray)": pycoco_each,
        "pycocotools per mask (already Fortran order)": pycoco_each_fortran,
        "centermask_client.rle.encode_crop on crops": ours_crops,
        "centermask_client.rle.encode on full masks": ours_full,
        "model.wire.rle.encode_pasted on the pasted stack": ours_pasted,
    }
    timings = median_ms(variants, args.repeat)
    reference = timings["pycocotools stacked (incl. asfortranarray)"][1]
    crop_ms = timings["centermask_client.rle.encode_crop on crops"][0]
    print(
        f"{args.instances} instances on {args.height}x{args.width}, boxes {MIN_SIZE}..{MAX_SIZE} px, "
        f"median counts string {statistics.median(map(len, reference)):.0f} chars, "
        f"median of {args.repeat} runs"
    )
    for name, (ms, strings) in timings.items():
        if strings != reference:
            raise SystemExit(f"{name} disagrees with pycocotools")
        print(f"{name:45s} {ms:9.3f} ms  {ms / crop_ms:7.1f}x the encode_crop time")
    print("all variants produced identical counts strings")
    write_result(
        "rle",
        vars(args),
        [{"variant": name, "median_ms": round(ms, 3)} for name, (ms, _) in timings.items()],
    )


if __name__ == "__main__":
    main()
