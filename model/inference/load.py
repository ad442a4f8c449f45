"""Loading a predictor: `load_predictor(**options)`, every option declared once in `PredictorOptions`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from model.inference.backends import Backend, backend_device, check_backend
from model.inference.dense import check_cuda_graphs
from model.inference.device import resolve_device
from model.inference.engine import Engine
from model.inference.options import PredictorOptions, from_arguments
from model.inference.precision import check_supported
from model.inference.predictor import Predictor
from model.weights import DEFAULT_WEIGHTS
from model.weights.checkpoint import load_model, resolve_category_ids


def load_predictor(
    *values: Any, calibration_images: Sequence[np.ndarray] | None = None, **options: Any
) -> Predictor:
    """A Predictor built as `PredictorOptions` say: one `PredictorOptions`, or its fields as keywords (or
    positionally, in their order: weights, config, device, precision, ...).

    weights unset → the bundled model. A precision, backend or CUDA graphs the device cannot run fail here,
    before the (slow) load. With backend onnxruntime the network is exported while loading, or read from
    `onnx_model` (the `--out` of `python -m model.export` for these weights). int8 calibrates on
    `calibration_images` (default: the shipped scenes).
    """
    if len(values) == 1 and isinstance(values[0], PredictorOptions) and not options:
        chosen = values[0]
    else:
        chosen = PredictorOptions.of(*values, **options)
    target = check_options(chosen)
    path = chosen.weights if chosen.weights is not None else DEFAULT_WEIGHTS
    model, class_names, checkpoint = load_model(path, chosen.config)
    category_ids = resolve_category_ids(checkpoint, len(class_names), str(path))
    network: Any = model
    if chosen.backend is Backend.ONNXRUNTIME:
        # Imported here: onnxruntime is an optional extra, and check_backend has just said it is installed.
        from model.onnx.contract import provenance
        from model.onnx.engine import OnnxEngine

        engine: Engine = OnnxEngine.from_model(
            model, provenance(model.config, class_names, path), chosen.onnx_model
        )
        network = engine
    return Predictor(
        network,
        class_names,
        path,
        target,
        chosen.precision,
        calibration_images=calibration_images,
        category_ids=category_ids,
        compile=chosen.compile,
        cuda_graphs=chosen.cuda_graphs,
        jpeg_draft=chosen.jpeg_draft,
    )


def check_options(options: PredictorOptions) -> torch.device:
    """What can be refused before reading any weights, refused with a message saying what would work: a
    device that is not there, a precision, backend or CUDA graphs it cannot run, a weights file that is not
    there. Returns the device the predictor would run on."""
    target = resolve_device(backend_device(options.backend, options.device))
    check_supported(options.precision, target)
    check_backend(options.backend, options.precision, target)
    if options.cuda_graphs:
        check_cuda_graphs(target)
    path = options.weights if options.weights is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        where = "the bundled default weights are missing" if options.weights is None else "no weights file at"
        raise FileNotFoundError(f"{where} {path}")
    return target


def predictor_from_arguments(args: argparse.Namespace) -> Predictor:
    """The predictor that `options.add_arguments`' flags ask for; with --compile, compiled for ordinary
    photos' shapes (compiling happens at warm-up only, one shape at a time)."""
    predictor = load_predictor(from_arguments(args))
    if predictor.compiled:
        for shape in predictor.common_shapes():
            predictor.warm_up(shape, batch_size=1)
    return predictor
