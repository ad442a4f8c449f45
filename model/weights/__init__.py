"""Weights: the bundled checkpoint and what ships with it, and the checkpoint file format (`checkpoint`).

The bundled model is `DEFAULT_WEIGHTS` (its card is README.md beside it); `calibration/` holds the scenes an
int8 predictor calibrates on when given none (`training.examples` renders them); COCO's class names and
category ids are `coco_classes`.
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent
DEFAULT_WEIGHTS = WEIGHTS_DIR / "centermask_lite_V_19_slim_shapes.pth"
CALIBRATION_DIR = WEIGHTS_DIR / "calibration"


def calibration_paths(count: int) -> list[Path]:
    """The shipped calibration scenes, in order."""
    return [CALIBRATION_DIR / f"scene-{index}.png" for index in range(count)]
