"""The official video-QA evaluation (``tasks/vqa.py::evaluation`` + ``eval_simple_qa_acc``), each video
encoded once for all its questions.

The official loader yields one (video, question) pair at a time and encodes the video again for every
question about it. Here the questions are grouped by video: the videos are streamed in batches (files
read ahead in background threads), each batch is encoded once with vid-TLDR merging, and all the questions
about those videos are answered from its tokens in question batches of static size, so one compiled
program serves the whole data set (the last batches are padded). Answers are ranked by
:func:`~tldr_jax.qa.rank_answers`; the prediction is the top answer, and the accuracy is the official
exact match in percent, rounded to two decimals.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from tldr_jax.prefetch import prefetch
from tldr_jax.qa.model import QAModel, check_model
from tldr_jax.qa.ranking import (
    encode_question,
    encode_video,
    rank_answers,
    tokenize_answers,
    tokenize_questions,
)
from tldr_jax.retrieval.features import video_loader
from tldr_jax.text.decoder import VOCAB_CHUNK
from tldr_jax.video import preprocessing_for


@dataclasses.dataclass
class QAResult:
    """The answers to a set of questions.

    Attributes:
      predictions: ``n`` strings, the top-ranked answer of each question.
      topk_ids: ``(n, k)`` indices into the answer list, best first.
      topk_probs: ``(n, k)`` their probabilities (softmax over the ``k`` re-scored candidates).
      accuracy: exact-match accuracy in percent, rounded to two decimals (None without ground truth).
    """

    predictions: list[str]
    topk_ids: np.ndarray
    topk_probs: np.ndarray
    accuracy: float | None = None

    def to_json(self, answers: Sequence[str], top: int = 5) -> dict[str, Any]:
        """A JSON-ready dict: accuracy and, per question, the prediction and the ``top`` answers with their
        probabilities."""
        rows = [
            {
                "prediction": pred,
                "top": [[answers[int(i)], float(p)] for i, p in zip(ids[:top], probs[:top])],
            }
            for pred, ids, probs in zip(self.predictions, self.topk_ids, self.topk_probs)
        ]
        return {"accuracy": self.accuracy, "questions": rows}


def qa_accuracy(predictions: Sequence[str], gt: Sequence[str]) -> float:
    """The official ``eval_simple_qa_acc``: exact string match, percent, rounded to two decimals."""
    if len(predictions) != len(gt):
        raise ValueError(f"{len(predictions)} predictions but {len(gt)} ground-truth answers.")
    if not predictions:
        raise ValueError("no questions to score.")
    return round(100.0 * sum(p == g for p, g in zip(predictions, gt)) / len(predictions), 2)


def _check_questions(questions: Any, question_video: Any, num_videos: int) -> tuple[list[str], np.ndarray]:
    questions = [questions] if isinstance(questions, str) else list(questions)
    if not questions:
        raise ValueError("no questions to answer; pass at least one.")
    qv = np.asarray(question_video)
    if qv.shape != (len(questions),) or not np.issubdtype(qv.dtype, np.integer):
        raise ValueError(
            f"question_video must hold one int per question ({len(questions)}); got shape {qv.shape}."
        )
    if qv.min() < 0 or qv.max() >= num_videos:
        raise ValueError(
            f"question_video indices must lie in [0, {num_videos}) (the videos given); got "
            f"{qv.min()}..{qv.max()}."
        )
    return questions, qv


def _padded(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` repeated at the end to ``size`` rows (static batch shapes)."""
    fill = size - len(rows)
    return np.concatenate([rows, np.repeat(rows[-1:], fill, 0)]) if fill else rows


def evaluate(
    model: QAModel,
    videos: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    question_video: Any,
    gt: Sequence[str] | None = None,
    k: int = 128,
    r: Any = 0,
    max_question_length: int = 25,
    max_answer_length: int = 5,
    batch_size: int = 32,
    video_batch_size: int = 8,
    num_frames: int | None = None,
    workers: int = 2,
    progress: bool | None = None,
    precision: str | None = "float32",
    vocab_chunk: int = VOCAB_CHUNK,
    **apply_options: Any,
) -> QAResult:
    """Answer every question from the answer list, as the official evaluation does.

    Args:
      model: the QA model.
      videos: ``(B, T, H, W, 3)`` normalised clips, or a list of video files / ``.npy`` clips /
        ``(T, H, W, 3)`` arrays (files read with UMT's evaluation preprocessing).
      questions: ``n`` raw questions (cleaned by ``pre_text`` here, as the official dataset does).
      answers: the answer list (``*_qa_answer_list.json``).
      question_video: ``(n,)`` the index into ``videos`` of each question's video.
      gt: ``n`` ground-truth answers, for the accuracy.
      k: candidates re-scored per question (``k_test``; at most the number of answers).
      r: the vid-TLDR schedule (``"msrvtt_qa"``, a tuple, 0, ...).
      max_question_length: question tokens (the preset's ``max_q_len``).
      max_answer_length: answer tokens (the preset's ``max_a_len``).
      batch_size: questions per ranking call.
      video_batch_size: clips per encoder call.
      num_frames: frames per clip read from a file (default: the model's).
      workers: threads reading video files ahead.
      progress: a progress bar over the questions on stderr (default: when stderr is a terminal).
      precision: float32 matrix-product precision.
      vocab_chunk: vocabulary columns per loss step.
      **apply_options: other :func:`tldr_jax.apply` options (``dtype``, ...).

    Returns:
      :class:`QAResult`.
    """
    model = check_model(model)
    gpu_tuning = apply_options.get("gpu_tuning", "heuristic")  # the text side's programs too
    answers = list(answers)
    prep = preprocessing_for(model.vision, num_frames=num_frames, sampling="middle", pad=True)
    num_videos, load = video_loader(videos, prep)
    questions, qv = _check_questions(questions, question_video, num_videos)
    if gt is not None and len(gt) != len(questions):
        raise ValueError(f"{len(questions)} questions but {len(gt)} ground-truth answers.")
    a_ids, a_mask = tokenize_answers(model, answers, max_answer_length)
    q_ids, q_mask = tokenize_questions(model, questions, max_question_length)
    needed = np.unique(qv)
    vb, qb = max(1, min(int(video_batch_size), len(needed))), max(1, min(int(batch_size), len(questions)))
    batches = [needed[s : s + vb] for s in range(0, len(needed), vb)]
    top_ids = np.zeros((len(questions), int(k)), np.int64)
    top_probs = np.zeros((len(questions), int(k)), np.float64)
    enabled = sys.stderr.isatty() if progress is None else progress
    with tqdm(
        total=len(questions), desc="answering", unit="question", disable=not enabled, leave=False
    ) as bar:
        for vids, clips in zip(batches, prefetch(load, batches, workers=workers, depth=workers + 1)):
            tokens = encode_video(
                model, jnp.asarray(_padded(np.asarray(clips), vb)), r, precision=precision, **apply_options
            ).tokens
            local = {int(v): i for i, v in enumerate(vids)}
            rows = np.flatnonzero(np.isin(qv, vids))
            for s in range(0, len(rows), qb):
                part = rows[s : s + qb]
                pick = _padded(part, qb)
                states = encode_question(
                    model,
                    q_ids[pick],
                    q_mask[pick],
                    tokens,
                    precision=precision,
                    question_video=np.array([local[int(v)] for v in qv[pick]], np.int32),
                    gpu_tuning=gpu_tuning,
                )
                ids, probs = rank_answers(
                    model,
                    states,
                    q_mask[pick],
                    a_ids,
                    a_mask,
                    k,
                    precision=precision,
                    vocab_chunk=vocab_chunk,
                    gpu_tuning=gpu_tuning,
                )
                top_ids[part], top_probs[part] = np.asarray(ids)[: len(part)], np.asarray(probs)[: len(part)]
                bar.update(len(part))
    predictions = [answers[int(i)] for i in top_ids[:, 0]]
    accuracy = qa_accuracy(predictions, list(gt)) if gt is not None else None
    return QAResult(predictions=predictions, topk_ids=top_ids, topk_probs=top_probs, accuracy=accuracy)
