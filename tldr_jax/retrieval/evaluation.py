"""The official UMT retrieval evaluation (``tasks/retrieval_utils.evaluation``), in five steps:

1. :func:`~tldr_jax.retrieval.features.encode_texts`: tokenise and run the text layers once for every
   text (batches of static size);
2. :func:`~tldr_jax.retrieval.features.encode_videos`: run the video encoder once for every video,
   vid-TLDR merging included, streaming the videos in batches and keeping the merged tokens (a host-side
   cache) and the unit ``vision_proj`` features;
3. ITC: ``video_feat @ text_feat.T`` (cosine, no temperature);
4. :func:`~tldr_jax.retrieval.fusion.rerank`: for every video the top-``k`` texts and for every text the
   top-``k`` videos by ITC are re-scored by the fusion layers and ``itm_head`` (class-1 logit); everything
   else is ``-100``;
5. :func:`~tldr_jax.retrieval.metrics.retrieval_metrics` on both pairs of matrices.

:func:`evaluate` runs them and returns an :class:`EvalResult`; :func:`ground_truth` completes either
ground-truth map from the other.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tldr_jax.numerics import matmul_precision
from tldr_jax.retrieval import metrics as _metrics
from tldr_jax.retrieval.features import TextFeatures, VideoFeatures, encode_texts, encode_videos
from tldr_jax.retrieval.fusion import rerank
from tldr_jax.retrieval.model import RetrievalModel, check_model

__all__ = ["EvalResult", "evaluate", "ground_truth"]


@dataclasses.dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes:
      i2t: the official re-ranked ``(n_videos, n_texts)`` matrix: ITM class-1 logits at the top-k ITC
        positions of each row, ``-100`` elsewhere.
      t2i: the same ``(n_texts, n_videos)`` for text-to-video.
      i2t_emb: the ITC (cosine) ``(n_videos, n_texts)`` matrix.
      t2i_emb: the ITC (cosine) ``(n_texts, n_videos)`` matrix.
      metrics: :func:`~tldr_jax.retrieval.metrics.retrieval_metrics` of ``i2t``/``t2i`` (official
        ``test/`` entry, plus median / mean rank).
      metrics_emb: the same for the ITC matrices (official ``test_emb/``).
      metrics_emb_dsl: only when ``dual_softmax`` was requested: the ITC matrices re-scored by dual softmax
        (not part of the official evaluation; labelled so).
      k: ``k_test``.
      schedule: the merge schedule used.
      num_pairs: ITM pairs computed.
      timing: seconds spent: ``text``, ``video``, ``itc``, ``rerank``, ``total``.
    """

    i2t: np.ndarray
    t2i: np.ndarray
    i2t_emb: np.ndarray
    t2i_emb: np.ndarray
    metrics: dict[str, float]
    metrics_emb: dict[str, float]
    k: int
    schedule: Any
    num_pairs: int
    timing: dict[str, float]
    metrics_emb_dsl: dict[str, float] | None = None

    def official(self, split: str = "test") -> dict[str, dict[str, float]]:
        """The metrics as the official ``evaluation_wrapper`` returns them: ``{"test/": ...,
        "test_emb/": ...}``."""
        return {
            f"{split}/": _metrics.official_only(self.metrics),
            f"{split}_emb/": _metrics.official_only(self.metrics_emb),
        }


def ground_truth(
    n_videos: int, n_texts: int, txt2vid: Any = None, vid2txt: Any = None
) -> tuple[list[list[int]], list[list[int]]]:
    """Both ground-truth maps from either one (``txt2vid``: a video or list per text; ``vid2txt``: a text
    or list per video; ``-1`` entries are padding). Raises ``ValueError`` when neither is given."""
    if txt2vid is None and vid2txt is None:
        raise ValueError(
            "give txt2vid (the video of each text) or vid2txt (the texts of each video); e.g. for one "
            "caption per video in the same order: txt2vid=range(n)."
        )
    t2v = _metrics.as_lists(txt2vid, n_texts, "txt2vid") if txt2vid is not None else None
    v2t = _metrics.as_lists(vid2txt, n_videos, "vid2txt") if vid2txt is not None else None
    if t2v is None:
        t2v = [[] for _ in range(n_texts)]
        for v, ts in enumerate(v2t):
            for t in ts:
                t2v[t].append(v)
        _metrics.as_lists(t2v, n_texts, "txt2vid (derived from vid2txt)")
    if v2t is None:
        v2t = [[] for _ in range(n_videos)]
        for t, vs in enumerate(t2v):
            for v in vs:
                if not 0 <= v < n_videos:
                    raise ValueError(f"txt2vid[{t}] = {v} is not a video index in [0, {n_videos}).")
                v2t[v].append(t)
        _metrics.as_lists(v2t, n_videos, "vid2txt (derived from txt2vid)")
    return t2v, v2t


def evaluate(
    model: RetrievalModel,
    videos: Any,
    texts: Sequence[str] | TextFeatures,
    *,
    txt2vid: Any = None,
    vid2txt: Any = None,
    k: int = 128,
    r: Any = 0,
    max_length: int = 32,
    batch_size: int = 8,
    text_batch_size: int = 256,
    rerank_batch: int = 32,
    rerank_group: int | None = None,
    dual_softmax: float | None = None,
    progress: bool | None = None,
    precision: str | None = "float32",
    **video_options: Any,
) -> EvalResult:
    """The official UMT retrieval evaluation (ITC ranking, ITM re-ranking of the top-k, R@1/5/10).

    Args:
      model: the retrieval model (``tldr_jax.load`` of a converted checkpoint).
      videos: ``(n, T, H, W, 3)`` clips, a list of files / clips (see :func:`encode_videos`), or
        :class:`VideoFeatures` already computed (reused as they are; ``r`` is then ignored).
      texts: the captions (one entry per text) or :class:`TextFeatures` from :func:`encode_texts`.
      txt2vid: ground truth: the video(s) of each text (give this or ``vid2txt``).
      vid2txt: ground truth: the text(s) of each video.
      k: ``k_test`` (official: 128).
      r: the vid-TLDR schedule (``"msrvtt"``, ...; 0 = no merging).
      max_length: tokens per text (dataset presets: ``DATASETS[name].max_txt_l``).
      batch_size: videos per encoder call.
      text_batch_size: texts per text-encoder call.
      rerank_batch: texts per ITM work item (official: 32).
      rerank_group: work items per compiled call.
      dual_softmax: a temperature (e.g. 0.01) to also report ``metrics_emb_dsl``, the ITC matrices
        re-scored by dual softmax (not official; never applied unless given).
      progress: progress bars (default: when stderr is a terminal).
      precision: float32 matrix-product precision for every tower.
      **video_options: :func:`encode_videos` options (``num_frames``, ``trim_seconds``,
        ``workers``) and :func:`tldr_jax.apply` options.

    Returns:
      :class:`EvalResult`.
    """
    model = check_model(model)
    gpu_tuning = video_options.get("gpu_tuning", "heuristic")  # the text side's programs too
    t0 = time.perf_counter()
    if isinstance(texts, TextFeatures):
        text = texts
    else:
        text = encode_texts(
            model, texts, max_length=max_length, batch_size=text_batch_size, precision=precision,
            gpu_tuning=gpu_tuning,
        )
    jax.block_until_ready(text.feat)
    t1 = time.perf_counter()
    if isinstance(videos, VideoFeatures):
        vid = videos
    else:
        video_options.setdefault("precision", precision)
        vid = encode_videos(model, videos, r, batch_size=batch_size, progress=progress, **video_options)
    t2 = time.perf_counter()
    t2v, v2t = ground_truth(len(vid), len(text), txt2vid, vid2txt)
    with matmul_precision(precision):
        sim = np.asarray(jnp.asarray(vid.feat) @ jnp.asarray(text.feat).T)
    t3 = time.perf_counter()
    i2t, t2i, plan = rerank(
        model,
        sim,
        text,
        vid.tokens,
        k,
        text_batch=rerank_batch,
        group=rerank_group,
        precision=precision,
        progress=progress,
        gpu_tuning=gpu_tuning,
    )
    t4 = time.perf_counter()
    res = EvalResult(
        i2t=i2t,
        t2i=t2i,
        i2t_emb=sim,
        t2i_emb=np.ascontiguousarray(sim.T),
        metrics=_metrics.retrieval_metrics(i2t, t2i, t2v, v2t),
        metrics_emb=_metrics.retrieval_metrics(sim, sim.T, t2v, v2t),
        k=int(k),
        schedule=vid.schedule,
        num_pairs=plan.num_pairs,
        timing={"text": t1 - t0, "video": t2 - t1, "itc": t3 - t2, "rerank": t4 - t3, "total": t4 - t0},
    )
    if dual_softmax is not None:
        res.metrics_emb_dsl = _metrics.retrieval_metrics(
            _metrics.dual_softmax(sim, dual_softmax), _metrics.dual_softmax(sim.T, dual_softmax), t2v, v2t
        )
    return res
