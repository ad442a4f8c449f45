"""Frozen batch norms folded into their convolutions: no norm left, the same outputs, for every backbone family."""

from __future__ import annotations

import pytest
import torch

from model.inference.fusion import fold_frozen_batch_norms
from model.network.centermask import CenterMask
from model.network.configs import get_config
from model.network.layers import FrozenBatchNorm2d
from tests.rule_weights import rule_state_dict


@pytest.mark.parametrize(
    "config",
    [
        "centermask_lite_V_19_slim_dw_eSE_FPN_ms_4x",  # depthwise VoVNet units
        "centermask_lite_Mv2_FPN_ms_4x",  # inverted residuals
        "centermask_R_50_FPN_ms_3x",  # convolutions owning their norm (detectron2 layout)
        "centermask_V_39_eSE_dcn_FPN_ms_3x",  # modulated deformable convolutions
    ],
)
def test_folding_keeps_the_pyramid(config: str) -> None:
    model = CenterMask(get_config(config))
    model.load_state_dict(rule_state_dict((k, tuple(v.shape)) for k, v in model.state_dict().items()))
    model.eval()
    batch = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 50
    norms = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    with torch.inference_mode():
        before = model.backbone(batch)
        assert fold_frozen_batch_norms(model) == norms > 0
        after = model.backbone(batch)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    for level, expected in before.items():
        scale = float(expected.abs().max())
        torch.testing.assert_close(after[level], expected, rtol=1e-4, atol=1e-5 * scale)
