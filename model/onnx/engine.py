"""The onnxruntime backend: the exported graphs (`model.onnx.contract`) in ONNX Runtime sessions, behind the
engine interface (`model.inference.engine.Engine`), so that the Predictor, the service and the command lines
run either backend the same way. Everything outside the two graphs is the PyTorch path's own code.

CPU only (CPUExecutionProvider) and fp32. Needs the `[onnx]` extra.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import torch

from model.inference.backends import Backend, BackendUnavailable
from model.inference.postprocess import MASK_LEVELS
from model.network.centermask import CenterMask
from model.network.configs import ModelConfig
from model.network.fcos import FCOSHeadOutputs
from model.network.fpn import FPN_LEVELS
from model.onnx.contract import (
    DETECTOR_OUTPUTS,
    GRAPH_KEY,
    GRAPHS,
    HEAD_OUTPUTS,
    MASK_HEAD_INPUTS,
    PROVENANCE_KEYS,
    ExportedGraphs,
    graph_paths,
)
from model.onnx.export import export_model


class OnnxEngine:
    """The engine interface (`features`, `predict_masks`) on ONNX Runtime sessions, on the CPU in fp32."""

    backend = Backend.ONNXRUNTIME
    compute_dtype = torch.float32
    memory_format = torch.contiguous_format

    def __init__(self, config: ModelConfig, graphs: ExportedGraphs, threads: int | None = None) -> None:
        self.config = config
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # As many threads as torch uses (OMP_NUM_THREADS, torch.set_num_threads): one budget per process.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.sessions = {
            name: _session(name, model_bytes, options)
            for name, model_bytes in zip(GRAPHS, (graphs.detector, graphs.mask_head), strict=True)
        }
        self.metadata = {
            name: dict(session.get_modelmeta().custom_metadata_map) for name, session in self.sessions.items()
        }

    @classmethod
    def from_model(
        cls, model: CenterMask, provenance: dict[str, str], onnx: str | Path | None = None
    ) -> OnnxEngine:
        """The backend for a loaded model: its graphs exported now, or read from `onnx` (the `--out` of
        model.onnx.export), which must have been exported from the same weights (`provenance`)."""
        if onnx is None:
            return cls(model.config, export_model(model, provenance))
        network = cls(model.config, ExportedGraphs.load(onnx))
        for (name, metadata), path in zip(network.metadata.items(), graph_paths(onnx), strict=True):
            if metadata.get(GRAPH_KEY) != name:
                raise ValueError(
                    f"{path} is not a CenterMask {name} graph exported by python -m model.export"
                )
            for key in PROVENANCE_KEYS:
                if metadata.get(key) != provenance[key]:
                    raise ValueError(
                        f"{path} was exported from other weights ({key} {metadata.get(key)}, the weights "
                        f"served have {provenance[key]}): export them again with python -m model.export"
                    )
        return network

    def features(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], FCOSHeadOutputs]:
        images = batch.to(torch.float32).contiguous().numpy()
        outputs = dict(
            zip(
                DETECTOR_OUTPUTS,
                self.sessions["detector"].run(DETECTOR_OUTPUTS, {"images": images}),
                strict=True,
            )
        )
        pyramid = {level: torch.from_numpy(outputs[level]) for level in MASK_LEVELS}
        head = FCOSHeadOutputs(
            *(
                [torch.from_numpy(outputs[f"{output}_{level}"]) for level in FPN_LEVELS]
                for output in HEAD_OUTPUTS
            )
        )
        return pyramid, head

    def predict_masks(
        self, roi_features: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = (roi_features.contiguous(), classes.to(torch.int64), scores.to(torch.float32))
        mask_probs, mask_scores = self.sessions["mask_head"].run(
            None, {name: tensor.numpy() for name, tensor in zip(MASK_HEAD_INPUTS, inputs, strict=True)}
        )
        return torch.from_numpy(mask_probs), torch.from_numpy(mask_scores)


def _session(name: str, model_bytes: bytes, options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own pybind classes, not importable by a stable name
        if "NOT_IMPLEMENTED" not in str(error) and type(error).__name__ != "NotImplemented":
            raise
        # e.g. DeformConv (the DCN configs) in an onnxruntime without that CPU kernel.
        raise BackendUnavailable(
            f"onnxruntime {ort.__version__} cannot run the {name} graph on the CPU: {error}. Use an "
            "onnxruntime with that operator's CPU kernel, or the torch backend"
        ) from None


OnnxCenterMask = OnnxEngine  # its name before the layout of docs/architecture.md
