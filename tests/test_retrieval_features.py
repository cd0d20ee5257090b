"""Texts and videos into features (:mod:`tldr_jax.retrieval.features`) against the official code in float64
(the golden set of ``retrieval_fixtures.py``), and the one clip path of files.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from retrieval_fixtures import F64_ATOL, SCHEDULES, assert_close


def test_float64_parity_of_the_towers_for_every_schedule(f64, gold):
    """The text layers, the video encoder (every golden schedule) and ITC, in float64 (1e-9)."""
    with jax.enable_x64(True):
        m64, text = f64["model"], f64["text"]
        assert m64.dtype == jnp.float64
        assert_close(f64["hidden"], gold["text_hidden_states_f64"], F64_ATOL, "hidden states")
        assert text.embeds.dtype == jnp.float64
        for key, got in (("text_embeds", text.embeds), ("text_proj", text.proj), ("text_feat", text.feat)):
            assert_close(got, gold[key + "_f64"], F64_ATOL, key)
        for name in SCHEDULES:
            vid = f64["video"][name]
            sim = vid.feat @ text.feat.T
            checks = {
                "vision_embeds": vid.tokens,
                "pooled_vision": vid.pooled[:, None],
                "vision_proj": vid.proj[:, None],
                "vision_feat": vid.feat[:, None],
                "vision_size": vid.size,
                "itc_sim_v2t": sim,
                "itc_sim_t2v": sim.T,
                "itc_logits_v2t_with_temp": sim / m64.text["temp"],
            }
            for key, got in checks.items():
                assert_close(got, gold[f"{name}/{key}_f64"], F64_ATOL, f"{name}/{key}")
