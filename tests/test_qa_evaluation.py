"""The QA evaluation, ranking rules, training step and data files (``tldr_jax.qa.evaluation``, ``ranking``,
``training``, ``data``) on the converted golden model: grouping questions by video changes nothing, ties
follow the documented rule, one optax step lowers the loss, and bad inputs get one clear error."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from qa_fixtures import schedule, train_batch, video

from tldr_jax import qa


def official_path(model, gold, clips, r, k, answers):
    """The official loop's arithmetic: every question with its own copy of its clip, encoded on its own."""
    tokens = qa.encode_video(model, jnp.asarray(clips[gold["question_video"]]), r).tokens
    states = qa.encode_question(model, gold["question_ids"], gold["question_mask"], tokens)
    a_ids, a_mask = qa.tokenize_answers(model, answers)
    return qa.rank_answers(model, states, gold["question_mask"], a_ids, a_mask, k)


@pytest.mark.parametrize("batch_size, video_batch_size", [(1, 1), (4, 2), (9, 3)])
def test_each_video_encoded_once_gives_the_per_question_results(
    qa_model, qa_gold, batch_size, video_batch_size
):
    answers = list(qa_gold["answers"])
    with jax.enable_x64(True):
        model = qa_model.astype(jnp.float64)
        clips = video(qa_gold, np.float64)
        ids, probs = official_path(model, qa_gold, clips, schedule(qa_gold, "ints"), 6, answers)
        res = qa.evaluate(
            model,
            clips,
            list(qa_gold["questions"]),
            answers,
            question_video=qa_gold["question_video"],
            k=6,
            r=schedule(qa_gold, "ints"),
            max_question_length=12,
            batch_size=batch_size,
            video_batch_size=video_batch_size,
        )
    np.testing.assert_array_equal(res.topk_ids, ids)
    np.testing.assert_allclose(res.topk_probs, probs, rtol=0, atol=1e-13)
    assert res.accuracy is None and res.predictions == [answers[i] for i in np.asarray(ids)[:, 0]]


def test_files_and_arrays_are_read_as_the_same_clips(qa_model, qa_gold, tmp_path):
    clips = video(qa_gold)
    paths = []
    for i, clip in enumerate(clips):
        np.save(tmp_path / f"v{i}.npy", clip)
        paths.append(tmp_path / f"v{i}.npy")
    kwargs = dict(question_video=qa_gold["question_video"], k=4, max_question_length=12, r=0)
    args = (list(qa_gold["questions"]), list(qa_gold["answers"]))
    from_files = qa.evaluate(qa_model, paths, *args, **kwargs)
    from_arrays = qa.evaluate(qa_model, list(clips), *args, **kwargs)
    np.testing.assert_array_equal(from_files.topk_ids, from_arrays.topk_ids)
    assert json.loads(json.dumps(from_files.to_json(args[1], top=2)))["questions"][0]["prediction"]


def test_ties_in_first_piece_probability_go_to_the_answer_listed_first(qa_model, qa_gold):
    """Equal answers tie exactly, in the cut to k and in the final order: the lower index comes first."""
    answers = ["man", "jump", "dog", "man", "jump"]
    clips = video(qa_gold)
    for k in (1, 2, 5):
        ids, probs = official_path(qa_model, qa_gold, clips, 0, k, answers)
        ids, probs = np.asarray(ids), np.asarray(probs)
        for row, p in zip(ids, probs):
            for a, b in ((0, 3), (1, 4)):
                if a in row and b in row:
                    assert list(row).index(a) < list(row).index(b)
                    assert p[list(row).index(a)] == p[list(row).index(b)]
                else:
                    assert b not in row  # the later twin is never kept alone


def test_accuracy_is_the_official_exact_match_rounded_to_two_decimals():
    assert qa.qa_accuracy(["a", "b", "c"], ["a", "x", "c"]) == 66.67
    assert qa.qa_accuracy(["two"], [["two"]]) == 0.0  # a list answer never equals a prediction (official)
    with pytest.raises(ValueError, match="2 predictions but 1"):
        qa.qa_accuracy(["a", "b"], ["a"])


def test_one_optax_step_on_the_official_loss_lowers_it_with_merging_on(qa_model, qa_gold):
    answers, weights, per_question = train_batch(qa_gold)
    a_ids, a_mask = qa.tokenize_answers(qa_model, answers)
    clips = jnp.asarray(video(qa_gold)[qa_gold["question_video"]])
    r = schedule(qa_gold, "ints")

    @jax.jit
    def loss_fn(model):
        return qa.train_loss(
            model,
            clips,
            jnp.asarray(qa_gold["question_ids"]),
            jnp.asarray(qa_gold["question_mask"]),
            jnp.asarray(a_ids),
            jnp.asarray(a_mask),
            answers_per_question=per_question,
            weights=jnp.asarray(weights),
            r=r,
        )

    opt = optax.adamw(1e-3)
    state = opt.init(qa_model)
    loss, grads = jax.value_and_grad(loss_fn)(qa_model)
    assert np.isclose(float(loss), float(qa_gold["train/ints/loss"]), atol=1e-4)
    updates, state = opt.update(grads, state, qa_model)
    stepped = optax.apply_updates(qa_model, updates)
    assert isinstance(stepped, qa.QAModel) and float(loss_fn(stepped)) < float(loss) - 0.1
    for part in ("vision", "question", "decoder"):  # every part is trained
        before, after = (
            jax.tree_util.tree_leaves(getattr(qa_model, part)),
            jax.tree_util.tree_leaves(getattr(stepped, part)),
        )
        assert any(not np.array_equal(a, b) for a, b in zip(before, after)), part


def test_bad_inputs_are_refused_with_the_fix(qa_model, qa_gold):
    clips = video(qa_gold)
    questions, answers = list(qa_gold["questions"]), list(qa_gold["answers"])
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 20\]"):
        qa.evaluate(qa_model, clips, questions, answers, question_video=qa_gold["question_video"], k=21)
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        qa.evaluate(qa_model, clips, questions, answers, question_video=qa_gold["question_video"] + 1)
    with pytest.raises(ValueError, match="9 questions but 2 ground-truth"):
        qa.evaluate(
            qa_model, clips, questions, answers, question_video=qa_gold["question_video"], gt=["a", "b"]
        )
    with pytest.raises(TypeError, match="questions must be strings"):
        qa.tokenize_questions(qa_model, ["ok", 3])
    with pytest.raises(ValueError, match="pass question_video"):
        qa.encode_question(qa_model, qa_gold["question_ids"], qa_gold["question_mask"], np.zeros((3, 4, 64)))
    with pytest.raises(ValueError, match="answers_per_question sums to 3"):
        ids, mask = qa.tokenize_answers(qa_model, ["a", "b"])
        qa.train_loss(
            qa_model,
            clips[:2],
            qa_gold["question_ids"][:2],
            qa_gold["question_mask"][:2],
            ids,
            mask,
            answers_per_question=[1, 2],
            weights=np.ones(2),
        )
    with pytest.raises(TypeError, match="QAModel"):
        qa.rank_answers(qa_model.vision, None, None, None, None, 1)


def test_annotation_files_answer_lists_and_presets(tmp_path):
    (tmp_path / "qa.json").write_text(
        json.dumps(
            [
                {"video": "v1.mp4", "question": "what is it?", "answer": "dog", "question_id": 7},
                {"video": "v2.mp4", "question": "who?", "answer": "man"},
                {"video": "v1.mp4", "question": "how many?", "answer": "two", "question_id": 9},
            ]
        )
    )
    ann = qa.load_qa_annotations(tmp_path / "qa.json", video_root="/data")
    assert ann.videos == ["/data/v1.mp4", "/data/v2.mp4"] and ann.question_video.tolist() == [0, 1, 0]
    assert ann.answers == ["dog", "man", "two"] and ann.question_ids == [7, 1, 9]
    (tmp_path / "answers.json").write_text(json.dumps(["dog", "man"]))
    assert qa.load_answer_list(tmp_path / "answers.json") == ["dog", "man"]
    (tmp_path / "mc.json").write_text(json.dumps([{"video": "a.mp4", "caption": list("abcde"), "answer": 3}]))
    mc = qa.load_mc_annotations(tmp_path / "mc.json")
    assert mc.videos == ["a.mp4"] and mc.captions == [list("abcde")] and mc.answers.tolist() == [3]
    (tmp_path / "bad.json").write_text(json.dumps([{"video": "a.mp4", "question": "q"}]))
    with pytest.raises(ValueError, match=r"entry 0 lacks \['answer'\]"):
        qa.load_qa_annotations(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        qa.load_answer_list(tmp_path / "nope.json")
    msrvtt = qa.get_preset("msrvtt-qa")
    assert (msrvtt.k_test, msrvtt.max_q_len, msrvtt.max_a_len, msrvtt.num_frames, msrvtt.r) == (
        128,
        25,
        5,
        12,
        "msrvtt_qa",
    )
    assert qa.get_preset("anet_qa").r is None and qa.get_preset("msrvtt_mc").task == "mc"
    with pytest.raises(ValueError, match="Did you mean msvd_qa"):
        qa.get_preset("msvd_qaa")


def test_tldr_jax_cast_works_on_the_qa_model(qa_model, qa_gold):
    """``tldr_jax.cast`` takes a QAModel: float64 casts every floating leaf (as ``astype``); bfloat16 casts
    only the vision tower's kernels (text side float32) and the model still ranks answers."""
    import tldr_jax

    with jax.enable_x64(True):
        m64 = tldr_jax.cast(qa_model, jnp.float64)
        assert isinstance(m64, qa.QAModel)
        leaves = jax.tree_util.tree_leaves(m64)
        assert all(x.dtype == np.float64 for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))
        ref = jax.tree_util.tree_leaves(qa_model.astype(jnp.float64))
        assert all(np.array_equal(a, b) for a, b in zip(leaves, ref, strict=True))
    bf = tldr_jax.cast(qa_model, jnp.bfloat16)
    kernels = {
        jax.tree_util.keystr(p): a.dtype
        for p, a in jax.tree_util.tree_leaves_with_path(bf.vision.tree)
    }
    assert all(dt == jnp.bfloat16 for k, dt in kernels.items() if k.endswith("['kernel']"))
    assert all(dt == jnp.float32 for k, dt in kernels.items() if not k.endswith("['kernel']"))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves((bf.question, bf.decoder)))
    tokens = qa.encode_video(bf, jnp.asarray(video(qa_gold)[:1]), 0).tokens
    assert tokens.dtype == jnp.bfloat16 and bool(jnp.isfinite(tokens.astype(jnp.float32)).all())
    with pytest.raises(TypeError, match="RetrievalModel / QAModel"):
        tldr_jax.cast({"vision": 1}, jnp.float32)
