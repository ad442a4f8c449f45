"""Example images the bundled model knows, for the demo page, the README and the API docs.

`python -m service.examples` renders them with the synthetic shapes generator (`model.data.shapes`) and
writes them to `service/static/examples/`, with `segment-response.json`: the answer of the bundled
model for the first image, which the OpenAPI schema shows as its example. Run it again after the
bundled model changes.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from model.data.shapes import CLASSIC, Scene, render_scene

EXAMPLES_DIR = Path(__file__).parent / "static" / "examples"
RESPONSE_EXAMPLE = EXAMPLES_DIR / "segment-response.json"
HEIGHT, WIDTH = 300, 400
OBJECTS = 5
SCORE_THRESHOLD = 0.3


@dataclass(frozen=True)
class Example:
    file_name: str
    # Chosen among the first 60 seeds: small PNGs on which the bundled model finds every shape, and
    # together every class (the first: circle, rectangle, star, triangles; the second adds a ring).
    seed: int

    def render(self) -> Scene:
        return render_scene(
            np.random.default_rng([2024, self.seed]), CLASSIC, HEIGHT, WIDTH, num_objects=OBJECTS
        )


EXAMPLES = (Example("shapes-1.png", 37), Example("shapes-2.png", 32), Example("shapes-3.png", 29))


def response_example() -> dict[str, Any]:
    """The recorded `/segment` answer for the first example."""
    return json.loads(RESPONSE_EXAMPLE.read_text())


def main() -> None:
    from model.predict import load_predictor
    from model.wire import image_record
    from service.images import decode_image

    EXAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    for example in EXAMPLES:
        Image.fromarray(example.render().image).save(EXAMPLES_DIR / example.file_name, optimize=True)
    predictor = load_predictor()
    first = EXAMPLES[0]
    data = (EXAMPLES_DIR / first.file_name).read_bytes()
    # Timed here, in the steps the service reports; nothing waits in a queue on this path.
    timer = _Timer()
    prepared = predictor.prepare(decode_image(data, max_pixels=HEIGHT * WIDTH))
    decode_ms = timer.lap()
    (detections,) = predictor.infer([prepared])
    inference_ms = timer.lap()
    kept = detections.filter(score_threshold=SCORE_THRESHOLD)
    record = image_record(first.file_name, kept, predictor.class_names, predictor.category_ids)
    postprocess_ms = timer.lap()
    response = {
        **record,
        "model": predictor.config_name,
        "request_id": uuid.uuid4().hex,
        "timing_ms": {
            "decode": decode_ms,
            "queue": 0.0,
            "inference": inference_ms,
            "postprocess": postprocess_ms,
            "total": round(decode_ms + inference_ms + postprocess_ms, 3),
        },
    }
    RESPONSE_EXAMPLE.write_text(json.dumps(response, indent=1) + "\n")
    print(f"wrote {len(EXAMPLES)} images and {RESPONSE_EXAMPLE}")


class _Timer:
    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> float:
        """Milliseconds since the previous lap."""
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return round(elapsed * 1000, 3)


if __name__ == "__main__":
    main()
