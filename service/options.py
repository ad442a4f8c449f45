"""The options of one segmentation request: what to keep of the model's output and how to encode it.

Both protocols receive a request's `SegmentParameters` (validated by that model: the query string of
`/segment`, the parameters of a `/v2` infer request) and resolve them here, against the service's defaults
and the served model's classes, into the same `SegmentOptions`.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from centermask_client.schemas import MaskFormat, SegmentParameters
from model.inference.detections import Detections, Selection
from model.inference.predictor import Predictor
from model.inference.tiling import Tiling
from model.wire.selectors import select_classes
from service.errors import InvalidParameter
from service.settings import Settings

# Options built without tiling (a video's frames, a stream's) never tile.
NO_TILING = Tiling(mode="off")
# Longest error message about class selectors: a selector can be as long as a query string.
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class SegmentOptions:
    """What a request keeps of the model's output. `class_agnostic_iou`: one label per object (detections
    overlapping a better one above this box IoU go, whatever their class); None keeps the model's output."""

    score_threshold: float
    max_detections: int
    class_ids: frozenset[int] | None
    mask_format: MaskFormat
    class_agnostic_iou: float | None = None
    tiling: Tiling = NO_TILING
    # max_detections of a tiled image (the request's, or CENTERMASK_MAX_TILED_DETECTIONS).
    tiled_max_detections: int | None = None

    @property
    def before_masks(self) -> Selection:
        """What can be dropped before the mask head without changing what the request gets.

        The score threshold always can (a detection that suppresses another outscores it). Class-agnostic
        NMS needs every class and rank, so with it the classes and the count apply afterwards.
        """
        if self.class_agnostic_iou is not None:
            return Selection(score_threshold=self.score_threshold)
        return Selection(self.score_threshold, self.max_detections, self.class_ids)

    @property
    def tile_selection(self) -> Selection:
        """What each pass of a tiled image keeps before the mask heads: the threshold; the rest applies to the
        merged instances (`after_merge`), since an object's pieces may differ in class and rank."""
        return Selection(score_threshold=self.score_threshold)

    def after_merge(self, detections: Detections) -> Detections:
        """A tiled image's merged instances: class-agnostic NMS when asked for, then classes and count."""
        if self.class_agnostic_iou is not None:
            detections = detections.class_agnostic_nms(self.class_agnostic_iou)
        return detections.filter(
            max_detections=self.tiled_max_detections or self.max_detections, class_ids=self.class_ids
        )

    def after_masks(self, detections: Detections) -> Detections:
        """The rest: class-agnostic NMS, then classes and count (a no-op without NMS: already applied)."""
        if self.class_agnostic_iou is None:
            return detections
        kept = detections.class_agnostic_nms(self.class_agnostic_iou)
        return kept.filter(max_detections=self.max_detections, class_ids=self.class_ids)


def class_ids(selectors: Sequence[str], predictor: Predictor) -> frozenset[int]:
    """`classes=` selectors (`model.wire.records.select_classes`) → class ids; InvalidParameter if one names none."""
    try:
        return select_classes(selectors, predictor.class_names, predictor.category_ids)
    except ValueError as exc:
        message = str(exc)
        raise InvalidParameter(
            message if len(message) <= _MAX_MESSAGE else message[:_MAX_MESSAGE] + "…"
        ) from None


def resolve_options(
    settings: Settings, predictor: Predictor, parameters: SegmentParameters
) -> SegmentOptions:
    """A request's options, each parameter left unset taking the service's default."""
    selectors = parameters.selectors()
    agnostic = (
        settings.class_agnostic_nms
        if parameters.class_agnostic_nms is None
        else parameters.class_agnostic_nms
    )
    return SegmentOptions(
        tiling=_tiling(settings, predictor, parameters),
        tiled_max_detections=(
            settings.max_tiled_detections if parameters.max_detections is None else parameters.max_detections
        ),
        score_threshold=(
            settings.score_threshold
            if parameters.score_threshold is None
            else float(parameters.score_threshold)
        ),
        max_detections=(
            settings.max_detections if parameters.max_detections is None else parameters.max_detections
        ),
        class_ids=class_ids(selectors, predictor) if selectors else None,
        mask_format=parameters.mask_format,
        class_agnostic_iou=settings.class_agnostic_iou if agnostic else None,
    )


def _tiling(settings: Settings, predictor: Predictor, parameters: SegmentParameters) -> Tiling:
    """The request's tiling, each parameter left unset taking the service's default; the tile size resolved
    against the model (its test short side), so that the overlap is checked against the size in force."""
    tile_size = parameters.tile_size or settings.tile_size or predictor.resize[0]
    # The default overlap shrinks to a quarter of a small tile (what 128 px is of a 512 px one); one asked
    # for is checked.
    overlap = (
        min(settings.tile_overlap, tile_size // 4)
        if parameters.tile_overlap is None
        else parameters.tile_overlap
    )
    if overlap > tile_size // 2:
        raise InvalidParameter(
            f"tile_overlap ({overlap}) must be at most half of the tile size ({tile_size})"
        )
    return Tiling(
        mode=parameters.tiling or settings.tiling,
        tile_size=tile_size,
        tile_overlap=overlap,
        factor=settings.tiling_factor,
    )
