"""The official UMT tokenisation with the ``tokenizers`` library (no hand-written WordPiece).

The official ``BertTokenizer`` (``models/backbones/bert/tokenization_bert.py``) lower-cases, strips
accents, splits on whitespace and punctuation, runs WordPiece over the vocabulary, and for a single
sentence returns ``[CLS] X`` **without** ``[SEP]`` (its ``build_inputs_with_special_tokens``); with
``padding="max_length", truncation=True`` a text keeps ``max_length - 1`` word pieces, padded with
``[PAD]`` (mask 0). ``tokenizers.BertWordPieceTokenizer`` with the same normaliser settings and a
``[CLS] $A`` template gives exactly these ids and masks (tested against the official tokenizer's
output in ``tests/test_retrieval.py``).

Note: the official *datasets* clean captions before tokenising (``pre_text``: lower-case, drop
``, . ' ! ? " ( ) * # : ; ~``, ``-`` and ``/`` to spaces); :mod:`tldr_jax.retrieval.annotations`
applies that when it reads annotation files, :func:`tokenize` does not.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from tldr_jax.retrieval.model import RetrievalModel, Vocabulary


@functools.lru_cache(maxsize=8)
def _tokenizer(vocab: Vocabulary, max_length: int) -> Any:
    """A ``tokenizers.Tokenizer`` (lower-case, strip accents, ``[CLS] $A``, truncate, pad) per vocabulary
    and length."""
    from tokenizers import BertWordPieceTokenizer
    from tokenizers.processors import TemplateProcessing

    table = {t: i for i, t in enumerate(vocab.tokens)}
    tok = BertWordPieceTokenizer(
        table,
        unk_token="[UNK]",
        sep_token="[SEP]",
        cls_token="[CLS]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=True,
        lowercase=True,
        wordpieces_prefix="##",
    )
    tok.post_processor = TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", table["[CLS]"])])
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(length=max_length, pad_id=table["[PAD]"], pad_token="[PAD]")
    return tok


def tokenize(
    model: RetrievalModel | Vocabulary, texts: str | Sequence[str], max_length: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention masks of ``texts``, exactly as the official UMT evaluation makes them.

    Args:
      model: a :class:`RetrievalModel` (its vocabulary is used) or a :class:`Vocabulary`.
      texts: a string or a sequence of strings.
      max_length: tokens per text including ``[CLS]`` (MSRVTT 32; see
        :data:`~tldr_jax.retrieval.presets.DATASETS`); at most the text tower's ``max_position_embeddings``.

    Returns:
      ``ids (n, max_length)`` and ``mask (n, max_length)``, int32 numpy arrays.
    """
    vocab = model.vocab if isinstance(model, RetrievalModel) else model
    if not isinstance(vocab, Vocabulary):
        raise TypeError(f"tokenize needs a RetrievalModel or a Vocabulary; got {type(model).__name__}.")
    if isinstance(max_length, bool) or int(max_length) != max_length or max_length < 2:
        raise ValueError(
            f"max_length must be an int >= 2 ([CLS] plus at least one token); got {max_length!r}."
        )
    if isinstance(model, RetrievalModel) and max_length > model.text_config.max_position_embeddings:
        raise ValueError(
            f"max_length {max_length} exceeds the text tower's {model.text_config.max_position_embeddings} "
            "position embeddings; use a smaller max_length."
        )
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings; item {bad[0]} is a {type(texts[bad[0]]).__name__}.")
    n = int(max_length)
    if not texts:
        return np.zeros((0, n), np.int32), np.zeros((0, n), np.int32)
    enc = _tokenizer(vocab, n).encode_batch(texts)
    ids = np.asarray([e.ids for e in enc], np.int32)
    mask = np.asarray([e.attention_mask for e in enc], np.int32)
    return ids, mask


def decode_pieces(model: RetrievalModel | Vocabulary, ids: np.ndarray) -> list[str]:
    """The word pieces of each row of ``ids`` joined by spaces (for reading; padding included)."""
    vocab = model.vocab if isinstance(model, RetrievalModel) else model
    return [" ".join(vocab.tokens[int(i)] for i in row) for row in np.asarray(ids)]
