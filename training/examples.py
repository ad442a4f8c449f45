"""The images the package ships, rendered by our own shapes generator (`training.data.shapes`), so that
nothing in the serving path generates data at run time.

`python -m training.examples` writes:

* the demo page's examples (`service/static/examples/shapes-*.png`) and `segment-response.json`, the bundled
  model's answer for the first of them, which the README and the OpenAPI document show;
* the int8 calibration scenes (`model/weights/calibration/*.png`), which `load_predictor` calibrates on when
  given no images of the user's own.

Run it again after the bundled model changes (the recorded answer changes with it).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import numpy as np
from PIL import Image

from model.inference.load import load_predictor
from model.inference.quantize import CALIBRATION_IMAGES
from model.weights import CALIBRATION_DIR, calibration_paths
from model.wire.records import image_record, segment_response, timing_ms
from service.images import decode_image
from service.openapi import EXAMPLES_DIR, RESPONSE_EXAMPLE
from training.data.shapes import CLASSIC, TRAINING, Scene, image_rng, render_image, render_scene

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


def write_calibration_images() -> None:
    """Scenes of the `training` preset (edges, flat and textured colours), lossless: calibrating on images
    like the ones to be served gives better int8 accuracy."""
    CALIBRATION_DIR.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(calibration_paths(CALIBRATION_IMAGES)):
        Image.fromarray(render_image(image_rng(0, index), TRAINING)[0]).save(path, optimize=True)


def main() -> None:
    write_calibration_images()
    EXAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    for example in EXAMPLES:
        Image.fromarray(example.render().image).save(EXAMPLES_DIR / example.file_name, optimize=True)
    predictor = load_predictor()
    first = EXAMPLES[0]
    data = (EXAMPLES_DIR / first.file_name).read_bytes()
    # Timed here, in the steps the service reports; nothing waits in a queue on this path.
    started = time.perf_counter()
    prepared = predictor.prepare(decode_image(data, max_pixels=HEIGHT * WIDTH))
    decoded = time.perf_counter()
    (detections,) = predictor.infer([prepared])
    inferred = time.perf_counter()
    kept = detections.filter(score_threshold=SCORE_THRESHOLD)
    record = image_record(first.file_name, kept, predictor.class_names, predictor.category_ids)
    done = time.perf_counter()
    response = segment_response(
        record,
        model=predictor.config_name,
        request_id=uuid.uuid4().hex,
        timing=timing_ms(decoded - started, 0.0, inferred - decoded, done - inferred),
        total_ms=(done - started) * 1000,
    )
    RESPONSE_EXAMPLE.write_text(json.dumps(response, indent=1) + "\n")
    print(f"wrote {len(EXAMPLES)} images and {RESPONSE_EXAMPLE}")


if __name__ == "__main__":
    main()
