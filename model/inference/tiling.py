"""Tiled inference: an image much larger than the model's input, segmented tile by tile at full resolution.

The model resizes every image to its test size (a 600 px short side for the lite configs), so in a 6000 × 4000
image a 40 px object reaches the network at 6 px, below anything it finds. `auto` tiling cuts such an image
into tiles that reach the network unresized, segments each tile as an image of its own, adds one pass of the
whole image at the model's size (for objects larger than a tile), and merges all of it into one set of
instances in the image's pixels. Everything here is weight-free: the predictor's API (`Predictor.predict(...,
tiling=)`), `python -m model.predict` and the service (`service/tiling.py`, every tile through the batcher)
plan and merge with these functions.

The plan (`Tiling.plan`). An image is tiled when both of its sides hold a tile and the model's resize would
shrink it by `factor` or more (AUTO_FACTOR, measured in bench/RESULTS.md). Tiles are `tile_size` square (by
default the model's test short side, so a tile is not resized), overlap by at least `tile_overlap` pixels and
are spread evenly from one edge of the image to the other; a side shorter than a tile gives tiles of that
side. All tiles have one size, so they share a padded shape and batch together.

Merging (`merge`):

1. Each tile's detections are moved into the image's pixels with their masks as tight crops
   (`Candidates`); one is *cut* when its box reaches an edge of its tile that is not the image's (the
   object may go on beyond it).
2. Two detections of overlapping tiles are one object when their masks agree inside the region both tiles
   see in full, the overlap band: mask IoU there at least LINK_IOU, or the smaller of the two (there) lies
   within the other at LINK_IOS while it is cut. Links join groups (union-find), so an object cut by
   several seams becomes one group, and so do the copies of an object that several tiles see whole.
3. A group that some tile saw whole (a member not cut) is its best-scoring whole member: box, class,
   scores and mask. A group of fragments only gets the union of their masks, stitched into one crop the
   size of their boxes' union (never a full-size mask), and its best fragment's class and scores.
4. The whole-image pass contributes the objects too large to be sure to lie whole in a tile (box longer
   than the overlap). A group of fragments lying mostly (FRAGMENT_SHARE of its mask) in such a large
   detection's mask is that object's pieces: dropped, the large detection kept. A group some tile saw whole
   whose mask IoU with a large detection is at least SAME_IOU is the same object: the group (at full
   resolution) is kept, the large detection dropped; one that lies almost wholly (PART_SHARE) in a large
   detection's mask, is larger than the overlap and is not the same object, is a part of it that a tile
   took for an object: dropped (a smaller one is kept: an object in a ring's hole, under a coarse mask).
5. Last, of two instances of one class whose masks overlap by DUPLICATE_IOU or more (a pass's own
   near-duplicates, which the model's box NMS lets through), the better-scoring one stays.

Memory: a tile's detections are reduced to crops as soon as it is done, and masks never exist at full image
size: what a tiled image holds beyond its pixels is its tiles in flight and the crops of its detections.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from centermask_client.schemas import MIN_TILE_SIZE, TILING_MODES, TilingMode
from model.inference.detections import Detections, Selection
from model.inference.masks import MaskCrop, PastedMasks
from model.inference.preprocess import resized_shape

# Measured (bench/tiling.py, bench/RESULTS.md#tiled-inference): the shrink from which tiling pays off, and
# an overlap that holds the small objects it is for whole in at least one tile.
AUTO_FACTOR = 4.0
DEFAULT_OVERLAP = 128
# The most pixels of an image read for tiling where no caller says (python -m model.predict; the service's
# default of CENTERMASK_MAX_TILED_PIXELS): 100 MP, 300 MB of decoded RGB.
MAX_TILED_PIXELS = 100_000_000
# A box this close (pixels) to an inner edge of its tile may belong to an object that goes on beyond it.
EDGE_MARGIN = 2.0
LINK_IOU = 0.4
LINK_IOS = 0.5
SAME_IOU = 0.5
FRAGMENT_SHARE = 0.5
PART_SHARE = 0.8
DUPLICATE_IOU = 0.5


@dataclass(frozen=True)
class Tile:
    """A tile: columns x0..x1 and rows y0..y1 (ends exclusive) of the image."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def size(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0


@dataclass(frozen=True)
class TilePlan:
    """The tiles an image is cut into; one more pass, the whole image at the model's size, goes with them."""

    image_size: tuple[int, int]
    tile_size: int
    tile_overlap: int
    tiles: tuple[Tile, ...]

    @property
    def passes(self) -> int:
        """Forward passes the image takes: its tiles and the whole image."""
        return len(self.tiles) + 1

    def cut(self, pixels: np.ndarray, index: int) -> np.ndarray:
        """Tile `index` of the image's (H, W, 3) pixels, at full resolution (a view)."""
        tile = self.tiles[index]
        return pixels[tile.y0 : tile.y1, tile.x0 : tile.x1]


@dataclass(frozen=True)
class Tiling:
    """How an image is tiled. `tile_size` None is the model's test short side (tiles go through unresized);
    `tile_overlap` None is DEFAULT_OVERLAP, or a quarter of a smaller tile."""

    mode: TilingMode = "auto"
    tile_size: int | None = None
    tile_overlap: int | None = None
    factor: float = AUTO_FACTOR

    def __post_init__(self) -> None:
        if self.mode not in TILING_MODES:
            raise ValueError(f"tiling is one of {', '.join(TILING_MODES)}, not {self.mode!r}")
        if self.tile_size is not None and self.tile_size < MIN_TILE_SIZE:
            raise ValueError(f"tile_size must be at least {MIN_TILE_SIZE}, got {self.tile_size}")
        if self.tile_overlap is not None and self.tile_overlap < 0:
            raise ValueError(f"tile_overlap must not be negative, got {self.tile_overlap}")
        if self.tile_size is not None and self.tile_overlap is not None:
            _check_overlap(self.tile_size, self.tile_overlap)
        if not self.factor >= 1.0:
            raise ValueError(f"the tiling factor must be at least 1, got {self.factor}")

    def plan(self, image_size: tuple[int, int], resize: tuple[int, int]) -> TilePlan | None:
        """The tiles of an image of `image_size` (H, W) for a model of `resize` (min_size, max_size), or None
        when the image is not tiled. Raises ValueError when the overlap does not fit the tile size."""
        if self.mode == "off":
            return None
        tile_size = self.tile_size if self.tile_size is not None else resize[0]
        overlap = self.tile_overlap if self.tile_overlap is not None else min(DEFAULT_OVERLAP, tile_size // 4)
        _check_overlap(tile_size, overlap)
        height, width = image_size
        shrink = max(height, width) / max(resized_shape(height, width, *resize))
        if min(height, width) < tile_size or shrink < self.factor:
            return None
        rows = _starts(height, tile_size, overlap)
        columns = _starts(width, tile_size, overlap)
        tiles = tuple(
            Tile(x, y, min(width, x + tile_size), min(height, y + tile_size)) for y in rows for x in columns
        )
        return TilePlan(image_size, tile_size, overlap, tiles)


def _check_overlap(tile_size: int, overlap: int) -> None:
    if overlap > tile_size // 2:
        raise ValueError(f"tile_overlap ({overlap}) must be at most half of tile_size ({tile_size})")


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles start along a side of `length`: the fewest tiles overlapping by at least `overlap`, spread
    evenly, the first at 0 and the last ending at the side's end."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(index * (length - tile) / (count - 1)) for index in range(count)]


@dataclass(frozen=True)
class Candidates:
    """Detections of one pass in the image's pixels, masks as tight crops. `tile`: the plan's tile index, or
    -1 for the whole-image pass. `cut`: (n,) bool, whether each may belong to an object going on beyond its
    tile."""

    tile: int
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    mask_scores: np.ndarray
    crops: list[MaskCrop]
    cut: np.ndarray

    def __len__(self) -> int:
        return len(self.crops)


def tile_candidates(plan: TilePlan, index: int, detections: Detections) -> Candidates:
    """A tile's detections (in its own pixels) → Candidates in the image's pixels."""
    tile = plan.tiles[index]
    height, width = plan.image_size
    boxes = detections.boxes.astype(np.float32) + np.array([tile.x0, tile.y0, tile.x0, tile.y0], np.float32)
    crops = [
        _tight(MaskCrop(crop.x0 + tile.x0, crop.y0 + tile.y0, crop.crop)) for crop in detections.mask_crops()
    ]
    # An inner edge is one the image goes on beyond.
    cut = np.zeros(len(crops), dtype=bool)
    if tile.x0 > 0:
        cut |= boxes[:, 0] <= tile.x0 + EDGE_MARGIN
    if tile.y0 > 0:
        cut |= boxes[:, 1] <= tile.y0 + EDGE_MARGIN
    if tile.x1 < width:
        cut |= boxes[:, 2] >= tile.x1 - EDGE_MARGIN
    if tile.y1 < height:
        cut |= boxes[:, 3] >= tile.y1 - EDGE_MARGIN
    return Candidates(
        index, boxes, detections.scores, detections.class_ids, detections.mask_scores, crops, cut
    )


def whole_candidates(plan: TilePlan, detections: Detections) -> Candidates:
    """The whole-image pass's large detections (a side longer than the overlap: they may lie whole in no
    tile), masks pasted at full resolution; its smaller ones, which tiles see better, are left out."""
    sides = np.maximum(
        detections.boxes[:, 2] - detections.boxes[:, 0], detections.boxes[:, 3] - detections.boxes[:, 1]
    )
    large = detections.select(np.flatnonzero(sides > plan.tile_overlap))
    return Candidates(
        -1,
        large.boxes.astype(np.float32),
        large.scores,
        large.class_ids,
        large.mask_scores,
        [_tight(crop) for crop in large.mask_crops()],
        np.zeros(len(large), dtype=bool),
    )


def _tight(crop: MaskCrop) -> MaskCrop:
    """The crop cut down to its mask's bounding box (an empty mask: 0 × 0 at the crop's corner)."""
    rows = np.flatnonzero(crop.crop.any(axis=1))
    if rows.size == 0:
        return MaskCrop(crop.x0, crop.y0, np.zeros((0, 0), dtype=bool))
    cols = np.flatnonzero(crop.crop.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return MaskCrop(crop.x0 + x0, crop.y0 + y0, np.ascontiguousarray(crop.crop[y0:y1, x0:x1]))


Rect = tuple[int, int, int, int]  # x0, y0, x1, y1, ends exclusive


def _rect(crop: MaskCrop) -> Rect:
    return crop.x0, crop.y0, crop.x0 + crop.crop.shape[1], crop.y0 + crop.crop.shape[0]


def _within(crop: MaskCrop, rect: Rect) -> np.ndarray:
    """The part of a crop inside `rect`, as a view (possibly empty)."""
    x0, y0, x1, y1 = rect
    return crop.crop[max(0, y0 - crop.y0) : max(0, y1 - crop.y0), max(0, x0 - crop.x0) : max(0, x1 - crop.x0)]


def _intersection(a: Rect, b: Rect) -> Rect | None:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _areas(a: MaskCrop, b: MaskCrop, region: Rect | None = None) -> tuple[int, int, int]:
    """Pixels of mask a, of mask b and of both, counted inside `region` (None: everywhere)."""
    if region is None:
        region = (0, 0, 1 << 62, 1 << 62)
    area_a = int(np.count_nonzero(_within(a, region)))
    area_b = int(np.count_nonzero(_within(b, region)))
    rect_a, rect_b = _intersection(_rect(a), region), _intersection(_rect(b), region)
    common = _intersection(rect_a, rect_b) if rect_a is not None and rect_b is not None else None
    both = 0 if common is None else int(np.count_nonzero(_within(a, common) & _within(b, common)))
    return area_a, area_b, both


class _Groups:
    """Union-find over candidate indices."""

    def __init__(self, count: int) -> None:
        self.parent = list(range(count))

    def find(self, item: int) -> int:
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def join(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[max(root_a, root_b)] = min(root_a, root_b)


@dataclass
class _Object:
    """One merged object: its box, label, scores and mask, and whether some pass saw it whole."""

    box: np.ndarray
    score: float
    class_id: int
    mask_score: float
    crop: MaskCrop
    whole: bool


def merge(plan: TilePlan, whole: Candidates, tiles: Sequence[Candidates]) -> Detections:
    """The instances of a tiled image: its tiles' candidates and the whole pass's large ones merged (see the
    module's docstring), in the image's pixels, best score first, masks stitched as crops."""
    flat = _Flat(tiles)
    groups = _Groups(len(flat))
    for a, b, band in _neighbour_pairs(plan, flat):
        area_a, area_b, both = _areas(flat.crops[a], flat.crops[b], band)
        if both == 0:
            continue
        smaller = a if area_a <= area_b else b
        if both >= LINK_IOU * (area_a + area_b - both) or (
            both >= LINK_IOS * min(area_a, area_b) and flat.cut[smaller]
        ):
            groups.join(a, b)
    members: dict[int, list[int]] = {}
    for index in range(len(flat)):
        members.setdefault(groups.find(index), []).append(index)
    objects = [flat.object(indices) for indices in members.values()]
    large = [
        _Object(
            whole.boxes[k],
            float(whole.scores[k]),
            int(whole.class_ids[k]),
            float(whole.mask_scores[k]),
            whole.crops[k],
            True,
        )
        for k in range(len(whole))
    ]
    kept_large = [True] * len(large)
    kept = []
    for item in objects:
        fragment_of_large = False
        for k, big in enumerate(large):
            if _intersection(_rect(item.crop), _rect(big.crop)) is None:
                continue
            area, big_area, both = _areas(item.crop, big.crop)
            if item.whole and both >= SAME_IOU * (area + big_area - both):
                kept_large[k] = False
            elif not item.whole and area > 0 and both >= FRAGMENT_SHARE * area:
                fragment_of_large = True
            elif item.whole and _side(item.box) > plan.tile_overlap and both >= PART_SHARE * area:
                # A small object inside a large one's mask (in a ring's hole, or under a coarse mask) is
                # what the tiles are for: only an object as large as the whole pass's is taken as a part.
                fragment_of_large = True
        if not fragment_of_large:
            kept.append(item)
    kept += [big for big, keep in zip(large, kept_large, strict=True) if keep]
    kept.sort(key=lambda item: -item.score)
    kept = _without_duplicates(kept)
    return Detections(
        image_size=plan.image_size,
        boxes=np.array([item.box for item in kept], dtype=np.float32).reshape(-1, 4),
        scores=np.array([item.score for item in kept], dtype=np.float32),
        class_ids=np.array([item.class_id for item in kept], dtype=np.int64),
        mask_scores=np.array([item.mask_score for item in kept], dtype=np.float32),
        mask_probs=torch.zeros((len(kept), 0, 0)),
        stitched=PastedMasks.from_crops(plan.image_size, [item.crop for item in kept]),
    )


def _side(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1]))


def _without_duplicates(objects: list[_Object]) -> list[_Object]:
    """Objects (best score first) without those whose mask overlaps a better one of their class by
    DUPLICATE_IOU or more."""
    kept: list[_Object] = []
    for item in objects:
        rect = _rect(item.crop)
        duplicate = False
        for other in kept:
            if other.class_id != item.class_id or _intersection(rect, _rect(other.crop)) is None:
                continue
            area, other_area, both = _areas(item.crop, other.crop)
            if both >= DUPLICATE_IOU * (area + other_area - both):
                duplicate = True
                break
        if not duplicate:
            kept.append(item)
    return kept


class _Flat:
    """Every tile's candidates in one table."""

    def __init__(self, tiles: Sequence[Candidates]) -> None:
        self.tile = np.concatenate([np.full(len(c), c.tile) for c in tiles] or [np.zeros(0, np.int64)])
        self.boxes = np.concatenate([c.boxes for c in tiles] or [np.zeros((0, 4), np.float32)])
        self.scores = np.concatenate([c.scores for c in tiles] or [np.zeros(0, np.float32)])
        self.class_ids = np.concatenate([c.class_ids for c in tiles] or [np.zeros(0, np.int64)])
        self.mask_scores = np.concatenate([c.mask_scores for c in tiles] or [np.zeros(0, np.float32)])
        self.cut = np.concatenate([c.cut for c in tiles] or [np.zeros(0, bool)])
        self.crops = [crop for c in tiles for crop in c.crops]

    def __len__(self) -> int:
        return len(self.crops)

    def object(self, indices: list[int]) -> _Object:
        """A group's object: its best whole member's, or its fragments' stitched."""
        whole = [index for index in indices if not self.cut[index]]
        chosen = whole or indices
        best = max(chosen, key=lambda index: (self.scores[index], -index))
        if whole:
            box, crop = self.boxes[best], self.crops[best]
        else:
            box = np.concatenate((self.boxes[indices, :2].min(0), self.boxes[indices, 2:].max(0)))
            crop = _stitch([self.crops[index] for index in indices])
        return _Object(
            box,
            float(self.scores[best]),
            int(self.class_ids[best]),
            float(self.mask_scores[best]),
            crop,
            bool(whole),
        )


def _stitch(crops: Sequence[MaskCrop]) -> MaskCrop:
    """The union of masks, as one crop the size of their rectangles' union."""
    rects = [_rect(crop) for crop in crops if crop.crop.size]
    if not rects:
        return crops[0]
    x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
    x1, y1 = max(r[2] for r in rects), max(r[3] for r in rects)
    canvas = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for crop in crops:
        if crop.crop.size:
            h, w = crop.crop.shape
            canvas[crop.y0 - y0 : crop.y0 - y0 + h, crop.x0 - x0 : crop.x0 - x0 + w] |= crop.crop
    return MaskCrop(x0, y0, canvas)


def _neighbour_pairs(plan: TilePlan, flat: _Flat) -> list[tuple[int, int, Rect]]:
    """Candidates of two different, overlapping tiles whose boxes meet inside the tiles' common region; with
    that region."""
    by_tile: dict[int, np.ndarray] = {}
    for tile in np.unique(flat.tile):
        by_tile[int(tile)] = np.flatnonzero(flat.tile == tile)
    pairs = []
    tiles = plan.tiles
    for a in by_tile:
        for b in by_tile:
            if b <= a:
                continue
            ta, tb = tiles[a], tiles[b]
            band = _intersection((ta.x0, ta.y0, ta.x1, ta.y1), (tb.x0, tb.y0, tb.x1, tb.y1))
            if band is None:
                continue
            boxes_a = _clip(flat.boxes[by_tile[a]], band)
            boxes_b = _clip(flat.boxes[by_tile[b]], band)
            meet = (
                np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
                < np.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2])
            ) & (
                np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
                < np.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3])
            )
            for i, j in zip(*np.nonzero(meet), strict=True):
                pairs.append((int(by_tile[a][i]), int(by_tile[b][j]), band))
    return pairs


def _clip(boxes: np.ndarray, rect: Rect) -> np.ndarray:
    """Boxes clipped to `rect`; one outside it becomes empty (x0 ≥ x1)."""
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(rect[0], rect[2])
    clipped[:, 1::2] = clipped[:, 1::2].clip(rect[1], rect[3])
    return clipped


def tile_selection(selection: Selection) -> Selection:
    """What each pass of a tiled image keeps before the mask heads: the score threshold only; classes and
    the count apply to the merged instances (`finish`), since one object's pieces may differ in both."""
    return Selection(score_threshold=selection.score_threshold)


def finish(merged: Detections, selection: Selection) -> Detections:
    """The selection's classes and count, applied to the merged instances."""
    return merged.filter(max_detections=selection.max_detections, class_ids=selection.class_ids)


Infer = Callable[[list[np.ndarray], Selection], list[Detections]]


def segment_tiled(
    pixels: np.ndarray, plan: TilePlan, infer: Infer, selection: Selection, batch_size: int = 1
) -> Detections:
    """A tiled image's instances, its passes run by `infer(images, selection)` (each list of images of one
    size: the whole image alone, then tiles `batch_size` at a time)."""
    each = tile_selection(selection)
    (whole,) = infer([pixels], each)
    candidates = []
    for start in range(0, len(plan.tiles), batch_size):
        indices = range(start, min(start + batch_size, len(plan.tiles)))
        results = infer([plan.cut(pixels, index) for index in indices], each)
        candidates += [
            tile_candidates(plan, index, result) for index, result in zip(indices, results, strict=True)
        ]
    return finish(merge(plan, whole_candidates(plan, whole), candidates), selection)
