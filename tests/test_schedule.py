"""Schedules: r forms, presets, caps, errors."""

from __future__ import annotations

import pytest

import tldr_jax
from tldr_jax.schedule import ScheduleCapWarning, resolve_schedule


def test_msrvtt_preset_token_counts():
    s = tldr_jax.schedule("umt_b16", "msrvtt")
    assert s.tokens[:4] == (2352, 1752, 1552, 1452)
    assert s.tokens[-1] == 1452 and s.r[:3] == (600, 200, 100) and sum(s.r[3:]) == 0
    assert str(s) == "2352 -> 1752 -> 1552 -> 1452"


def test_umt_l_preset():
    s = tldr_jax.schedule("umt_l16", "msrvtt")
    assert s.depth == 24 and s.tokens[2] == 2352 - 950


def test_int_every_layer_and_fraction_of_current():
    s = resolve_schedule(4, num_tokens=36, depth=3)
    assert s.r == (4, 4, 4) and s.tokens == (36, 32, 28, 24)
    s = resolve_schedule((0.3, 0.2), num_tokens=36, depth=3)
    assert s.r == (10, 5, 0) and s.tokens == (36, 26, 21, 21)
    s = resolve_schedule(0.5, num_tokens=36, depth=2)
    assert s.r == (18, 9)


def test_float_counts_like_official_lists():
    s = resolve_schedule([12.0, 6.0, 3.0], num_tokens=36, depth=3)
    assert s.r == (12, 6, 3)


def test_cap_warns_per_layer():
    with pytest.warns(ScheduleCapWarning, match="layer 0"):
        s = resolve_schedule((50, 50), num_tokens=36, depth=3)
    assert s.tokens == (36, 18, 9, 9)


def test_protected_cap():
    with pytest.warns(ScheduleCapWarning):
        s = resolve_schedule(100, num_tokens=9, depth=1, protected=1)
    assert s.r == (4,)


def test_schedule_frames_override():
    s = tldr_jax.schedule("umt_b16", 0, num_frames=32)
    assert s.tokens[0] == 6272


@pytest.mark.parametrize(
    "r, exc, pattern",
    [
        ((1, 2, 3, 4), ValueError, "4 entries but the model has only 3 layers"),
        (-2, ValueError, ">= 0"),
        ("nope", ValueError, "unknown schedule preset 'nope'.*msrvtt"),
        (True, TypeError, "r must be"),
        ({"a": 1}, TypeError, "r must be"),
        (2.5, ValueError, "neither a whole count"),
    ],
)
def test_bad_schedules(r, exc, pattern):
    with pytest.raises(exc, match=pattern):
        resolve_schedule(r, num_tokens=36, depth=3, arch="umt_b16")


def test_preset_for_arch_without_presets():
    with pytest.raises(ValueError, match="Presets are published for UMT"):
        tldr_jax.schedule("videomae_b", "msrvtt")


def test_default_r_is_one_rule_for_every_entry_point():
    """The published preset where it fits the model as published, else GENERIC_R (at most depth entries)."""
    from tldr_jax.configs import get_config
    from tldr_jax.schedule import DEFAULT_PRESET, GENERIC_R, default_r

    umt = get_config("umt_b16")
    assert default_r(umt) == DEFAULT_PRESET == "msrvtt"
    assert default_r(umt, "didemo") == "didemo"  # a dataset's preset (tldr-jax retrieve --dataset)
    assert default_r(umt, "no_such_preset") == GENERIC_R
    assert default_r(get_config("videomae_b")) == GENERIC_R  # no presets published for VideoMAE
    assert default_r(umt.replace(num_frames=2)) == GENERIC_R  # 600 merges would be capped on 2 frames
    assert default_r(get_config("umt_b16", depth=1)) == GENERIC_R[:1]  # more entries than layers


def test_format_r():
    from tldr_jax.schedule import format_r

    assert format_r((600, 200, 100)) == "600,200,100" and format_r([0.3, 0.2]) == "0.3,0.2"
    assert format_r("msrvtt") == "msrvtt" and format_r(8) == "8"
