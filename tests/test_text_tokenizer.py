"""The tokenizer and the official caption cleaning (:mod:`tldr_jax.text.tokenizer`) against the official
``BertTokenizer`` output of the UMT retrieval golden set (``retrieval_fixtures.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from tldr_jax.text.tokenizer import decode_pieces, pre_text, tokenize


def test_tokenizer_gives_the_official_ids_and_masks(model, gold):
    ids, mask = tokenize(model, list(gold["texts"]), max_length=16)
    np.testing.assert_array_equal(ids, gold["input_ids"])
    np.testing.assert_array_equal(mask, gold["attention_mask"])
    assert decode_pieces(model, ids) == [str(t) for t in gold["text_tokens"]]


def test_tokenizer_adds_cls_but_no_sep_and_truncates_to_max_length(model):
    sep = model.vocab.id_of("[SEP]")
    ids, mask = tokenize(model, ["a man a man a man a man a man a man", "dog"], max_length=8)
    assert ids.shape == (2, 8) and (ids[:, 0] == model.vocab.id_of("[CLS]")).all()
    assert not (ids == sep).any()
    assert mask[0].sum() == 8 and mask[1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="max_length"):
        tokenize(model, ["dog"], max_length=64)  # more than the 32 position embeddings


def test_pre_text_cleans_captions_like_the_official_datasets():
    assert pre_text("A man's  guitar-solo, on (stage)!  ") == "a mans guitar solo on stage"
    assert pre_text("<person> walks/runs") == "person walks runs"
