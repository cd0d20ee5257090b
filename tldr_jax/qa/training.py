"""The official QA training loss (``UMT_QA.forward(train=True)``), differentiable with merging on.

Each question's states are shared by its answers (the official code stacks a copy per answer; here the
decoder's cross-attention keys and values are computed once per question and indexed), every answer is
scored teacher-forced by the decoder (summed next-token cross-entropy, ``[PAD]`` targets ignored), and
the loss is ``sum(weight * answer loss) / number of questions``. ``jax.grad`` of :func:`train_loss` with
respect to the model trains all three parts; the vid-TLDR merge decisions carry no gradient (as in the
official code), the merged values do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tldr_jax.api import apply
from tldr_jax.numerics import matmul_precision
from tldr_jax.qa.model import QAModel, QuestionEncoder, check_model
from tldr_jax.text.bert import padding_bias
from tldr_jax.text.decoder import VOCAB_CHUNK, AnswerDecoder, build_module

Array = jax.Array


def _answer_index(answers_per_question: Sequence[int], n: int, num_answers: int) -> np.ndarray:
    """``(A,)`` the question of each answer, from the answers per question (official ``k``)."""
    counts = np.asarray(answers_per_question)
    if counts.shape != (n,) or not np.issubdtype(counts.dtype, np.integer) or (counts < 1).any():
        raise ValueError(
            f"answers_per_question must be {n} ints >= 1 (one per question, official k); got "
            f"{counts.tolist()}."
        )
    if counts.sum() != num_answers:
        raise ValueError(
            f"answers_per_question sums to {counts.sum()} but {num_answers} answers were given; list the "
            "answers question by question."
        )
    return np.repeat(np.arange(n, dtype=np.int32), counts)


def train_loss(
    model: QAModel,
    video: Any,
    question_ids: Any,
    question_mask: Any,
    answer_ids: Any,
    answer_mask: Any,
    *,
    answers_per_question: Sequence[int],
    weights: Any,
    r: Any = 0,
    precision: str | None = "float32",
    vocab_chunk: int = VOCAB_CHUNK,
    **apply_options: Any,
) -> Array:
    """The official QA training loss of one batch (a scalar in the model's dtype).

    Args:
      model: the QA model (differentiate with respect to it: ``jax.grad(train_loss)(model, ...)``).
      video: ``(n, T, H, W, 3)`` one clip per question, as the official batch holds.
      question_ids: ``(n, Lq)`` question token ids (:func:`~tldr_jax.qa.tokenize_questions`).
      question_mask: ``(n, Lq)`` their padding mask.
      answer_ids: ``(A, La)`` every question's answers in question order
        (:func:`~tldr_jax.qa.tokenize_answers`).
      answer_mask: ``(A, La)`` their padding mask.
      answers_per_question: ``n`` ints summing to ``A`` (static: the official ``k``).
      weights: ``(A,)`` the weight of each answer (the official answer weights, e.g. ``1/3`` per vote).
      r: the merge schedule of the vision encoder (merging on during training, as vid-TLDR allows).
      precision: float32 matrix-product precision.
      vocab_chunk: vocabulary columns per step of the answer loss.
      **apply_options: other :func:`tldr_jax.apply` options (``remat``, ``dtype``, ...).

    Returns:
      ``sum(weights * answer_loss) / n``.
    """
    model = check_model(model)
    n = video.shape[0]
    if question_ids.shape[0] != n or question_mask.shape != question_ids.shape:
        raise ValueError(
            f"{n} clips need {n} questions with a mask of the same shape; got ids {question_ids.shape}, mask "
            f"{question_mask.shape}."
        )
    if answer_mask.shape != answer_ids.shape or jnp.shape(weights) != answer_ids.shape[:1]:
        raise ValueError(
            f"answer ids {answer_ids.shape}, mask {answer_mask.shape} and weights {jnp.shape(weights)} must "
            "agree: (A, La), (A, La), (A,)."
        )
    index = _answer_index(answers_per_question, n, answer_ids.shape[0])
    tokens = apply(model.vision, video, r, precision=precision, **apply_options).tokens
    with matmul_precision(precision):
        encoder = build_module(QuestionEncoder, model.text_config, model.question)
        states = encoder(question_ids, question_mask, tokens.astype(model.dtype), jnp.arange(n))
        decoder = build_module(AnswerDecoder, model.decoder_config, model.decoder)
        cross = [(keys[index], values[index]) for keys, values in decoder.cross_keys_values(states)]
        bias = padding_bias(question_mask, states.dtype)[index]
        hidden = decoder.hidden(answer_ids, answer_mask, cross, bias)
        loss = decoder.answer_loss(hidden, answer_ids, model.text_config.pad_token_id, int(vocab_chunk))
    return jnp.sum(jnp.asarray(weights, loss.dtype) * loss) / n
