"""Shared pieces of the video-QA and multiple-choice tests: the official golden data
(``../shared/golden/umt_qa``), its converted models, and the runs several files compare.

The golden set is the official ``UMT_QA`` (vid-TLDR merging in its vision encoder, the xbert question
encoder and ``BertLMHeadModel`` decoder, ``rank_answer``, ``tasks/vqa.py::evaluation``, the training
forward and PyTorch autograd) and the retrieval ``UMT`` with ``main_with_ensemble`` (multiple choice), run on
tiny seeded models in float32 and float64. Import the fixtures a test file uses from here.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import GOLDEN_DIR, golden

from tldr_jax import qa

GOLD = GOLDEN_DIR / "umt_qa"
SCHEDULES = ("zero", "ints", "frac")
#: Float64 parity with the official float64 run (two float64 runs of the same algorithm agree to ~1e-14).
F64_ATOL = 1e-9
#: Float32 is judged by its RMS distance to the float64 truth over the three schedules, at most this many
#: times the official float32's own (as ``conftest.F32_FACTOR`` for the vision encoder).
F32_FACTOR = 2.0
#: The tiny model's sizes that the weights cannot tell (``qa_config.json``).
SIZES = dict(num_heads=2, num_frames=4, img_size=32)


@pytest.fixture(scope="session")
def qa_gold():
    """The arrays of ``golden_qa.npz``."""
    return golden("umt_qa/golden_qa.npz")


@pytest.fixture(scope="session")
def qa_model_dir(tmp_path_factory):
    """``umt_qa.pth`` converted by ``checkpoints_convert`` (``--format umt_qa``) into a QA directory."""
    pytest.importorskip("torch")
    if not (GOLD / "umt_qa.pth").exists():
        pytest.skip(f"golden QA checkpoint not found in {GOLD}")
    from checkpoints_convert import convert

    out = tmp_path_factory.mktemp("qa") / "umt_tiny_qa"
    convert(
        GOLD / "umt_qa.pth",
        out,
        fmt="umt_qa",
        vocab=GOLD / "vocab.txt",
        text_config=GOLD / "qa_config.json",
        verbose=False,
        **SIZES,
    )
    return out


@pytest.fixture(scope="session")
def qa_model(qa_model_dir):
    """The converted golden QA model, loaded by ``tldr_jax.load``."""
    import tldr_jax

    loaded = tldr_jax.load(qa_model_dir)
    assert isinstance(loaded, qa.QAModel)
    return loaded


@pytest.fixture(scope="session")
def mc_model():
    """``umt_mc.pth`` (a retrieval checkpoint) converted by the retrieval converter, in memory."""
    pytest.importorskip("torch")
    if not (GOLD / "umt_mc.pth").exists():
        pytest.skip(f"golden MC checkpoint not found in {GOLD}")
    import torch

    from checkpoints_convert.bert import read_vocab
    from checkpoints_convert.retrieval import convert_retrieval_state_dict

    bert = json.loads((GOLD / "qa_config.json").read_text())
    state = torch.load(GOLD / "umt_mc.pth", weights_only=True, map_location="cpu")
    return convert_retrieval_state_dict(
        state, vocab=read_vocab(GOLD / "vocab.txt"), text_config=bert, verbose=False, **SIZES
    ).model


def schedule(gold, name):
    """The golden per-layer r (counts as ints, fractions as floats)."""
    return tuple(int(v) if v >= 1 or v == 0 else float(v) for v in gold[f"{name}/schedule"])


def video(gold, dtype=np.float32):
    """The golden ``(B, T, C, H, W)`` clips as tldr_jax's ``(B, T, H, W, C)``."""
    return gold["video_btchw"].transpose(0, 1, 3, 4, 2).astype(dtype)


def config(key):
    """A value of ``qa_config.json``."""
    return json.loads((GOLD / "qa_config.json").read_text())[key]


def train_batch(gold):
    """The golden training batch: flat answers, their weights and the answers per question."""
    answers = json.loads(str(gold["train_answers"]))
    weights = json.loads(str(gold["train_weights"]))
    flat = [a for row in answers for a in row]
    return flat, np.asarray([w for row in weights for w in row]), [len(row) for row in answers]


def run_schedule(model, gold, name, dtype):
    """Every QA output of one golden schedule in ``dtype`` (call under ``jax.enable_x64`` for float64):
    ``{"vision_embeds", "question_states", "start_logits", "first_piece_prob", "k<k>/topk_ids",
    "k<k>/topk_probs"}`` as numpy arrays."""
    m = model.astype(dtype)
    tokens = qa.encode_video(m, jnp.asarray(video(gold, dtype)), schedule(gold, name)).tokens
    mask = gold["question_mask"]
    states = qa.encode_question(m, gold["question_ids"], mask, tokens, question_video=gold["question_video"])
    logits = qa.start_logits(m, states, mask)
    out = {
        "vision_embeds": tokens,
        "question_states": states,
        "start_logits": logits,
        "first_piece_prob": jax.nn.softmax(logits, axis=-1)[:, gold["answer_ids"][:, 1]],
    }
    for k in gold["qa_k"]:
        ids, probs = qa.rank_answers(m, states, mask, gold["answer_ids"], gold["answer_mask"], int(k))
        out[f"k{k}/topk_ids"], out[f"k{k}/topk_probs"] = ids, probs
    return {key: np.asarray(v) for key, v in out.items()}


@pytest.fixture(scope="session")
def f32_qa_runs(qa_model, qa_gold):
    """:func:`run_schedule` in float32 for every golden schedule."""
    return {name: run_schedule(qa_model, qa_gold, name, jnp.float32) for name in SCHEDULES}


def rms(a, b):
    """Root mean square of ``a - b`` (float64)."""
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))
