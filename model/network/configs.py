"""The official centermask2 configurations, as data.

Each entry reproduces what `configs/centermask/<name>.yaml` of centermask2 resolves to at inference
time (see CENTERMASK_SPEC.md §2, §8). Architectures are addressed by the config file's name; a backbone
is a typed spec, which `model.network.backbones.build_bottom_up` turns into its network.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class VoVNetSpec:
    """One VoVNetV2 body (centermask2 `_STAGE_SPECS`): stem widths and, per stage 2..5, OSA widths and counts."""

    stem_channels: tuple[int, int, int]
    stage_conv_channels: tuple[int, int, int, int]
    stage_out_channels: tuple[int, int, int, int]
    layers_per_block: int
    blocks_per_stage: tuple[int, int, int, int]
    depthwise: bool = False
    # Stages whose 3×3 layers are modulated deformable convolutions (`STAGE_WITH_DCN`); never stage 2.
    deformable_stages: tuple[int, ...] = ()


@dataclass(frozen=True)
class ResNetSpec:
    """A detectron2 ResNet / ResNeXt body of bottleneck blocks (`MODEL.RESNETS`), stages res2..res5."""

    blocks_per_stage: tuple[int, int, int, int]
    num_groups: int = 1
    width_per_group: int = 64  # res2 bottleneck width = num_groups × width_per_group, doubling per stage
    stride_in_1x1: bool = True  # MSRA weights stride in the first 1×1; Caffe2's ResNeXt in the 3×3
    stem_channels: int = 64
    res2_out_channels: int = 256


@dataclass(frozen=True)
class InvertedResidualStage:
    """One row of the MobileNetV2 table: `blocks` inverted residuals; the first one has the stride."""

    expansion: int
    channels: int
    blocks: int
    stride: int


@dataclass(frozen=True)
class MobileNetV2Spec:
    """MobileNetV2 (width 1.0) as centermask2 builds it: the stem conv, then inverted residuals; no 1280 conv."""

    stem_channels: int
    stages: tuple[InvertedResidualStage, ...]
    # Indices into `features` whose outputs go to the FPN; named `res{log2(stride)}` like detectron2's.
    out_indices: tuple[int, ...]


BackboneSpec = VoVNetSpec | ResNetSpec | MobileNetV2Spec

V_19_SLIM_DW_ESE = VoVNetSpec(
    stem_channels=(64, 64, 64),
    stage_conv_channels=(64, 80, 96, 112),
    stage_out_channels=(112, 256, 384, 512),
    layers_per_block=3,
    blocks_per_stage=(1, 1, 1, 1),
    depthwise=True,
)
V_19_DW_ESE = VoVNetSpec(
    stem_channels=(64, 64, 64),
    stage_conv_channels=(128, 160, 192, 224),
    stage_out_channels=(256, 512, 768, 1024),
    layers_per_block=3,
    blocks_per_stage=(1, 1, 1, 1),
    depthwise=True,
)
V_19_SLIM_ESE = VoVNetSpec(
    stem_channels=(64, 64, 128),
    stage_conv_channels=(64, 80, 96, 112),
    stage_out_channels=(112, 256, 384, 512),
    layers_per_block=3,
    blocks_per_stage=(1, 1, 1, 1),
)
V_19_ESE = VoVNetSpec(
    stem_channels=(64, 64, 128),
    stage_conv_channels=(128, 160, 192, 224),
    stage_out_channels=(256, 512, 768, 1024),
    layers_per_block=3,
    blocks_per_stage=(1, 1, 1, 1),
)
V_39_ESE = replace(V_19_ESE, layers_per_block=5, blocks_per_stage=(1, 1, 2, 2))
V_57_ESE = replace(V_39_ESE, blocks_per_stage=(1, 1, 4, 3))
V_99_ESE = replace(V_39_ESE, blocks_per_stage=(1, 3, 9, 3))
# `*_dcn_*` configs: STAGE_WITH_DCN (False, True, True, True), modulated, one deformable group.
V_39_ESE_DCN = replace(V_39_ESE, deformable_stages=(3, 4, 5))
V_57_ESE_DCN = replace(V_57_ESE, deformable_stages=(3, 4, 5))
V_99_ESE_DCN = replace(V_99_ESE, deformable_stages=(3, 4, 5))

R_50 = ResNetSpec(blocks_per_stage=(3, 4, 6, 3))
R_101 = ResNetSpec(blocks_per_stage=(3, 4, 23, 3))
X_101_32X8D = ResNetSpec(
    blocks_per_stage=(3, 4, 23, 3), num_groups=32, width_per_group=8, stride_in_1x1=False
)

MOBILENET_V2 = MobileNetV2Spec(
    stem_channels=32,
    stages=(
        InvertedResidualStage(expansion=1, channels=16, blocks=1, stride=1),
        InvertedResidualStage(expansion=6, channels=24, blocks=2, stride=2),
        InvertedResidualStage(expansion=6, channels=32, blocks=3, stride=2),
        InvertedResidualStage(expansion=6, channels=64, blocks=4, stride=2),
        InvertedResidualStage(expansion=6, channels=96, blocks=3, stride=1),
        InvertedResidualStage(expansion=6, channels=160, blocks=3, stride=2),
        InvertedResidualStage(expansion=6, channels=320, blocks=1, stride=1),
    ),
    out_indices=(6, 13, 17),  # the last blocks at strides 8, 16, 32: res3, res4, res5
)

# BGR order, 0-255 scale: the official models take BGR input and subtract the mean only...
PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
PIXEL_STD_BGR = (1.0, 1.0, 1.0)
# ...except X-101, whose Caffe2 ImageNet weights expect unit-variance input.
PIXEL_STD_BGR_CAFFE2 = (57.375, 57.120, 58.395)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a CenterMask model at inference time."""

    name: str
    backbone: BackboneSpec
    fpn_channels: int
    fcos_num_convs: int  # per tower (cls and bbox)
    mask_num_convs: int
    mask_conv_dim: int
    maskiou_num_convs: int
    maskiou_conv_dim: int
    min_size_test: int
    max_size_test: int
    num_classes: int = 80
    fpn_strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    inference_threshold: float = 0.05
    pre_nms_topk: int = 1000
    nms_threshold: float = 0.6
    post_nms_topk: int = 50
    mask_resolution: int = 14  # RoIAlign output side; masks come out at twice this
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN_BGR
    pixel_std: tuple[float, float, float] = PIXEL_STD_BGR

    def with_overrides(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (class count, test resize, thresholds)."""
        return replace(self, **changes)


def _official(
    name: str,
    backbone: BackboneSpec,
    *,
    lite: bool,
    pixel_std: tuple[float, float, float] = PIXEL_STD_BGR,
) -> ModelConfig:
    """Lite configs: 128-channel FPN and heads, 2-conv towers, 600/1000 test size; full: 256, 4, 800/1333."""
    width, convs = (128, 2) if lite else (256, 4)
    return ModelConfig(
        name=name,
        backbone=backbone,
        fpn_channels=width,
        fcos_num_convs=convs,
        mask_num_convs=convs,
        mask_conv_dim=width,
        maskiou_num_convs=convs,
        maskiou_conv_dim=width,
        min_size_test=600 if lite else 800,
        max_size_test=1000 if lite else 1333,
        pixel_std=pixel_std,
    )


CONFIGS: dict[str, ModelConfig] = {
    config.name: config
    for config in (
        _official("centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x", V_19_SLIM_DW_ESE, lite=True),
        _official("centermask_lite_V_19_slim_eSE_FPN_ms_4x", V_19_SLIM_ESE, lite=True),
        _official("centermask_lite_V_19_eSE_FPN_ms_4x", V_19_ESE, lite=True),
        _official("centermask_lite_V_39_eSE_FPN_ms_4x", V_39_ESE, lite=True),
        _official("centermask_lite_Mv2_FPN_ms_4x", MOBILENET_V2, lite=True),
        _official("centermask_V_39_eSE_FPN_ms_3x", V_39_ESE, lite=False),
        _official("centermask_V_57_eSE_FPN_ms_3x", V_57_ESE, lite=False),
        _official("centermask_V_99_eSE_FPN_ms_3x", V_99_ESE, lite=False),
        _official("centermask_V_39_eSE_dcn_FPN_ms_3x", V_39_ESE_DCN, lite=False),
        _official("centermask_V_57_eSE_dcn_FPN_ms_3x", V_57_ESE_DCN, lite=False),
        _official("centermask_V_99_eSE_dcn_FPN_ms_3x", V_99_ESE_DCN, lite=False),
        _official("centermask_R_50_FPN_ms_3x", R_50, lite=False),
        _official("centermask_R_101_FPN_ms_3x", R_101, lite=False),
        _official("centermask_X_101_FPN_ms_3x", X_101_32X8D, lite=False, pixel_std=PIXEL_STD_BGR_CAFFE2),
    )
}


def get_config(name: str) -> ModelConfig:
    """The official config of that name (a config file name, with or without `.yaml`)."""
    key = name.removesuffix(".yaml").rsplit("/", 1)[-1]
    try:
        return CONFIGS[key]
    except KeyError:
        known = ", ".join(sorted(CONFIGS))
        raise ValueError(f"unknown config {name!r}; known configs: {known}") from None
