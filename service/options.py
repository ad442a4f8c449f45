"""The options of one segmentation request: what to keep of the model's output and how to encode it."""

from collections.abc import Sequence
from dataclasses import dataclass

from centermask_client.schemas import MaskFormat
from model.predict import Predictor
from model.wire import select_classes
from service.errors import InvalidParameter

# Longest error message about class selectors: a selector can be as long as a query string.
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class SegmentOptions:
    score_threshold: float
    max_detections: int
    class_ids: frozenset[int] | None
    mask_format: MaskFormat


def class_ids(selectors: Sequence[str], predictor: Predictor) -> frozenset[int]:
    """`classes=` selectors (`model.wire.select_classes`) → class ids; InvalidParameter if one names none."""
    try:
        return select_classes(selectors, predictor.class_names, predictor.category_ids)
    except ValueError as exc:
        message = str(exc)
        raise InvalidParameter(
            message if len(message) <= _MAX_MESSAGE else message[:_MAX_MESSAGE] + "…"
        ) from None
