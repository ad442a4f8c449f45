"""The options of one segmentation request: what to keep of the model's output and how to encode it."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from centermask_client.schemas import MaskFormat
from model.detections import Detections, Selection
from model.predict import Predictor
from model.wire import select_classes
from service.errors import InvalidParameter
from service.settings import Settings

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

    @property
    def before_masks(self) -> Selection:
        """What can be dropped before the mask head without changing what the request gets.

        The score threshold always can (a detection that suppresses another outscores it). Class-agnostic
        NMS needs every class and rank, so with it the classes and the count apply afterwards.
        """
        if self.class_agnostic_iou is not None:
            return Selection(score_threshold=self.score_threshold)
        return Selection(self.score_threshold, self.max_detections, self.class_ids)

    def after_masks(self, detections: Detections) -> Detections:
        """The rest: class-agnostic NMS, then classes and count (a no-op without NMS: already applied)."""
        if self.class_agnostic_iou is None:
            return detections
        kept = detections.class_agnostic_nms(self.class_agnostic_iou)
        return kept.filter(max_detections=self.max_detections, class_ids=self.class_ids)


def class_ids(selectors: Sequence[str], predictor: Predictor) -> frozenset[int]:
    """`classes=` selectors (`model.wire.select_classes`) → class ids; InvalidParameter if one names none."""
    try:
        return select_classes(selectors, predictor.class_names, predictor.category_ids)
    except ValueError as exc:
        message = str(exc)
        raise InvalidParameter(
            message if len(message) <= _MAX_MESSAGE else message[:_MAX_MESSAGE] + "…"
        ) from None


def resolve_options(
    settings: Settings,
    predictor: Predictor,
    *,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    classes: Iterable[str] = (),
    mask_format: MaskFormat = "rle",
    class_agnostic_nms: bool | None = None,
) -> SegmentOptions:
    """A request's options, each left unset taking the service's default. `classes`: selector strings,
    each possibly comma-separated, as both protocols receive them."""
    selectors = [part.strip() for value in classes for part in value.split(",") if part.strip()]
    agnostic = settings.class_agnostic_nms if class_agnostic_nms is None else class_agnostic_nms
    return SegmentOptions(
        score_threshold=settings.score_threshold if score_threshold is None else float(score_threshold),
        max_detections=settings.max_detections if max_detections is None else max_detections,
        class_ids=class_ids(selectors, predictor) if selectors else None,
        mask_format=mask_format,
        class_agnostic_iou=settings.class_agnostic_iou if agnostic else None,
    )
