"""Checkpoint loading: strictness and the file formats (every config's key layout: test_zoo.py)."""

from __future__ import annotations

import logging
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from model.inference.load import load_predictor
from model.network.centermask import CenterMask
from model.network.configs import get_config
from model.weights.checkpoint import (
    CheckpointError,
    Inert,
    load_model,
    load_torch_file,
    read_checkpoint,
    resolve_category_ids,
    save_checkpoint,
)
from model.weights.coco_classes import COCO_CATEGORY_IDS, COCO_CLASS_NAMES
from tests.rule_weights import rule_state_dict

LITE = "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x"


def rule_weights(config_name: str = LITE) -> dict[str, torch.Tensor]:
    model = CenterMask(get_config(config_name))
    return rule_state_dict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def assert_same_weights(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_official_pth_with_wrapper_and_extras(tmp_path: Path) -> None:
    weights = rule_weights()
    extras = {"pixel_mean": torch.zeros(3, 1, 1), "pixel_std": torch.ones(3, 1, 1)}
    path = tmp_path / "official.pth"
    torch.save({"model": weights | extras, "iteration": 7, "optimizer": {}}, path)
    model, class_names, _ = load_model(path, LITE)
    assert class_names == list(COCO_CLASS_NAMES)
    assert_same_weights(model, weights)


def test_bare_dict_with_module_prefix(tmp_path: Path) -> None:
    weights = rule_weights()
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in weights.items()}, path)
    model, _, _ = load_model(path, LITE)
    assert_same_weights(model, weights)


def test_model_zoo_pickle_of_numpy_arrays(tmp_path: Path) -> None:
    weights = rule_weights()
    path = tmp_path / "zoo.pkl"
    with path.open("wb") as stream:
        pickle.dump({"model": {k: v.numpy() for k, v in weights.items()}, "__author__": "test"}, stream)
    model, _, _ = load_model(path, LITE)
    assert_same_weights(model, weights)


def test_missing_unexpected_and_mismatched_keys_are_named(tmp_path: Path) -> None:
    weights = rule_weights()
    del weights["roi_heads.mask_head.deconv.bias"]
    weights["roi_heads.extra.weight"] = torch.zeros(1)
    weights["backbone.fpn_output3.bias"] = torch.zeros(7)
    path = tmp_path / "broken.pth"
    torch.save({"model": weights}, path)
    with pytest.raises(CheckpointError) as error:
        load_model(path, LITE)
    message = str(error.value)
    assert "1 missing: roi_heads.mask_head.deconv.bias" in message
    assert "1 unexpected: roi_heads.extra.weight" in message
    assert "backbone.fpn_output3.bias (file 7, model 128)" in message


def test_wrong_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lite.pth"
    torch.save({"model": rule_weights()}, path)
    with pytest.raises(CheckpointError, match="does not fit centermask_lite_V_19_slim_eSE_FPN_ms_4x"):
        load_model(path, "centermask_lite_V_19_slim_eSE_FPN_ms_4x")


def test_official_file_needs_a_config_name(tmp_path: Path) -> None:
    path = tmp_path / "official.pth"
    torch.save({"model": rule_weights()}, path)
    with pytest.raises(CheckpointError, match="pass the config name"):
        load_model(path)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.pth")


def test_own_checkpoint_carries_config_classes_and_overrides(tmp_path: Path) -> None:
    config = get_config(LITE).with_overrides(num_classes=5)
    model = CenterMask(config)
    names = ["circle", "rectangle", "triangle", "star", "ring"]
    path = save_checkpoint(
        tmp_path / "ours.pth", model, names, {"note": "x"}, torch.float16, {"min_size_test": 384}
    )
    loaded, class_names, checkpoint = load_model(path)
    assert class_names == names
    assert loaded.config.num_classes == 5 and loaded.config.min_size_test == 384
    assert checkpoint.metadata == {"note": "x"}
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float())
    with pytest.raises(CheckpointError, match="but config"):
        load_model(path, "centermask_V_39_eSE_FPN_ms_3x")


def test_own_checkpoint_carries_the_datasets_category_ids(tmp_path: Path) -> None:
    model = CenterMask(get_config(LITE).with_overrides(num_classes=3))
    path = save_checkpoint(tmp_path / "ours.pth", model, ["a", "b", "c"], category_ids=[2, 7, 40])
    assert read_checkpoint(path).category_ids == [2, 7, 40]
    assert load_predictor(path).category_ids == [2, 7, 40]


def test_official_80_class_files_map_to_coco_category_ids(tmp_path: Path) -> None:
    path = tmp_path / "official.pth"
    torch.save({"model": rule_weights()}, path)
    predictor = load_predictor(path, LITE)
    assert predictor.category_ids == list(COCO_CATEGORY_IDS)
    assert predictor.category_ids[predictor.class_names.index("toothbrush")] == 90


def test_files_without_ids_and_another_class_count_number_from_one(tmp_path: Path) -> None:
    model = CenterMask(get_config(LITE).with_overrides(num_classes=5))
    path = save_checkpoint(tmp_path / "older.pth", model, ["p", "q", "r", "s", "t"])
    checkpoint = read_checkpoint(path)
    assert checkpoint.category_ids is None
    assert resolve_category_ids(checkpoint, 5, "older.pth") == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("ids", "problem"), [([1, 2], "2 category ids for 3 classes"), ([1, 1, 2], "repeat")]
)
def test_inconsistent_category_ids_are_refused(tmp_path: Path, ids: list[int], problem: str) -> None:
    model = CenterMask(get_config(LITE).with_overrides(num_classes=3))
    path = save_checkpoint(tmp_path / "bad.pth", model, ["a", "b", "c"], category_ids=ids)
    with pytest.raises(CheckpointError, match=problem):
        load_predictor(path)


# --------------------------------------------------------------------------------------------------
# Files of unknown origin never run code.


class RunsCode:
    """What an attacker pickles: unpickling it calls exec, which would write `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


class OpensAFile:
    """An object of an importable class whose construction writes `marker` (logging.FileHandler)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (logging.FileHandler, (str(self.marker),))


def save(payload: object, path: Path) -> Path:
    """`.pkl`: a plain pickle (the model zoo's); `.pth`: torch.save; `.legacy.pth`: torch < 1.6's format."""
    if path.suffix == ".pkl":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=not path.name.endswith(".legacy.pth"))
    return path


# Refusal comes before any weight is looked at: a few arrays stand for the weights.
NUMPY_WEIGHTS = {"backbone.fpn_output3.bias": np.zeros(4, np.float32), "x.weight": np.ones((2, 2))}


@pytest.mark.parametrize("suffix", [".pth", ".legacy.pth", ".pkl"])
def test_a_file_that_would_run_code_is_refused_and_nothing_runs(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "ran"
    path = save({"model": NUMPY_WEIGHTS, "optimizer": RunsCode(marker)}, tmp_path / f"evil{suffix}")
    with pytest.raises(CheckpointError, match=r"refusing to load: it (would call|references) .*exec"):
        load_model(path, LITE)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".legacy.pth", ".pkl"])
@pytest.mark.parametrize("where", ["weights", "metadata", "whole file"])
def test_an_object_among_the_data_is_refused_and_never_built(tmp_path: Path, suffix: str, where: str) -> None:
    marker = tmp_path / "opened"
    evil = OpensAFile(marker)
    payload = {
        "weights": {"model": {**NUMPY_WEIGHTS, "extra": evil}},
        "metadata": {"model": NUMPY_WEIGHTS, "metadata": {"note": evil}},
        "whole file": evil,
    }[where]
    path = save(payload, tmp_path / f"evil{suffix}")
    with pytest.raises(CheckpointError, match=r"logging\.FileHandler"):
        load_model(path, LITE)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model_final.pth", "model_final.legacy.pth"])
def test_training_state_of_unknown_classes_is_inert_and_skipped(tmp_path: Path, name: str) -> None:
    """A detectron2 training checkpoint: its scheduler state holds an fvcore object we never import."""
    module = types.ModuleType("fvcore_param_scheduler")

    class CosineParamScheduler:
        def __init__(self, start: float) -> None:
            self.start = start

    CosineParamScheduler.__module__ = module.__name__
    CosineParamScheduler.__qualname__ = "CosineParamScheduler"
    module.CosineParamScheduler = CosineParamScheduler
    weights = rule_weights()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9)
    optimizer.step()
    marker = tmp_path / "opened"
    sys.modules[module.__name__] = module
    try:
        path = save(
            {
                "model": weights,
                "optimizer": optimizer.state_dict(),
                "scheduler": {"_multiplier": CosineParamScheduler(0.1), "last_epoch": 7},
                "trainer": {"hooks": [OpensAFile(marker)]},
                "iteration": 7,
            },
            tmp_path / name,
        )
    finally:
        del sys.modules[module.__name__]
    model, _, _ = load_model(path, LITE)
    assert_same_weights(model, weights)
    assert module.__name__ not in sys.modules and not marker.exists()
    state = load_torch_file(path)
    assert isinstance(state["scheduler"]["_multiplier"], Inert)
    assert state["scheduler"]["_multiplier"].qualified_name == f"{module.__name__}.CosineParamScheduler"
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.9


def test_a_pkl_written_by_torch_save_loads(tmp_path: Path) -> None:
    weights = rule_weights()
    path = tmp_path / "torch.pkl"
    torch.save({"model": weights}, path)
    model, _, _ = load_model(path, LITE)
    assert_same_weights(model, weights)
