"""The fusion layers, ITM scores and the official top-k re-ranking (:mod:`tldr_jax.retrieval.fusion`).
"""

from __future__ import annotations

import jax
import numpy as np
from retrieval_fixtures import F64_ATOL, SCHEDULES, assert_close, schedule, video

from tldr_jax import retrieval as R
from tldr_jax.retrieval import fusion
from tldr_jax.retrieval.fusion import UNSCORED, fusion_cls, itm_logits, plan_rerank, rerank


def test_float64_parity_of_the_matching_head_for_every_schedule(f64, gold):
    """The fusion layers' CLS row, the ITM logits, score and probability, in float64 (1e-9)."""
    with jax.enable_x64(True):
        m64, text, mask = f64["model"], f64["text"], f64["mask"]
        for name in SCHEDULES:
            vid = f64["video"][name]
            logits = itm_logits(m64, text.embeds, mask, vid.tokens)
            checks = {
                "itm_cls": fusion_cls(m64, text.embeds, mask, vid.tokens),
                "itm_logits": logits,
                "itm_score": logits[..., 1],
                "itm_prob": jax.nn.softmax(logits)[..., 1],
            }
            for key, got in checks.items():
                assert_close(got, gold[f"{name}/{key}_f64"], F64_ATOL, f"{name}/{key}")


def test_k2_reranking_changes_the_order_and_scores_only_the_top_k(f32_runs, gold):
    res = f32_runs["ints", 2]
    assert ((res.i2t != UNSCORED).sum(axis=1) == 2).all() and (
        (res.t2i != UNSCORED).sum(axis=1) == 2
    ).all()
    itc_top1 = np.argmax(res.t2i_emb, axis=1)
    itm_top1 = np.argmax(res.t2i, axis=1)
    assert (itc_top1 != itm_top1).any()  # the matching head re-orders what ITC ranked


def test_rerank_scores_equal_the_all_pairs_itm_scores(model, gold, f32_runs):
    """Grouped re-ranking (keys/values shared per video, padded groups) gives every pair's own score."""
    ids, mask = R.tokenize(model, list(gold["texts"]), 16)
    text = R.encode_text(model, ids, mask)
    vid = R.encode_videos(model, video(gold), r=schedule(gold, "frac"), batch_size=2)
    every = np.asarray(R.itm_score(model, text.embeds, mask, vid.tokens))  # (texts, videos)
    sim = np.asarray(vid.feat @ text.feat.T)
    for k, batch in ((2, 2), (3, 2), (128, 32)):
        i2t, t2i, plan = rerank(model, sim, text, np.asarray(vid.tokens), k, text_batch=batch)
        scored = i2t != UNSCORED
        np.testing.assert_allclose(i2t[scored], every.T[scored], rtol=0, atol=2e-6)
        scored = t2i != UNSCORED
        np.testing.assert_allclose(t2i[scored], every[scored], rtol=0, atol=2e-6)
        assert plan.texts.shape[1] == min(batch, 5) and plan.num_pairs <= 5 * min(k, 3) + 3 * min(k, 5)


def test_rerank_plan_covers_both_directions_once_with_static_groups():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(7, 11))
    plan = plan_rerank(sim, k=3, text_batch=4)
    pairs = {
        (int(v), int(t)) for v, ts, ok in zip(plan.video, plan.texts, plan.valid) for t, o in zip(ts, ok) if o
    }
    assert len(pairs) == plan.num_pairs  # each pair once
    want = {(v, int(t)) for v in range(7) for t in np.argsort(-sim[v])[:3]}
    want |= {(int(v), t) for t in range(11) for v in np.argsort(-sim[:, t])[:3]}
    assert pairs == want
    assert plan.num_pairs < 7 * 3 + 11 * 3  # shared pairs are not scored twice
    assert plan.texts.shape == plan.valid.shape and plan.texts.shape[1] == 4


def test_reranking_compiles_once_for_any_k(model, gold):
    """Static shapes: other k (other numbers of work items) reuse the one compiled group program."""
    rng = np.random.default_rng(1)
    text = R.encode_texts(
        model, [f"a man {w}" for w in ("runs", "eats", "walks", "swims", "plays", "sings")], max_length=16
    )
    tokens = rng.normal(size=(5, 7, 64)).astype(np.float32)
    sim = rng.normal(size=(5, 6)).astype(np.float32)
    rerank(model, sim, text, tokens, 1, text_batch=3)
    before = fusion._itm_groups._cache_size()
    for k in (2, 3, 6, 128):
        rerank(model, sim, text, tokens, k, text_batch=3)
    assert fusion._itm_groups._cache_size() == before
