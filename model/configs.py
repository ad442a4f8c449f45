"""The official centermask2 configurations, as data.

Each entry reproduces what `configs/centermask/<name>.yaml` of centermask2 resolves to at inference
time (see CENTERMASK_SPEC.md §8). Architectures are addressed by the config file's name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class VoVNetSpec:
    """One VoVNetV2 body: stem widths and, per stage 2..5, OSA widths and block counts."""

    stem_channels: tuple[int, int, int]
    stage_conv_channels: tuple[int, int, int, int]
    stage_out_channels: tuple[int, int, int, int]
    layers_per_block: int
    blocks_per_stage: tuple[int, int, int, int]
    depthwise: bool = False


VOVNET_SPECS: dict[str, VoVNetSpec] = {
    "V-19-slim-dw-eSE": VoVNetSpec(
        (64, 64, 64), (64, 80, 96, 112), (112, 256, 384, 512), 3, (1, 1, 1, 1), True
    ),
    "V-19-dw-eSE": VoVNetSpec(
        (64, 64, 64), (128, 160, 192, 224), (256, 512, 768, 1024), 3, (1, 1, 1, 1), True
    ),
    "V-19-slim-eSE": VoVNetSpec((64, 64, 128), (64, 80, 96, 112), (112, 256, 384, 512), 3, (1, 1, 1, 1)),
    "V-19-eSE": VoVNetSpec((64, 64, 128), (128, 160, 192, 224), (256, 512, 768, 1024), 3, (1, 1, 1, 1)),
    "V-39-eSE": VoVNetSpec((64, 64, 128), (128, 160, 192, 224), (256, 512, 768, 1024), 5, (1, 1, 2, 2)),
    "V-57-eSE": VoVNetSpec((64, 64, 128), (128, 160, 192, 224), (256, 512, 768, 1024), 5, (1, 1, 4, 3)),
    "V-99-eSE": VoVNetSpec((64, 64, 128), (128, 160, 192, 224), (256, 512, 768, 1024), 5, (1, 3, 9, 3)),
}

# BGR order, 0-255 scale: the official models take BGR input and subtract the mean only.
PIXEL_MEAN_BGR = (103.530, 116.280, 123.675)
PIXEL_STD_BGR = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a CenterMask model at inference time."""

    name: str
    backbone: str  # key of VOVNET_SPECS
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

    @property
    def vovnet(self) -> VoVNetSpec:
        return VOVNET_SPECS[self.backbone]

    def with_overrides(self, **changes: object) -> ModelConfig:
        """A copy with some fields changed (class count, test resize, thresholds)."""
        return replace(self, **changes)


def _official(name: str, backbone: str, *, lite: bool) -> ModelConfig:
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
    )


CONFIGS: dict[str, ModelConfig] = {
    config.name: config
    for config in (
        _official("centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x", "V-19-slim-dw-eSE", lite=True),
        _official("centermask_lite_V_19_slim_eSE_FPN_ms_4x", "V-19-slim-eSE", lite=True),
        _official("centermask_lite_V_19_eSE_FPN_ms_4x", "V-19-eSE", lite=True),
        _official("centermask_lite_V_39_eSE_FPN_ms_4x", "V-39-eSE", lite=True),
        _official("centermask_V_39_eSE_FPN_ms_3x", "V-39-eSE", lite=False),
        _official("centermask_V_57_eSE_FPN_ms_3x", "V-57-eSE", lite=False),
        _official("centermask_V_99_eSE_FPN_ms_3x", "V-99-eSE", lite=False),
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
