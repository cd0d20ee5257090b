"""Video QA against the official code (``../shared/golden/umt_qa``): tokens, every tower output, the
answer ranking, the evaluation and the training loss with its gradients, in float64 (1e-9) and float32
(against the float64 truth, the official float32 as yardstick), for the three golden schedules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from qa_fixtures import F32_FACTOR, F64_ATOL, SCHEDULES, rms, run_schedule, schedule, train_batch, video

from checkpoints_convert.qa import to_official_state_dict
from tldr_jax import qa

FLOAT_OUTPUTS = ("vision_embeds", "question_states", "start_logits", "first_piece_prob")


def test_question_and_answer_tokens_are_the_official_ones(qa_model, qa_gold):
    ids, mask = qa.tokenize_questions(qa_model, list(qa_gold["questions"]), max_length=12)
    np.testing.assert_array_equal(ids, qa_gold["question_ids"])
    np.testing.assert_array_equal(mask, qa_gold["question_mask"])
    ids, mask = qa.tokenize_answers(qa_model, list(qa_gold["answers"]), max_length=5)
    np.testing.assert_array_equal(ids, qa_gold["answer_ids"])
    np.testing.assert_array_equal(mask, qa_gold["answer_mask"])
    long = list(qa_gold["answers"]).index("a man playing the guitar")
    assert qa_model.vocab.id_of("[SEP]") not in ids[long]  # cut to max_a_len: its [SEP] is gone
    assert ids[list(qa_gold["answers"]).index("xylophone"), 1] == qa_model.vocab.id_of("[UNK]")


@pytest.fixture(scope="module")
def f64_runs(qa_model, qa_gold):
    with jax.enable_x64(True):
        return {name: run_schedule(qa_model, qa_gold, name, jnp.float64) for name in SCHEDULES}


@pytest.mark.parametrize("name", SCHEDULES)
def test_float64_outputs_and_ranking_match_the_official_float64(f64_runs, qa_gold, name):
    run = f64_runs[name]
    for key in FLOAT_OUTPUTS:
        want = qa_gold[f"qa/{name}/{key}_f64"]
        assert run[key].dtype == np.float64 and run[key].shape == want.shape, key
        np.testing.assert_allclose(run[key], want, rtol=0, atol=F64_ATOL, err_msg=f"{name}/{key}")
    for k in qa_gold["qa_k"]:
        np.testing.assert_array_equal(run[f"k{k}/topk_ids"], qa_gold[f"qa/{name}/k{k}/topk_ids_f64"])
        np.testing.assert_allclose(
            run[f"k{k}/topk_probs"], qa_gold[f"qa/{name}/k{k}/topk_probs_f64"], rtol=0, atol=F64_ATOL
        )


@pytest.mark.parametrize("name", SCHEDULES)
def test_float32_ranking_and_predictions_match_the_official_float32(f32_qa_runs, qa_gold, name):
    for k in qa_gold["qa_k"]:
        want = qa_gold[f"qa/{name}/k{k}/topk_ids"]
        np.testing.assert_array_equal(f32_qa_runs[name][f"k{k}/topk_ids"], want)


def test_float32_is_as_close_to_the_float64_truth_as_the_official_float32(f32_qa_runs, qa_gold):
    """Per output, RMS over the three schedules: tldr_jax float32 vs truth <= 2x official float32 vs truth."""
    keys = [*FLOAT_OUTPUTS, *(f"k{k}/topk_probs" for k in qa_gold["qa_k"])]
    for key in keys:
        ours = np.concatenate([f32_qa_runs[n][key].ravel() for n in SCHEDULES])
        truth = np.concatenate([qa_gold[f"qa/{n}/{key}_f64"].ravel() for n in SCHEDULES])
        official = np.concatenate([qa_gold[f"qa/{n}/{key}"].ravel() for n in SCHEDULES])
        ours_rms, official_rms = rms(ours, truth), rms(official, truth)
        assert ours_rms <= F32_FACTOR * official_rms, (key, ours_rms, official_rms)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_evaluation_predictions_and_accuracy_match_the_official_evaluation(qa_model, qa_gold, dtype):
    """The whole evaluation from raw questions, clips and the answer list (each video encoded once)."""
    suffix = "_f64" if dtype == "float64" else ""
    with jax.enable_x64(dtype == "float64"):
        model = qa_model.astype(jnp.dtype(dtype))
        for name in SCHEDULES:
            for k in qa_gold["qa_k"]:
                res = qa.evaluate(
                    model,
                    video(qa_gold, dtype),
                    list(qa_gold["questions"]),
                    list(qa_gold["answers"]),
                    question_video=qa_gold["question_video"],
                    gt=list(qa_gold["question_gt"]),
                    k=int(k),
                    r=schedule(qa_gold, name),
                    max_question_length=12,
                    batch_size=4,
                    video_batch_size=2,
                )
                pre = f"qa/{name}/k{k}"
                assert res.predictions == [str(a) for a in qa_gold[f"{pre}/pred_answers{suffix}"]], pre
                assert res.accuracy == float(qa_gold[f"{pre}/accuracy{suffix}"]), pre
                np.testing.assert_array_equal(res.topk_ids, qa_gold[f"{pre}/topk_ids{suffix}"])


@pytest.mark.parametrize("name", SCHEDULES)
def test_float64_training_loss_and_gradients_match_pytorch_autograd(qa_model, qa_gold, name):
    answers, weights, per_question = train_batch(qa_gold)
    with jax.enable_x64(True):
        model = qa_model.astype(jnp.float64)
        a_ids, a_mask = qa.tokenize_answers(model, answers)
        clips = jnp.asarray(video(qa_gold, np.float64)[qa_gold["question_video"]])

        def loss_fn(m):
            return qa.train_loss(
                m,
                clips,
                qa_gold["question_ids"],
                qa_gold["question_mask"],
                a_ids,
                a_mask,
                answers_per_question=per_question,
                weights=weights,
                r=schedule(qa_gold, name),
            )

        loss, grads = jax.value_and_grad(loss_fn)(model)
        assert loss.dtype == jnp.float64
        want = float(qa_gold[f"train/{name}/loss_f64"])
        np.testing.assert_allclose(float(loss), want, rtol=0, atol=F64_ATOL)
        official = to_official_state_dict(grads)  # tldr_jax paths -> the official parameter names
        for key in qa_gold["train_grad_keys"]:
            want = qa_gold[f"train/{name}/grad/{key}_f64"]
            np.testing.assert_allclose(np.asarray(official[key]), want, rtol=0, atol=F64_ATOL, err_msg=key)
