"""Retrieval dataset presets (:mod:`tldr_jax.retrieval.presets`) from the official fine-tuning configs.
"""

from __future__ import annotations

import pytest

from tldr_jax.retrieval.presets import DATASETS, get_dataset


def test_dataset_presets_follow_the_official_configs():
    d = DATASETS
    assert {n: p.max_txt_l for n, p in d.items()} == {
        "msrvtt": 32,
        "msvd": 64,
        "didemo": 64,
        "activitynet": 150,
        "lsmdc": 96,
        "ssv2_label": 25,
        "ssv2_template": 25,
    }
    assert all(p.num_frames == 12 and p.k_test == 128 and p.img_size == 224 for p in d.values())
    assert [n for n, p in d.items() if p.is_paragraph_retrieval] == ["didemo", "activitynet"]
    assert d["msvd"].multi_txt_gt and d["didemo"].trim_seconds == 30
    assert d["msrvtt"].eval_kwargs() == {"k": 128, "r": "msrvtt", "max_length": 32}
    import tldr_jax

    assert all(p.r in tldr_jax.PRESETS["umt_b16"] for p in d.values())
    with pytest.raises(ValueError, match="msrvtt"):
        get_dataset("msrvt")
