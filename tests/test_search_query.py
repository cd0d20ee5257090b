"""Searching an index (:mod:`tldr_jax.search.query`): the official ITC ranking and ITM re-ranking
(``encode_videos``, ``encode_texts``, the ITC matrix and ``rerank``, parity-tested against the official code
in ``test_retrieval_*.py``), on a tiny random retrieval model: the same scores and the same order.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import search_fixtures
from search_fixtures import N_CLIPS, QUERIES, R_SPEC

from tldr_jax.retrieval import fusion
from tldr_jax.retrieval.fusion import UNSCORED, topk_rows
from tldr_jax.search import build_index, search
from tldr_jax.search.query import describe
from tldr_jax.text.tokenizer import QueryTruncatedWarning, check_query, shorten

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


@pytest.mark.parametrize("query", ["", "!!!", "  ?! ", "🙂🐶", "dog"])
def test_a_query_with_nothing_to_search_for_is_one_line(index, query):
    """Empty after the official cleaning, or (with the model's vocabulary: the tiny model knows only
    ``w0``..``w19``) every piece ``[UNK]``: one line, the same as the CLI's (test_search_cli.py)."""
    with pytest.raises(ValueError, match="nothing to search for; give words") as err:
        search(index, query)
    assert "\n" not in str(err.value)
    if query.strip(" !?"):  # text-level check passes; the vocabulary-level one refuses
        assert check_query(query) == query.lower()
        with pytest.raises(ValueError, match="every piece is \\[UNK\\]"):
            check_query(query, index.model)
    else:
        with pytest.raises(ValueError, match="is empty after the official caption cleaning"):
            check_query(query)


@pytest.mark.parametrize("query", [["dog"], None, b"w1", 3])
def test_a_query_that_is_not_a_string_is_a_type_error(index, query):
    with pytest.raises(TypeError, match="the query must be a string; got"):
        search(index, query)


def test_a_query_longer_than_the_text_tower_warns_how_many_pieces_were_kept(index):
    query = " ".join(["w1", "w2"] * 20)
    kept = " ".join((["w1", "w2"] * 8)[:15])
    with pytest.warns(QueryTruncatedWarning, match="has 40 word pieces; .* 16 tokens .* first 15 were kept"):
        hits = search(index, query, k=2, max_length=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 15 pieces fit: no warning
        same = search(index, kept, k=2, max_length=16)
    assert [h.row for h in hits] == [h.row for h in same]
    assert shorten(query).endswith("... (119 characters)") and len(shorten(query)) < 90


def test_precision_must_be_one_of_the_libraries_precisions(index):
    with pytest.raises(ValueError, match="precision must be one of None, 'float32', 'tensorfloat32'") as err:
        search(index, "w1", precision="fast")
    assert "F8" not in str(err.value) and "got 'fast'" in str(err.value)


def test_a_rerank_beyond_the_collection_is_clamped_and_described(index):
    huge = search(index, "w1", k=3, rerank=10**12)
    assert [h.row for h in huge] == [h.row for h in search(index, "w1", k=3, rerank=N_CLIPS)]
    all_of_them = f"'w1': {N_CLIPS} videos, ITM re-ranking of all {N_CLIPS} videos (ITC candidates)"
    assert describe(index, "w1", 10**12) == all_of_them
    assert describe(index, "w1", 2).endswith("ITM re-ranking of the top 2 by ITC")
    long = describe(index, "w1 " * 100)
    assert long.startswith("'w1 w1") and "(300 characters)" in long and len(long) < 140
