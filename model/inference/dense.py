"""How the predictor runs the network's dense part: normalising a `DenseInput` (uint8 canvas and image sizes)
and `Engine.features` on it (backbone, FPN and FCOS head), a program whose every shape follows from the
canvas's: eagerly, compiled by `torch.compile`, replayed from CUDA graphs, or both (graphs of the compiled
code). Decoding, NMS and the mask heads have data-dependent shapes and always run eagerly.

Both accelerations are prepared per batch shape (batch size × padded shape) at warm-up (`Predictor.warm_up`,
which the service runs for every common padded shape and batch size), where a slow first call is expected. A
batch of a shape that was not prepared runs eagerly rather than stall the inference thread for a compile
(tens of seconds) or a capture. Whatever goes wrong while preparing (no C compiler for inductor, an operator
it cannot lower, a capture CUDA refuses) logs one warning saying why, and that acceleration is off from then
on: a request never fails because of one.

Compiled code is not bit-exact to eager code: inductor fuses and reorders float operations, so fp32 results
differ by float rounding (about 1e-5 relative). CUDA graphs replay the very kernels they captured.

A graph's memory is what it keeps between replays: its uint8 input canvas, and the outputs later steps read
(the mask levels P3-P5 and the head's outputs); its intermediates live in one pool all graphs share. The
predictor warms up (and so captures) a few batch sizes per padded shape, not every one.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch

from model.inference.backends import Backend
from model.inference.engine import Engine
from model.inference.postprocess import MASK_LEVELS
from model.inference.preprocess import DenseInput, normalize_canvas
from model.network.fcos import FCOSHeadOutputs

logger = logging.getLogger(__name__)

Outputs = tuple[dict[str, torch.Tensor], FCOSHeadOutputs]
Features = Callable[[torch.Tensor, torch.Tensor], Outputs]
# A batch shape: the canvas's (N, 3, Hp, Wp).
BatchShape = tuple[int, ...]

# Compiled graphs of `features` one process may hold, one per prepared batch shape (the service warms up every
# common shape at every batch size: 15 × 8 on a GPU with buckets). Past dynamo's default of 8, new shapes
# would silently run eagerly.
MAX_COMPILED_SHAPES = 256
# Eager runs on a side stream before a capture: cuDNN autotuning and lazy initialisation allocate and
# synchronise, which a capture cannot record.
CAPTURE_WARM_UP_RUNS = 2
# A compiler's error message can hold pages of generated code; the warning keeps its start.
_REASON_CHARS = 600


class CudaGraphsUnavailable(RuntimeError):
    """CUDA graphs were asked for where there is no CUDA device to capture them on."""


def check_cuda_graphs(device: torch.device) -> None:
    """Raise CudaGraphsUnavailable, saying what would work instead, unless `device` is a CUDA device."""
    if device.type != "cuda":
        raise CudaGraphsUnavailable(
            f"CUDA graphs are captured on a CUDA device, not on {device}: use a cuda device (and the torch "
            "backend), or leave CUDA graphs off"
        )


class DenseRunner:
    """The dense program (normalisation, then a network's `features`), eager or accelerated as asked (see the
    module's docstring).

    `prepare` a batch at warm-up to compile and capture its shape; call the runner on a `DenseInput`. From one
    thread at a time, the predictor's inference thread.
    """

    def __init__(
        self,
        network: Engine,
        *,
        device: torch.device,
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        pixel_mean = torch.tensor(network.config.pixel_mean).view(3, 1, 1).to(device)
        pixel_std = torch.tensor(network.config.pixel_std).view(3, 1, 1).to(device)

        def dense(pixels: torch.Tensor, sizes: torch.Tensor) -> Outputs:
            return network.features(normalize_canvas(pixels, sizes, pixel_mean, pixel_std))

        self._eager: Features = dense
        self._compiled: Features | None = _compile(network, dense) if compile else None
        self._compiled_shapes: set[BatchShape] = set()
        self._graphs: dict[BatchShape, _CapturedGraph] | None = None
        if cuda_graphs:
            check_cuda_graphs(device)
            self._graphs = {}
            # One memory pool for every graph's intermediates: they never run at once (one stream, one thread),
            # and each replay's outputs are copied out before the next (`_CapturedGraph.replay`).
            self._pool = torch.cuda.graph_pool_handle()

    @property
    def compiled(self) -> bool:
        """Whether prepared shapes run compiled: compiling was asked for and has not failed."""
        return self._compiled is not None

    @property
    def cuda_graphs(self) -> bool:
        """Whether prepared shapes replay CUDA graphs: they were asked for and no capture has failed."""
        return self._graphs is not None

    def prepare(self, batch: DenseInput) -> None:
        """Compile and capture for batches of this one's shape, unless done already. Slow (a compile takes
        tens of seconds); a failure is logged and leaves that acceleration off."""
        shape = tuple(batch.pixels.shape)
        if self._compiled is not None and shape not in self._compiled_shapes:
            try:
                self._compiled(*batch)  # compiles for this shape, then runs the compiled code once
            except Exception as error:
                _warn("torch.compile failed", error)
                self._compiled = None
                self._compiled_shapes.clear()
            else:
                self._compiled_shapes.add(shape)
        if self._graphs is not None and shape not in self._graphs:
            try:
                self._graphs[shape] = _CapturedGraph(self._run_for(shape), batch, self._pool)
            except Exception as error:
                _warn("capturing a CUDA graph failed", error)
                self._graphs = None

    def __call__(self, batch: DenseInput) -> Outputs:
        """The pyramid and head outputs of a batch: replayed, compiled or eager, as prepared for its shape."""
        shape = tuple(batch.pixels.shape)
        graph = self._graphs.get(shape) if self._graphs is not None else None
        if graph is not None:
            return graph.replay(batch)
        return self._run_for(shape)(*batch)

    def _run_for(self, shape: BatchShape) -> Features:
        return (
            self._compiled if self._compiled is not None and shape in self._compiled_shapes else self._eager
        )


def _compile(network: Engine, dense: Features) -> Features | None:
    """The dense program compiled, lazily (the work happens at each shape's first call); None when it
    cannot be."""
    if network.backend is not Backend.TORCH:
        logger.warning(
            "torch.compile is not used: the %s backend runs the network as exported, eagerly", network.backend
        )
        return None
    try:
        # One static graph per shape (dynamic=False): the predictor's padded shapes are a small, fixed set.
        # fullgraph: a graph break is a failure to report, not a silently partial compile.
        return torch.compile(dense, fullgraph=True, dynamic=False, **_recompile_limit())
    except Exception as error:
        _warn("torch.compile failed", error)
        return None


def _recompile_limit() -> dict[str, Any]:
    """torch.compile's argument raising the per-function limit of compiled graphs to MAX_COMPILED_SHAPES,
    where it has one (torch 2.14); older releases only have dynamo's process-wide setting, raised instead."""
    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        return {"recompile_limit": MAX_COMPILED_SHAPES}
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), MAX_COMPILED_SHAPES))
    return {}


def _warn(what: str, error: Exception) -> None:
    # Compiler errors wrap the cause in later lines ("backend='inductor' raised:\nInvalidCxxCompiler: ..."):
    # one line of the first few hundred characters keeps it.
    reason = " ".join(str(error).split())[:_REASON_CHARS]
    logger.warning("%s, so the network runs eagerly: %s: %s", what, type(error).__name__, reason)


class _CapturedGraph:
    """The dense program on one batch shape as a CUDA graph: the static input it reads (the uint8 canvas and
    the sizes) and the outputs its replays write, nothing more."""

    def __init__(self, run: Features, batch: DenseInput, pool: Any) -> None:
        # Allocated before the capture, so outside the shared pool: no graph's replay writes there.
        self._input = DenseInput(batch.pixels.clone(), batch.sizes.clone())
        # Capture and replay use the current device's streams, which need not be the batch's (cuda:1).
        self._device = batch.pixels.device
        with torch.cuda.device(self._device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(CAPTURE_WARM_UP_RUNS):
                    run(*self._input)
            torch.cuda.current_stream().wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls of other threads (the event loop's metrics, say) do not void the capture.
            with torch.cuda.graph(self._graph, pool=pool, capture_error_mode="thread_local"):
                pyramid, self._head = run(*self._input)
            # Only the levels the mask heads read stay referenced: P6 and P7 go back to the shared pool.
            self._pyramid = {level: pyramid[level] for level in MASK_LEVELS}
            del pyramid

    def replay(self, batch: DenseInput) -> Outputs:
        """The dense program's outputs for a batch of the captured shape, as tensors of the caller's own."""
        with torch.cuda.device(self._device):
            self._input.pixels.copy_(batch.pixels)
            self._input.sizes.copy_(batch.sizes)
            self._graph.replay()
            # The outputs live in the shared pool, where any graph's next replay may write: copies leave with
            # the caller. Only the levels the mask heads read, as `Engine.features` allows.
            pyramid = {level: tensor.clone() for level, tensor in self._pyramid.items()}
            head = FCOSHeadOutputs(*([tensor.clone() for tensor in outputs] for outputs in self._head))
        return pyramid, head
