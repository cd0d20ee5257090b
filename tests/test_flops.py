"""Tests for tldr_jax.flops: the fvcore-convention FLOPs model and the FLOPs-budget schedule solver.

Pure arithmetic: no model is built.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tldr_jax.configs import get_config
from tldr_jax.flops import COMPONENTS, LAYER_TERMS, flops, flops_breakdown, gflops, solve_schedule

# vid-TLDR Figure 1 (UMT-B/16, 12 x 224^2), vid-TLDR GFLOPs as plotted (paper.md section 4.1).
FIG1 = {
    "msrvtt": 178.0,
    "activitynet": 227.6,
    "lsmdc": 206.2,
    "ssv2_label": 212.9,
    "ssv2_template": 203.7,
    "msrvtt_qa": 188.5,
    "msvd_qa": 188.5,
}
BASELINE_B = 303.3

cap_warning = pytest.mark.filterwarnings("ignore::tldr_jax.schedule.ScheduleCapWarning")


# --------------------------------------------------------------------------------------------------
# Figure 1 and the paper-derived numbers.
# --------------------------------------------------------------------------------------------------


def test_umt_b_baseline_matches_figure1():
    assert gflops("umt_b16") == pytest.approx(BASELINE_B, rel=2.5e-3)
    assert round(gflops("umt_b16"), 1) == BASELINE_B


@pytest.mark.parametrize("preset,expected", sorted(FIG1.items()))
def test_figure1_presets(preset, expected):
    got = gflops("umt_b16", r=preset)
    assert got == pytest.approx(expected, rel=2.5e-3)
    # The fvcore convention (LayerNorm included) lands on the plotted one-decimal value exactly.
    assert round(got, 1) == expected


def test_msvd_is_within_one_percent_of_the_plot_and_matches_its_published_schedule():
    got = gflops("umt_b16", r="msvd")
    assert got == pytest.approx(182.2, rel=1e-2)
    assert got == pytest.approx(181.1, rel=2.5e-3)  # what (450, 250, 200) actually costs


def test_didemo_reports_the_published_schedule_not_the_plotted_value():
    got = gflops("umt_b16", r="didemo")
    assert got == pytest.approx(212.6, rel=2.5e-3)
    assert abs(got - 183.6) / 183.6 > 0.1


def test_umt_l_baseline():
    assert gflops("umt_l16") == pytest.approx(984.0, rel=1e-3)


def test_token_counts_of_the_msrvtt_preset():
    bd = flops_breakdown("umt_b16", r="msrvtt")
    assert bd["r"] == (600, 200, 100) + (0,) * 9
    assert bd["tokens"][:4] == (2352, 1752, 1552, 1452)
    assert bd["tokens"][-1] == 1452
    assert [layer["tokens_in"] for layer in bd["layers"]] == list(bd["tokens"][:-1])
    assert [layer["tokens_out"] for layer in bd["layers"]] == list(bd["tokens"][1:])


# --------------------------------------------------------------------------------------------------
# The counting convention, on a hand-counted toy config.
# --------------------------------------------------------------------------------------------------

TOY = get_config("umt_b16", depth=2, num_frames=2, img_size=32, embed_dim=64, num_heads=4, mlp_dim=256)


def test_hand_counted_toy_encoder():
    # N = 2 * 2 * 2 = 8 tokens, D = 64, F = 256, r = (2, 1): 8 -> 6 -> 5 tokens.
    def block(n_in, n_out, merge):  # norm1, qkv, q k^T + attn v, proj, merge similarity, norm2, mlp
        return 5 * n_in * 64 + 3 * n_in * 64**2 + 2 * n_in**2 * 64 + n_in * 64**2 + merge + (
            5 * n_out * 64 + 2 * n_out * 64 * 256
        )

    patch = 8 * 64 * 3 * 16 * 16
    layer0 = block(8, 6, merge=4 * 4 * 64)
    layer1 = block(6, 5, merge=3 * 3 * 64)
    tail = 5 * 5 * 64 + 5 * 64  # final norm + pool norm
    assert patch + layer0 + layer1 + tail == 1_007_360
    assert flops(TOY, r=(2, 1)) == 1_007_360.0
    # ToMe matches on head-averaged keys (width D / heads = 16), not the hidden states.
    assert flops(TOY, r=(2, 1), method="tome") == 1_007_360.0 - (4 * 4 + 3 * 3) * (64 - 16)


def test_merge_similarity_is_counted_only_in_merging_layers():
    bd = flops_breakdown(TOY, r=(0, 1))
    assert bd["layers"][0]["merge"] == 0.0
    assert bd["layers"][1]["merge"] == 4 * 4 * 64


def test_odd_token_count_uses_ceil_times_floor():
    cfg = get_config("vivit_b", depth=1, num_frames=2, img_size=32)  # 1 * 2 * 2 patches + CLS = 5 tokens
    bd = flops_breakdown(cfg, r=1)
    assert bd["tokens"] == (5, 4)
    assert bd["layers"][0]["merge"] == 3 * 2 * 768


def test_breakdown_sums_to_total():
    bd = flops_breakdown("umt_b16", r="msrvtt", batch=3)
    assert sum(bd["components"].values()) == pytest.approx(bd["total"], rel=1e-12)
    layer_sum = sum(layer["total"] for layer in bd["layers"])
    tail = bd["final_norm"] + bd["pool_norm"] + bd["head"]
    assert bd["patch_embed"] + layer_sum + tail == pytest.approx(bd["total"], rel=1e-12)
    for layer in bd["layers"]:
        assert sum(layer[k] for k in LAYER_TERMS) == pytest.approx(layer["total"], rel=1e-12)
    assert set(bd["components"]) == set(COMPONENTS)
    assert isinstance(bd["total"], float) and isinstance(flops("umt_b16"), float)


def test_batch_scales_linearly_and_gflops_is_flops_over_1e9():
    assert flops("umt_b16", r="msrvtt", batch=4) == 4 * flops("umt_b16", r="msrvtt")
    assert gflops("umt_b16", r=100) == flops("umt_b16", r=100) / 1e9


def test_heads_are_counted_when_present():
    base = get_config("umt_b16")
    assert flops(base.replace(vision_proj_dim=512)) - flops(base) == 768 * 512
    vmae = get_config("videomae_b")
    assert flops_breakdown(vmae)["head"] == 768 * 400
    assert flops_breakdown("vivit_b")["pool_norm"] == 0.0  # CLS pooling: no pool norm


def test_frame_and_image_overrides():
    bd = flops_breakdown("umt_b16", num_frames=8, img_size=112)
    assert bd["tokens"][0] == 8 * 7 * 7
    assert (bd["num_frames"], bd["img_size"]) == (8, 112)
    assert flops("umt_b16", num_frames=8) < flops("umt_b16")
    assert flops("umt_b16", num_frames=12, img_size=224) == flops("umt_b16")


def test_params_like_objects_and_configs_agree_with_names():
    cfg = get_config("umt_b16")
    assert flops(SimpleNamespace(config=cfg), r="msrvtt") == flops("umt_b16", r="msrvtt")
    assert flops(cfg, r="msrvtt") == flops("umt_b16", r="msrvtt")


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="unknown architecture 'umt_b61'"):
        flops("umt_b61")
    with pytest.raises(TypeError, match="ArchConfig"):
        flops(object())
    with pytest.raises(ValueError, match="method"):
        flops("umt_b16", r=10, method="random")
    with pytest.raises(ValueError, match="batch"):
        flops("umt_b16", batch=0)
    with pytest.raises(ValueError, match="unknown schedule preset"):
        flops("videomae_b", r="msrvtt")


# --------------------------------------------------------------------------------------------------
# Monotonicity in r.
# --------------------------------------------------------------------------------------------------


@cap_warning
def test_flops_decrease_with_constant_r():
    values = [flops("umt_b16", r=r) for r in range(1, 1177, 25)]
    assert all(a > b for a, b in zip(values, values[1:]))
    # Merging one token per layer costs more than it saves (the similarity matmul); a real r saves.
    assert flops("umt_b16", r=1) > flops("umt_b16", r=0) > flops("umt_b16", r=50)


@cap_warning
def test_flops_decrease_with_fraction_r():
    values = [flops("umt_l16", r=f) for f in (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_flops_decrease_when_a_published_schedule_is_scaled_up():
    values = [flops("umt_b16", r=(6 * k, 2 * k, k)) for k in range(1, 200, 10)]
    assert all(a > b for a, b in zip(values, values[1:]))


# --------------------------------------------------------------------------------------------------
# Schedule solver.
# --------------------------------------------------------------------------------------------------


def _assert_good(arch, schedule, budget_g, shape="geometric", **kw):
    cfg = get_config(arch, **kw)
    assert len(schedule) == cfg.depth
    assert all(a >= b for a, b in zip(schedule, schedule[1:])), schedule  # front-loaded
    got = gflops(arch, r=schedule, **kw)
    assert got <= budget_g
    assert got >= 0.99 * budget_g  # close to the budget, not just under it


@pytest.mark.parametrize("shape", ["geometric", "greedy"])
@pytest.mark.parametrize("budget", [300.0, 250.0, 178.0, 120.0, 90.0])
def test_solver_meets_budget_closely(shape, budget):
    schedule = solve_schedule("umt_b16", budget_gflops=budget, shape=shape)
    _assert_good("umt_b16", schedule, budget)


def test_solver_shapes():
    geo = solve_schedule("umt_b16", budget_gflops=178.0)
    assert [r for r in geo if r] == [496, 248, 124, 62]  # ceil(r0 / 2**l), r0 = 496
    greedy = solve_schedule("umt_b16", budget_gflops=120.0, shape="greedy")
    assert greedy[0] == 2352 // 2 and 0 < greedy[1] <= 1176 // 2 and not any(greedy[2:])
    const = solve_schedule("umt_b16", reduction=0.3, decay=1.0, max_layers=3)
    assert const[0] - const[2] <= 1 and not any(const[3:])


def test_solver_reduction_and_other_archs():
    base = gflops("umt_l16")
    schedule = solve_schedule("umt_l16", reduction=0.4)
    _assert_good("umt_l16", schedule, 0.6 * base)
    schedule = solve_schedule("umt_b16", reduction=0.25, num_frames=8)
    _assert_good("umt_b16", schedule, 0.75 * gflops("umt_b16", num_frames=8), num_frames=8)
    # CLS models keep the CLS token out of the cap, and ToMe's cheaper similarity is accounted for.
    vivit = solve_schedule("vivit_b", reduction=0.3, method="tome")
    assert gflops("vivit_b", r=vivit, method="tome") <= 0.7 * gflops("vivit_b", method="tome")
    assert solve_schedule("umt_b16", reduction=0.0) == (0,) * 12


@settings(max_examples=30, deadline=None)
@given(reduction=st.floats(0.002, 0.7), shape=st.sampled_from(["geometric", "greedy"]))
def test_solver_property(reduction, shape):
    schedule = solve_schedule("umt_b16", reduction=reduction, shape=shape)
    _assert_good("umt_b16", schedule, (1 - reduction) * gflops("umt_b16"))


def test_solver_is_deterministic_and_fast():
    start = time.perf_counter()
    first = solve_schedule("umt_b16", budget_gflops=150.0)
    greedy = solve_schedule("umt_l16", budget_gflops=200.0, shape="greedy")
    assert time.perf_counter() - start < 1.0
    assert solve_schedule("umt_b16", budget_gflops=150.0) == first
    assert solve_schedule("umt_l16", budget_gflops=200.0, shape="greedy") == greedy


def test_solver_errors():
    with pytest.raises(ValueError, match=r"budget_gflops = 10\.00 is unreachable.*max_layers"):
        solve_schedule("umt_b16", budget_gflops=10.0)
    with pytest.raises(ValueError, match=r"reduction = 0\.9 is unreachable"):
        solve_schedule("umt_b16", reduction=0.9, max_layers=2)
    with pytest.raises(ValueError, match=r"budget_gflops = 400.*above the unmerged baseline.*303\.34"):
        solve_schedule("umt_b16", budget_gflops=400)
    with pytest.raises(ValueError, match="exactly one"):
        solve_schedule("umt_b16")
    with pytest.raises(ValueError, match="exactly one"):
        solve_schedule("umt_b16", budget_gflops=200.0, reduction=0.3)
    with pytest.raises(ValueError, match="reduction"):
        solve_schedule("umt_b16", reduction=1.0)
    with pytest.raises(ValueError, match="max_layers"):
        solve_schedule("umt_b16", reduction=0.3, max_layers=13)
    with pytest.raises(ValueError, match="decay"):
        solve_schedule("umt_b16", reduction=0.3, decay=0.0)
    with pytest.raises(ValueError, match="shape"):
        solve_schedule("umt_b16", reduction=0.3, shape="uniform")


def test_greedy_reaches_lower_budgets_than_geometric():
    budget = 40.0  # geometric over 4 layers bottoms out at 43.52, greedy over 12 at 36.38
    with pytest.raises(ValueError, match="unreachable"):
        solve_schedule("umt_b16", budget_gflops=budget)
    _assert_good("umt_b16", solve_schedule("umt_b16", budget_gflops=budget, shape="greedy"), budget)
