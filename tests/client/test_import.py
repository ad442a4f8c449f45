"""The client package imports, parses and draws without torch, fastapi or OpenCV installed."""

import subprocess
import sys
import textwrap

from tests.helpers import REPO

PROGRAM = textwrap.dedent(
    """
    import sys
    for name in ("torch", "torchvision", "fastapi", "starlette", "cv2", "pycocotools"):
        sys.modules[name] = None  # importing any of them now raises ImportError

    import numpy as np
    from centermask_client import AsyncClient, Client, ImageResult
    from centermask_client.cli import main
    from centermask_client.overlay import draw_overlay

    record = {
        "file": None, "height": 2, "width": 3,
        "instances": [{
            "box": [0, 0, 2, 2], "score": 0.9, "class_id": 0, "category_id": 1, "class_name": "x",
            "mask_score": 0.8, "mask": {"size": [2, 3], "counts": "222"},
        }],
    }
    result = ImageResult.model_validate(record)
    mask = result.instances[0].mask_array()
    assert mask.tolist() == [[False, True, False], [False, True, False]], mask
    draw_overlay(np.zeros((2, 3, 3), dtype=np.uint8), result.instances)
    print("ok", Client.__name__, AsyncClient.__name__)
    """
)


def test_the_client_needs_no_torch() -> None:
    process = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "ok Client AsyncClient"
