"""Multiple choice (``tldr_jax.retrieval.multiple_choice``) against the official ``main_with_ensemble`` on
the golden tiny retrieval model (``../shared/golden/umt_qa/umt_mc.pth``), float64 and float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from qa_fixtures import F32_FACTOR, F64_ATOL, SCHEDULES, config, rms, schedule, video

from tldr_jax import retrieval


def run(model, gold, name, dtype, **kwargs):
    clips = video(gold, dtype)[gold["mc_video"]]
    return retrieval.multiple_choice(
        model.astype(jnp.dtype(dtype)),
        clips,
        gold["mc_captions"].tolist(),
        answers=gold["mc_answer"],
        r=schedule(gold, name),
        max_length=config("max_txt_l"),
        **kwargs,
    )


@pytest.mark.parametrize("name", SCHEDULES)
def test_float64_scores_predictions_and_accuracy_match_the_official_float64(mc_model, qa_gold, name):
    with jax.enable_x64(True):
        res = run(mc_model, qa_gold, name, "float64", batch_size=2)  # the official loader's batches of 2
    assert res.scores.dtype == np.float64
    np.testing.assert_allclose(res.scores, qa_gold[f"mc/{name}/scores_f64"], rtol=0, atol=F64_ATOL)
    np.testing.assert_array_equal(res.pred, qa_gold[f"mc/{name}/pred_f64"])
    assert res.accuracy == float(qa_gold[f"mc/{name}/accuracy_f64"])


def test_float32_is_as_close_to_the_float64_truth_as_the_official_float32(mc_model, qa_gold):
    runs = {name: run(mc_model, qa_gold, name, "float32", batch_size=3) for name in SCHEDULES}
    for name, res in runs.items():
        np.testing.assert_array_equal(res.pred, qa_gold[f"mc/{name}/pred"])
        assert res.accuracy == float(qa_gold[f"mc/{name}/accuracy"])
    ours = np.concatenate([runs[n].scores.ravel() for n in SCHEDULES])
    truth = np.concatenate([qa_gold[f"mc/{n}/scores_f64"].ravel() for n in SCHEDULES])
    official = np.concatenate([qa_gold[f"mc/{n}/scores"].ravel() for n in SCHEDULES])
    assert rms(ours, truth) <= F32_FACTOR * rms(official, truth), (rms(ours, truth), rms(official, truth))


def test_captions_are_cleaned_like_the_official_dataset_and_files_work(mc_model, qa_gold, tmp_path):
    clips = video(qa_gold)[qa_gold["mc_video"]]
    paths = []
    for i, clip in enumerate(clips):
        np.save(tmp_path / f"c{i}.npy", clip)
        paths.append(tmp_path / f"c{i}.npy")
    captions = qa_gold["mc_captions"].tolist()
    shouted = [[c.upper() + "!" for c in row] for row in captions]  # pre_text lower-cases, drops the "!"
    a = retrieval.multiple_choice(mc_model, clips, captions, max_length=16)
    b = retrieval.multiple_choice(mc_model, paths, shouted, max_length=16, batch_size=3)
    np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=1e-6)
    assert a.accuracy is None and a.scores.shape == (4, 5)


def test_bad_inputs_are_refused_with_the_fix(mc_model, qa_gold):
    clips = video(qa_gold)[qa_gold["mc_video"]]
    captions = qa_gold["mc_captions"].tolist()
    with pytest.raises(ValueError, match="same number"):
        retrieval.multiple_choice(mc_model, clips, [captions[0], captions[1][:3]])
    with pytest.raises(ValueError, match="one video per item"):
        retrieval.multiple_choice(mc_model, clips[:3], captions, max_length=16)
    with pytest.raises(ValueError, match="answers must be 4 caption indices"):
        retrieval.multiple_choice(mc_model, clips, captions, answers=[0, 1])
    with pytest.raises(TypeError, match="option 2 is not"):
        retrieval.multiple_choice(mc_model, clips, [["a", "b", 3]])
