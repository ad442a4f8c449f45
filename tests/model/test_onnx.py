"""ONNX export (model.onnx.export) and the onnxruntime backend (model.onnx.engine): checked graphs with dynamic
shapes, the official outputs on the shared fixtures, the same detections as PyTorch, and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.inference.backends import Backend, BackendUnavailable, check_backend
from model.inference.images import load_rgb
from model.inference.load import load_predictor
from model.inference.precision import Precision, PrecisionUnavailable
from model.inference.predictor import Predictor
from model.network.centermask import CenterMask
from model.network.configs import get_config
from model.onnx.contract import DETECTOR_OUTPUTS, MASK_HEAD_OUTPUTS, graph_paths
from model.onnx.export import export_model
from model.predict import main as predict_main
from model.wire.records import image_record
from tests.model.parity import FIXTURE_CONFIGS
from tests.rule_weights import match_instances, official_rule_checkpoint

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e .[onnx])")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e .[onnx])")
pytest.importorskip(
    "onnxscript", reason="onnxscript (the exporter) is not installed (pip install -e .[onnx])"
)

DCN_CONFIG = "centermask_V_39_eSE_dcn_FPN_ms_3x"


def blocky(seed: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))[:height, :width].copy()


def records(predictor: Predictor, images: list[np.ndarray]) -> list[list[dict]]:
    prepared = [predictor.prepare(image) for image in images]
    return [
        image_record(None, detections, predictor.class_names, predictor.category_ids)["instances"]
        for detections in predictor.infer(prepared)
    ]


@pytest.fixture(scope="module")
def torch_predictor(tiny_weights: Path) -> Predictor:
    return load_predictor(tiny_weights)


@pytest.fixture(scope="module")
def onnx_predictor(tiny_weights: Path, tiny_onnx: Path) -> Predictor:
    return load_predictor(tiny_weights, backend="onnxruntime", onnx=tiny_onnx)


def test_the_export_writes_two_checked_graphs_with_dynamic_shapes(tiny_onnx: Path) -> None:
    detector_path, mask_head_path = graph_paths(tiny_onnx)
    assert (detector_path.name, mask_head_path.name) == ("tiny.detector.onnx", "tiny.mask_head.onnx")
    detector, mask_head = onnx.load(detector_path), onnx.load(mask_head_path)
    for graph in (detector, mask_head):
        onnx.checker.check_model(graph, full_check=True)
    (images,) = detector.graph.input
    dims = [dim.dim_param or dim.dim_value for dim in images.type.tensor_type.shape.dim]
    assert images.name == "images" and dims[1] == 3
    assert all(isinstance(dim, str) and dim for dim in (dims[0], dims[2], dims[3])), dims
    assert [output.name for output in detector.graph.output] == list(DETECTOR_OUTPUTS)
    # P7 (stride 128) is dynamic too: no output dimension was fixed by the example input's size.
    for output in detector.graph.output:
        height, width = output.type.tensor_type.shape.dim[2:]
        assert height.dim_param and width.dim_param, output.name
    assert [output.name for output in mask_head.graph.output] == list(MASK_HEAD_OUTPUTS)
    metadata = {entry.key: entry.value for entry in detector.metadata_props}
    assert metadata["centermask.graph"] == "detector"
    assert metadata["centermask.config"] == "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x"
    assert len(json.loads(metadata["centermask.class_names"])) == 80


def test_onnxruntime_finds_what_torch_finds(torch_predictor: Predictor, onnx_predictor: Predictor) -> None:
    assert onnx_predictor.backend is Backend.ONNXRUNTIME and onnx_predictor.device.type == "cpu"
    # Two sizes that pad alike (one batch), and another padded shape.
    images = [blocky(0, 300, 420), blocky(1, 300, 410), blocky(2, 240, 500)]
    for batch in (images[:2], images[2:]):
        for expected, ours in zip(
            records(torch_predictor, batch), records(onnx_predictor, batch), strict=True
        ):
            assert expected
            report = match_instances(expected, ours)
            assert report.passes and report.matched == len(expected) == len(ours), report
            assert min(report.mask_ious) >= 0.97, report


def test_an_image_alone_and_in_a_batch_gets_the_same_detections(onnx_predictor: Predictor) -> None:
    images = [blocky(3, 300, 420), blocky(4, 300, 410)]
    together = records(onnx_predictor, images)
    alone = [records(onnx_predictor, [image])[0] for image in images]
    for a, b in zip(together, alone, strict=True):
        report = match_instances(a, b)
        assert report.passes and report.matched == len(a) == len(b)


def test_warm_up_and_an_image_without_detections(onnx_predictor: Predictor) -> None:
    onnx_predictor.warm_up((320, 448), 2)
    (detections,) = onnx_predictor.predict([np.zeros((64, 64, 3), dtype=np.uint8)])
    assert detections.mask_probs.shape[1:] == (28, 28)


@pytest.mark.parametrize("config", FIXTURE_CONFIGS)
def test_onnxruntime_matches_the_official_outputs(
    config: str, shared_reference: Path, tmp_path: Path
) -> None:
    """The graphs exported while loading, on the official rule-weight fixtures (shared/reference)."""
    predictor = load_predictor(
        official_rule_checkpoint(shared_reference, config, tmp_path), config, backend="onnxruntime"
    )
    directory = shared_reference / "fixtures" / config
    for image in json.loads((directory / "summary.json").read_text())["images"]:
        reference = json.loads((directory / image["file"]).with_suffix(".json").read_text())
        [ours] = records(predictor, [load_rgb(directory / image["file"])])
        report = match_instances(reference["instances"], ours)
        assert report.passes, (config, image["file"], report)


def test_deformable_convolutions_export_and_run(shared_reference: Path, tmp_path: Path) -> None:
    """A DCN config: DeformConv (opset 19) runs in ONNX Runtime on the CPU, as torchvision's op does."""
    weights = official_rule_checkpoint(shared_reference, DCN_CONFIG, tmp_path, test_size=(128, 192))
    images = [blocky(5, 120, 160)]
    expected = records(load_predictor(weights), images)
    ours = records(load_predictor(weights, backend="onnxruntime"), images)
    report = match_instances(expected[0], ours[0])
    assert expected[0] and report.passes and report.matched == len(expected[0]), report


def test_deformable_convolutions_need_opset_19() -> None:
    with torch.device("meta"):
        model = CenterMask(get_config(DCN_CONFIG))
    with pytest.raises(ValueError, match="DeformConv from opset 19"):
        export_model(model, opset=18)
    with pytest.raises(ValueError, match="opset 17 is too old"):
        export_model(model, opset=17)


def test_graphs_of_other_weights_are_refused(small_weights: Path, tiny_onnx: Path) -> None:
    with pytest.raises(ValueError, match="exported from other weights"):
        load_predictor(small_weights, backend="onnxruntime", onnx=tiny_onnx)
    with pytest.raises(FileNotFoundError, match=r"python -m model\.export"):
        load_predictor(small_weights, backend="onnxruntime", onnx=tiny_onnx.with_name("absent.onnx"))
    with pytest.raises(ValueError, match="backend onnxruntime"):
        load_predictor(small_weights, onnx=tiny_onnx)


def test_what_the_backend_cannot_run_is_refused_before_loading(tiny_weights: Path) -> None:
    with pytest.raises(PrecisionUnavailable, match="fp32 only"):
        load_predictor(tiny_weights, backend="onnxruntime", precision="bf16")
    with pytest.raises(BackendUnavailable, match="CPU only"):
        check_backend(Backend.ONNXRUNTIME, Precision.FP32, torch.device("cuda"))


def test_the_predict_command_line_runs_either_backend(
    tiny_weights: Path, tiny_onnx: Path, tmp_path: Path
) -> None:
    image = tmp_path / "blocky.png"
    from PIL import Image

    Image.fromarray(blocky(6, 200, 260)).save(image)
    outputs = {}
    for backend, extra in (("torch", []), ("onnxruntime", ["--onnx", str(tiny_onnx)])):
        output = tmp_path / f"{backend}.json"
        common = ["--weights", str(tiny_weights), "--output", str(output), "--backend", backend]
        assert predict_main([str(image), *common, *extra]) == 0
        outputs[backend] = json.loads(output.read_text())[0]["instances"]
    report = match_instances(outputs["torch"], outputs["onnxruntime"])
    assert outputs["torch"] and report.passes and report.matched == len(outputs["torch"])
