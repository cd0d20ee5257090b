"""UMT video-text retrieval with vid-TLDR: the retrieval model, its features, ITM matching, the official
evaluation.

::

    from tldr_jax import retrieval
    model = tldr_jax.load("ckpt/umt_b16_ret")                     # a RetrievalModel
    ids, mask = retrieval.tokenize(model, texts, max_length=32)
    text = retrieval.encode_text(model, ids, mask)                # .embeds (n, L, H), .feat (n, E)
    vid = retrieval.encode_video(model, video, r="msrvtt")        # .tokens (B, N', D), .feat (B, E)
    sim = vid.feat @ text.feat.T                                  # the official ITC matrix
    itm = retrieval.itm_score(model, text.embeds, mask, vid.tokens)   # (n, B) class-1 logits
    res = retrieval.evaluate(model, videos, texts, txt2vid=..., k=128, r="msrvtt")
    res.i2t, res.t2i, res.metrics                                 # official matrices and metric names

The modules, one concept each:

* :mod:`~tldr_jax.retrieval.model`: :class:`RetrievalModel` (vision ``Params`` + the text tower of
  :mod:`tldr_jax.text`) and :func:`init`; :mod:`~tldr_jax.retrieval.checkpoint`: its directory format;
* :mod:`~tldr_jax.retrieval.features`: texts and videos into features, the one encoding path (files read
  by :func:`tldr_jax.video.load_clip` with ``clip_preprocessing``);
* :mod:`~tldr_jax.retrieval.fusion`: the fusion layers, ITM scores and the official top-k re-ranking;
* :mod:`~tldr_jax.retrieval.evaluation` and :mod:`~tldr_jax.retrieval.metrics`: the official evaluation;
* :mod:`~tldr_jax.retrieval.multiple_choice`: the official multiple-choice evaluation;
* :mod:`~tldr_jax.retrieval.annotations` and :mod:`~tldr_jax.retrieval.presets`: data sets.

Searching a video collection lives in :mod:`tldr_jax.search` (above this package). ``build_index``,
``encode_shard``, ``load_index``, ``search``, ``VideoIndex``, ``SearchHit``, ``BuildReport`` and
``IndexEntry`` stay reachable here as compatibility aliases of their :mod:`tldr_jax.search` homes,
resolved on first use (module ``__getattr__``), so that this package never imports the one above it.
"""

from __future__ import annotations

import importlib
from typing import Any

from tldr_jax.retrieval.annotations import load_annotations
from tldr_jax.retrieval.checkpoint import save
from tldr_jax.retrieval.evaluation import EvalResult, evaluate
from tldr_jax.retrieval.features import encode_text, encode_texts, encode_video, encode_videos
from tldr_jax.retrieval.fusion import itm_score
from tldr_jax.retrieval.model import RetrievalModel, init
from tldr_jax.retrieval.multiple_choice import multiple_choice  # the function shadows its module name
from tldr_jax.retrieval.presets import DATASETS, get_dataset
from tldr_jax.text.bert import TextConfig
from tldr_jax.text.tokenizer import tokenize

#: Compatibility aliases: names that moved to :mod:`tldr_jax.search` -> their home module.
_MOVED_TO_SEARCH: dict[str, str] = {
    "BuildReport": "tldr_jax.search.build",
    "IndexEntry": "tldr_jax.search.index",
    "SearchHit": "tldr_jax.search.query",
    "VideoIndex": "tldr_jax.search.index",
    "build_index": "tldr_jax.search.build",
    "encode_shard": "tldr_jax.search.build",
    "load_index": "tldr_jax.search.index",
    "search": "tldr_jax.search.query",
}

__all__ = [
    "DATASETS",
    "EvalResult",
    "RetrievalModel",
    "TextConfig",
    "encode_text",
    "encode_texts",
    "encode_video",
    "encode_videos",
    "evaluate",
    "get_dataset",
    "init",
    "itm_score",
    "load_annotations",
    "multiple_choice",
    "save",
    "tokenize",
]


def __getattr__(name: str) -> Any:
    """The compatibility aliases of :data:`_MOVED_TO_SEARCH` (``tldr_jax.retrieval.search`` is
    ``tldr_jax.search.search``)."""
    home = _MOVED_TO_SEARCH.get(name)
    if home is None:
        raise AttributeError(f"module 'tldr_jax.retrieval' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
