"""The text side of the multi-modal models: the tokenizer and the UMT BERT text tower.

* :mod:`tldr_jax.text.tokenizer`: :class:`Vocabulary`, the official caption/question cleaning
  :func:`pre_text`, :func:`tokenize` and :func:`decode_pieces` (from a vocabulary or any model carrying
  one as ``.vocab``);
* :mod:`tldr_jax.text.bert`: :class:`TextConfig` and the Flax NNX :class:`TextTower` (BERT layers, the
  last of which cross-attend to the video tokens), with its parameter-tree helpers.

The retrieval model (:mod:`tldr_jax.retrieval`) and the QA model build on these.
"""

from tldr_jax.text.bert import TextConfig, TextTower
from tldr_jax.text.tokenizer import Vocabulary, decode_pieces, pre_text, tokenize

__all__ = ["TextConfig", "TextTower", "Vocabulary", "decode_pieces", "pre_text", "tokenize"]
