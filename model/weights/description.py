"""What a served model knows, in a sentence for people: `/v1/model`, `/v1/models` and the demo page show it,
so that nobody mistakes the bundled demo model for a general one.

The bundled model is recognised by its content (the SHA-256 of the shipped file), wherever it was copied to;
COCO checkpoints by their class names; anything else is described by its own classes.
"""

import functools
from dataclasses import dataclass

from model.weights import DEFAULT_WEIGHTS
from model.weights.checkpoint import file_sha256
from model.weights.coco_classes import COCO_CLASS_NAMES

# The one-line command that swaps the demo model for a COCO one (README and docs/checkpoints.md show it too).
COCO_COMMAND = (
    "CENTERMASK_WEIGHTS=centermask2-lite-V-39-eSE-FPN-ms-4x.pth "
    "CENTERMASK_CONFIG=centermask_lite_V_39_eSE_FPN_ms_4x centermask-serve"
)
_LISTED = 8  # class names spelled out before "…"


@dataclass(frozen=True)
class Description:
    bundled: bool  # the demo model that ships with the service
    text: str


@functools.cache
def bundled_sha256() -> str:
    """The shipped default weights' SHA-256 ("" when they are not there, as in a source tree being built)."""
    return file_sha256(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else ""


def describe(class_names: list[str] | tuple[str, ...], weights_sha256: str) -> Description:
    """What a model with these classes and weights knows."""
    if weights_sha256 and weights_sha256 == bundled_sha256():
        return Description(
            bundled=True,
            text=(
                f"The bundled demo model: it knows {len(class_names)} synthetic shapes drawn by code "
                f"({', '.join(class_names)}) and nothing else. It was never shown a photograph, so what it finds "
                "in one means nothing. For everyday objects (people, cars, animals: the 80 COCO classes), serve "
                f"an official centermask2 checkpoint: {COCO_COMMAND} (docs/checkpoints.md says where to get one)."
            ),
        )
    if tuple(class_names) == COCO_CLASS_NAMES:
        return Description(
            bundled=False,
            text="The 80 COCO object classes (person, bicycle, car, …): an official centermask2 checkpoint, or "
            "one trained on COCO's classes.",
        )
    listed = ", ".join(class_names[:_LISTED]) + (", …" if len(class_names) > _LISTED else "")
    count = f"{len(class_names)} class" + ("" if len(class_names) == 1 else "es")
    return Description(
        bundled=False,
        text=f"A checkpoint trained on {count} of its own: {listed}. It knows what its training data showed.",
    )
