"""How the predictor runs the network's dense part, `Engine.features` (backbone, FPN and FCOS head), whose
every shape follows from the padded batch's: eagerly, compiled by `torch.compile`, replayed from CUDA graphs,
or both (graphs of the compiled code). Decoding, NMS and the mask heads have data-dependent shapes and always
run eagerly.

Both accelerations are prepared per batch shape (batch size × padded shape) at warm-up (`Predictor.warm_up`,
which the service runs for every common padded shape and batch size), where a slow first call is expected. A
batch of a shape that was not prepared runs eagerly rather than stall the inference thread for a compile
(tens of seconds) or a capture. Whatever goes wrong while preparing (no C compiler for inductor, an operator
it cannot lower, a capture CUDA refuses) logs one warning saying why, and that acceleration is off from then
on: a request never fails because of one.

Compiled code is not bit-exact to eager code: inductor fuses and reorders float operations, so fp32 results
differ by float rounding (about 1e-5 relative). CUDA graphs replay the very kernels they captured.
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
from model.network.fcos import FCOSHeadOutputs

logger = logging.getLogger(__name__)

Features = Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], FCOSHeadOutputs]]
# A batch shape: the padded batch's (N, 3, Hp, Wp) and dtype.
BatchShape = tuple[tuple[int, ...], torch.dtype]

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
    """A network's `features`, eager or accelerated as asked (see the module's docstring).

    `prepare` a batch at warm-up to compile and capture its shape; call the runner on a batch as on
    `features`. From one thread at a time, the predictor's inference thread.
    """

    def __init__(
        self,
        network: Engine,
        *,
        device: torch.device,
        compile: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        self._eager: Features = network.features
        self._compiled: Features | None = _compile(network) if compile else None
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

    def prepare(self, batch: torch.Tensor) -> None:
        """Compile and capture for batches of this one's shape, unless done already. Slow (a compile takes
        tens of seconds); a failure is logged and leaves that acceleration off."""
        shape = _batch_shape(batch)
        if self._compiled is not None and shape not in self._compiled_shapes:
            try:
                self._compiled(batch)  # compiles for this shape, then runs the compiled code once
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

    def __call__(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], FCOSHeadOutputs]:
        """`features(batch)`: replayed, compiled or eager, as prepared for its shape."""
        shape = _batch_shape(batch)
        graph = self._graphs.get(shape) if self._graphs is not None else None
        if graph is not None:
            return graph.replay(batch)
        return self._run_for(shape)(batch)

    def _run_for(self, shape: BatchShape) -> Features:
        return (
            self._compiled if self._compiled is not None and shape in self._compiled_shapes else self._eager
        )


def _compile(network: Engine) -> Features | None:
    """`network.features` compiled, lazily (the work happens at each shape's first call); None when it
    cannot be."""
    if network.backend is not Backend.TORCH:
        logger.warning(
            "torch.compile is not used: the %s backend runs the network as exported, eagerly", network.backend
        )
        return None
    try:
        # One static graph per shape (dynamic=False): the predictor's padded shapes are a small, fixed set.
        # fullgraph: a graph break is a failure to report, not a silently partial compile.
        return torch.compile(network.features, fullgraph=True, dynamic=False, **_recompile_limit())
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


def _batch_shape(batch: torch.Tensor) -> BatchShape:
    return tuple(batch.shape), batch.dtype


class _CapturedGraph:
    """`features` on one batch shape as a CUDA graph: a static input it reads and outputs its replays write."""

    def __init__(self, run: Features, batch: torch.Tensor, pool: Any) -> None:
        # Allocated before the capture, so outside the shared pool: no graph's replay writes there.
        self._input = batch.clone()
        # Capture and replay use the current device's streams, which need not be the batch's (cuda:1).
        self._device = batch.device
        with torch.cuda.device(self._device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(CAPTURE_WARM_UP_RUNS):
                    run(self._input)
            torch.cuda.current_stream().wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls of other threads (the event loop's metrics, say) do not void the capture.
            with torch.cuda.graph(self._graph, pool=pool, capture_error_mode="thread_local"):
                self._pyramid, self._head = run(self._input)

    def replay(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], FCOSHeadOutputs]:
        """`features(batch)` for a batch of the captured shape, as tensors of the caller's own."""
        with torch.cuda.device(self._device):
            self._input.copy_(batch)
            self._graph.replay()
            # The outputs live in the shared pool, where any graph's next replay may write: copies leave with
            # the caller. Only the levels the mask heads read, as `Engine.features` allows.
            pyramid = {level: self._pyramid[level].clone() for level in MASK_LEVELS}
            head = FCOSHeadOutputs(*([tensor.clone() for tensor in outputs] for outputs in self._head))
        return pyramid, head
