"""Answering with the QA model: tokens in, question states, the official answer ranking.

The official inference (``UMT_QA.forward(train=False)`` and ``rank_answer``), one function per step:

1. :func:`tokenize_questions` (``pre_text``, then the tokenizer, ``max_q_len``) and
   :func:`tokenize_answers` (each answer + ``" [SEP]"``, ``max_a_len``; a long answer loses its
   ``[SEP]``);
2. :func:`encode_video`: the vision encoder with vid-TLDR merging; its merged tokens after the final norm;
3. :func:`encode_question`: the question encoder over all of its video's tokens;
4. :func:`rank_answers`: the decoder on the start token alone gives a softmax over the vocabulary; each
   answer is scored by the probability of its first piece and the top ``k`` are kept; those are
   re-scored teacher-forced as ``log p(first piece) - summed token loss`` (the first piece counts in both
   terms, as in the official code), softmax over the ``k``, sorted.

Ties: answers sharing a first piece (``jump`` / ``jumping``) have equal first-piece probabilities. The
official ``topk`` leaves their order unspecified; here the answer listed first in the answer list wins a
tie, both at the cut to ``k`` and in the final sort (``jax.lax.top_k`` keeps the lower index first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tldr_jax.api import Output, apply
from tldr_jax.numerics import matmul_precision
from tldr_jax.qa.model import QAModel, QuestionEncoder, check_model
from tldr_jax.text.bert import TextConfig, check_token_ids, padding_bias
from tldr_jax.text.decoder import VOCAB_CHUNK, AnswerDecoder, build_module
from tldr_jax.text.tokenizer import pre_text, tokenize
from tldr_jax.xla_options import tuned_jit

Array = jax.Array

#: What the official QA evaluation appends to every answer (``config.eos``).
EOS = "[SEP]"


def tokenize_questions(model: QAModel, questions: str | Sequence[str], max_length: int = 25) -> tuple:
    """Question ids and masks as the official QA dataset and evaluation make them.

    Each question goes through :func:`~tldr_jax.text.tokenizer.pre_text` (lower-case, punctuation
    removed), then the tokenizer (``[CLS]`` + word pieces, no ``[SEP]``, padded to ``max_length``).

    Returns:
      ``ids (n, max_length)`` and ``mask (n, max_length)``, int32 numpy arrays.
    """
    questions = [questions] if isinstance(questions, str) else list(questions)
    bad = [i for i, q in enumerate(questions) if not isinstance(q, str)]
    if bad:
        raise TypeError(f"questions must be strings; item {bad[0]} is a {type(questions[bad[0]]).__name__}.")
    return tokenize(model, [pre_text(q) for q in questions], max_length)


def tokenize_answers(model: QAModel, answers: str | Sequence[str], max_length: int = 5) -> tuple:
    """Answer ids and masks as the official evaluation makes them: ``answer + " [SEP]"`` tokenised to
    ``max_length`` (``[CLS]`` pieces ``[SEP]`` then padding; a long answer is cut and loses its ``[SEP]``).

    Returns:
      ``ids (A, max_length)`` and ``mask (A, max_length)``, int32 numpy arrays.
    """
    answers = [answers] if isinstance(answers, str) else list(answers)
    bad = [i for i, a in enumerate(answers) if not isinstance(a, str)]
    if bad:
        raise TypeError(f"answers must be strings; item {bad[0]} is a {type(answers[bad[0]]).__name__}.")
    if EOS not in check_model(model).vocab:
        raise ValueError(f"the vocabulary has no {EOS}; the official answers end with it.")
    return tokenize(model, [f"{a} {EOS}" for a in answers], max_length)


def encode_video(model: QAModel, video: Any, r: Any = 0, **apply_options: Any) -> Output:
    """The vision encoder with vid-TLDR merging (official ``UMT_QA.encode_vision``).

    Args:
      model: the QA model.
      video: ``(B, T, H, W, 3)`` normalised frames.
      r: the merge schedule, as for :func:`tldr_jax.apply` (e.g. ``"msrvtt_qa"``, ``(600, 200)``, 0).
      **apply_options: other :func:`tldr_jax.apply` options (``dtype``, ``precision``, ...).

    Returns:
      The :class:`tldr_jax.Output`; ``.tokens (B, N', D)`` are what the question encoder reads.
    """
    return apply(check_model(model).vision, video, r, **apply_options)


@tuned_jit(static_argnames=("cfg", "precision"))
def _question_states(
    tree: dict,
    ids: Array,
    mask: Array,
    video: Array,
    question_video: Array,
    *,
    cfg: TextConfig,
    precision: str | None,
) -> Array:
    with matmul_precision(precision):
        return build_module(QuestionEncoder, cfg, tree)(
            ids, mask, video.astype(tree_dtype(tree)), question_video
        )


def tree_dtype(tree: dict) -> Any:
    """The dtype of a parameter tree (of its first leaf)."""
    return jax.tree_util.tree_leaves(tree)[0].dtype


def encode_question(
    model: QAModel,
    ids: Any,
    mask: Any,
    video_tokens: Any,
    *,
    question_video: Any = None,
    precision: str | None = "float32",
    gpu_tuning: str = "heuristic",
) -> Array:
    """The question states: the question encoder over all the tokens of each question's video.

    Args:
      model: the QA model.
      ids: ``(n, Lq)`` question token ids from :func:`tokenize_questions`.
      mask: ``(n, Lq)`` their padding mask.
      video_tokens: ``(B, N', D)`` merged video tokens (:func:`encode_video`'s ``.tokens``).
      question_video: ``(n,)`` the video of each question (default: question ``i`` is about video ``i``,
        which needs ``B == n``); each video's keys and values are computed once for all its questions.
      precision: float32 matrix-product precision (``"float32"``: the official arithmetic).
      gpu_tuning: XLA's GEMM settings on a GPU, as :func:`tldr_jax.apply`'s.

    Returns:
      ``(n, Lq, H)`` the last hidden state (official ``question_output.last_hidden_state``).
    """
    model = check_model(model)
    ids, mask = check_token_ids(
        ids, mask, model.text_config, what="question", make="tldr_jax.qa.tokenize_questions"
    )
    video_tokens = jnp.asarray(video_tokens)
    qv = _question_video(question_video, len(ids), video_tokens)
    return _question_states(
        model.question,
        jnp.asarray(ids),
        jnp.asarray(mask),
        video_tokens,
        jnp.asarray(qv),
        cfg=model.text_config,
        precision=precision,
        gpu_tuning=gpu_tuning,
    )


def _question_video(question_video: Any, n: int, video_tokens: Array) -> np.ndarray:
    if video_tokens.ndim != 3:
        raise ValueError(f"video_tokens must be (B, N', D); got shape {video_tokens.shape}.")
    num_videos = video_tokens.shape[0]
    if question_video is None:
        if num_videos != n:
            raise ValueError(
                f"{n} questions but {num_videos} videos: pass question_video (the video of each question)."
            )
        return np.arange(n, dtype=np.int32)
    qv = np.asarray(question_video)
    if (
        qv.shape != (n,)
        or not np.issubdtype(qv.dtype, np.integer)
        or (n and not 0 <= qv.min() <= qv.max() < num_videos)
    ):
        raise ValueError(
            f"question_video must be {n} ints in [0, {num_videos}) (one video index per question); got "
            f"shape {qv.shape}, dtype {qv.dtype}."
        )
    return qv.astype(np.int32)


def _check_states(states: Any, mask: Any, cfg: TextConfig) -> tuple[Array, Array]:
    states, mask = jnp.asarray(states), jnp.asarray(mask)
    if states.ndim != 3 or states.shape[-1] != cfg.hidden_size or mask.shape != states.shape[:2]:
        raise ValueError(
            f"question states must be (n, Lq, {cfg.hidden_size}) with a (n, Lq) mask; got {states.shape} and "
            f"{mask.shape}. Make them with tldr_jax.qa.encode_question."
        )
    return states, mask


@tuned_jit(static_argnames=("cfg", "precision"))
def _start_logits(tree: dict, states: Array, mask: Array, start: Array, *, cfg: TextConfig, precision: Any):
    with matmul_precision(precision):
        decoder = build_module(AnswerDecoder, cfg, tree)
        cross = decoder.cross_keys_values(states)
        ids = jnp.broadcast_to(start, (states.shape[0], 1))
        x = decoder.hidden(ids, jnp.ones_like(ids), cross, padding_bias(mask, states.dtype))
        return decoder.logits(x[:, 0])


def start_logits(
    model: QAModel, states: Any, mask: Any, *, start_id: int | None = None, precision: str | None = "float32"
) -> Array:
    """``(n, V)`` the decoder's vocabulary logits for the start token alone (``[CLS]`` by default), which
    :func:`rank_answers` turns into first-piece probabilities."""
    model = check_model(model)
    states, mask = _check_states(states, mask, model.text_config)
    start = model.vocab.id_of("[CLS]") if start_id is None else int(start_id)
    return _start_logits(
        model.decoder,
        states,
        mask,
        jnp.asarray(start, jnp.int32),
        cfg=model.decoder_config,
        precision=precision,
    )


@tuned_jit(static_argnames=("cfg", "k", "pad_id", "chunk", "precision"))
def _rank(
    tree: dict,
    states: Array,
    mask: Array,
    answer_ids: Array,
    answer_mask: Array,
    *,
    cfg: TextConfig,
    k: int,
    pad_id: int,
    chunk: int,
    precision: Any,
) -> tuple[Array, Array]:
    with matmul_precision(precision):
        decoder = build_module(AnswerDecoder, cfg, tree)
        cross = decoder.cross_keys_values(states)  # once per question, for every candidate
        bias = padding_bias(mask, states.dtype)
        start = jnp.broadcast_to(answer_ids[0, 0], (states.shape[0], 1))
        x = decoder.hidden(start, jnp.ones_like(start), cross, bias)
        first = jax.nn.softmax(decoder.logits(x[:, 0]), axis=-1)[:, answer_ids[:, 1]]  # (n, A)
        top_probs, top_ids = jax.lax.top_k(first, k)
        ids, amask = answer_ids[top_ids], answer_mask[top_ids]  # (n, k, La)
        cand = [(keys[:, None], values[:, None]) for keys, values in cross]
        x = decoder.hidden(ids, amask, cand, bias[:, None])
        loss = decoder.answer_loss(x, ids, pad_id, chunk)  # (n, k)
        probs = jax.nn.softmax(jnp.log(top_probs) - loss, axis=-1)
        probs, order = jax.lax.top_k(probs, k)
        return jnp.take_along_axis(top_ids, order, axis=1), probs


def rank_answers(
    model: QAModel,
    states: Any,
    mask: Any,
    answer_ids: Any,
    answer_mask: Any,
    k: int,
    *,
    precision: str | None = "float32",
    vocab_chunk: int = VOCAB_CHUNK,
    gpu_tuning: str = "heuristic",
) -> tuple[Array, Array]:
    """The official ``rank_answer``: the top ``k`` answers of each question and their probabilities.

    Args:
      model: the QA model.
      states: ``(n, Lq, H)`` question states (:func:`encode_question`).
      mask: ``(n, Lq)`` their padding mask.
      answer_ids: ``(A, La)`` the answer list's token ids (:func:`tokenize_answers`).
      answer_mask: ``(A, La)`` their padding mask.
      k: candidates re-scored per question, ``1 <= k <= A`` (static: one compile per value).
      precision: float32 matrix-product precision.
      vocab_chunk: vocabulary columns per step of the candidates' loss.
      gpu_tuning: XLA's GEMM settings on a GPU, as :func:`tldr_jax.apply`'s.

    Returns:
      ``ids (n, k)`` answer indices, best first, and ``probs (n, k)`` their softmax over the ``k``.
    """
    model = check_model(model)
    cfg = model.text_config
    states, mask = _check_states(states, mask, cfg)
    answer_ids, answer_mask = check_token_ids(
        answer_ids, answer_mask, cfg, what="answer", make="tldr_jax.qa.tokenize_answers"
    )
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= len(answer_ids):
        raise ValueError(f"k must be an int in [1, {len(answer_ids)}] (the number of answers); got {k!r}.")
    return _rank(
        model.decoder,
        states,
        mask,
        jnp.asarray(answer_ids),
        jnp.asarray(answer_mask),
        cfg=model.decoder_config,
        k=int(k),
        pad_id=cfg.pad_token_id,
        chunk=int(vocab_chunk),
        precision=precision,
        gpu_tuning=gpu_tuning,
    )
