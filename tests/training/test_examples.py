"""The images the package ships are what `python -m training.examples` renders: nothing in the serving path
generates them at run time, and nothing shipped drifts from its generator."""

import numpy as np

from model.inference.images import load_rgb
from model.inference.quantize import CALIBRATION_IMAGES, default_calibration_images
from service.openapi import EXAMPLES_DIR
from training.data.shapes import TRAINING, image_rng, render_image
from training.examples import EXAMPLES


def test_the_calibration_scenes_are_the_generators() -> None:
    shipped = default_calibration_images()
    assert len(shipped) == CALIBRATION_IMAGES
    for index, image in enumerate(shipped):
        np.testing.assert_array_equal(image, render_image(image_rng(0, index), TRAINING)[0])


def test_the_demo_examples_are_the_generators() -> None:
    for example in EXAMPLES:
        np.testing.assert_array_equal(load_rgb(EXAMPLES_DIR / example.file_name), example.render().image)
