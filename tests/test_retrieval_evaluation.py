"""The official retrieval evaluation (:mod:`tldr_jax.retrieval.evaluation`) against the official code: float64
and float32 matrices and metrics, ground truth, dual softmax (golden set of ``retrieval_fixtures.py``).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from retrieval_fixtures import (
    F32_ATOL,
    F64_ATOL,
    SCHEDULES,
    X_F32_STORAGE_ATOL,
    assert_close,
    assert_reranked,
    official_metrics,
    video,
)

from tldr_jax import retrieval as R
from tldr_jax.retrieval.evaluation import ground_truth
from tldr_jax.retrieval.metrics import dual_softmax, official_only, retrieval_metrics


def test_float64_evaluation_matches_the_official_one_for_every_schedule(f64, gold):
    """The re-ranked and ITC matrices and the metrics of the official float64 evaluation, k = 2 and 128."""
    with jax.enable_x64(True):
        m64, text = f64["model"], f64["text"]
        for name in SCHEDULES:
            vid = f64["video"][name]
            for k in (2, 128):
                res = R.evaluate(m64, vid, text, txt2vid=gold["txt2img"], vid2txt=gold["img2txt"], k=k)
                pre = f"{name}/eval_k{k}"
                assert_close(res.i2t_emb, gold[f"{pre}_i2t_emb_f64"], F64_ATOL, f"{pre} i2t_emb")
                assert_close(res.t2i_emb, gold[f"{pre}_t2i_emb_f64"], F64_ATOL, f"{pre} t2i_emb")
                assert_reranked(res.i2t, gold[f"{pre}_i2t_x_f64"], X_F32_STORAGE_ATOL, f"{pre} i2t")
                assert_reranked(res.t2i, gold[f"{pre}_t2i_x_f64"], X_F32_STORAGE_ATOL, f"{pre} t2i")
                assert official_only(res.metrics) == official_metrics(gold, f"{pre}_metrics_f64")
                assert official_only(res.metrics_emb) == official_metrics(gold, f"{pre}_metrics_emb_f64")


@pytest.mark.parametrize("k", [2, 128])
@pytest.mark.parametrize("name", SCHEDULES)
def test_float32_evaluation_matches_the_official_matrices_and_metrics(f32_runs, gold, name, k):
    res = f32_runs[name, k]
    pre = f"{name}/eval_k{k}"
    assert_close(res.i2t_emb, gold[f"{pre}_i2t_emb"], F32_ATOL, "i2t_emb")
    assert_close(res.t2i_emb, gold[f"{pre}_t2i_emb"], F32_ATOL, "t2i_emb")
    assert_reranked(res.i2t, gold[f"{pre}_i2t_x"], F32_ATOL, "i2t")
    assert_reranked(res.t2i, gold[f"{pre}_t2i_x"], F32_ATOL, "t2i")
    assert official_only(res.metrics) == official_metrics(gold, f"{pre}_metrics")
    assert official_only(res.metrics_emb) == official_metrics(gold, f"{pre}_metrics_emb")
    assert res.i2t.dtype == np.float32 and res.metrics_emb_dsl is None
    assert res.official()["test/"] == official_metrics(gold, f"{pre}_metrics")


def test_ground_truth_is_derived_from_either_map():
    t2v, v2t = ground_truth(3, 5, txt2vid=[0, 0, 1, 2, 2])
    assert v2t == [[0, 1], [2], [3, 4]]
    t2v2, v2t2 = ground_truth(3, 5, vid2txt=np.array([[0, 1], [2, -1], [3, 4]]))
    assert t2v2 == [[0], [0], [1], [2], [2]] and v2t2 == v2t
    with pytest.raises(ValueError, match="txt2vid"):
        ground_truth(3, 5)
    with pytest.raises(ValueError, match="no ground truth"):
        ground_truth(3, 5, vid2txt=[[0, 1], [-1, -1], [3, 4]])


def test_dual_softmax_is_only_an_explicit_labelled_option(model, f32_runs, gold):
    res = f32_runs["zero", 128]
    assert res.metrics_emb_dsl is None
    vid = R.encode_videos(model, video(gold), r=0, batch_size=3)
    text = R.encode_texts(model, list(gold["texts"]), max_length=16)
    dsl = R.evaluate(model, vid, text, txt2vid=gold["txt2img"], k=128, dual_softmax=0.01)
    assert dsl.metrics == res.metrics and dsl.metrics_emb == res.metrics_emb  # official numbers untouched
    rescored = dual_softmax(dsl.i2t_emb, 0.01)
    assert dsl.metrics_emb_dsl == retrieval_metrics(
        rescored, dual_softmax(dsl.t2i_emb, 0.01), gold["txt2img"], gold["img2txt"]
    )
    assert not np.allclose(rescored, dsl.i2t_emb)
