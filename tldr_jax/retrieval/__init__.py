"""UMT video-text retrieval with vid-TLDR: the text tower, ITC + ITM re-ranking, the official evaluation.

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
    index = retrieval.build_index("ckpt/umt_b16_ret", "videos/", "videos.index", keep_tokens=True)
    hits = retrieval.search(index, "a dog catches a frisbee", k=10, rerank=50)   # SearchHit list
"""

from tldr_jax.retrieval.annotations import Annotations, load_annotations, pre_text
from tldr_jax.retrieval.checkpoint import load, save
from tldr_jax.retrieval.evaluation import (
    UNSCORED,
    ClipReader,
    EvalResult,
    RerankPlan,
    TextFeatures,
    VideoFeatures,
    encode_text,
    encode_texts,
    encode_video,
    encode_videos,
    evaluate,
    fusion_cls,
    ground_truth,
    itm_logits,
    itm_score,
    plan_rerank,
    rerank,
    text_hidden_states,
)
from tldr_jax.retrieval.index import (
    BuildReport,
    IndexEntry,
    VideoIndex,
    build_index,
    encode_shard,
    load_index,
)
from tldr_jax.retrieval.metrics import dual_softmax, official_only, retrieval_metrics
from tldr_jax.retrieval.model import RetrievalModel, Vocabulary, init
from tldr_jax.retrieval.presets import DATASETS, DatasetPreset, get_dataset
from tldr_jax.retrieval.query import SearchHit, search
from tldr_jax.retrieval.text import TextConfig
from tldr_jax.retrieval.tokenizer import tokenize

__all__ = [
    "DATASETS",
    "UNSCORED",
    "Annotations",
    "BuildReport",
    "ClipReader",
    "DatasetPreset",
    "EvalResult",
    "IndexEntry",
    "RerankPlan",
    "RetrievalModel",
    "SearchHit",
    "TextConfig",
    "TextFeatures",
    "VideoFeatures",
    "VideoIndex",
    "Vocabulary",
    "build_index",
    "dual_softmax",
    "encode_text",
    "encode_texts",
    "encode_video",
    "encode_shard",
    "encode_videos",
    "evaluate",
    "fusion_cls",
    "get_dataset",
    "ground_truth",
    "init",
    "itm_logits",
    "itm_score",
    "load",
    "load_annotations",
    "load_index",
    "official_only",
    "plan_rerank",
    "pre_text",
    "rerank",
    "retrieval_metrics",
    "save",
    "search",
    "text_hidden_states",
    "tokenize",
]
