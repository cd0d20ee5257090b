"""Retrieval metrics (:mod:`tldr_jax.retrieval.metrics`): the official ``itm_eval`` names and rank statistics.
"""

from __future__ import annotations

import numpy as np

from tldr_jax.retrieval import metrics
from tldr_jax.retrieval.metrics import retrieval_metrics


def test_metrics_best_rank_of_several_ground_truths_and_rank_statistics():
    # 2 videos x 4 texts; video 0's captions are texts 0 and 3, video 1's are 1 and 2.
    i2t = np.array([[0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.5, 0.3]])
    t2i = i2t.T.copy()
    m = retrieval_metrics(i2t, t2i, txt2vid=[0, 1, 1, 0], vid2txt=[[0, 3], [1, 2]])
    # video 0: order 1,3,2,0 -> best gt rank 1 (text 3); video 1: order 0,2,3,1 -> rank 1 (text 2)
    assert m["txt_r1"] == 0.0 and m["txt_r5"] == 100.0 and m["txt_mdr"] == 2.0 and m["txt_mnr"] == 2.0
    # text queries: t0 -> [0.1, 0.9]: gt 0 at rank 1; t1: gt 1 at rank 1; t2: gt 1 rank 0; t3: gt 0 rank 0
    assert m["img_r1"] == 50.0 and m["img_mdr"] == 1.5 and m["img_mnr"] == 1.5
    assert m["r_mean"] == round((m["txt_r_mean"] + m["img_r_mean"]) / 2, 2)
    assert list(m)[:9] == list(metrics.OFFICIAL_KEYS)
