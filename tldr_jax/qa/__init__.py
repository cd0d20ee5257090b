"""UMT video question answering with vid-TLDR: the QA model, the official answer ranking, evaluation and
training loss.

::

    from tldr_jax import qa
    model = tldr_jax.load("ckpt/umt_b16_qa")                        # a QAModel
    q_ids, q_mask = qa.tokenize_questions(model, questions)         # pre_text, [CLS] + pieces, 25 tokens
    a_ids, a_mask = qa.tokenize_answers(model, answer_list)         # answer + " [SEP]", 5 tokens
    video = qa.encode_video(model, clips, r="msrvtt_qa")            # .tokens (B, N', D)
    states = qa.encode_question(model, q_ids, q_mask, video.tokens, question_video=qv)   # (n, Lq, H)
    ids, probs = qa.rank_answers(model, states, q_mask, a_ids, a_mask, k=128)         # (n, k) each
    res = qa.evaluate(model, videos, questions, answer_list, question_video=qv, gt=gt, r="msrvtt_qa")
    res.predictions, res.accuracy

The modules: :mod:`~tldr_jax.qa.model` (:class:`QAModel`, :func:`init`), :mod:`~tldr_jax.qa.checkpoint`
(its directory format, kind ``"umt_qa"``), :mod:`~tldr_jax.qa.ranking` (tokens, states, the official
ranking), :mod:`~tldr_jax.qa.evaluation`, :mod:`~tldr_jax.qa.training` (the official loss) and
:mod:`~tldr_jax.qa.data` (annotation files, dataset presets). The answer decoder is
:mod:`tldr_jax.text.decoder`; multiple choice is :func:`tldr_jax.retrieval.multiple_choice`.
"""

from tldr_jax.qa.checkpoint import load, save
from tldr_jax.qa.data import (
    PRESETS,
    QAPreset,
    get_preset,
    load_answer_list,
    load_mc_annotations,
    load_qa_annotations,
)
from tldr_jax.qa.evaluation import QAResult, evaluate, qa_accuracy
from tldr_jax.qa.model import QAModel, init
from tldr_jax.qa.ranking import (
    encode_question,
    encode_video,
    rank_answers,
    start_logits,
    tokenize_answers,
    tokenize_questions,
)
from tldr_jax.qa.training import train_loss

__all__ = [
    "PRESETS",
    "QAModel",
    "QAPreset",
    "QAResult",
    "encode_question",
    "encode_video",
    "evaluate",
    "get_preset",
    "init",
    "load",
    "load_answer_list",
    "load_mc_annotations",
    "load_qa_annotations",
    "qa_accuracy",
    "rank_answers",
    "save",
    "start_logits",
    "tokenize_answers",
    "tokenize_questions",
    "train_loss",
]
