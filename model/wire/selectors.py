"""What a request's `classes=` selectors mean: part of the contract between the API and its users.

A selector is a class name (case-insensitive), `class_id:N` (the contiguous index) or `category_id:N` (the
dataset's id). A bare number is refused unless it is a class's name: it could mean either id.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CLASS_ID_PREFIX = "class_id:"
CATEGORY_ID_PREFIX = "category_id:"
_INTEGER = re.compile(r"[+-]?[0-9]+")


def select_classes(
    selectors: Sequence[str], class_names: Sequence[str], category_ids: Sequence[int]
) -> frozenset[int]:
    """The class ids that `classes=` selectors name. Raises ValueError for one that names no class.

    A selector is a class name (case-insensitive), `class_id:N` (the contiguous index) or
    `category_id:N` (the dataset's id). A bare number is refused unless it is a class's name: it could
    mean either id.
    """
    by_name = {name.lower(): class_id for class_id, name in enumerate(class_names)}
    by_category = {int(category): class_id for class_id, category in enumerate(category_ids)}
    selected = set()
    for selector in selectors:
        lowered = selector.lower()
        if lowered in by_name:
            selected.add(by_name[lowered])
        elif lowered.startswith(CLASS_ID_PREFIX):
            class_id = _integer(selector, CLASS_ID_PREFIX)
            if class_id is None or not 0 <= class_id < len(class_names):
                raise ValueError(
                    f"unknown class {selector!r}: class ids run from 0 to {len(class_names) - 1}"
                )
            selected.add(class_id)
        elif lowered.startswith(CATEGORY_ID_PREFIX):
            category = _integer(selector, CATEGORY_ID_PREFIX)
            if category not in by_category:
                raise ValueError(f"unknown class {selector!r}: no class has that category id")
            selected.add(by_category[category])
        elif _INTEGER.fullmatch(selector.strip()):
            raise ValueError(
                f"ambiguous class {selector!r}: write class_id:{selector} (the contiguous index) or "
                f"category_id:{selector} (the dataset's id)"
            )
        else:
            raise ValueError(f"unknown class {selector!r}; see /v1/model for the class names")
    return frozenset(selected)


def _integer(selector: str, prefix: str) -> int | None:
    value = selector[len(prefix) :].strip()
    return int(value) if _INTEGER.fullmatch(value) else None
