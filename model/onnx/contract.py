"""The contract between the exported ONNX graphs and everything around them: names, files, provenance.

Two graphs (`model.onnx.export` writes them, `model.onnx.engine` runs them, Triton users wire them):

* `detector`: `images` (N, 3, H, W) float32, normalised (BGR minus the pixel mean, over the std) and
  zero-padded to multiples of 32 → the RoI pooling levels `p3`, `p4`, `p5` (N, C, H/s, W/s) and the FCOS
  head outputs of each level l of p3..p7: `cls_logits_l` (N, K, H_l, W_l), `box_regression_l` (N, 4, H_l,
  W_l: left, top, right, bottom distances in units of the level's stride, after ReLU) and `centerness_l`
  (N, 1, H_l, W_l: logits). N, H and W are dynamic.
* `mask_head`: `roi_features` (M, C, 14, 14) float32 (ROIAlignV2 of each box from its level), `classes`
  (M,) int64 and `scores` (M,) float32 → `mask_probs` (M, 28, 28), the mask probabilities of each RoI's
  class, and `mask_scores` (M,) = score × predicted mask IoU. M is dynamic (≥ 1).

`model.onnx` (or `model`) names the pair `model.detector.onnx`, `model.mask_head.onnx`. Each file records
where it came from in its metadata (`centermask.*` keys: config, classes, the weights' SHA-256), so that
graphs exported from other weights are refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from model.inference.postprocess import MASK_LEVELS
from model.network.configs import ModelConfig
from model.network.fpn import FPN_LEVELS
from model.weights.checkpoint import file_sha256

DETECTOR_INPUTS = ("images",)
HEAD_OUTPUTS = ("cls_logits", "box_regression", "centerness")
DETECTOR_OUTPUTS = (
    *MASK_LEVELS,
    *(f"{output}_{level}" for output in HEAD_OUTPUTS for level in FPN_LEVELS),
)
MASK_HEAD_INPUTS = ("roi_features", "classes", "scores")
MASK_HEAD_OUTPUTS = ("mask_probs", "mask_scores")
GRAPHS = ("detector", "mask_head")
# The metadata key naming each file's graph, and the keys graphs must agree on with the weights served.
GRAPH_KEY = "centermask.graph"
PROVENANCE_KEYS = ("centermask.config", "centermask.num_classes", "centermask.weights_sha256")


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
    detector, mask_head = (stem.with_name(f"{stem.name}.{graph}.onnx") for graph in GRAPHS)
    return detector, mask_head


def provenance(config: ModelConfig, class_names: Sequence[str], weights: Path) -> dict[str, str]:
    """What the metadata of exported graphs records about their origin."""
    return {
        "centermask.config": config.name,
        "centermask.num_classes": str(config.num_classes),
        "centermask.class_names": json.dumps(list(class_names)),
        "centermask.weights_sha256": file_sha256(weights),
    }
