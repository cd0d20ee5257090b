"""Searching an index (:mod:`tldr_jax.search.query`): the official ITC ranking and ITM re-ranking
(``encode_videos``, ``encode_texts``, the ITC matrix and ``rerank``, parity-tested against the official code
in ``test_retrieval_*.py``), on a tiny random retrieval model: the same scores and the same order.
"""

from __future__ import annotations

import numpy as np
import pytest
import search_fixtures
from search_fixtures import N_CLIPS, QUERIES, R_SPEC

from tldr_jax.retrieval import fusion
from tldr_jax.retrieval.fusion import UNSCORED, topk_rows
from tldr_jax.search import build_index, search

model_dir = pytest.fixture(scope="module")(search_fixtures.model_dir)
model = pytest.fixture(scope="module")(search_fixtures.model)
clips = pytest.fixture(scope="module")(search_fixtures.clips)
index = pytest.fixture(scope="module")(search_fixtures.index)
official = pytest.fixture(scope="module")(search_fixtures.official)


@pytest.mark.parametrize("q", range(len(QUERIES)))
def test_itc_ranking_equals_the_official_one(index, official, q):
    _, _, sim = official
    hits = search(index, QUERIES[q], k=N_CLIPS, max_length=16)
    order = topk_rows(sim.T, N_CLIPS)[q]
    assert [h.row for h in hits] == list(order)
    np.testing.assert_allclose([h.score for h in hits], sim[order, q], atol=1e-6)
    assert all(h.itm is None and h.score == h.itc for h in hits)


@pytest.mark.parametrize("rerank", [3, N_CLIPS])
def test_itm_reranking_equals_the_official_one(index, official, model, rerank):
    vid, text, sim = official
    _, t2i, _ = fusion.rerank(model, sim, text, vid.tokens, k=rerank)
    for q, query in enumerate(QUERIES):
        hits = search(index, query, k=rerank, rerank=rerank, max_length=16)
        scored = t2i[q] != UNSCORED
        assert scored.sum() == rerank
        order = np.argsort(-t2i[q], kind="stable")[:rerank]
        assert [h.row for h in hits] == list(order)
        np.testing.assert_allclose([h.itm for h in hits], t2i[q, order], atol=1e-5)
        np.testing.assert_allclose([h.itc for h in hits], sim[order, q], atol=1e-6)


def test_bad_search_arguments(index, model_dir, clips, tmp_path):
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        search(index, "w1", k=0)
    with pytest.raises(ValueError, match="rerank must be an int >= 1"):
        search(index, "w1", rerank=0)
    with pytest.raises(ValueError, match="exceeds rerank"):
        search(index, "w1", k=5, rerank=2)
    with pytest.raises(ValueError, match="is empty after the official caption cleaning"):
        search(index, "  ")
    with pytest.raises(FileNotFoundError, match="no index at"):
        search(tmp_path / "missing", "w1")
    plain = build_index(model_dir, clips, tmp_path / "plain", r=R_SPEC, batch_size=4, progress=False)
    with pytest.raises(ValueError, match="holds no video tokens.*keep_tokens=True"):
        search(plain, "w1", k=2, rerank=3)
