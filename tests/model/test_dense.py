"""The dense part's runner: torch.compile and CUDA graphs for warmed-up shapes, eager for the rest, and a
warning, never a failure, when an acceleration cannot be had. CUDA graph replays are tested in test_cuda.py."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from model.inference.backends import Backend
from model.inference.dense import CudaGraphsUnavailable, DenseRunner
from model.inference.load import load_predictor
from model.inference.predictor import Predictor
from model.inference.preprocess import DenseInput

# The small checkpoint's one common padded shape (resize 64/128), and an image of it and one of another.
SHAPE = (64, 96)


def random_image(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))[:height, :width].copy()


IMAGE = random_image(0, 240, 320)
OTHER_SHAPE_IMAGE = random_image(1, 320, 240)


@pytest.fixture(scope="module")
def eager(small_weights: Path) -> Predictor:
    predictor = load_predictor(small_weights)
    assert predictor.common_shapes() == [SHAPE]
    assert predictor.prepare(IMAGE).padded_shape == SHAPE != predictor.prepare(OTHER_SHAPE_IMAGE).padded_shape
    return predictor


class CountingCompile:
    """A stand-in for torch.compile that "compiles" to the function itself, counting the calls it gets."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.fail_with = fail_with
        self.calls = 0

    def __call__(self, function, **options):
        assert options["dynamic"] is False and options["fullgraph"] is True

        def compiled(*inputs: torch.Tensor):
            self.calls += 1
            if self.fail_with is not None:
                raise self.fail_with
            return function(*inputs)

        return compiled


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "model.inference.dense" and r.levelno == logging.WARNING
    ]


def assert_same_detections(predictor: Predictor, eager: Predictor, images: list[np.ndarray]) -> None:
    for ours, theirs in zip(predictor.predict(images), eager.predict(images), strict=True):
        assert len(ours) > 0
        np.testing.assert_array_equal(ours.boxes, theirs.boxes)
        np.testing.assert_array_equal(ours.scores, theirs.scores)
        np.testing.assert_array_equal(ours.class_ids, theirs.class_ids)
        assert torch.equal(ours.mask_probs, theirs.mask_probs)


def test_a_compile_that_cannot_start_warns_and_runs_eagerly(
    small_weights: Path, eager: Predictor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def unavailable(*args, **kwargs):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    with caplog.at_level(logging.WARNING, logger="model.inference.dense"):
        predictor = load_predictor(small_weights, compile=True)
        predictor.warm_up(SHAPE, batch_size=1)
    assert not predictor.compiled
    assert warnings_of(caplog) == [
        "torch.compile failed, so the network runs eagerly: RuntimeError: Dynamo is not supported on this Python"
    ]
    assert_same_detections(predictor, eager, [IMAGE])


def test_a_failing_first_compiled_run_falls_back_to_eager_for_good(
    small_weights: Path, eager: Predictor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # What inductor raises on a host without a C++ compiler, at the first call of the compiled function.
    compile = CountingCompile(
        RuntimeError("backend='inductor' raised:\nInvalidCxxCompiler: No working C++ compiler")
    )
    monkeypatch.setattr(torch, "compile", compile)
    with caplog.at_level(logging.WARNING, logger="model.inference.dense"):
        predictor = load_predictor(small_weights, compile=True)
        assert predictor.compiled
        predictor.warm_up(SHAPE, batch_size=1)
        predictor.warm_up((96, 64), batch_size=1)
    assert not predictor.compiled and compile.calls == 1
    (warning,) = warnings_of(caplog)
    assert warning.startswith("torch.compile failed, so the network runs eagerly: RuntimeError: ")
    assert "InvalidCxxCompiler: No working C++ compiler" in warning
    assert_same_detections(predictor, eager, [IMAGE, OTHER_SHAPE_IMAGE])


def test_only_warmed_up_batch_shapes_run_compiled(
    small_weights: Path, eager: Predictor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    compile = CountingCompile()
    monkeypatch.setattr(torch, "compile", compile)
    predictor = load_predictor(small_weights, compile=True)
    predictor.warm_up(SHAPE, batch_size=1)
    assert predictor.compiled and compile.calls == 2  # the compile at warm-up, then warm-up's own pass
    predictor.predict([IMAGE])
    assert compile.calls == 3
    # Another padded shape, or another batch size of the same one, was not warmed up: eager, no compile.
    predictor.predict([OTHER_SHAPE_IMAGE])
    predictor.infer([predictor.prepare(IMAGE)] * 2)
    assert compile.calls == 3
    assert not warnings_of(caplog)
    assert_same_detections(predictor, eager, [IMAGE, OTHER_SHAPE_IMAGE])


def test_another_backends_network_is_not_compiled(caplog: pytest.LogCaptureFixture) -> None:
    outputs = ({}, None)
    config = SimpleNamespace(pixel_mean=(1.0, 2.0, 3.0), pixel_std=(1.0, 1.0, 1.0))
    network = SimpleNamespace(backend=Backend.ONNXRUNTIME, config=config, features=lambda batch: outputs)
    batch = DenseInput(torch.zeros((1, 3, 32, 32), dtype=torch.uint8), torch.tensor([[32, 32]]))
    with caplog.at_level(logging.WARNING, logger="model.inference.dense"):
        runner = DenseRunner(network, device=torch.device("cpu"), compile=True)  # type: ignore[arg-type]
        runner.prepare(batch)
    assert not runner.compiled and runner(batch) is outputs
    assert warnings_of(caplog) == [
        "torch.compile is not used: the onnxruntime backend runs the network as exported, eagerly"
    ]


def test_cuda_graphs_need_a_cuda_device(small_weights: Path, eager: Predictor) -> None:
    with pytest.raises(CudaGraphsUnavailable, match="CUDA graphs are captured on a CUDA device, not on cpu"):
        load_predictor(small_weights, device="cpu", cuda_graphs=True)
    with pytest.raises(CudaGraphsUnavailable):
        DenseRunner(eager.engine, device=torch.device("cpu"), cuda_graphs=True)
    assert not eager.compiled and not eager.cuda_graphs
