"""ONNX export of the network: `python -m model.export --weights W [--config C] --out model.onnx [--opset N]`.

What is exported is the tensor network, as two graphs; everything around them stays in our Python code
(`model.centermask.NetworkSteps`, `model.processing`), shared with the PyTorch path:

* `<stem>.detector.onnx`: `images` (N, 3, H, W) float32, normalised (BGR minus the pixel mean, over the
  std) and zero-padded to multiples of 32 → the RoI pooling levels `p3`, `p4`, `p5` (N, C, H/s, W/s) and
  the FCOS head outputs of each level l of p3..p7: `cls_logits_l` (N, K, H_l, W_l), `box_regression_l`
  (N, 4, H_l, W_l: left, top, right, bottom distances in units of the level's stride, after ReLU) and
  `centerness_l` (N, 1, H_l, W_l: logits). N, H and W are dynamic.
* `<stem>.mask_head.onnx`: `roi_features` (M, C, 14, 14) float32 (ROIAlignV2 of each box from its
  level), `classes` (M,) int64 and `scores` (M,) float32 → `mask_probs` (M, 28, 28), the mask
  probabilities of each RoI's class, and `mask_scores` (M,) = score × predicted mask IoU. M is dynamic (≥ 1).

Outside the graphs: the resize, normalisation and padding before; FCOS decoding (thresholds, top-k, NMS),
box scaling, RoI level assignment and RoIAlign between; mask pasting and RLE after (docs/deploy.md says
what a Triton ensemble must do). Batch norms are folded into the convolutions first, as for inference in
PyTorch. The DCN configs' deformable convolutions become ONNX `DeformConv` (opset 19 and later).

Each file records where it came from in its metadata (`centermask.*` keys: config, classes, the weights'
SHA-256), so that the onnxruntime backend refuses graphs exported from other weights.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.backends import ONNX_EXTRA
from model.centermask import CenterMask
from model.checkpoint import file_sha256, load_model
from model.deform_conv import ModulatedDeformConv2d
from model.fpn import FPN_LEVELS
from model.mask_head import MASK_LEVELS

# ONNX's DeformConv appeared in opset 19; the exporter writes opset 18 and later.
DEFAULT_OPSET = 19
MIN_OPSET = 18
DEFORM_CONV_OPSET = 19

DETECTOR_INPUTS = ("images",)
HEAD_OUTPUTS = ("cls_logits", "box_regression", "centerness")
DETECTOR_OUTPUTS = (
    *MASK_LEVELS,
    *(f"{output}_{level}" for output in HEAD_OUTPUTS for level in FPN_LEVELS),
)
MASK_HEAD_INPUTS = ("roi_features", "classes", "scores")
MASK_HEAD_OUTPUTS = ("mask_probs", "mask_scores")
GRAPHS = ("detector", "mask_head")

# Largest padded side the graphs promise to take (the exporter needs a bound): 128 × 32 = 4096 pixels.
_MAX_SIDE_BLOCKS = 128


class DetectorGraph(nn.Module):
    """`CenterMask.features` with flat, named outputs (DETECTOR_OUTPUTS order)."""

    def __init__(self, model: CenterMask) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pyramid, head = self.model.features(images)
        return (
            *(pyramid[level] for level in MASK_LEVELS),
            *head.cls_logits,
            *head.box_regression,
            *head.centerness,
        )


class MaskHeadGraph(nn.Module):
    """`CenterMask.predict_masks`: RoI features, classes and scores → mask probabilities and mask scores."""

    def __init__(self, model: CenterMask) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, roi_features: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict_masks(roi_features, classes, scores)


@dataclass(frozen=True)
class ExportedGraphs:
    """The two serialised ONNX models (bytes of `onnx.ModelProto`)."""

    detector: bytes
    mask_head: bytes

    def save(self, out: str | Path) -> tuple[Path, Path]:
        detector_path, mask_head_path = graph_paths(out)
        detector_path.parent.mkdir(parents=True, exist_ok=True)
        detector_path.write_bytes(self.detector)
        mask_head_path.write_bytes(self.mask_head)
        return detector_path, mask_head_path

    @classmethod
    def load(cls, out: str | Path) -> ExportedGraphs:
        detector_path, mask_head_path = graph_paths(out)
        for path in (detector_path, mask_head_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: export with python -m model.export --out {out}")
        return cls(detector_path.read_bytes(), mask_head_path.read_bytes())


def graph_paths(out: str | Path) -> tuple[Path, Path]:
    """`model.onnx` (or `model`) → (`model.detector.onnx`, `model.mask_head.onnx`): one file per graph."""
    path = Path(out)
    stem = path.with_suffix("") if path.suffix == ".onnx" else path
    return tuple(stem.with_name(f"{stem.name}.{graph}.onnx") for graph in GRAPHS)  # type: ignore[return-value]


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
    model.eval().optimize_for_inference(torch.float32, channels_last=False)
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
        ("detector", DetectorGraph(model), (images,), DETECTOR_INPUTS, DETECTOR_OUTPUTS,
         {"images": {0: batch, 2: height, 3: width}}),
        ("mask_head", MaskHeadGraph(model), roi_example, MASK_HEAD_INPUTS, MASK_HEAD_OUTPUTS,
         {"roi_features": {0: rois}, "classes": {0: rois}, "scores": {0: rois}}),
    ):  # fmt: skip
        # verbose=False keeps the exporter's progress off stdout; its note on how it names the dynamic
        # dimensions is no warning for our users either.
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
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
        proto = program.model_proto
        for key, value in {"centermask.graph": name, **(metadata or {})}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto, full_check=True)
        graphs.append(proto.SerializeToString())
    return ExportedGraphs(*graphs)


def has_deformable_convs(model: nn.Module) -> bool:
    return any(isinstance(module, ModulatedDeformConv2d) for module in model.modules())


def provenance(model: CenterMask, class_names: Sequence[str], weights: Path) -> dict[str, str]:
    """What the metadata of exported graphs records about their origin."""
    return {
        "centermask.config": model.config.name,
        "centermask.num_classes": str(model.config.num_classes),
        "centermask.class_names": json.dumps(list(class_names)),
        "centermask.weights_sha256": file_sha256(weights),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from model.predict import DEFAULT_WEIGHTS

    parser = argparse.ArgumentParser(prog="python -m model.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="checkpoint (.pth/.pkl); default: the bundled model")
    parser.add_argument("--config", help="config name, needed for official checkpoints")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="model.onnx: writes model.detector.onnx and model.mask_head.onnx",
    )
    parser.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    args = parser.parse_args(argv)
    weights = args.weights or DEFAULT_WEIGHTS
    model, class_names, _ = load_model(weights, args.config)
    try:
        graphs = export_model(model, provenance(model, class_names, weights), args.opset)
    except ValueError as error:
        parser.error(str(error))
    for path in graphs.save(args.out):
        print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
