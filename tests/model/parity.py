"""The configs with official outputs in shared/reference/fixtures/ (the reference helpers are in tests.rule_weights)."""

# The cheapest first.
FIXTURE_CONFIGS = (
    "centermask_lite_V_19_slim_eSE_FPN_ms_4x",
    "centermask_lite_Mv2_FPN_ms_4x",
    "centermask_V_39_eSE_FPN_ms_3x",
    "centermask_R_50_FPN_ms_3x",
)
