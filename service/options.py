"""The options of one segmentation request: what to keep of the model's output and how to encode it."""

from collections.abc import Sequence
from dataclasses import dataclass

from model.predict import MaskFormat
from service.errors import InvalidParameter

# Longest class selector echoed back in an error message.
_MAX_ECHO = 60


@dataclass(frozen=True)
class SegmentOptions:
    score_threshold: float
    max_detections: int
    class_ids: frozenset[int] | None
    mask_format: MaskFormat


def class_ids(selectors: Sequence[str], class_names: Sequence[str]) -> frozenset[int]:
    """Class names (case-insensitive) or ids → ids; InvalidParameter for unknown ones."""
    by_name = {name.lower(): class_id for class_id, name in enumerate(class_names)}
    ids = set()
    for selector in selectors:
        if (
            selector.isascii()
            and selector.isdigit()
            and len(selector) < 10
            and int(selector) < len(class_names)
        ):
            ids.add(int(selector))
        elif selector.lower() in by_name:
            ids.add(by_name[selector.lower()])
        else:
            shown = selector if len(selector) <= _MAX_ECHO else selector[:_MAX_ECHO] + "…"
            raise InvalidParameter(f"unknown class {shown!r}; see /v1/model for the class names")
    return frozenset(ids)
