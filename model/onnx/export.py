"""ONNX export of the network as two graphs (`model.onnx.contract` says what they take and give).

What is exported is the tensor network as the torch engine runs it in fp32 (`TorchEngine`: batch norms
folded); everything around the graphs stays in our Python code (`model.inference`), shared with the PyTorch
path: the resize, normalisation and padding before; FCOS decoding (thresholds, top-k, NMS), box scaling, RoI
level assignment and RoIAlign between; mask pasting and RLE after (docs/deploy.md says what a Triton
ensemble must do). The DCN configs' deformable convolutions become ONNX `DeformConv` (opset 19 and later).

The command line is `python -m model.export` (`model/export.py`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from model.inference.backends import ONNX_EXTRA
from model.inference.engine import TorchEngine
from model.inference.postprocess import MASK_LEVELS
from model.network.centermask import CenterMask
from model.network.deform_conv import ModulatedDeformConv2d
from model.onnx.contract import (
    DETECTOR_INPUTS,
    DETECTOR_OUTPUTS,
    GRAPH_KEY,
    MASK_HEAD_INPUTS,
    MASK_HEAD_OUTPUTS,
    ExportedGraphs,
)

# ONNX's DeformConv appeared in opset 19; the exporter writes opset 18 and later.
DEFAULT_OPSET = 19
MIN_OPSET = 18
DEFORM_CONV_OPSET = 19

# Largest padded side the graphs promise to take (the exporter needs a bound): 128 × 32 = 4096 pixels.
_MAX_SIDE_BLOCKS = 128


class DetectorGraph(nn.Module):
    """`TorchEngine.features` with flat, named outputs (DETECTOR_OUTPUTS order)."""

    def __init__(self, engine: TorchEngine) -> None:
        super().__init__()
        self.model = engine.model
        self.engine = engine

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pyramid, head = self.engine.features(images)
        return (
            *(pyramid[level] for level in MASK_LEVELS),
            *head.cls_logits,
            *head.box_regression,
            *head.centerness,
        )


class MaskHeadGraph(nn.Module):
    """`TorchEngine.predict_masks`: RoI features, classes and scores → mask probabilities and mask scores."""

    def __init__(self, engine: TorchEngine) -> None:
        super().__init__()
        self.model = engine.model
        self.engine = engine

    def forward(
        self, roi_features: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.engine.predict_masks(roi_features, classes, scores)


def export_model(
    model: CenterMask, metadata: dict[str, str] | None = None, opset: int = DEFAULT_OPSET
) -> ExportedGraphs:
    """Export a loaded fp32 model (which this rewrites for inference: batch norms folded) to ONNX.

    Both graphs pass `onnx.checker` (full check, shapes inferred) before they are returned; `metadata` goes
    into each file's metadata_props, beside the graph's name.
    """
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"the ONNX export needs {' and '.join(missing)}: {ONNX_EXTRA}")
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: the exporter writes opset {MIN_OPSET} and later")
    if has_deformable_convs(model) and opset < DEFORM_CONV_OPSET:
        raise ValueError(
            f"{model.config.name} has deformable convolutions: ONNX has DeformConv from opset "
            f"{DEFORM_CONV_OPSET} on, so export with --opset {DEFORM_CONV_OPSET} or later"
        )
    engine = TorchEngine(model, dtype=torch.float32, channels_last=False)
    config = model.config
    batch, height, width = (
        torch.export.Dim("batch", min=1),
        *(
            32 * torch.export.Dim(name, min=1, max=_MAX_SIDE_BLOCKS)
            for name in ("height_blocks", "width_blocks")
        ),
    )
    rois = torch.export.Dim("rois", min=1)
    # Example inputs with no size 1 anywhere, down to P7 (stride 128): the exporter takes a dimension of
    # size 1 in the example for a static one.
    images = torch.zeros((2, 3, 320, 448))
    side = config.mask_resolution
    roi_example = (
        torch.zeros((3, config.fpn_channels, side, side)),
        torch.zeros(3, dtype=torch.int64),
        torch.ones(3),
    )
    graphs = []
    for name, graph, example, inputs, outputs, shapes in (
        ("detector", DetectorGraph(engine), (images,), DETECTOR_INPUTS, DETECTOR_OUTPUTS,
         {"images": {0: batch, 2: height, 3: width}}),
        ("mask_head", MaskHeadGraph(engine), roi_example, MASK_HEAD_INPUTS, MASK_HEAD_OUTPUTS,
         {"roi_features": {0: rois}, "classes": {0: rois}, "scores": {0: rois}}),
    ):  # fmt: skip
        # verbose=False keeps the exporter's progress off stdout; its note on how it names the dynamic
        # dimensions is no warning for our users either.
        with warnings.catch_warnings(), _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
            warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
            program = torch.onnx.export(
                graph.eval(),
                example,
                dynamo=True,
                opset_version=opset,
                input_names=list(inputs),
                output_names=list(outputs),
                dynamic_shapes=shapes,
                optimize=True,
                external_data=False,
                verbose=False,
            )
        assert program is not None  # the dynamo exporter always returns its program
        proto = program.model_proto
        for key, value in {GRAPH_KEY: name, **(metadata or {})}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto, full_check=True)
        graphs.append(proto.SerializeToString())
    return ExportedGraphs(*graphs)


# The exporter's optimisation passes log every step at info (a hundred lines a graph): progress, not news.
_CHATTY_LOGGERS = ("onnx_ir", "onnxscript")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def has_deformable_convs(model: nn.Module) -> bool:
    return any(isinstance(module, ModulatedDeformConv2d) for module in model.modules())
